"""The DGL model (DGL_SPEC.md §1-4) on top of a frozen open_clip CLIP, and its factory."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from dgl_deploy.errors import DGLError
from dgl_deploy.model.attention import causal_block, global_local_block
from dgl_deploy.model.backbone import PRESETS, create_clip
from dgl_deploy.model.config import BackboneSpec, DGLConfig
from dgl_deploy.model.prompts import LinearLatent, TransformerLatent, prompt_init_bound

Prompts = tuple[torch.Tensor, torch.Tensor]  # text (K, Lt, Dt), frame (K, T, Ll, Dv)


class DGLModel(nn.Module):
    """Frozen CLIP towers + trainable prompts. Only `latent` and `global_prompts` have requires_grad."""

    def __init__(self, clip: CLIP, backbone: BackboneSpec, config: DGLConfig) -> None:
        super().__init__()
        self.clip = clip  # frozen, used as is (no copies of the towers)
        self.backbone = backbone
        vision_layers = len(clip.visual.transformer.resblocks)
        text_layers = len(clip.transformer.resblocks)
        if config.prompt_layers is None:
            config = config.replace(prompt_layers=vision_layers)
        if not 1 <= config.prompt_layers <= min(vision_layers, text_layers):
            raise DGLError(f"prompt_layers={config.prompt_layers} must be within 1..{min(vision_layers, text_layers)} "
                           "(the towers' depth)")
        if config.max_words > clip.context_length:
            raise DGLError(f"max_words={config.max_words} exceeds the text tower's context length {clip.context_length}")
        self.config = config
        self.latent = _make_latent(clip, config)
        width, patch = clip.visual.conv1.out_channels, clip.visual.patch_size[0]
        bound = prompt_init_bound(patch, width)
        self.global_prompts = nn.Parameter(torch.empty(config.global_prompts, width).uniform_(-bound, bound))  # (G, Dv)

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.clip.visual.image_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.proj.shape[1])

    def prompt_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable parameters, by name (what a DGL checkpoint stores)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("clip.")}

    def train(self, mode: bool = True) -> DGLModel:
        super().train(mode)
        self.clip.eval()  # the frozen towers never switch to training behaviour
        return self

    # ---- prompts -----------------------------------------------------------------------------------------
    def prompts(self) -> Prompts:
        """Text prompts (K, Lt, Dt) and frame prompts (K, T, Ll, Dv); input-independent."""
        return self.latent()

    # ---- text --------------------------------------------------------------------------------------------
    def encode_text_features(self, ids: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Projected text features before normalisation. ids: (B, W) int, SOT ... EOT 0-padded."""
        self._check_ids(ids)
        text_prompts = (prompts or self.prompts())[0]  # (K, Lt, Dt)
        clip, batch, words = self.clip, ids.shape[0], ids.shape[1]
        half = self.config.text_prompts // 2
        x = clip.token_embedding(ids) + clip.positional_embedding[:words]  # (B, W, Dt)
        for k in range(self.config.prompt_layers):  # the reference runs only the first K text blocks
            pre = text_prompts[k, :half].to(x.dtype).expand(batch, -1, -1)  # (B, Lt/2, Dt)
            post = text_prompts[k, half:].to(x.dtype).expand(batch, -1, -1)
            body = x[:, 1:words] if k == 0 else x[:, 1 + half: half + words]  # (B, W-1, Dt)
            x = torch.cat([x[:, :1], pre, body, post], dim=1)  # (B, W + Lt, Dt), prompts overwritten per layer
            x = causal_block(clip.transformer.resblocks[k], x)
        x = clip.ln_final(x)
        eot = ids.argmax(dim=-1) + half  # EOT is the largest id; shifted by the prefix prompts
        return x[torch.arange(batch, device=x.device), eot] @ clip.text_projection  # (B, E)

    def encode_text(self, ids: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """L2-normalised text embeddings (B, E)."""
        return F.normalize(self.encode_text_features(ids, prompts), dim=-1)

    # ---- video -------------------------------------------------------------------------------------------
    def encode_video_features(self, frames: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Projected video features before normalisation. frames: (B, T, 3, H, W) CLIP-normalised."""
        self._check_frames(frames)
        return self.video_features_from_tokens(self._patch_tokens(frames), prompts)

    def video_features_from_tokens(self, x: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Projected video features from each frame's tokens (B, T, 1+N, Dv), `frame_tokens`' output: the frame
        prompts go in, then the global-local blocks (DGL_SPEC.md §3)."""
        frame_prompts = (prompts or self.prompts())[1]  # (K, T, Ll, Dv)
        visual, batch = self.clip.visual, x.shape[0]
        local = self.config.local_prompts
        x = torch.cat([x[:, :, :1], frame_prompts[0].to(x.dtype).expand(batch, -1, -1, -1), x[:, :, 1:]], dim=2)
        glob = self.global_prompts.to(x.dtype).expand(batch, -1, -1)  # (B, G, Dv)
        for k, block in enumerate(visual.transformer.resblocks):
            if 0 < k < self.config.prompt_layers:  # overwrite each frame's prompt slots; globals carry on
                fresh = frame_prompts[k].to(x.dtype).expand(batch, -1, -1, -1)  # (B, T, Ll, Dv)
                x = torch.cat([x[:, :, :1], fresh, x[:, :, 1 + local:]], dim=2)
            glob, x = global_local_block(block, glob, x)  # (B, G, Dv), (B, T, S, Dv)
        return visual.ln_post(glob[:, 0]) @ visual.proj  # (B, E)

    def encode_video(self, frames: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """L2-normalised video embeddings (B, E)."""
        return F.normalize(self.encode_video_features(frames, prompts), dim=-1)

    def _patch_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """conv1 patches + class token + positional embedding + ln_pre: (B, T, 3, H, W) -> (B, T, 1+N, Dv)."""
        conv1 = self.clip.visual.conv1
        x = conv1(frames.flatten(0, 1).to(conv1.weight.dtype))  # (B*T, Dv, g, g)
        return self.frame_tokens(x.flatten(2).transpose(1, 2))  # (B*T, N, Dv) patches in

    def frame_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """Class token + positional embedding + ln_pre over patch embeddings (B*T, N, Dv) -> (B, T, 1+N, Dv)."""
        visual, x = self.clip.visual, patches
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B*T, 1+N, Dv)
        x = visual.ln_pre(x)
        return x.view(-1, self.config.frames, *x.shape[1:])

    # ---- training ----------------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (text (B, E), video (B, E)) embeddings, prompts computed once."""
        prompts = self.prompts()
        return self.encode_text(ids, prompts), self.encode_video(frames, prompts)

    def logits(self, text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) * cosine, with CLIP's frozen logit scale: (Bt, Bv)."""
        return self.clip.logit_scale.exp() * text @ video.t()

    # ---- input checks ------------------------------------------------------------------------------------
    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            raise DGLError(f"token ids must be an integer tensor (B, W), got {tuple(ids.shape)} {ids.dtype}")
        if not 2 <= ids.shape[1] <= self.config.max_words:
            raise DGLError(f"token ids have length {ids.shape[1]}, the model takes at most max_words="
                           f"{self.config.max_words} (tokenise with dgl_deploy.model.tokenizer)")

    def _check_frames(self, frames: torch.Tensor) -> None:
        want = (self.config.frames, 3, self.image_size, self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != want:
            raise DGLError(f"video frames must be (B, {', '.join(map(str, want))}) = (B, T, 3, H, W), "
                           f"got {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise DGLError(f"video frames must be CLIP-normalised floats, got {frames.dtype} (use video.normalize)")


def _make_latent(clip: CLIP, config: DGLConfig) -> nn.Module:
    vision_width = clip.visual.conv1.out_channels
    text_width = clip.token_embedding.embedding_dim
    common = dict(layers=config.prompt_layers, local_prompts=config.local_prompts, frames=config.frames,
                  vision_width=vision_width, text_width=text_width)
    if config.latent == "transformer":
        return TransformerLatent(text_prompts=config.text_prompts, **common)
    return LinearLatent(patch_size=clip.visual.patch_size[0], **common)


def default_config(name: str, **overrides: Any) -> DGLConfig:
    """The spec's defaults, then the preset of a registered small tower, then explicit overrides."""
    fields: dict[str, Any] = {**PRESETS.get(name, {}), **{k: v for k, v in overrides.items() if v is not None}}
    if fields.get("latent") == "linear" and "text_prompts" not in fields:
        fields["text_prompts"] = 2 * fields.get("local_prompts", DGLConfig.local_prompts)
    return DGLConfig(**fields)


def create_model(name: str = "ViT-B-32", pretrained: str | None = "openai", **overrides: Any) -> DGLModel:
    """The one factory: a DGL model on the open_clip tower `name` with `pretrained` weights (tag, file or None).

    `overrides` are DGLConfig fields (latent, frames, max_words, ...); None values keep the defaults.
    """
    config = default_config(name, **overrides)
    clip, spec = create_clip(name, pretrained)
    return DGLModel(clip, spec, config)
