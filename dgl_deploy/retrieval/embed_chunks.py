"""Chunk files: the finished pieces of an embedding job in `<out>.parts/`, one per `chunk_size` videos of the job's
list, written atomically as soon as all their videos are back (`run_chunks`), whoever embedded them (this machine
or Ray).

A chunk file (`chunk_NNNNNN.npz`) holds `rows` (R, E) (float16 with fp16), `ids` (R,) (a video's id once per row),
`failed_ids` and `failed_reasons` (the chunk's videos that failed, with why), `precision` (what the rows were computed
at), `untimed_ids` (videos whose spans are frame index / fps) and, when segmented, `spans` (R, 2) start, end seconds.
Every video of the chunk is in it, written or failed. A resumed job keeps a chunk only if it holds exactly the
videos the job puts there, with rows of the right shapes (`start_chunks`); any other is redone, never merged.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dgl_deploy.data.discover import VideoSource
from dgl_deploy.files import atomic_path
from dgl_deploy.retrieval.embed_job import EmbedJob, Reporter, RowSource
from dgl_deploy.retrieval.embed_parts import CHUNK_GLOB
from dgl_deploy.retrieval.embed_settings import EmbedSettings
from dgl_deploy.retrieval.video_rows import VideoRows

if TYPE_CHECKING:
    from dgl_deploy.data.loader import VideoFailure

_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # a chunk cut short or of another kind


def chunk_file(parts: Path, index: int) -> Path:
    return parts / f"chunk_{index:06d}.npz"


def write_chunk(path: Path, rows: np.ndarray, ids: list[str], failures: list[tuple[str, str]], fp16: bool,
                spans: np.ndarray | None = None, *, precision: str, untimed: list[str] = ()) -> tuple[int, int]:
    """Write one finished chunk atomically: rows (R, E) of the videos `ids` (one per row) computed at `precision`
    and, when segmented, their (R, 2) `spans`. A video with a row that is not finite once stored (NaN/inf from the
    encoder, or beyond the float16 range) becomes a failure, all its rows dropped. `untimed`: the ids whose spans are
    frame index / fps (the file has no timestamps). Returns (videos written, videos failed)."""
    with np.errstate(over="ignore"):
        stored = np.asarray(rows).astype(np.float16 if fp16 else np.float32)
    bad: dict[str, str] = {}
    for video_id, row, ok in zip(ids, rows, np.isfinite(stored).all(axis=1), strict=True):
        if not ok:
            bad.setdefault(video_id, _not_finite_reason(row))
    failures = failures + list(bad.items())
    keep = np.array([i not in bad for i in ids], bool)
    ids = [i for i, ok in zip(ids, keep, strict=True) if ok]
    arrays = {"rows": stored[keep], "ids": np.array(ids, dtype=str),
              "failed_ids": np.array([f[0] for f in failures], dtype=str),
              "failed_reasons": np.array([f[1] for f in failures], dtype=str), "precision": np.array(precision),
              "untimed_ids": np.array(sorted(set(untimed) - set(bad)), dtype=str)}
    if spans is not None:
        arrays["spans"] = np.asarray(spans, np.float64).reshape(-1, 2)[keep]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return len(dict.fromkeys(ids)), len(failures)


def _not_finite_reason(row: np.ndarray) -> str:
    if np.isfinite(row).all():
        return "embedding exceeds the float16 range (embed without --fp16)"
    return "the encoder returned NaN/inf for this video"


def read_chunks(parts: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of chunks 0 .. count - 1, one chunk at a time."""
    for k in range(count):
        with np.load(chunk_file(parts, k), allow_pickle=False) as data:
            yield {key: data[key] for key in data.files}


def chunk_matches(path: Path, expected_ids: list[str], dim: int, segmented: bool) -> bool:
    """Whether the chunk file holds exactly these videos (each written or failed), with rows (and segments) of
    the right shapes: one row per video, or any number of rows per video when `segmented`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, failed, rows = list(map(str, data["ids"])), list(map(str, data["failed_ids"])), data["rows"]
            spans = data["spans"].shape if "spans" in data.files else None
    except _UNREADABLE:
        return False
    videos = list(dict.fromkeys(ids))
    return sorted(videos + failed) == sorted(expected_ids) and rows.shape == (len(ids), dim) and \
        (spans == (len(ids), 2) if segmented else spans is None and len(videos) == len(ids))


def chunk_precisions(parts: Path) -> set[str]:
    """The precisions the finished chunks in `parts` were computed at."""
    found = set()
    for path in parts.glob(CHUNK_GLOB):
        try:
            with np.load(path, allow_pickle=False) as data:
                found.add(str(data["precision"]))
        except _UNREADABLE:
            continue  # unreadable: redone; from an older version: merged as this job's
    return found


def start_chunks(job: EmbedJob, settings: EmbedSettings, reporter: Reporter) -> tuple[list[range], list[int]]:
    """The job's chunks (ranges of `job.todo`) and those still to embed: not written yet, or written with other
    videos than this job's (removed: a stale chunk is redone, never merged). Starts the reporter."""
    size, parts = settings.chunk_size, job.paths.parts
    chunks = [range(start, min(start + size, len(job.todo))) for start in range(0, len(job.todo), size)]
    pending = []
    for k, span in enumerate(chunks):
        expected = [job.todo[i].id for i in span]
        if not chunk_matches(chunk_file(parts, k), expected, job.embed_dim, settings.segments is not None):
            chunk_file(parts, k).unlink(missing_ok=True)
            pending.append(k)
    reporter.start(len(job.todo), len(job.todo) - sum(len(chunks[k]) for k in pending))
    return chunks, pending


def run_chunks(job: EmbedJob, settings: EmbedSettings, reporter: Reporter, rows: RowSource) -> None:
    """Embed the pending chunks' videos with `rows`; write each chunk as soon as all its videos are back."""
    chunks, pending = start_chunks(job, settings, reporter)
    positions = [i for k in pending for i in chunks[k]]  # places in job.todo, in decoding order
    ends = {n for n, i in enumerate(positions) if i == chunks[i // settings.chunk_size][-1]}
    building = {k: _Chunk(len(chunks[k])) for k in pending}
    for done in rows([job.todo[i].path for i in positions], ends, job.result):
        k = positions[done.index] // settings.chunk_size
        building[k].videos[positions[done.index]] = done
        if building[k].complete:
            reporter.advance(*building.pop(k).write(chunk_file(job.paths.parts, k), job, settings))


@dataclass
class _Chunk:
    """The videos of one chunk as they come back."""

    size: int  # videos in the chunk
    videos: dict[int, VideoRows | VideoFailure] = field(default_factory=dict)  # place in job.todo -> rows or failure

    @property
    def complete(self) -> bool:
        return len(self.videos) == self.size

    def write(self, path: Path, job: EmbedJob, settings: EmbedSettings) -> tuple[int, int]:
        """`write_chunk` of the videos in job order (rows in window order)."""
        todo: list[VideoSource] = job.todo
        done = [(todo[i].id, self.videos[i]) for i in sorted(self.videos)]
        kept = [(video_id, v) for video_id, v in done if isinstance(v, VideoRows)]
        rows = np.concatenate([np.zeros((0, job.embed_dim), np.float32), *(v.vectors for _, v in kept)])  # (R, E)
        spans = np.concatenate([np.zeros((0, 2)), *(v.spans for _, v in kept)]) if settings.segments else None  # (R, 2)
        return write_chunk(path, rows, [video_id for video_id, v in kept for _ in range(len(v.vectors))],
                           [(video_id, v.reason) for video_id, v in done if not isinstance(v, VideoRows)],
                           settings.fp16, spans, precision=job.result.precision,
                           untimed=sorted(video_id for video_id, v in kept if not v.timed))


__all__ = ["chunk_file", "write_chunk", "read_chunks", "chunk_matches", "chunk_precisions", "start_chunks",
           "run_chunks"]
