"""Self-describing DGL checkpoints: a prompts-only safetensors file whose metadata holds the full
DGLConfig and the backbone identity, so `load(path)` rebuilds the model with no extra flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path
from dgl_deploy.model.backbone import create_clip, load_checked
from dgl_deploy.model.config import BackboneSpec, DGLConfig
from dgl_deploy.model.model import DGLModel

FORMAT = "dgl-deploy/1"


def save(model: DGLModel, path: Path | str) -> Path:
    """Write the prompt parameters + metadata atomically. A backbone that exists nowhere else (random init,
    imported from a reference checkpoint) is stored once per folder as `backbone-<fingerprint>.safetensors`,
    shared by every checkpoint of that folder (e.g. all epochs of a run)."""
    path = Path(path)
    spec = model.backbone
    if spec.pretrained is None:
        backbone_file = path.with_name(f"backbone-{spec.fingerprint}.safetensors")
        _save_backbone(model, backbone_file)
        spec = dataclasses.replace(spec, pretrained=backbone_file.name)  # relative to the checkpoint's folder
    tensors = {name: p.detach().float().contiguous().cpu() for name, p in model.prompt_parameters().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), "backbone": spec.to_json()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


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
    """DGLConfig and backbone identity stored in a checkpoint."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise DGLError(f"{path}: not a dgl-deploy checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}); "
                       "import reference checkpoints with `dgl import-checkpoint`")
    try:
        return DGLConfig.from_dict(json.loads(meta["config"])), BackboneSpec.from_json(meta["backbone"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DGLError(f"{path}: damaged checkpoint metadata ({exc})") from None


def load(path: Path | str, backbone: str | None = None) -> DGLModel:
    """Rebuild a DGL model from a checkpoint. `backbone` overrides where the frozen CLIP weights come from
    (tag or file); its shapes and fingerprint must still match the ones recorded at training time."""
    path = Path(path)
    if not path.is_file():
        raise DGLError(f"{path}: no such checkpoint")
    config, spec = read_config(path)
    source = backbone or spec.pretrained
    if source and source.endswith(".safetensors") and not Path(source).is_absolute() and backbone is None:
        source = str(path.parent / source)
    clip, actual = create_clip(spec.name, source)
    if actual.arch != spec.arch:
        raise DGLError(f"{path}: backbone {source!r} has other tower shapes than the checkpoint's "
                       f"({_arch_diff(spec.arch, actual.arch)})")
    if actual.fingerprint != spec.fingerprint:
        raise DGLError(f"{path}: backbone {source!r} is not the CLIP these prompts were trained on "
                       f"(fingerprint {actual.fingerprint} != {spec.fingerprint})")
    model = DGLModel(clip, spec, config)
    with safe_open(str(path), framework="pt") as handle:
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    load_checked({k: p.data for k, p in model.prompt_parameters().items()}, state, str(path))
    return model


def _arch_diff(want: dict, got: dict) -> str:
    diffs = []
    for tower in ("vision_cfg", "text_cfg"):
        for key in sorted(set(want.get(tower, {})) | set(got.get(tower, {}))):
            if want.get(tower, {}).get(key) != got.get(tower, {}).get(key):
                diffs.append(f"{tower}.{key} {got.get(tower, {}).get(key)} != {want.get(tower, {}).get(key)}")
    if want.get("embed_dim") != got.get("embed_dim"):
        diffs.append(f"embed_dim {got.get('embed_dim')} != {want.get('embed_dim')}")
    return ", ".join(diffs[:4]) or "activation differs"


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


__all__ = ["save", "load", "read_config", "read_metadata", "model_fingerprint"]
