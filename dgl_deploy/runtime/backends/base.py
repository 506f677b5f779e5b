"""The encoder API every backend implements; embed, query and eval only talk to this."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.device import Device

if TYPE_CHECKING:
    from dgl_deploy.runtime.host_check import HostCheck
    from dgl_deploy.runtime.manifest import Manifest

TEXT_BATCH = 256  # captions per encode_text call when many are encoded (memory flat in their number)
ASKED_PRECISIONS = ("auto", "fp32", "fp16", "int8", "fp8")  # what `precision` takes (fp8: TensorRT engines only)


@dataclass(frozen=True)
class PrecisionPick:
    """The precision a backend decided to compute at for an asked one (`auto` resolved), and why."""

    precision: str  # "fp32", "fp16", "bf16" (torch autocast), "int8" (or an engine's "fp8"); never "auto"
    note: str = ""  # why auto picked it (one line, logged with the backend's choice); "" when nothing to say
    warning: str | None = None  # a forced reduced precision whose parity misses on this host (shown, not refused)
    host_check: HostCheck | None = None  # onnxruntime on CPU: the export's precisions probed on this host


@runtime_checkable
class Encoder(Protocol):
    """Text and video encoders of one model, returning L2-normalised float32 embeddings."""

    backend: str  # what runs it: "torch", "onnxruntime", "tensorrt" ("torch-meanpool": the plain-CLIP baseline)
    device: Device  # where it runs: cpu, cuda or cuda:N (`runtime.device`; never auto)
    precision: str  # what it computes at: "fp32", "fp16", "bf16" (torch autocast), "int8" (never auto)
    manifest: Manifest | None  # the export whose graphs/engines it runs (its parity decides mixing); None: none
    host_check: HostCheck | None  # onnxruntime on CPU: the export's precisions probed on this host; else None
    video_lanes: int  # videos run side by side, each alone (CPU lanes: calls may overlap, rows do not depend on
    # batching); 0: each call runs its batch at once
    fingerprint: str  # identity of the model (prompts + backbone); embeddings from other models are refused
    frames: int  # T frames per video the video encoder takes
    image_size: int  # H = W of each frame
    max_words: int  # W token ids per caption
    embed_dim: int  # E
    frame_sampling: str  # which frames the model was tuned on ("uniform" | "reference", data.sampling)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(B,) captions -> (B, E) float32."""
        ...

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 frames (decoded, resized, not normalised) -> (B, E) float32."""
        ...

    def describe(self) -> str:
        """One line: backend, device/provider, precision."""
        ...


def encode_texts(encoder: Encoder, texts: Sequence[str], batch: int = TEXT_BATCH) -> np.ndarray:
    """(N, E) embeddings of any number of texts, `batch` per encoder call."""
    chunks = [encoder.encode_text(list(texts[i: i + batch])) for i in range(0, len(texts), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.embed_dim), np.float32)


def check_frames(frames: np.ndarray, num_frames: int, image_size: int) -> None:
    """DGLError unless `frames` is the (B, T, S, S, 3) uint8 batch a video encoder takes."""
    want = (num_frames, image_size, image_size, 3)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 5 or \
            tuple(frames.shape[1:]) != want:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise DGLError(f"video frames must be uint8 (B, {', '.join(map(str, want))}) = (B, T, H, W, 3), got {got}")


def used_words(ids: Any) -> int:
    """How many leading token positions a (B, W) batch of ids (numpy or torch) needs: up to its last EOT, the
    largest id. The text tower is causal and pools at EOT, so the padding after it never reaches an embedding
    (DGL_SPEC.md section 2): cutting it off gives the same output for less work."""
    return max(2, int(ids.argmax(-1).max()) + 1)
