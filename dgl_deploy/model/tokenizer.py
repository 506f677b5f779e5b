"""Text -> token ids in the spec's layout: [SOT] + BPE tokens[: W-2] + [EOT], zero padded to W.
Uses open_clip's CLIP BPE tokenizer; truncation keeps EOT as the last token."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer

from dgl_deploy.errors import DGLError

VOCAB_SIZE = 49408  # CLIP BPE vocabulary incl. SOT (49406) and EOT (49407)


class Tokenizer:
    """Callable: list of captions -> (B, W) int64 ids for a model with `max_words` = W."""

    def __init__(self, max_words: int, vocab_size: int = VOCAB_SIZE) -> None:
        if vocab_size < VOCAB_SIZE:
            raise DGLError(f"the text tower has a vocabulary of {vocab_size} < {VOCAB_SIZE} CLIP BPE tokens: "
                           "it cannot take CLIP-tokenised text (pass token ids directly)")
        self.max_words = max_words
        self._bpe = SimpleTokenizer(context_length=max_words)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise DGLError("captions must be strings")
        return self._bpe(list(texts), context_length=self.max_words)  # (B, W) int64


def tokenizer_for(model: torch.nn.Module) -> Tokenizer:
    """The tokenizer matching a DGLModel's max_words and vocabulary."""
    return Tokenizer(model.config.max_words, model.clip.vocab_size)
