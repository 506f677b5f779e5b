"""What an embedding job is while it runs: the planned job (`EmbedJob`), what it did (`EmbedResult`), where its
progress goes (`Reporter`) and where its rows come from (`RowSource`: decoding and encoding on this machine, or on
Ray)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dgl_deploy.data.discover import VideoSource
from dgl_deploy.retrieval.store import EmbeddingStore, StorePaths
from dgl_deploy.retrieval.video_rows import VideoRows

if TYPE_CHECKING:
    from dgl_deploy.data.loader import VideoFailure


@dataclass
class EmbedResult:
    """What a job did (also written into the manifest)."""

    out: Path  # the embeddings file (.npy)
    total: int  # videos found
    embedded: int  # videos embedded by this job
    existing: int  # rows kept from an earlier set (--update)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0  # wall time of the decoding and encoding
    decode_wait_seconds: float = 0.0  # encoder idle, waiting for decoded frames
    encode_seconds: float = 0.0  # time with an encoder call running (calls that overlap count once)
    backend: str = ""  # what ran the encoder, in words (`Encoder.describe`)
    model: str | None = None  # model path recorded for `dgl query`
    missing: int = 0  # rows kept whose video file no longer exists
    pruned: int = 0  # rows dropped because their video file no longer exists (--prune)
    up_to_date: bool = False  # the set already held every video: nothing was written
    new_rows: int = 0  # rows written by this job (= embedded, unless segmented)
    precision: str = ""  # what the encoder computes at (`precision.encoder_precision`)
    encoder_backend: str = ""  # Encoder.backend: torch, onnxruntime, tensorrt
    host: dict[str, Any] = field(default_factory=dict)  # the host computing the rows (`precision.host_record`)

    @property
    def rows(self) -> int:
        """Rows in the set after the job."""
        return self.existing + self.new_rows


class Reporter(Protocol):
    """Progress sink: the CLI shows a bar, JSON lines, or nothing."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, ok: int, failed: int) -> None: ...


class SilentReporter:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: int, failed: int) -> None:
        pass


@dataclass
class EmbedJob:
    """A planned job: what to embed, which existing rows to keep, and the descriptor a resumed job must match."""

    paths: StorePaths  # the set's files and its parts folder
    todo: list[VideoSource]  # videos still to embed, in output order
    existing: EmbeddingStore | None  # the set being updated
    keep: list[range]  # runs of existing rows kept (all of them unless pruning)
    root: Path  # the folder ids are relative to
    embed_dim: int  # E
    descriptor: dict  # model, sizes and settings that fix the output (checked on resume)
    result: EmbedResult  # filled in as the job runs
    folders: list[str] = field(default_factory=list)  # other folders embedded into the set, relative to root (posix)

    @property
    def writes(self) -> bool:
        """Whether the job writes a new generation (else the set is up to date)."""
        return bool(self.todo) or self.existing is None or bool(self.result.pruned)


# The rows of `paths` (a `VideoRows` or `VideoFailure` per file, `index` = position in `paths`), decoded and encoded
# on this machine or on Ray; an encoder batch never straddles the end of a file whose index is in the second argument
# (the last file of each chunk); timings go into the result.
RowSource = Callable[[list[Path], Collection[int], EmbedResult], Iterator["VideoRows | VideoFailure"]]

__all__ = ["EmbedResult", "Reporter", "SilentReporter", "EmbedJob", "RowSource"]
