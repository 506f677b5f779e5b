"""Load a DGL model from whatever a user points at: a dgl-deploy checkpoint or a reference .pth."""

from __future__ import annotations

from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.model.checkpoint import load
from dgl_deploy.model.model import DGLModel


def load_model(path: Path | str, backbone: str | None = None) -> DGLModel:
    """`.safetensors` -> our checkpoint; `.pth/.pt` -> a DGL reference checkpoint (spec defaults for T, W)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load(path, backbone=backbone)
    if path.suffix in (".pth", ".pt", ".bin"):
        from dgl_deploy.model.reference import import_reference

        return import_reference(path)
    raise DGLError(f"{path}: expected a dgl-deploy checkpoint (.safetensors) or a DGL reference checkpoint (.pth)")
