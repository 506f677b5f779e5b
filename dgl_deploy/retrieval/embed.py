"""`dgl embed`: batch-embed a folder of videos, resumably and crash-safely.

The videos (sorted, see `discover`) are cut into fixed chunks of `chunk_size`. Worker processes decode
ahead of the encoder (a bounded window, `loader.iter_video_batches`); the encoder runs batches that
never straddle a chunk, and every finished chunk is written atomically to `<out>.parts/`. A killed job
rerun with the same command skips the finished chunks, and since chunk boundaries and batches do not
depend on where it stopped, the final files are identical to an uninterrupted run. Only at the end are
`emb.npy`, the ids, the errors and the manifest written (each atomically), then the parts removed.

`update=True` embeds only the files that an existing set does not have, appending them (sorted) after
the existing rows, so existing row numbers stay valid. Files that disappeared keep their rows.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from dgl_deploy.data.discover import VideoSource, find_videos
from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path, atomic_write_text
from dgl_deploy.retrieval.store import FORMAT, StorePaths, ids_digest, open_store
from dgl_deploy.runtime.backends.base import Encoder
from dgl_deploy.runtime.manifest import check_same_model


@dataclass(frozen=True)
class EmbedSettings:
    """How to run an embedding job (all but `workers` and `timeout` fix the output and must match on resume)."""

    batch_size: int = 16  # videos per encoder call
    workers: int = 2  # decoding workers (each a crash-isolated process)
    chunk_size: int = 256  # videos per resumable chunk file
    fp16: bool = False  # store float16 rows (half the size)
    timeout: float = 60.0  # seconds allowed to decode one file


@dataclass
class EmbedResult:
    """What a job did (also written into the manifest)."""

    out: Path
    total: int  # videos found
    embedded: int  # rows written by this job
    existing: int  # rows kept from an earlier set (--update)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0
    decode_wait_seconds: float = 0.0  # encoder idle, waiting for decoded frames
    encode_seconds: float = 0.0
    backend: str = ""
    model: str | None = None  # model path recorded for `dgl query`


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
    """A planned job: what to embed, what to keep, and the descriptor a resumed job must match."""

    paths: StorePaths
    todo: list[VideoSource]  # videos still to embed, in output order
    existing_ids: list[str]  # rows kept from an earlier set (--update)
    existing_rows: np.ndarray | None
    descriptor: dict  # model, sizes and settings that fix the output (checked on resume)
    result: EmbedResult


def plan_job(source: Path | str, out: Path | str, encoder: Encoder, settings: EmbedSettings, *, update: bool,
             overwrite: bool, model: str | None, backend: str) -> EmbedJob:
    """Find the videos, check an existing set (--update) and prepare `<out>.parts/` (resume or fresh)."""
    paths = StorePaths.of(out)
    videos = find_videos(source)
    if overwrite:
        shutil.rmtree(paths.parts, ignore_errors=True)
    existing_ids, existing_rows = _existing(paths, encoder, update, overwrite)
    known = set(existing_ids)
    todo = [v for v in videos if v.id not in known]
    descriptor = _job(encoder, settings, todo, len(existing_ids), source)
    _prepare_parts(paths.parts, descriptor)
    result = EmbedResult(paths.emb, len(videos), 0, len(existing_ids), backend=backend,
                         model=str(Path(model).resolve()) if model else None)
    return EmbedJob(paths, todo, existing_ids, existing_rows, descriptor, result)


def finish_job(job: EmbedJob, settings: EmbedSettings) -> EmbedResult:
    """Merge the finished chunks into the outputs (atomically) and remove the parts."""
    _merge(job.paths, job.descriptor, job.existing_rows, job.existing_ids, job.todo, settings, job.result)
    return job.result


def embed_videos(
    source: Path | str,
    out: Path | str,
    encoder: Encoder,
    settings: EmbedSettings = EmbedSettings(),
    *,
    update: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    model: str | None = None,
) -> EmbedResult:
    """Embed every video named by `source` into the set at `out` (.npy); see the module docstring.
    `model` (the path the encoder was opened from) is recorded so `dgl query` can find it."""
    job = plan_job(source, out, encoder, settings, update=update, overwrite=overwrite, model=model,
                   backend=encoder.describe())
    started = time.perf_counter()
    _run_chunks(job.todo, encoder, settings, job.paths.parts, job.result, reporter or SilentReporter())
    job.result.seconds = time.perf_counter() - started
    return finish_job(job, settings)


def _existing(paths: StorePaths, encoder: Encoder, update: bool, overwrite: bool) -> tuple[list[str], np.ndarray | None]:
    if not paths.manifest.exists() or overwrite:
        return [], None
    if not update:
        raise DGLError(f"{paths.emb} already exists: use --update to add new videos, or --overwrite to redo it")
    store = open_store(paths.emb)
    check_same_model(store.fingerprint, encoder.fingerprint, str(paths.emb),
                     fix="--update needs the model that made them; use --overwrite to redo the set")
    return store.ids, np.asarray(store.vectors)


def _job(encoder: Encoder, settings: EmbedSettings, todo: list[VideoSource], base: int, source: Path | str) -> dict:
    """Everything that determines the output of the pending work; a resumed job must match it exactly."""
    return {"model_fingerprint": encoder.fingerprint, "frames": encoder.frames, "image_size": encoder.image_size,
            "batch_size": settings.batch_size, "chunk_size": settings.chunk_size, "fp16": settings.fp16,
            "base_rows": base, "todo": len(todo), "todo_ids": ids_digest([v.id for v in todo]),
            "source": str(source)}


def _prepare_parts(parts: Path, job: dict) -> None:
    job_file = parts / "job.json"
    if job_file.exists():
        if json.loads(job_file.read_text()) != job:
            raise DGLError(f"{parts} holds an unfinished job with other videos, model or settings: rerun it with "
                           "the same ones to finish it, or delete that folder to start over")
        return
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_file, json.dumps(job, indent=1))


def chunk_file(parts: Path, index: int) -> Path:
    return parts / f"chunk_{index:06d}.npz"


def _run_chunks(todo: list[VideoSource], encoder: Encoder, settings: EmbedSettings, parts: Path,
                result: EmbedResult, reporter: Reporter) -> None:
    size = settings.chunk_size
    chunks = [range(start, min(start + size, len(todo))) for start in range(0, len(todo), size)]
    pending = [k for k in range(len(chunks)) if not chunk_file(parts, k).exists()]
    reporter.start(len(todo), len(todo) - sum(len(chunks[k]) for k in pending))
    positions = [i for k in pending for i in chunks[k]]
    for k, rows, ids, failures in _encoded_chunks(todo, positions, chunks, encoder, settings, result):
        write_chunk(chunk_file(parts, k), rows, ids, failures, settings.fp16)
        reporter.advance(len(ids), len(failures))


def _encoded_chunks(todo: list[VideoSource], positions: list[int], chunks: list[range], encoder: Encoder,
                    settings: EmbedSettings, result: EmbedResult) -> Iterator[tuple[int, np.ndarray, list, list]]:
    """Decode `positions` of `todo` in the background; yield (chunk, rows, ids, failures) per finished chunk."""
    from dgl_deploy.data.loader import iter_video_batches

    chunk_of = {i: i // settings.chunk_size for i in positions}
    remaining = {k: len(chunks[k]) for k in set(chunk_of.values())}
    frames: list[np.ndarray] = []
    owners: list[int] = []  # position in `todo` of each buffered frame stack
    done: dict[int, tuple[list[np.ndarray], list[str], list[tuple[str, str]]]] = {}
    batches = iter_video_batches([todo[i].path for i in positions], encoder.frames, encoder.image_size,
                                 settings.batch_size, settings.workers, timeout=settings.timeout)
    waited = time.perf_counter()
    for batch in batches:
        result.decode_wait_seconds += time.perf_counter() - waited
        events = [(f.index, None, f.reason) for f in batch.failures]
        events += [(i, stack, None) for i, stack in zip(batch.indices, batch.frames, strict=False)]
        for local, stack, reason in sorted(events, key=lambda e: e[0]):
            position = positions[local]
            k = chunk_of[position]
            rows, ids, failures = done.setdefault(k, ([], [], []))
            if reason is not None:
                failures.append((todo[position].id, reason))
            else:
                frames.append(stack)
                owners.append(position)
            remaining[k] -= 1
            if len(frames) == settings.batch_size or (remaining[k] == 0 and frames):
                _encode(encoder, frames, owners, todo, done, chunk_of, result)
                frames, owners = [], []
            if remaining[k] == 0:
                rows, ids, failures = done.pop(k)
                yield k, _stack(rows, encoder.embed_dim), ids, failures
        waited = time.perf_counter()


def _encode(encoder: Encoder, frames: list[np.ndarray], owners: list[int], todo: list[VideoSource],
            done: dict, chunk_of: dict[int, int], result: EmbedResult) -> None:
    """One encoder call on frames of a single chunk (a batch never straddles chunks)."""
    started = time.perf_counter()
    vectors = encoder.encode_videos(np.stack(frames))  # (B, E)
    result.encode_seconds += time.perf_counter() - started
    rows, ids, _ = done[chunk_of[owners[0]]]
    rows.append(vectors)
    ids.extend(todo[p].id for p in owners)


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)


def write_chunk(path: Path, rows: np.ndarray, ids: list[str], failures: list[tuple[str, str]], fp16: bool) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, rows=rows.astype(np.float16 if fp16 else np.float32), ids=np.array(ids, dtype=str),
                 failed_ids=np.array([f[0] for f in failures], dtype=str),
                 failed_reasons=np.array([f[1] for f in failures], dtype=str))


def _read_chunks(parts: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    for k in range(count):
        with np.load(chunk_file(parts, k), allow_pickle=False) as data:
            yield {key: data[key] for key in data.files}


def _merge(paths: StorePaths, job: dict, existing_rows: np.ndarray | None, existing_ids: list[str],
           todo: list[VideoSource], settings: EmbedSettings, result: EmbedResult) -> None:
    """Concatenate the chunks after the existing rows and replace the outputs atomically."""
    dtype = np.float16 if settings.fp16 else np.float32
    chunks = list(_read_chunks(paths.parts, -(-len(todo) // settings.chunk_size)))
    blocks = ([existing_rows.astype(dtype)] if existing_rows is not None else []) + [c["rows"] for c in chunks]
    new_ids = [str(i) for c in chunks for i in c["ids"]]
    result.failures = [(str(i), str(r)) for c in chunks for i, r in zip(c["failed_ids"], c["failed_reasons"], strict=False)]
    result.embedded = len(new_ids)
    ids = existing_ids + new_ids
    rows = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype)
    with atomic_path(paths.emb) as tmp, open(tmp, "wb") as handle:
        np.save(handle, rows)
    atomic_write_text(paths.ids, "".join(f"{i}\n" for i in ids))
    atomic_write_text(paths.errors, "".join(f"{i}\t{r}\n" for i, r in result.failures))
    atomic_write_text(paths.manifest, json.dumps(_manifest(job, ids, rows, settings, result), indent=1))
    shutil.rmtree(paths.parts, ignore_errors=True)


def _manifest(job: dict, ids: list[str], rows: np.ndarray, settings: EmbedSettings, result: EmbedResult) -> dict:
    return {
        "format": FORMAT,
        "model_fingerprint": job["model_fingerprint"],
        "model": result.model,
        "backend": result.backend,
        "frames": job["frames"],
        "image_size": job["image_size"],
        "embed_dim": int(rows.shape[1]) if rows.ndim == 2 and rows.shape[0] else None,
        "dtype": str(rows.dtype),
        "count": len(ids),
        "ids_sha256": ids_digest(ids),
        "source": job["source"],
        "settings": asdict(settings),
        "failures": len(result.failures),
        "timings": {"seconds": round(result.seconds, 3), "videos_per_second": round(
            result.embedded / result.seconds, 3) if result.seconds else None,
            "decode_wait_seconds": round(result.decode_wait_seconds, 3),
            "encode_seconds": round(result.encode_seconds, 3)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["EmbedSettings", "EmbedResult", "EmbedJob", "Reporter", "SilentReporter", "plan_job", "finish_job",
           "chunk_file", "write_chunk", "embed_videos"]
