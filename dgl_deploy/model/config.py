"""Typed settings of the DGL model: every hyper-parameter of DGL_SPEC.md, defaults in one place.

Checkpoint metadata and export manifests are untrusted input: every size they declare is type- and
bound-checked here (`check_arch`, with `dgl_deploy.limits`) before anything is built from it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from dgl_deploy import defaults
from dgl_deploy.data.sampling import DEFAULT_SAMPLING, check_sampling
from dgl_deploy.errors import DGLError
from dgl_deploy.limits import SIZE_LIMITS, check_keys, check_number, parse_json

LatentSpace = Literal["transformer", "linear"]

# The open_clip tower config keys dgl-deploy writes (backbone.arch_of), with their limits; anything else
# (timm or Hugging Face towers, custom kwargs) is refused rather than passed to open_clip.
_MLP_RATIO = (0.01, 64.0)
TOWER_LIMITS: dict[str, dict[str, tuple[float, float]]] = {
    "vision_cfg": {"image_size": SIZE_LIMITS["image_size"], "patch_size": (1, 1024), "width": (1, 8192),
                   "layers": (1, 256), "head_width": (1, 8192), "mlp_ratio": _MLP_RATIO},
    "text_cfg": {"context_length": (2, 1024), "vocab_size": (1, 1 << 20), "width": (1, 8192), "heads": (1, 8192),
                 "layers": (1, 256), "mlp_ratio": _MLP_RATIO},
}
TOWER_SHAPE_KEYS = {"vision_cfg": {"image_size", "patch_size", "width", "layers"},
                   "text_cfg": {"context_length", "vocab_size", "width", "layers"}}
FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # backbone.fingerprint / checkpoint.model_fingerprint


def check_arch(arch: Any, where: str = "arch") -> dict[str, Any]:
    """`arch` if it is an open_clip tower config dgl-deploy could have written, in bounds, else DGLError."""
    check_keys(arch, {"embed_dim", "quick_gelu", *TOWER_LIMITS}, {"embed_dim", *TOWER_LIMITS}, where)
    check_number(f"{where}.embed_dim", arch["embed_dim"], *SIZE_LIMITS["embed_dim"])
    if not isinstance(arch.get("quick_gelu", False), bool):
        raise DGLError(f"{where}.quick_gelu must be true or false, got {arch['quick_gelu']!r}")
    for tower, limits in TOWER_LIMITS.items():
        cfg = check_keys(arch[tower], set(limits), TOWER_SHAPE_KEYS[tower], f"{where}.{tower}")
        for key, value in cfg.items():
            check_number(f"{where}.{tower}.{key}", value, *limits[key], float if key == "mlp_ratio" else int)
    vision, text = arch["vision_cfg"], arch["text_cfg"]  # open_clip's defaults: head_width 64, heads 8
    if vision["width"] % vision.get("head_width", 64) or text["width"] % text.get("heads", 8) or \
            vision["patch_size"] > vision["image_size"]:
        raise DGLError(f"{where}: inconsistent tower sizes (width not divisible into heads, or patch > image)")
    return arch


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
    frame_sampling: str = DEFAULT_SAMPLING  # frames the prompts were tuned on: uniform | reference (data.sampling)

    def __post_init__(self) -> None:
        if self.latent not in ("transformer", "linear"):
            raise DGLError(f"unknown shared latent space {self.latent!r}: use 'transformer' or 'linear'")
        for name in ("frames", "max_words", "text_prompts", "local_prompts", "global_prompts"):
            check_number(name, getattr(self, name), *SIZE_LIMITS[name])
        if self.prompt_layers is not None:
            check_number("prompt_layers", self.prompt_layers, *SIZE_LIMITS["prompt_layers"])
        check_sampling(self.frame_sampling, "frame_sampling")
        if self.latent == "linear" and self.text_prompts != 2 * self.local_prompts:
            raise DGLError(
                f"the linear latent space makes 2 * local_prompts = {2 * self.local_prompts} text prompts, "
                f"got text_prompts={self.text_prompts}"
            )
        if self.text_prompts % 2:
            raise DGLError(f"text_prompts must be even (half prefix, half postfix), got {self.text_prompts}")

    def replace(self, **changes: Any) -> DGLConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DGLConfig:
        """From untrusted metadata: a JSON object of known fields, each type- and bound-checked (DGLError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**check_keys(data, known, set(), "DGL config"))


@dataclass(frozen=True)
class BackboneSpec:
    """Identity of the frozen CLIP: enough to rebuild it and to check it is the same one."""

    name: str  # open_clip model name ("ViT-B-32", "dgl-tiny") or "custom" for shape-inferred towers
    pretrained: str | None  # where the weights came from: open_clip tag ("openai"), a weights file, or None
    arch: dict[str, Any] = field(default_factory=dict)  # open_clip model cfg (embed_dim, vision_cfg, text_cfg, quick_gelu)
    fingerprint: str = ""  # hash of the frozen weights (see backbone.fingerprint)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> BackboneSpec:
        """From untrusted metadata: every field type- and bound-checked (DGLError)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        check_keys(data, fields, fields, "backbone")
        name, pretrained, fingerprint = data["name"], data["pretrained"], data["fingerprint"]
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise DGLError(f"backbone.name must be a model name, got {name!r:.80}")
        if pretrained is not None and (not isinstance(pretrained, str) or len(pretrained) > 4096):
            raise DGLError(f"backbone.pretrained must be a tag, a file name or null, got {pretrained!r:.80}")
        if not isinstance(fingerprint, str) or not FINGERPRINT.fullmatch(fingerprint):
            raise DGLError(f"backbone.fingerprint must be 16 hex digits, got {fingerprint!r:.80}")
        return cls(name=name, pretrained=pretrained, arch=check_arch(data["arch"], "backbone.arch"),
                   fingerprint=fingerprint)

    @classmethod
    def from_json(cls, text: str) -> BackboneSpec:
        if not isinstance(text, str):
            raise DGLError(f"backbone identity must be JSON text, got {type(text).__name__}")
        return cls.from_dict(parse_json(text, "backbone identity is not JSON"))
