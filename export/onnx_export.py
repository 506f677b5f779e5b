"""`dgl export`: standalone ONNX text and video encoders with the prompts baked in.

The prompt generator is evaluated once and folded into constants: each graph is a wrapper holding the
frozen towers plus the fixed prompt tensors as buffers, so no prompt-generator parameter reaches the graph.
Exporter: torch.onnx's dynamo exporter (`dynamo=True`, torch.export + onnxscript, opset 18) with a symbolic
batch dimension. The legacy TorchScript exporter was tried first: it records the batch size as a constant
wherever the model passes Python ints derived from shapes (e.g. `unflatten(0, (batch, frames))` in the
global-local attention), so its graphs only ran at the traced batch size; torch.export tracks the symbolic
batch through those calls. onnxslim cleans the graph up afterwards. Everything is written into a temp folder
that is renamed into place only after the parity check passed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxslim
import torch
import torch.nn.functional as F
from torch import nn

from dgl_deploy import __version__, defaults
from dgl_deploy.errors import DGLError
from dgl_deploy.export.parity import check_parity, check_tokenizer, probe_batch
from dgl_deploy.export.quantize import INT8_WEIGHTS, int8_tries, to_fp16, to_int8
from dgl_deploy.model.checkpoint import model_fingerprint
from dgl_deploy.model.model import DGLModel
from dgl_deploy.model.pixels import folded_patch_projection, pixel_patches
from dgl_deploy.model.tokenizer import VOCAB_SIZE
from dgl_deploy.runtime.backends.select import Log
from dgl_deploy.runtime.manifest import (
    FINGERPRINT_KEY,
    REDUCED_MIN_COSINE,
    GraphEntry,
    Manifest,
    ProbeEntry,
    TensorSpec,
    sha256_file,
    write_manifest,
)
from dgl_deploy.runtime.tokenizer import BPE_FILE, open_clip_bpe_file

OPSET = defaults.OPSET
GRAPH_FILES = {"text": "text_encoder", "video": "video_encoder"}


class TextGraph(nn.Module):
    """(B, W) int64 token ids -> (B, E) L2-normalised text embeddings, prompts fixed."""

    def __init__(self, model: DGLModel, text_prompts: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_prompts", text_prompts)  # (K, Lt, Dt)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids, (self.text_prompts, self.text_prompts))  # frame prompts unused


class VideoGraph(nn.Module):
    """(B, T, H, W, 3) uint8 frames -> (B, E) L2-normalised video embeddings. CLIP normalisation and the patch
    convolution run as one MatMul over raw pixel patches (`pixels.folded_patch_projection`): the same linear map,
    without a channel-first copy of the frames (cheaper on CPU than the convolution, which onnxruntime runs in
    its blocked NCHWc layout with reorders around it)."""

    def __init__(self, model: DGLModel, frame_prompts: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.patch = int(model.clip.visual.patch_size[0])  # P
        weight, bias = folded_patch_projection(model.clip.visual.conv1.weight)
        self.register_buffer("patch_weight", weight)  # (P*P*3, Dv)
        self.register_buffer("patch_bias", bias)  # (Dv,)
        self.register_buffer("frame_prompts", frame_prompts)  # (K, T, Ll, Dv)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        patches = pixel_patches(frames, self.patch) @ self.patch_weight + self.patch_bias  # (B*T, N, Dv)
        tokens = self.model.frame_tokens(patches)  # (B, T, 1+N, Dv)
        features = self.model.video_features_from_tokens(tokens, (self.frame_prompts, self.frame_prompts))
        return F.normalize(features, dim=-1)  # (B, E)


def frozen_towers(model: DGLModel) -> DGLModel:
    """A shallow copy of `model` sharing the frozen CLIP and global prompts, without the prompt generator."""
    towers = DGLModel.__new__(DGLModel)
    towers.__dict__.update(model.__dict__)
    towers._modules = {k: v for k, v in model._modules.items() if k != "latent"}
    towers._parameters = dict(model._parameters)
    return towers.eval()


def graph_modules(model: DGLModel) -> dict[str, nn.Module]:
    """The two export wrappers with the prompts evaluated once."""
    with torch.no_grad():
        text, frame = (p.detach().clone().float() for p in model.prompts())
    towers = frozen_towers(model)
    return {"text": TextGraph(towers, text).eval(), "video": VideoGraph(towers, frame).eval()}


def example_input(model: DGLModel, role: str, batch: int = 2) -> torch.Tensor:
    """A tracing input: ids (B, W) int64 with EOT (the largest id) last, or uint8 frames (B, T, H, W, 3)."""
    if role == "text":
        ids = torch.ones(batch, model.config.max_words, dtype=torch.int64)
        ids[:, -1] = model.clip.vocab_size - 1
        return ids
    size = model.image_size
    return torch.zeros(batch, model.config.frames, size, size, 3, dtype=torch.uint8)


def signatures(model: DGLModel) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Input and output specs of the two graphs ("B" = dynamic batch, "W" = dynamic token length <= max_words)."""
    size, cfg = model.image_size, model.config
    inputs = {"text": TensorSpec("ids", "int64", ("B", "W")),
              "video": TensorSpec("frames", "uint8", ("B", cfg.frames, size, size, 3))}
    outputs = {role: TensorSpec(f"{role}_embedding", "float32", ("B", model.embed_dim)) for role in GRAPH_FILES}
    return inputs, outputs


def prompt_checksum(model: DGLModel) -> str:
    """sha256 (16 hex) of the evaluated prompts: what the graphs have baked in."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for tensor in model.prompts():
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def graph_metadata(model: DGLModel, role: str, precision: str, fingerprint: str) -> dict[str, str]:
    """The ONNX metadata_props of a graph (read back by the runtimes to refuse mixed-up files)."""
    return {FINGERPRINT_KEY: fingerprint, "dgl.role": role, "dgl.precision": precision,
            "dgl.model_name": model.backbone.name, "dgl.embed_dim": str(model.embed_dim),
            "dgl.frames": str(model.config.frames), "dgl.image_size": str(model.image_size),
            "dgl.context_length": str(model.config.max_words), "dgl.prompt_checksum": prompt_checksum(model),
            "dgl.version": __version__}


def export_graph(module: nn.Module, example: torch.Tensor, spec_in: TensorSpec, spec_out: TensorSpec, path: Path,
                 metadata: dict[str, str], opset: int = OPSET) -> None:
    """Trace `module` to ONNX with the dynamic dims of `spec_in` (batch; token length up to the example's), slim
    it, stamp metadata, check it, save to `path`."""
    bounds = {"B": (1, 65536), "W": (2, example.shape[-1])}
    dynamic = {axis: torch.export.Dim(dim, min=bounds[dim][0], max=bounds[dim][1])
               for axis, dim in enumerate(spec_in.shape) if isinstance(dim, str)}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # exporter progress and deprecation chatter
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                          input_names=[spec_in.name], output_names=[spec_out.name], dynamic_shapes=(dynamic,))
    graph = onnx.load(str(path))
    fix_transpose_perms(graph)
    graph = onnxslim.slim(graph)
    stamp_metadata(graph, metadata)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))


def fix_transpose_perms(graph: onnx.ModelProto) -> None:
    """Make Transpose perms non-negative: the TorchScript exporter writes `movedim(-1, -3)` (video.normalize)
    as perm [0, 1, -1, 2, 3], which ONNX shape inference (and so the checker and TensorRT) rejects."""
    for node in graph.graph.node:
        if node.op_type == "Transpose":
            for attr in node.attribute:
                if attr.name == "perm" and any(p < 0 for p in attr.ints):
                    rank = len(attr.ints)
                    attr.ints[:] = [p % rank for p in attr.ints]


def stamp_metadata(graph: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set (replace) metadata_props entries."""
    kept = [p for p in graph.metadata_props if p.key not in metadata]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)


def write_variant(src: Path, dst: Path, precision: str, metadata: dict[str, str], keep_fp32: Sequence[str] = (),
                  weights: str = INT8_WEIGHTS[0]) -> None:
    """fp16 / int8 copy of an fp32 graph (int8: `weights` type, the nodes in `keep_fp32` stay fp32), re-stamped with
    its precision."""
    if precision == "int8":
        to_int8(src, dst, keep_fp32, weights)
    else:
        to_fp16(src, dst)
    graph = onnx.load(str(dst))
    stamp_metadata(graph, {**metadata, "dgl.precision": precision})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(dst))


def export_onnx(model: DGLModel, out: Path | str, *, checkpoint: str | None = None,
                precisions: Iterable[str] = ("fp32",), opset: int = OPSET, overwrite: bool = False,
                log: Log = print) -> Manifest:
    """Export `model` to folder `out`: fp32 graphs always, plus the requested fp16/int8 variants, the
    tokenizer vocabulary and manifest.json. Fails (DGLError, nothing written) when fp32 parity is missed."""
    out = Path(out)
    wanted = ["fp32"] + [p for p in dict.fromkeys(precisions) if p != "fp32"]
    unknown = [p for p in wanted if p not in ("fp32", "fp16", "int8")]
    if unknown:
        raise DGLError(f"unknown export precision {unknown[0]!r}: use fp16 or int8")
    if out.exists() and not overwrite:
        raise DGLError(f"{out}: already exists (pass --overwrite to replace it)")
    model = model.eval()
    fingerprint = model_fingerprint(model)
    with _staging_folder(out) as tmp:
        graphs = _export_graphs(model, tmp, wanted, fingerprint, opset, log)
        tokenizer = _copy_tokenizer(model, tmp, log)
        inputs, outputs = signatures(model)
        manifest = Manifest(
            fingerprint=fingerprint, checkpoint=checkpoint, config=model.config.to_dict(),
            backbone=asdict(model.backbone), frames=model.config.frames, image_size=model.image_size,
            max_words=model.config.max_words, embed_dim=model.embed_dim, vocab_size=int(model.clip.vocab_size),
            opset=opset, inputs=inputs, outputs=outputs, tokenizer=tokenizer,
            tokenizer_sha256=sha256_file(tmp / tokenizer) if tokenizer else None, graphs=tuple(graphs),
            versions=_versions(), probes=_write_probes(model, tmp))
        write_manifest(tmp, manifest)
        _move_into_place(tmp, out)
    log(f"wrote {out} (model {fingerprint})")
    return manifest


def _export_graphs(model: DGLModel, folder: Path, precisions: list[str], fingerprint: str, opset: int,
                   log: Log) -> list[GraphEntry]:
    """Every graph of the export, each parity-checked against PyTorch; fp32 failures raise."""
    modules = graph_modules(model)
    inputs, outputs = signatures(model)
    entries = []
    for role, module in modules.items():
        meta = graph_metadata(model, role, "fp32", fingerprint)
        fp32 = folder / f"{GRAPH_FILES[role]}.onnx"
        export_graph(module, example_input(model, role), inputs[role], outputs[role], fp32, meta, opset)
        for precision in precisions:
            path = fp32 if precision == "fp32" else folder / f"{GRAPH_FILES[role]}.{precision}.onnx"
            if precision == "fp32":
                parity = check_parity(model, role, path, strict=True)
            else:
                parity = _reduced_variant(model, role, fp32, path, precision, meta)
            kept = f", {parity['fp32_matmuls']:.0f} MatMuls kept fp32" if parity.get("fp32_matmuls") else ""
            kept += ", uint8 weights" if parity.get("uint8_weights") else ""
            log(f"{role:5s} {precision}: max abs err {parity['max_abs']:.2e}, min cosine {parity['min_cosine']:.6f}"
                f" vs PyTorch fp32 (batches 1, 3, 8){kept}")
            entries.append(GraphEntry(role, precision, path.name, sha256_file(path), parity))
    return entries


def _reduced_variant(model: DGLModel, role: str, fp32: Path, path: Path, precision: str,
                     metadata: dict[str, str]) -> dict[str, float]:
    """Write the fp16/int8 graph of `fp32` and measure its parity. An int8 graph below REDUCED_MIN_COSINE is
    redone with more of it kept fp32, then with uint8 weights (`quantize.int8_tries`) until the parity holds; the
    last try stays."""
    blocks = model.config.prompt_layers if role == "text" else len(model.clip.visual.transformer.resblocks)
    for weights, keep in int8_tries(fp32, blocks) if precision == "int8" else [(INT8_WEIGHTS[0], ())]:
        write_variant(fp32, path, precision, metadata, keep, weights)
        parity = {**check_parity(model, role, path, strict=False), "fp32_matmuls": float(len(keep))}
        parity |= {"uint8_weights": 1.0} if weights == "uint8" else {}
        if parity["min_cosine"] >= REDUCED_MIN_COSINE:
            break
    return parity


def _write_probes(model: DGLModel, folder: Path) -> tuple[ProbeEntry, ...]:
    """Save each tower's probe batch and PyTorch fp32's embeddings of it (`parity.probe_batch`) as `.npy`."""
    entries = []
    for role in GRAPH_FILES:
        files = (f"probe_{role}.npy", f"probe_{role}.fp32.npy")
        for file, array in zip(files, probe_batch(model, role), strict=True):
            np.save(folder / file, array, allow_pickle=False)
        entries.append(ProbeEntry(role, files[0], sha256_file(folder / files[0]), files[1], sha256_file(folder / files[1])))
    return tuple(entries)


def _copy_tokenizer(model: DGLModel, folder: Path, log: Log) -> str | None:
    """Copy the CLIP BPE merges next to the graphs and prove the torch-free tokenizer matches open_clip's."""
    if model.clip.vocab_size < VOCAB_SIZE:
        log(f"text tower vocabulary has {model.clip.vocab_size} tokens (not CLIP's): no tokenizer exported")
        return None
    shutil.copyfile(open_clip_bpe_file(), folder / BPE_FILE)
    check_tokenizer(folder / BPE_FILE, model.config.max_words)
    return BPE_FILE


@contextlib.contextmanager
def _staging_folder(out: Path) -> Iterator[Path]:
    """A temp folder beside `out` (same file system, so the final rename is atomic), removed on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`, replacing an old export only once the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"dgl-deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__}
