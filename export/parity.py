"""Export-time parity: exported graphs (run in onnxruntime) against the PyTorch model, and the torch-free
tokenizer against open_clip's. Like timm's onnx_export check, it runs at the end of every export."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dgl_deploy.errors import DGLError
from dgl_deploy.model.model import DGLModel
from dgl_deploy.model.pixels import normalize
from dgl_deploy.model.tokenizer import Tokenizer
from dgl_deploy.runtime.backends.base import used_words
from dgl_deploy.runtime.backends.onnxruntime import make_session
from dgl_deploy.runtime.host_check import row_cosines
from dgl_deploy.runtime.tokenizer import BPETokenizer

MAX_ABS_ERROR = 1e-4  # fp32 graphs vs PyTorch fp32, per embedding component
MIN_COSINE = 0.9999
BATCHES = (1, 3, 8)
PROBE_BATCH = {"text": 8, "video": 2}  # the probe batches shipped in an export (`probe_batch`)

# Captions that exercise the cleaning and BPE corner cases (html, unicode, numbers, long text, specials).
TOKENIZER_CORPUS = (
    "A man is playing a guitar on stage.", "", "   ", "it's 3.14159 o'clock, isn't it?? 100% (sure)!!!",
    "&amp;lt;b&amp;gt; html &quot;quotes&quot;", "ΟΔΟΣ Straße naïve café — 東京 🎸🔥", "İstanbul ǅ ﬁ ligature",
    "mojibake â€™ text", "tab\tnew\nline\u00a0nbsp", "<start_of_text> hi <END_OF_TEXT>", "12345678901234567890",
    " ".join(["a very long caption about a dog running"] * 20), "x" * 300, "Hello, World! HELLO world",
)


def sample_ids(vocab_size: int, max_words: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """(B, W) ids of random lengths and content: SOT, body, EOT (the largest id), zero padding."""
    ids = np.zeros((batch, max_words), dtype=np.int64)
    for row in range(batch):
        length = int(rng.integers(2, max_words + 1))
        ids[row, 0], ids[row, length - 1] = vocab_size - 2, vocab_size - 1
        ids[row, 1: length - 1] = rng.integers(1, vocab_size - 2, size=length - 2)
    return ids


def sample_frames(frames: int, size: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """(B, T, H, W, 3) uint8 frames: smooth gradients plus noise, different per frame (never constant)."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[None, None, :]) / 2  # (1, H, W)
    shift = rng.uniform(-80, 80, size=(batch, frames, 1, 1, 3)).astype(np.float32)
    noise = rng.normal(0, 30, size=(batch, frames, size, size, 3)).astype(np.float32)
    return np.clip(base[None, :, :, :, None] + shift + noise, 0, 255).astype(np.uint8)


def sample_input(sizes: Sizes, role: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A varied ids or frames batch for the sizes of a model or an export manifest."""
    if role == "text":
        return sample_ids(sizes.vocab_size, sizes.max_words, batch, rng)
    return sample_frames(sizes.frames, sizes.image_size, batch, rng)


class Sizes(NamedTuple):
    """The input sizes parity inputs depend on (Manifest has the same fields)."""

    vocab_size: int
    max_words: int
    frames: int
    image_size: int

    @classmethod
    def of(cls, model: DGLModel) -> Sizes:
        return cls(int(model.clip.vocab_size), model.config.max_words, model.config.frames, model.image_size)


@torch.no_grad()
def torch_embed(model: DGLModel, role: str, array: np.ndarray) -> np.ndarray:
    """The PyTorch model's L2-normalised embeddings of one ids / uint8 frames batch."""
    tensor = torch.from_numpy(array)
    out = model.encode_text(tensor) if role == "text" else model.encode_video(normalize(tensor))
    return out.float().numpy()


def probe_batch(model: DGLModel, role: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The fixed probe batch of tower `role` an export ships (varied ids, or frames) and PyTorch fp32's embeddings
    of it: each host checks its graphs' parity on it (`runtime.host_check`)."""
    array = sample_input(Sizes.of(model), role, PROBE_BATCH[role], np.random.default_rng(seed))
    return array, torch_embed(model, role, array)


def compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """max |a - b| and the smallest row cosine of two (B, E) embedding batches."""
    cos = row_cosines(reference, actual)
    return {"max_abs": float(np.abs(reference - actual).max()), "min_cosine": float(cos.min())}


def check_parity(model: DGLModel, role: str, graph: Path, strict: bool, seed: int = 0) -> dict[str, float]:
    """Run `graph` in onnxruntime (CPU) on varied batches of 1, 3 and 8 and compare with PyTorch fp32 (text:
    PyTorch on the whole max_words ids, the graph on the ids cut after the batch's last EOT, as the runtime feeds it).
    `strict` (fp32 graphs): DGLError beyond MAX_ABS_ERROR / below MIN_COSINE; otherwise only measured."""
    session = make_session(graph)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    worst = {"max_abs": 0.0, "min_cosine": 1.0}
    for batch in BATCHES:
        array = sample_input(Sizes.of(model), role, batch, rng)  # text: (B, max_words) ids of random lengths
        fed = array[:, : used_words(array)] if role == "text" else array  # as the runtime trims them
        result = compare(torch_embed(model, role, array), session.run(None, {name: fed})[0])
        worst = {"max_abs": max(worst["max_abs"], result["max_abs"]),
                 "min_cosine": min(worst["min_cosine"], result["min_cosine"])}
    if strict and (worst["max_abs"] > MAX_ABS_ERROR or worst["min_cosine"] < MIN_COSINE):
        raise DGLError(f"{graph.name}: exported {role} graph does not match PyTorch (max abs error "
                       f"{worst['max_abs']:.2e} > {MAX_ABS_ERROR:g} or cosine {worst['min_cosine']:.6f} < "
                       f"{MIN_COSINE}); export aborted, nothing written")
    return worst


def check_tokenizer(bpe_path: Path, max_words: int) -> None:
    """DGLError unless the torch-free tokenizer gives open_clip's ids on TOKENIZER_CORPUS."""
    expected = Tokenizer(max_words)(list(TOKENIZER_CORPUS)).numpy()
    actual = BPETokenizer(bpe_path, max_words)(list(TOKENIZER_CORPUS))
    bad = [text for text, a, b in zip(TOKENIZER_CORPUS, expected, actual, strict=False) if not np.array_equal(a, b)]
    if bad:
        raise DGLError(f"{bpe_path}: the runtime tokenizer differs from open_clip's on {bad[0]!r}; export aborted")
