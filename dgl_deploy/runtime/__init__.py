"""Running exported models without torch: the export manifest, the numpy BPE tokenizer and the encoder
backends (onnxruntime, TensorRT; torch only behind a lazy import for checkpoints)."""
