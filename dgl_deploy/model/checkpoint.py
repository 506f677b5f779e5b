"""Self-describing DGL checkpoints: a prompts-only safetensors file whose metadata holds the full
DGLConfig and the backbone identity, so `load(path)` rebuilds the model with no extra flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path
from dgl_deploy.limits import parse_json
from dgl_deploy.model.backbone import arch_diff, check_shapes, create_clip, load_checked
from dgl_deploy.model.config import BackboneSpec, DGLConfig
from dgl_deploy.model.model import DGLModel

FORMAT = "dgl-deploy/1"


def save(model: DGLModel, path: Path | str) -> Path:
    """Write the prompt parameters + metadata atomically. The frozen backbone is stored once per folder as
    `backbone-<fingerprint>.safetensors`, shared by every checkpoint of that folder (e.g. all epochs of a run):
    `load` takes the backbone from there, never from a tag or path named in the metadata."""
    path = Path(path)
    spec = model.backbone
    backbone_file = path.with_name(backbone_file_name(spec.fingerprint))
    _save_backbone(model, backbone_file)
    if spec.pretrained is None:
        spec = dataclasses.replace(spec, pretrained=backbone_file.name)  # relative to the checkpoint's folder
    tensors = {name: p.detach().float().contiguous().cpu() for name, p in model.prompt_parameters().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), "backbone": spec.to_json()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def backbone_file_name(fingerprint: str) -> str:
    """The file beside a checkpoint that holds its frozen backbone."""
    return f"backbone-{fingerprint}.safetensors"


def _save_backbone(model: DGLModel, path: Path) -> None:
    if path.exists() and read_metadata(path).get("fingerprint") == model.backbone.fingerprint:
        return  # already there (e.g. saved at an earlier epoch)
    state = {k: v.detach().contiguous().cpu() for k, v in model.clip.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT + "/backbone", "fingerprint": model.backbone.fingerprint,
                                             "arch": json.dumps(model.backbone.arch)})


def read_metadata(path: Path | str) -> dict[str, str]:
    """The safetensors header metadata, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # corrupt header, not safetensors, unreadable
        raise DGLError(f"{path}: not a readable safetensors file ({exc})") from None


def read_config(path: Path | str) -> tuple[DGLConfig, BackboneSpec]:
    """DGLConfig and backbone identity stored in a checkpoint, every field type- and bound-checked."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise DGLError(f"{path}: not a dgl-deploy checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}); "
                       "import reference checkpoints with `dgl import-checkpoint`")
    try:
        return DGLConfig.from_dict(parse_json(meta["config"], "config")), BackboneSpec.from_json(meta["backbone"])
    except (KeyError, ValueError, DGLError) as exc:
        raise DGLError(f"{path}: bad checkpoint metadata ({exc})") from None


def load(path: Path | str, backbone: str | None = None) -> DGLModel:
    """Rebuild a DGL model from a checkpoint. The frozen CLIP comes from `backbone` (an open_clip tag or a
    weights file, passed explicitly) or else from the `backbone-<fingerprint>.safetensors` file beside the
    checkpoint: a tag or path named in the metadata is never downloaded or read. Its shapes and fingerprint
    must match the ones recorded at training time, and the stored prompts the shapes of the config."""
    path = Path(path)
    if not path.is_file():
        raise DGLError(f"{path}: no such checkpoint")
    config, spec = read_config(path)
    source = backbone or str(_backbone_beside(path, spec))
    clip, actual = create_clip(spec.name, source)
    if actual.arch != spec.arch:
        raise DGLError(f"{path}: backbone {source!r} has other tower shapes than the checkpoint's "
                       f"({arch_diff(spec.arch, actual.arch)})")
    if actual.fingerprint != spec.fingerprint:
        raise DGLError(f"{path}: backbone {source!r} is not the CLIP these prompts were trained on "
                       f"(fingerprint {actual.fingerprint} != {spec.fingerprint})")
    with safe_open(str(path), framework="pt") as handle:
        stored = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        with torch.device("meta"):  # the prompts the config makes, without allocating them
            expected = {k: tuple(p.shape) for k, p in DGLModel(clip, spec, config).prompt_parameters().items()}
        check_shapes(expected, stored, str(path))
        model = DGLModel(clip, spec, config)
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    load_checked({k: p.data for k, p in model.prompt_parameters().items()}, state, str(path))
    return model


def _backbone_beside(path: Path, spec: BackboneSpec) -> Path:
    """The backbone file stored beside the checkpoint, or a DGLError saying how to pass the weights."""
    beside = path.parent / backbone_file_name(spec.fingerprint)
    if not beside.is_file():
        raise DGLError(f"{path}: its backbone ({spec.name}, {spec.pretrained or 'random init'}) is not beside it as "
                       f"{beside.name}, and weights named in a checkpoint are never fetched: pass them explicitly "
                       f"(`dgl import-checkpoint {path} --backbone TAG_OR_FILE --out NEW.safetensors`)")
    return beside


def model_fingerprint(model: DGLModel) -> str:
    """Identity of a trained model: its prompt values, DGL config and backbone fingerprint.
    Exports, embeddings and indexes record it; consumers refuse to mix different ones."""
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(model.backbone.fingerprint.encode())
    for name, param in sorted(model.prompt_parameters().items()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


__all__ = ["save", "load", "read_config", "read_metadata", "model_fingerprint", "backbone_file_name"]
