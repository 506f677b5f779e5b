"""Typed settings of the DGL model: every hyper-parameter of DGL_SPEC.md, defaults in one place."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from dgl_deploy import defaults
from dgl_deploy.errors import DGLError

LatentSpace = Literal["transformer", "linear"]


@dataclass(frozen=True)
class DGLConfig:
    """DGL prompt settings (DGL_SPEC.md symbols in brackets). Tower sizes come from the backbone."""

    latent: LatentSpace = "transformer"  # shared latent space that generates text + frame prompts
    frames: int = defaults.FRAMES  # [T] frames per video
    max_words: int = defaults.MAX_WORDS  # [W] text context length incl. SOT/EOT, zero padded
    text_prompts: int = 8  # [Lt] text prompt tokens, half prefix, half postfix (linear: 2 * local_prompts)
    local_prompts: int = 4  # [Ll] prompt tokens inserted after each frame's CLS
    global_prompts: int = 4  # [G] global video prompt tokens, prepended once per video
    prompt_layers: int | None = None  # [K] layers that get prompts; None = all vision layers

    def __post_init__(self) -> None:
        if self.latent not in ("transformer", "linear"):
            raise DGLError(f"unknown shared latent space {self.latent!r}: use 'transformer' or 'linear'")
        if self.latent == "linear" and self.text_prompts != 2 * self.local_prompts:
            raise DGLError(
                f"the linear latent space makes 2 * local_prompts = {2 * self.local_prompts} text prompts, "
                f"got text_prompts={self.text_prompts}"
            )
        if self.text_prompts % 2:
            raise DGLError(f"text_prompts must be even (half prefix, half postfix), got {self.text_prompts}")
        for name in ("frames", "max_words", "local_prompts", "global_prompts"):
            if getattr(self, name) < 1:
                raise DGLError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_words < 2:
            raise DGLError("max_words must leave room for SOT and EOT (>= 2)")

    def replace(self, **changes: Any) -> DGLConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DGLConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DGLError(f"unknown DGL config fields: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class BackboneSpec:
    """Identity of the frozen CLIP: enough to rebuild it and to check it is the same one."""

    name: str  # open_clip model name ("ViT-B-32", "dgl-tiny") or "custom" for shape-inferred towers
    pretrained: str | None  # open_clip tag ("openai"), a weights file, or None for random init
    arch: dict[str, Any] = field(default_factory=dict)  # open_clip model cfg (embed_dim, vision_cfg, text_cfg, quick_gelu)
    fingerprint: str = ""  # hash of the frozen weights (see backbone.fingerprint)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackboneSpec:
        return cls(**json.loads(text))
