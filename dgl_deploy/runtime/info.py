"""What `dgl info` reports about an export folder, from its manifest alone (no torch, no graph loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgl_deploy.runtime.manifest import load_manifest


def export_info(folder: Path | str) -> dict[str, Any]:
    """Config, backbone, sizes, and every graph / engine with its precision and export-time parity."""
    m = load_manifest(Path(folder))
    return {
        "config": m.config,
        "backbone": m.backbone,
        "frames": m.frames,
        "image_size": m.image_size,
        "max_words": m.max_words,
        "embed_dim": m.embed_dim,
        "fingerprint": m.fingerprint,
        "graphs": [{"role": g.role, "precision": g.precision, "file": g.file, "parity": g.parity} for g in m.graphs],
        "engines": [{"role": e.role, "precision": e.precision, "file": e.file, "gpu": e.gpu_name,
                     "tensorrt": e.tensorrt_version, "parity": e.parity} for e in m.engines],
        "versions": m.versions,
    }
