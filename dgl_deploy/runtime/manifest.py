"""The manifest of an export folder (`manifest.json`): which model the graphs/engines come from, their
signatures, settings, checksums and the parity measured when they were made.

Every consumer of an export (backends, embed, query, eval) goes through `load_manifest` and `verified_file`:
a graph whose checksum or embedded model fingerprint disagrees with the manifest is refused.
Torch-free on purpose (imported at query start-up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_write_text

FORMAT = "dgl-deploy-export/1"
MANIFEST_FILE = "manifest.json"
ROLES = ("text", "video")
PRECISIONS = ("fp32", "fp16", "int8")
REDUCED_MIN_COSINE = 0.999  # fp16/int8 graphs are picked by `auto` only at this export parity or better
FINGERPRINT_KEY = "dgl.fingerprint"  # ONNX metadata_props key holding the source model fingerprint


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a graph input/output; "B" marks the dynamic batch dimension."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of the export."""

    role: str  # "text" | "video"
    precision: str  # "fp32" | "fp16" | "int8"
    file: str  # relative to the export folder
    sha256: str
    parity: dict[str, float] = field(default_factory=dict)  # vs PyTorch fp32 at export: max_abs, min_cosine


@dataclass(frozen=True)
class EngineEntry:
    """One TensorRT engine built from a graph of this export, valid only on that GPU + TensorRT version."""

    role: str
    precision: str
    file: str
    sha256: str
    onnx_file: str
    onnx_sha256: str
    gpu_name: str
    compute_capability: str  # "9.0"
    tensorrt_version: str
    profile: tuple[int, int, int]  # min / opt / max batch
    parity: dict[str, float] = field(default_factory=dict)  # vs onnxruntime fp32: min_cosine


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to know about an export folder, and how it was checked."""

    fingerprint: str  # checkpoint.model_fingerprint of the source model
    checkpoint: str | None  # where the source model came from (None: an in-memory model)
    config: dict[str, Any]  # DGLConfig.to_dict()
    backbone: dict[str, Any]  # BackboneSpec as a dict (name, pretrained, arch, fingerprint)
    frames: int
    image_size: int
    max_words: int
    embed_dim: int
    vocab_size: int
    opset: int
    inputs: dict[str, TensorSpec]  # role -> input
    outputs: dict[str, TensorSpec]  # role -> output
    tokenizer: str | None  # BPE merges file in the folder (None: the vocabulary is not CLIP's)
    tokenizer_sha256: str | None
    graphs: tuple[GraphEntry, ...]
    engines: tuple[EngineEntry, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)  # dgl-deploy, torch, onnx, onnxruntime at export
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["inputs"] = {k: _spec(v) for k, v in data["inputs"].items()}
        data["outputs"] = {k: _spec(v) for k, v in data["outputs"].items()}
        data["graphs"] = tuple(GraphEntry(**g) for g in data["graphs"])
        data["engines"] = tuple(EngineEntry(**{**e, "profile": tuple(e["profile"])}) for e in data.get("engines", ()))
        return cls(**data)

    def graph(self, role: str, precision: str) -> GraphEntry:
        """The graph for `role` at `precision`, or a DGLError listing what the export has."""
        for entry in self.graphs:
            if entry.role == role and entry.precision == precision:
                return entry
        have = ", ".join(sorted({g.precision for g in self.graphs if g.role == role})) or "none"
        raise DGLError(f"this export has no {precision} {role} graph (it has: {have}); re-export with "
                       f"`dgl export ... --{precision}`")

    def parity_held(self, precision: str, min_cosine: float = REDUCED_MIN_COSINE) -> bool:
        """Both towers exist at `precision` and matched PyTorch fp32 at export (cosine >= `min_cosine`)."""
        entries = [g for g in self.graphs if g.precision == precision]
        return {g.role for g in entries} == {"text", "video"} and \
            all(g.parity.get("min_cosine", 0.0) >= min_cosine for g in entries)

    def precisions(self, role: str) -> list[str]:
        return [g.precision for g in self.graphs if g.role == role]

    def with_engines(self, engines: tuple[EngineEntry, ...]) -> Manifest:
        return dataclasses.replace(self, engines=engines)


def _spec(data: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path | str, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` atomically."""
    path = Path(folder) / MANIFEST_FILE
    atomic_write_text(path, manifest.to_json() + "\n")
    return path


def load_manifest(folder: Path | str) -> Manifest:
    """Read and validate `folder/manifest.json` (format, fields); file checksums are checked per use."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DGLError(f"{folder}: not an export folder (no {MANIFEST_FILE}); create one with `dgl export`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DGLError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DGLError(f"{path}: not a dgl-deploy export manifest (format "
                       f"{data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r})")
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DGLError(f"{path}: damaged manifest ({exc})") from None


def verified_file(folder: Path | str, file: str, sha256: str) -> Path:
    """`folder/file` after checking it exists and has the checksum the manifest recorded."""
    path = Path(folder) / file
    if not path.is_file():
        raise DGLError(f"{path}: listed in {MANIFEST_FILE} but missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise DGLError(f"{path}: checksum {actual[:12]} does not match {MANIFEST_FILE} ({sha256[:12]}); the file was "
                       "changed or comes from another export: re-export the model")
    return path


def check_graph_metadata(path: Path | str, metadata: Mapping[str, str], manifest: Manifest) -> None:
    """Refuse a graph whose embedded model fingerprint is not the manifest's (graph of another model)."""
    found = metadata.get(FINGERPRINT_KEY)
    if found != manifest.fingerprint:
        raise DGLError(f"{path}: graph was exported from model {found} but {MANIFEST_FILE} describes model "
                       f"{manifest.fingerprint}; do not mix files of different exports")


def check_same_model(a_fingerprint: str, b_fingerprint: str, what: str, fix: str = "re-embed with one model") -> None:
    """Refuse to combine `what` (embeddings, an index, an encoder) made by two different models."""
    if a_fingerprint != b_fingerprint:
        raise DGLError(f"{what}: made by model {a_fingerprint}, not by model {b_fingerprint}; embeddings of "
                       f"another model are not comparable ({fix})")


__all__ = ["Manifest", "GraphEntry", "EngineEntry", "TensorSpec", "load_manifest", "write_manifest",
           "verified_file", "check_graph_metadata", "check_same_model", "sha256_file", "FINGERPRINT_KEY"]
