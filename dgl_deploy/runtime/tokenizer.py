"""A torch-free CLIP BPE tokenizer for exported models (query start-up must not import torch/open_clip).

It is the algorithm of open_clip's `SimpleTokenizer` (clean="lower", truncation) over the same BPE merges
file, which the exporter copies next to the graphs, and returns numpy ids in the spec's layout:
[SOT] + tokens[: W-2] + [EOT], zero padded to W. Exports verify it token for token against
`dgl_deploy.model.tokenizer.Tokenizer` (tests/test_onnxruntime_backend.py does the same on a varied corpus).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.manifest import Manifest, verified_file

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # open_clip reads merges[1 : 49152 - 256 - 2 + 1]
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
SPLIT = regex.compile("|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                      regex.IGNORECASE)


def open_clip_bpe_file() -> Path:
    """open_clip's bundled merges file, located without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise DGLError("open_clip is not installed: cannot find the CLIP BPE vocabulary")
    return Path(list(spec.submodule_search_locations)[0]) / BPE_FILE


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=False))


def _clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, double html unescape, whitespace collapse, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class BPETokenizer:
    """Callable: captions -> (B, W) int64 numpy ids, identical to open_clip's tokenizer for the same W."""

    def __init__(self, bpe_path: Path | str, max_words: int) -> None:
        try:
            lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise DGLError(f"{bpe_path}: cannot read the CLIP BPE vocabulary ({exc})") from None
        merges = [tuple(line.split()) for line in lines[1: NUM_MERGES + 1]]
        self.byte_encoder = _bytes_to_unicode()
        base = list(self.byte_encoder.values())
        vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.sot, self.eot = self.encoder[SPECIAL_TOKENS[0]], self.encoder[SPECIAL_TOKENS[1]]
        self.max_words = max_words
        self._bpe = lru_cache(maxsize=65536)(self._merge)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise DGLError("captions must be strings")
        ids = np.zeros((len(texts), self.max_words), dtype=np.int64)  # (B, W)
        for row, text in enumerate(texts):
            tokens = [self.sot] + self.encode(text)[: self.max_words - 2] + [self.eot]
            ids[row, : len(tokens)] = tokens
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE token ids of one caption, without SOT/EOT."""
        out: list[int] = []
        for piece in SPLIT.findall(_clean(text)):
            if piece in SPECIAL_TOKENS:  # open_clip's cache maps a literal special token to itself
                out.append(self.encoder[piece])
                continue
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            out.extend(self.encoder[t] for t in self._bpe(word))
        return out

    def _merge(self, token: str) -> tuple[str, ...]:
        """Greedy lowest-rank pair merging; the last symbol carries the end-of-word marker."""
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            word = _join_pair(word, best)
        return word


def _join_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every non-overlapping occurrence of `pair` (left to right) by its concatenation."""
    merged: list[str] = []
    i = 0
    while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def export_tokenizer(folder: Path, manifest: Manifest) -> BPETokenizer:
    """The verified tokenizer of an export folder."""
    if manifest.tokenizer is None or manifest.tokenizer_sha256 is None:
        raise DGLError(f"{folder}: this model's text tower has a {manifest.vocab_size}-token vocabulary, not "
                       "CLIP's: it takes token ids, not captions")
    return BPETokenizer(verified_file(folder, manifest.tokenizer, manifest.tokenizer_sha256), manifest.max_words)
