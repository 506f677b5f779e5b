"""Lower-precision variants of an exported fp32 graph: fp16 for GPU runtimes, dynamic int8 for CPU.

int8 weights are 7-bit (`reduce_range`: per-channel symmetric in [-64, 64]) so the graph computes the same on
every x86 CPU: onnxruntime multiplies uint8 activations by int8 weights, and without VNNI (AVX2, AVX-512 before
VNNI) its kernels add pairs of those products in saturating 16-bit registers (vpmaddubsw). Full-range weights
(|w| <= 127) overflow there (2 * 255 * 127 > 32767); with 7-bit weights (2 * 255 * 64 = 32640) nothing can saturate
(measurements in docs/backends.md). A tower whose 7-bit graph misses parity even with more kept fp32 gets uint8
weights (onnxruntime's u8u8 kernels widen to 16 bits before multiplying: no saturating sums either, full 8 bits,
but slower than u8s8 on VNNI hosts).

fp16 uses onnxruntime's graph converter (`onnxruntime.transformers.float16`, the maintained copy of
onnxconverter-common's) rather than exporting under autocast: it works on the already-checked fp32 graph,
keeps the uint8/int64 inputs and float32 output (`keep_io_types`), and an explicit block list keeps the
numerically sensitive ops (LayerNorm, softmax, reductions, the final L2 norm) in fp32 with casts around them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from dgl_deploy.model.backbone import quiet_root_logger

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


CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's own ops (Gelu, BiasGelu, QuickGelu)
INT8_WEIGHT_MAX = 64  # |int8 weight| bound: two uint8 x int8 products summed in int16 cannot saturate


INT8_WEIGHTS = ("int8", "uint8")  # weight types an int8 export tries, in order (see the module docstring)


def to_int8(src: Path, dst: Path, keep_fp32: Sequence[str] = (), weights: str = "int8") -> None:
    """Write a dynamically quantised copy (MatMul/Gemm weights per output channel: 7-bit int8, or uint8; uint8
    activations quantised per run) of `src` with its CPU fusions (`fuse_for_cpu`); the nodes named in
    `keep_fp32` stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_root_logger():  # onnxruntime logs "consider pre-processing" advice on the root logger
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8,
                         reduce_range=weights == "int8", nodes_to_exclude=list(keep_fp32))
    fuse_for_cpu(dst, dst)


def fuse_for_cpu(src: Path, dst: Path) -> None:
    """Write `src` with each GELU fused into one onnxruntime op (exact: erf GELU -> Gelu or BiasGelu, QuickGELU
    -> QuickGelu) to `dst` (may be `src`). onnxruntime's session-time optimiser does not match the GELUs the
    exporter writes, which then run as three to five element-wise ops. The fused ops are onnxruntime contrib ops,
    so only the CPU-only int8 graph gets them (after quantisation, whose shape inference knows no contrib ops);
    the fp32/fp16 graphs stay plain ONNX for TensorRT."""
    from onnxruntime.transformers.fusion_biasgelu import FusionBiasGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.fusion_quickgelu import FusionQuickGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    FusionGelu(model).apply()
    FusionBiasGelu(model, is_fastgelu=False).apply()
    FusionQuickGelu(model).apply()  # OpenAI's CLIP weights: x * sigmoid(1.702 x), three ops -> one
    model.prune_graph()
    model.topological_sort()
    if not any(o.domain == CONTRIB_DOMAIN for o in model.model.opset_import):
        model.model.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    onnx.save(model.model, str(dst))


def int8_fallbacks(src: Path, blocks: int) -> Iterator[tuple[str, ...]]:
    """The node sets to keep fp32, in the order an int8 export tries them until its parity holds.

    Always fp32: the weight MatMuls not over the batch's items (the video's patch projection, over B*T frames:
    its inputs are pixels, and fp32 costs it no time) and those over one row per item (the final projections:
    negligible work). Then, where some MatMuls see fewer rows per item than the rest (the video's global tokens,
    4 against 12 frames x 54 tokens), those of the last block, then all of them: one per-tensor activation scale
    fits those few rows worst, and they carry the embedding, but their weights stream from memory for a few rows,
    so fp32 costs time. Then the first transformer block, then the first and the last: the first block's inputs
    mix token embeddings with prompts of another scale (on a random-init ViT-B/32 text tower no other single block
    fp32 came close). Blocks are told apart by position (the graph's remaining weight MatMuls in order are
    `blocks` equal runs); a graph not shaped like that gets no block fallback. The graph is read once, with onnx
    shape inference."""
    matmuls = _weight_matmuls(src)  # (name, rows per item) in graph order
    base = [name for name, rows in matmuls if rows <= 1]
    yield tuple(base)
    most = max((rows for _, rows in matmuls), default=0.0)
    few = [name for name, rows in matmuls if 1 < rows < most]
    if few and len(few) % blocks == 0:
        yield tuple(base + few[-len(few) // blocks:])
        yield tuple(base + few)
    rest = [name for name, rows in matmuls if rows == most > 1]
    per_block, extra = divmod(len(rest), blocks)
    if per_block and not extra and not few:
        yield tuple(base + rest[:per_block])
        if blocks > 2:  # with two blocks, the first and the last leave nothing int8
            yield tuple(base + rest[:per_block] + rest[-per_block:])


def _weight_matmuls(src: Path) -> list[tuple[str, float]]:
    """Each MatMul/Gemm with a constant weight, in graph order, with the rows per batch item of its activation: the
    product of its middle dimensions (1 for (B, D); inf where one is symbolic, like the text's token count), or 0
    where its first dimension is not the batch (the patch projection, over B*T frames)."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(src))).graph
    weights = {t.name for t in graph.initializer} | {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.value_info, *graph.input]}
    return [(node.name, _rows_per_item(dims.get(node.input[0], []), batch)) for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and any(i in weights for i in node.input)]


def _rows_per_item(shape: list[int | str], batch: str) -> float:
    """Rows per batch item of an activation of `shape` (see `_weight_matmuls`); inf where shape inference gave
    none, so such a MatMul is quantised like any other."""
    if not shape:
        return math.inf
    if shape[0] != batch:
        return 0.0
    middle = shape[1:-1]
    return float(np.prod(middle)) if all(isinstance(d, int) and d for d in middle) else math.inf


def int8_tries(src: Path, blocks: int) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(weight type, nodes kept fp32) in the order an int8 export tries them until its parity holds: 7-bit int8
    weights with each of `int8_fallbacks`, then uint8 weights with each (on a random-init ViT-B/32 text tower only
    uint8 weights reached the parity)."""
    fallbacks = []
    for keep in int8_fallbacks(src, blocks):
        fallbacks.append(keep)
        yield INT8_WEIGHTS[0], keep
    for keep in fallbacks:
        yield INT8_WEIGHTS[1], keep
