"""Export of trained DGL models: ONNX graphs with baked-in prompts (onnx_export), fp16/int8 variants
(quantize), export-time parity checks (parity) and TensorRT engines (tensorrt)."""

from dgl_deploy.export.onnx_export import export_onnx

__all__ = ["export_onnx"]
