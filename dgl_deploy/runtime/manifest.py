"""The manifest of an export folder (`manifest.json`): which model the graphs/engines come from, their
signatures, settings, checksums and the parity measured when they were made.

Every consumer of an export (backends, embed, query, eval) goes through `load_manifest` and `verified_file`:
a graph whose checksum or embedded model fingerprint disagrees with the manifest is refused. The manifest
itself is untrusted input: `load_manifest` checks the type of every field, the sizes against sane bounds
and the recorded graph signatures, and that every file it names is a plain file name inside the folder;
`check_graph_signature` reads a graph's declared input/output shapes from the file with the bounded protobuf
reader of `runtime.protobuf` (no session, no onnx package).
Torch-free on purpose (imported at query start-up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from dgl_deploy.data.sampling import DEFAULT_SAMPLING, check_sampling
from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_write_text
from dgl_deploy.limits import SIZE_LIMITS, check_number, read_json
from dgl_deploy.runtime.protobuf import Message, ProtobufError, int64

FORMAT = "dgl-deploy-export/1"
MANIFEST_FILE = "manifest.json"
ROLES = ("text", "video")
PRECISIONS = ("fp32", "fp16", "int8")
REDUCED_MIN_COSINE = 0.999  # fp16/int8 graphs are picked by `auto` only at this export parity or better
FINGERPRINT_KEY = "dgl.fingerprint"  # ONNX metadata_props key holding the source model fingerprint
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a graph input/output; "B" marks the dynamic batch dimension, "W" a dynamic token
    length (text graphs: ids may end after the batch's last EOT; exports made before take exactly max_words)."""

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
class ProbeEntry:
    """A fixed input batch of one tower shipped with the export (`.npy`), and PyTorch fp32's embeddings of it: the
    host that runs the graphs checks their parity on it (`runtime.host_check`)."""

    role: str
    file: str  # (B, W) int64 ids or (B, T, H, W, 3) uint8 frames
    sha256: str
    reference_file: str  # (B, E) float32 embeddings of the source model (PyTorch fp32)
    reference_sha256: str


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
    probes: tuple[ProbeEntry, ...] = ()  # one per tower (exports made before: none)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """From parsed JSON, every field type-checked; ValueError naming the first bad field."""
        return _parse(data, cls, "manifest")

    def graph(self, role: str, precision: str) -> GraphEntry:
        """The graph for `role` at `precision`, or a DGLError listing what the export has."""
        for entry in self.graphs:
            if entry.role == role and entry.precision == precision:
                return entry
        have = ", ".join(sorted({g.precision for g in self.graphs if g.role == role})) or "none"
        raise DGLError(f"this export has no {precision} {role} graph (it has: {have}); re-export with "
                       f"`dgl export ... --{precision}`")

    def worst_cosine(self, precision: str) -> float | None:
        """The lowest export-time cosine to PyTorch fp32 over the `precision` graphs (None: no such graph)."""
        values = [g.parity.get("min_cosine", 0.0) for g in self.graphs if g.precision == precision]
        return min(values) if values else None

    def parity_held(self, precision: str, min_cosine: float = REDUCED_MIN_COSINE) -> bool:
        """Both towers exist at `precision` and matched PyTorch fp32 at export (cosine >= `min_cosine`)."""
        roles = {g.role for g in self.graphs if g.precision == precision}
        return roles == {"text", "video"} and self.worst_cosine(precision) >= min_cosine

    @property
    def frame_sampling(self) -> str:
        """The frames the model was tuned on (its config's `frame_sampling`; "uniform" for older exports)."""
        return check_sampling(self.config.get("frame_sampling", DEFAULT_SAMPLING), "manifest frame_sampling")

    def precisions(self, role: str) -> list[str]:
        return [g.precision for g in self.graphs if g.role == role]

    def probe(self, role: str) -> ProbeEntry | None:
        """The probe batch of tower `role` (None: an export made before probes were shipped)."""
        return next((p for p in self.probes if p.role == role), None)

    def with_engines(self, engines: tuple[EngineEntry, ...]) -> Manifest:
        return dataclasses.replace(self, engines=engines)


def _parse(value: Any, hint: Any, where: str) -> Any:
    """JSON `value` as the type `hint` (a dataclass, dict[str, X], tuple, X | Y, str, int, float, bool or Any),
    or ValueError naming `where` (e.g. `manifest.graphs[1].file`)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(value, hint, where)
    if origin in (Union, UnionType):
        for arg in args:
            try:
                return _parse(value, arg, where)
            except ValueError:
                pass
    elif origin is dict and isinstance(value, dict):
        return {key: _parse(item, args[1], f"{where}.{key}") for key, item in value.items()}
    elif origin is tuple and isinstance(value, list) and (args[-1] is Ellipsis or len(args) == len(value)):
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_parse(item, kind, f"{where}[{i}]") for i, (item, kind) in enumerate(zip(value, kinds, strict=True)))
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (str, int, bool, type(None)) and type(value) is hint:
        return value
    raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {json.dumps(value)[:60]}")


def _parse_dataclass(value: Any, cls: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {json.dumps(value)[:60]}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    missing = [name for name, f in fields.items() if name not in value and
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if unknown or missing:
        raise ValueError(f"{where}: {'unknown' if unknown else 'missing'} key {(unknown or missing)[0]!r}")
    return cls(**{name: _parse(item, hints[name], f"{where}.{name}") for name, item in value.items()})


def check_manifest(manifest: Manifest) -> None:
    """DGLError unless the sizes are in bounds, the recorded graph signatures agree with them, and every file
    named is a plain file name with a sha256."""
    m = manifest
    for name in ("frames", "image_size", "max_words", "embed_dim"):
        check_number(name, getattr(m, name), *SIZE_LIMITS[name])
    check_number("vocab_size", m.vocab_size, 1, 1 << 20)
    size = m.image_size
    text = ("B", m.max_words) if "text" in m.inputs and m.inputs["text"].shape == ("B", m.max_words) else ("B", "W")
    expected = {"inputs": {"text": ("int64", text), "video": ("uint8", ("B", m.frames, size, size, 3))},
                "outputs": {role: ("float32", ("B", m.embed_dim)) for role in ROLES}}
    for kind, specs in expected.items():
        recorded = {role: (spec.dtype, spec.shape) for role, spec in getattr(m, kind).items()}
        if recorded != specs:
            raise DGLError(f"{kind} {recorded} disagree with frames={m.frames}, image_size={size}, "
                           f"max_words={m.max_words}, embed_dim={m.embed_dim}")
    files = [(g.file, g.sha256) for g in m.graphs] + [(e.file, e.sha256) for e in m.engines] + \
        [(e.onnx_file, e.onnx_sha256) for e in m.engines] + [(p.file, p.sha256) for p in m.probes] + \
        [(p.reference_file, p.reference_sha256) for p in m.probes]
    if m.tokenizer is not None or m.tokenizer_sha256 is not None:
        files.append((m.tokenizer, m.tokenizer_sha256))
    for file, digest in files:
        _check_file_name(file)
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise DGLError(f"{file}: recorded sha256 {digest!r:.80} is not 64 hex digits")
    for entry in (*m.graphs, *m.engines):
        if entry.role not in ROLES or entry.precision not in PRECISIONS:
            raise DGLError(f"{entry.file}: unknown role/precision {entry.role!r}/{entry.precision!r}")
    if sorted(p.role for p in m.probes) not in ([], sorted(ROLES)):
        raise DGLError(f"probes {[p.role for p in m.probes]} are not one per tower ({', '.join(ROLES)})")
    for entry in m.engines:
        if not 1 <= entry.profile[0] <= entry.profile[1] <= entry.profile[2] <= 65536:
            raise DGLError(f"{entry.file}: batch profile {entry.profile} is not 1 <= min <= opt <= max <= 65536")


def _check_file_name(name: Any) -> None:
    """DGLError unless `name` is a plain file name (no folder part, not `..`, not absolute)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DGLError(f"file name {name!r:.80} is not a plain file name inside the export folder")


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
    """Read and validate `folder/manifest.json` (format, field types, sizes, file names); file checksums are
    checked per use."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DGLError(f"{folder}: not an export folder (no {MANIFEST_FILE}); create one with `dgl export`")
    data = read_json(path, "unreadable manifest")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DGLError(f"{path}: not a dgl-deploy export manifest (format "
                       f"{data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r})")
    try:
        manifest = Manifest.from_dict(data)
        check_manifest(manifest)
    except (ValueError, DGLError) as exc:
        raise DGLError(f"{path}: damaged manifest ({exc})") from None
    return manifest


def export_file(folder: Path | str, file: str) -> Path:
    """`folder/file`, refused unless it exists inside the folder once links are resolved."""
    _check_file_name(file)
    path = Path(folder) / file
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise DGLError(f"{path}: links outside the export folder; an export's files must be inside it")
    if not path.is_file():
        raise DGLError(f"{path}: listed in {MANIFEST_FILE} but missing")
    return path


def verified_file(folder: Path | str, file: str, sha256: str) -> Path:
    """`folder/file` after checking it is inside the folder, exists and has the checksum the manifest recorded."""
    path = export_file(folder, file)
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


def check_graph_signature(folder: Path | str, manifest: Manifest, entry: GraphEntry) -> None:
    """Refuse a graph whose declared input (dtype, sizes after the batch) or output width is not what the
    manifest records: frames, image_size, max_words and embed_dim must be the graph's own."""
    path = export_file(folder, entry.file)
    try:
        found_in, found_out = graph_signature(path)
    except (OSError, ValueError, ProtobufError) as exc:
        raise DGLError(f"{path}: not a readable ONNX graph ({exc})") from None
    want_in, want_out = manifest.inputs[entry.role], manifest.outputs[entry.role]
    if (found_in.dtype, found_in.shape[1:], found_out.shape[1:]) != (want_in.dtype, want_in.shape[1:], want_out.shape[1:]):
        raise DGLError(f"{path}: the graph maps {found_in.dtype} {found_in.shape} -> {found_out.shape}, but "
                       f"{MANIFEST_FILE} says {want_in.dtype} {want_in.shape} -> {want_out.shape}; do not edit the "
                       "manifest's sizes or mix files of different exports")


ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
MAX_RANK = 32  # dimensions a declared graph input/output may have (ours have 2 or 5); more is refused


def graph_signature(path: Path | str) -> tuple[TensorSpec, TensorSpec]:
    """The first input and output an ONNX file declares (symbolic dims as their names), read from the protobuf
    without loading the weights: ModelProto.graph (7) -> GraphProto.input (11) / output (12). ProtobufError on
    bytes that are no such file, ValueError on an empty file."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = Message.whole(buf).message(7)
        return _value_info(graph.message(11)), _value_info(graph.message(12))


def _value_info(info: Message) -> TensorSpec:
    """ValueInfoProto: name (1), type (2) -> tensor_type (1) -> elem_type (1), shape (2) -> dim (1)*."""
    tensor = info.message(2).message(1)
    elem = tensor.varint(1)
    dims = []
    for dim in tensor.message(2).messages(1):
        if len(dims) == MAX_RANK:
            raise ProtobufError(f"a graph input/output declares more than {MAX_RANK} dimensions")
        dims.append(_dim(dim))
    return TensorSpec(info.message(1).text(), ONNX_TYPES.get(elem, f"onnx type {elem}"), tuple(dims))


def _dim(dim: Message) -> int | str:
    """TensorShapeProto.Dimension: dim_value (1) or dim_param (2); "?" when neither is set."""
    for number, value in dim.fields():
        if number == 1 and isinstance(value, int):
            return int64(value)
        if number == 2 and isinstance(value, Message):
            return value.text()
    return "?"


def check_same_model(a_fingerprint: str, b_fingerprint: str, what: str, fix: str = "re-embed with one model") -> None:
    """Refuse to combine `what` (embeddings, an index, an encoder) made by two different models."""
    if a_fingerprint != b_fingerprint:
        raise DGLError(f"{what}: made by model {a_fingerprint}, not by model {b_fingerprint}; embeddings of "
                       f"another model are not comparable ({fix})")


__all__ = ["Manifest", "GraphEntry", "EngineEntry", "ProbeEntry", "TensorSpec", "load_manifest", "write_manifest", "check_manifest",
           "export_file", "verified_file", "check_graph_metadata", "check_graph_signature", "graph_signature",
           "check_same_model", "sha256_file", "FINGERPRINT_KEY"]
