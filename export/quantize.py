"""Lower-precision variants of an exported fp32 graph: fp16 for GPU runtimes, dynamic int8 for CPU.

int8 weights are 7-bit (`reduce_range`: per-channel symmetric in [-64, 64]) so the graph computes the same on
every x86 CPU: onnxruntime multiplies uint8 activations by int8 weights, and without VNNI (AVX2, AVX-512 before
VNNI) its kernels add pairs of those products in saturating 16-bit registers (vpmaddubsw). Full-range weights
(|w| <= 127) overflow there (2 * 255 * 127 > 32767): random-init ViT-B/32 video tower on an AVX2-only EPYC, min
cosine 0.904 vs fp32; with 7-bit weights (2 * 255 * 64 = 32640) nothing can saturate (0.99941 there). A tower
whose 7-bit graph misses parity even with blocks kept fp32 gets uint8 weights (onnxruntime's u8u8 kernels widen
to 16 bits before multiplying: no saturating sums either, full 8 bits, but slower than u8s8 on VNNI hosts).

fp16 uses onnxruntime's graph converter (`onnxruntime.transformers.float16`, the maintained copy of
onnxconverter-common's) rather than exporting under autocast: it works on the already-checked fp32 graph,
keeps the uint8/int64 inputs and float32 output (`keep_io_types`), and an explicit block list keeps the
numerically sensitive ops (LayerNorm, softmax, reductions, the final L2 norm) in fp32 with casts around them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
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


INT8_WEIGHT_MAX = 64  # |int8 weight| bound: two uint8 x int8 products summed in int16 cannot saturate


INT8_WEIGHTS = ("int8", "uint8")  # weight types an int8 export tries, in order (see the module docstring)


def to_int8(src: Path, dst: Path, keep_fp32: Sequence[str] = (), weights: str = "int8") -> None:
    """Write a dynamically quantised copy (MatMul/Gemm weights per output channel: 7-bit int8, or uint8; uint8
    activations quantised per run); the nodes named in `keep_fp32` stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # onnxruntime logs "consider pre-processing" advice on the root logger
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8,
                         reduce_range=weights == "int8", nodes_to_exclude=list(keep_fp32))
    finally:
        root.setLevel(level)


def int8_fallbacks(src: Path, blocks: int) -> Iterator[tuple[str, ...]]:
    """The node sets to keep fp32, in the order an int8 export tries them until its parity holds: none, the
    first transformer block's weight MatMuls, the first and the last block's. The first block's inputs mix token
    or patch embeddings with prompts of another scale, so one per-tensor activation scale fits them worst
    (random-init ViT-B/32 text tower: min cosine 0.99834 with every block int8, 0.99936 with block 0 fp32, no
    other single block above 0.9985). Blocks are told apart by position: the graph's weight MatMuls in order are
    `blocks` equal runs plus the final projection; a graph not shaped like that gets no fallback (the video
    graph: its last block keeps only the global branch, so its runs differ; its int8 parity held without).
    The graph is read only when the all-int8 try is not enough."""
    yield ()
    graph = onnx.load(str(src)).graph
    weights = {t.name for t in graph.initializer} | {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)]
    per_block, extra = divmod(len(matmuls) - 1, blocks)
    if per_block and not extra:
        first, last = matmuls[:per_block], matmuls[-1 - per_block: -1]
        yield from (tuple(first), tuple(first + last))


def int8_tries(src: Path, blocks: int) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(weight type, nodes kept fp32) in the order an int8 export tries them until its parity holds: 7-bit int8
    weights with each of `int8_fallbacks`, then uint8 weights with each (random-init ViT-B/32 text tower, AVX-512
    VNNI host: 7-bit 0.99788 all int8, 0.99870 with the first and last block fp32; uint8 0.99902 all int8)."""
    fallbacks = []
    for keep in int8_fallbacks(src, blocks):
        fallbacks.append(keep)
        yield INT8_WEIGHTS[0], keep
    for keep in fallbacks:
        yield INT8_WEIGHTS[1], keep
