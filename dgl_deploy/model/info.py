"""What `dgl info` reports about a model: config, backbone, parameter counts and trainable share."""

from __future__ import annotations

from typing import Any

from dgl_deploy.model.model import DGLModel


def model_info(model: DGLModel) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "config": model.config.to_dict(),
        "backbone": {"name": model.backbone.name, "pretrained": model.backbone.pretrained,
                     "fingerprint": model.backbone.fingerprint, **model.backbone.arch},
        "image_size": model.image_size,
        "embed_dim": model.embed_dim,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share_percent": round(100.0 * trainable / total, 3),
    }
