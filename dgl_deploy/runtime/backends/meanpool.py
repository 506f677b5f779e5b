"""The plain-CLIP baseline DGL is compared with: CLIP's own text tower, and a video embedding that is the
mean of the L2-normalised frame embeddings (CLIP4Clip's zero-shot "meanP", clip-retrieval style)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from dgl_deploy.model.pixels import normalize
from dgl_deploy.model.tokenizer import Tokenizer
from dgl_deploy.runtime.backends.torch_backend import torch_device
from dgl_deploy.runtime.device import Device, parse_device


class MeanPoolEncoder:
    """Encoder API over a frozen open_clip CLIP without any prompts."""

    backend = "torch-meanpool"
    precision = "fp32"  # no autocast, no --precision: the baseline as published
    manifest = None  # not an export
    host_check = None
    video_lanes = 0  # whole batches

    def __init__(self, clip: CLIP, fingerprint: str, frames: int, device: Device | str = "cpu") -> None:
        self.device = torch_device(parse_device(device))
        self._torch_device = torch.device(str(self.device))
        self.clip = clip.eval().to(self._torch_device)
        self.fingerprint = f"meanpool-{fingerprint}"
        self.frames, self.image_size = frames, int(clip.visual.image_size[0])
        self.frame_sampling = "uniform"
        self.max_words, self.embed_dim = int(clip.context_length), int(clip.visual.proj.shape[1])
        self._tokenize = Tokenizer(self.max_words, clip.vocab_size)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.clip.encode_text(self._tokenize(texts).to(self._torch_device), normalize=True).cpu().numpy()

    @torch.inference_mode()
    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(np.ascontiguousarray(frames)).to(self._torch_device))  # (B, T, 3, H, W)
        per_frame = self.clip.encode_image(x.flatten(0, 1), normalize=True)  # (B*T, E)
        video = per_frame.view(x.shape[0], x.shape[1], -1).mean(dim=1)  # (B, E)
        return F.normalize(video, dim=-1).cpu().numpy()

    def describe(self) -> str:
        return f"plain CLIP, mean-pooled frames ({self.device})"


def open_meanpool_encoder(name: str, pretrained: str | None, frames: int,
                          device: Device | str = "cpu") -> MeanPoolEncoder:
    """The baseline on the same frozen CLIP a DGL model uses (`name` + `pretrained` as in create_model)."""
    from dgl_deploy.model.backbone import create_clip

    clip, spec = create_clip(name, pretrained)
    return MeanPoolEncoder(clip, spec.fingerprint, frames, device)
