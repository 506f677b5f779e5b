"""Lower-precision variants of an exported fp32 graph: fp16 for GPU runtimes, dynamic int8 for CPU.

fp16 uses onnxruntime's graph converter (`onnxruntime.transformers.float16`, the maintained copy of
onnxconverter-common's) rather than exporting under autocast: it works on the already-checked fp32 graph,
keeps the uint8/int64 inputs and float32 output (`keep_io_types`), and an explicit block list keeps the
numerically sensitive ops (LayerNorm, softmax, reductions, the final L2 norm) in fp32 with casts around them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

# Ops that stay fp32 in the fp16 graph: statistics (LayerNorm, softmax, means, powers/roots of sums) overflow
# or lose precision in fp16; Div covers the input normalisation and the final L2 normalisation.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "ReduceSumSquare", "Pow", "Sqrt", "Div"]


def to_fp16(src: Path, dst: Path) -> None:
    """Write an fp16 copy of graph `src` to `dst` (inputs/outputs keep their types)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True,
                                   op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32)
    model.topological_sort()  # the converter appends its Cast nodes at the end of the graph
    onnx.save(model.model, str(dst))


def to_int8(src: Path, dst: Path) -> None:
    """Write a dynamically quantised copy (int8 MatMul/Gemm weights, activations quantised per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # onnxruntime logs "consider pre-processing" advice on the root logger
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        root.setLevel(level)
