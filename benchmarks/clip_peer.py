"""The plain-CLIP video pipeline `bench_embed.py` compares `dgl embed` with, as its users write it: its own decoding
(decord, open_clip's preprocess) in prefetching threads, open_clip's encode_image, mean-pooled frames.

A module of its own so that `bench_embed.py` imports torch only when it runs the peer: `dgl embed`'s decoder
processes (forkserver) re-import the script that started them (Python multiprocessing's rule for `__main__`),
and a benchmark script importing torch at its top would add that import (about a second) to every decoder start,
which the `dgl` command does not pay.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dgl_deploy.runtime.backends.onnxruntime import physical_cores


class ClipPeer:
    """The usual plain-CLIP video pipeline, written as a user writes it (module docstring): its own decoding
    (decord, open_clip's preprocess) in prefetching threads, open_clip's encode_image, mean-pooled frames."""

    def __init__(self, frames: int, workers: int) -> None:
        import open_clip

        torch.manual_seed(0)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        self.model.eval()
        self.frames, self.workers = frames, workers
        self.lanes = ThreadPoolExecutor(physical_cores())

    def load(self, path: Path) -> torch.Tensor:
        """One video's 12 uniform frames, preprocessed: (T, 3, 224, 224) float32."""
        import decord

        reader = decord.VideoReader(str(path), num_threads=1)
        indices = np.linspace(0, len(reader) - 1, self.frames).round().astype(int)
        frames = reader.get_batch(indices.tolist()).asnumpy()  # (T, H, W, 3) uint8
        return torch.stack([self.preprocess(Image.fromarray(frame)) for frame in frames])

    @torch.inference_mode()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, E): the mean of the L2-normalised frame embeddings, L2-normalised."""
        per_frame = self.model.encode_image(clips.flatten(0, 1), normalize=True)
        return F.normalize(per_frame.view(*clips.shape[:2], -1).mean(dim=1), dim=-1)

    def encode_side_by_side(self, clips: torch.Tensor) -> torch.Tensor:
        """One video per call, a single-threaded call per core at once (PyTorch releases the GIL)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch.cat(list(self.lanes.map(self.encode, [clip[None] for clip in clips])))
        finally:
            torch.set_num_threads(threads)

    def run(self, paths: list[Path], batch: int, side_by_side: bool = False) -> np.ndarray:
        """Embed `paths` in batches of `batch`, decoding the next batch while this one is encoded: (N, E)."""
        chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
        encode = self.encode_side_by_side if side_by_side else self.encode
        rows = []
        with ThreadPoolExecutor(self.workers) as decoders:
            ahead = [decoders.submit(self.load, path) for path in chunks[0]]
            for k in range(len(chunks)):
                current = ahead
                ahead = [decoders.submit(self.load, path) for path in chunks[k + 1]] if k + 1 < len(chunks) else []
                rows.append(encode(torch.stack([future.result() for future in current])))
        return torch.cat(rows).numpy()
