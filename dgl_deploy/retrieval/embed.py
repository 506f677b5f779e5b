"""`dgl embed`: batch-embed a folder of videos, resumably and crash-safely.

The videos (sorted, see `discover`) are cut into fixed chunks of `chunk_size`. Worker processes decode
ahead of the encoder (a bounded window, `loader.iter_videos` / `loader.iter_window_groups`); the encoder runs
batches that never straddle a chunk (`video_rows.encode_rows`), and every finished chunk is written atomically to
`<out>.parts/` (`embed_chunks`). A killed job rerun with the same command checks the finished chunks against the
job (a chunk of other videos is redone, never merged) and skips them; since chunk boundaries and batches do not
depend on where it stopped, the final files are identical to an uninterrupted run. At the end the set is written as a new generation beside
the old one and switched to by one rename (`store.write_set`: a kill or a full disk leaves the old set
whole), or, by an update that keeps every row, the new rows are appended to the set's files in place, in
proportion to what they add (`store.append_set`, as safe); then the parts are removed. A row the encoder
returns as NaN/inf (or that overflows float16 with `fp16`) is not written: its file is listed as failed, with
the reason.

One writer at a time: a job holds `<out>.lock` (`store.writer_lock`), so a second job on the same output is
refused, naming the first one's pid. A refused job leaves nothing behind, and a job that stops before
finishing any chunk leaves no `<out>.parts/`. A job killed after its switch but before removing its parts
is recognised by the manifest (`job`), and its parts are removed by the next run. Every job first brings the
set's files back to what its manifest records (`store.repair_set`: what an append killed before its switch left
past the count, .npy headers an append killed after its switch did not rewrite).

Without `update`, an existing set made by the same model that already holds every video of the source is
"up to date" (nothing is written: rerunning a finished command is harmless); one that lacks some is refused.
`update=True` embeds only the videos the set does not have and appends them (sorted) after the existing
rows, so existing row numbers stay valid.

Ids and folders: ids are relative to the folder the set was first made from (its source root, recorded in
the manifest both absolute and relative to the set, so a set moved together with its videos still finds
them). An update from another folder gets ids relative to that first root (`../new_batch/vid_00000.mp4`):
files of two folders never share an id, so nothing is skipped silently, and an update from a subfolder or
a parent of the root finds the ids that the root's own files already have. The folders embedded besides the root
are recorded relative to it (`source_folders`: `../new_batch`), so `dgl serve` serves each id from its own folder.

Deleted videos: rows whose file (root / id) no longer exists are kept and counted (`EmbedResult.missing`);
`prune=True` (with `update`) drops them in the same generation switch, which renumbers the rows after them.
Pruning is refused while the root folder itself is missing (an unmounted disk is not a deletion).

Segments (`settings.segments`, `dgl embed --window W --stride S [--scenes]`): each video becomes one row per
window (`data.windows`), decoded once per file (`loader.iter_window_groups`); the ids sidecar repeats the video's
id for each of its rows and `emb.segments.npy` holds each row's (start, end) seconds (`store`). Everything above
works per video: a video's rows are all written or none (a decode failure or a NaN/inf window fails the whole
video), chunks hold whole videos, `--update` adds a new video's windows, `--prune` drops all rows of a deleted
one. The segmentation is recorded in the manifest; a job with another one (or none) on an existing set is
refused: one file never mixes whole-video rows and windows, or two kinds of windows.

Precision and frame sampling: whole videos are decoded with the model's frame sampling (`Encoder.frame_sampling`;
windows sample each window uniformly). The manifest records the sampling (`frame_sampling`), the encoder's
`precision` and `encoder_backend`, and the precisions of all its rows (`row_precisions`). A job that adds rows
(`--update`, or resuming an unfinished job's chunks) with another frame sampling is refused; with another precision
it is allowed only where `precision.check_mixing` allows it (each reduced precision involved held the export's
parity), else refused naming both precisions. The manifest also records the hosts that computed its rows (`hosts`:
ISA, onnxruntime version, the precision's parity on that host); adding rows computed where the numbers differ beyond
tolerance is refused (`precision.check_hosts`).

The job's steps, one module each: `embed_settings` (EmbedSettings, --window/--stride/--scenes), `embed_plan`
(checks, what to embed, the descriptor), `embed_parts` (the parts folder and its job file), `video_rows` (decoded
windows into encoded rows per video), `embed_chunks` (chunk files, written as their videos come back), `embed_merge`
(the new generation or the append, the manifest); `ray_embed` gives the same job its rows from a Ray cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.embed_chunks import chunk_file, run_chunks, start_chunks, write_chunk
from dgl_deploy.retrieval.embed_job import EmbedJob, EmbedResult, Reporter, RowSource, SilentReporter
from dgl_deploy.retrieval.embed_merge import merge
from dgl_deploy.retrieval.embed_parts import check_resume, discard_unstarted
from dgl_deploy.retrieval.embed_plan import plan
from dgl_deploy.retrieval.embed_settings import SCENES_WINDOW, EmbedSettings, segmentation
from dgl_deploy.retrieval.store import StorePaths, repair_set, writer_lock
from dgl_deploy.retrieval.video_rows import VideoRows, encode_rows
from dgl_deploy.runtime.backends.base import Encoder

if TYPE_CHECKING:
    from dgl_deploy.data.loader import VideoFailure

T = TypeVar("T")


def run_job(source: Path | str, out: Path | str, encoder: Encoder, settings: EmbedSettings, rows: RowSource, *,
            update: bool, overwrite: bool, prune: bool, model: str | None, backend: str,
            reporter: Reporter | None) -> EmbedResult:
    """Lock the output, plan, embed the pending chunks with `rows`, and write the set (see the module docstring)."""
    paths = StorePaths.of(out)
    with writer_lock(paths):
        repair_set(paths)
        job = plan(paths, source, encoder, settings, update=update, overwrite=overwrite, prune=prune, model=model,
                   backend=backend)
        if not job.writes:
            job.result.up_to_date = True
            return job.result
        started = time.perf_counter()
        try:
            run_chunks(job, settings, reporter or SilentReporter(), rows)
        except BaseException:
            discard_unstarted(paths.parts)  # nothing finished: leave nothing behind
            raise
        job.result.seconds = time.perf_counter() - started
        merge(job, settings)
        return job.result


def embed_videos(
    source: Path | str,
    out: Path | str,
    encoder: Encoder,
    settings: EmbedSettings = EmbedSettings(),
    *,
    update: bool = False,
    overwrite: bool = False,
    prune: bool = False,
    reporter: Reporter | None = None,
    model: str | None = None,
) -> EmbedResult:
    """Embed every video named by `source` into the set at `out` (.npy); see the module docstring.
    `model` (the path the encoder was opened from) is recorded so `dgl query` can find it."""
    return run_job(source, out, encoder, settings, local_rows(encoder, settings), update=update, overwrite=overwrite,
                   prune=prune, model=model, backend=encoder.describe(), reporter=reporter)


def local_rows(encoder: Encoder, settings: EmbedSettings) -> RowSource:
    """Rows decoded by worker processes on this machine, ahead of `encoder` (a bounded window), in batches of
    `settings.batch_size` rows; the time the encoder waits for frames and spends encoding goes into the result."""

    def rows(paths: list[Path], ends: Collection[int], result: EmbedResult) -> Iterator[VideoRows | VideoFailure]:
        from dgl_deploy.data.loader import iter_videos, iter_window_groups

        if settings.segments:
            pieces = iter_window_groups(paths, settings.segments, encoder.frames, encoder.image_size, settings.workers,
                                        timeout=settings.timeout)
        else:
            pieces = iter_videos(paths, encoder.frames, encoder.image_size, settings.batch_size, settings.workers,
                                 timeout=settings.timeout, sampling=encoder.frame_sampling)

        clock = _EncoderClock()

        def encode(frames: np.ndarray) -> np.ndarray:  # (B, T, S, S, 3) uint8 -> (B, E)
            with clock:
                vectors = encoder.encode_videos(frames)
            result.encode_seconds = clock.busy()
            return vectors

        return encode_rows(_waits(pieces, result, clock), encode, settings.batch_size, ends, encoder.video_lanes)

    return rows


class _EncoderClock:
    """Wall time with at least one encoder call running (calls may overlap: `video_rows.encode_rows`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running, self._since, self._total = 0, 0.0, 0.0  # calls running, since when, busy time before

    def __enter__(self) -> None:
        with self._lock:
            if not self._running:
                self._since = time.perf_counter()
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if not self._running:
                self._total += time.perf_counter() - self._since

    def busy(self) -> float:
        """Seconds with a call running so far."""
        with self._lock:
            return self._total + (time.perf_counter() - self._since if self._running else 0.0)


def _waits(pieces: Iterable[T], result: EmbedResult, clock: _EncoderClock) -> Iterator[T]:
    """`pieces`, adding the time spent waiting for each while the encoder had nothing to run to
    `result.decode_wait_seconds`."""
    waited, busy = time.perf_counter(), clock.busy()
    for piece in pieces:
        result.decode_wait_seconds += max(0.0, time.perf_counter() - waited - (clock.busy() - busy))
        yield piece
        waited, busy = time.perf_counter(), clock.busy()


def encode_files(encoder: Encoder, paths: list[Path], *, batch_size: int = 16, workers: int = 2,
                 timeout: float = 60.0) -> np.ndarray:
    """(N, E) float32 rows of whole video files, decoded as `dgl embed` decodes them (the model's frame sampling,
    crash-isolated decoders under a time limit per file); DGLError naming the first file that cannot be decoded.
    (`embed_videos` does not call this: it writes chunks as it goes; both decode through `iter_video_batches`.)"""
    from dgl_deploy.data.loader import iter_video_batches

    EmbedSettings(batch_size=batch_size, workers=workers, timeout=timeout)  # the job's checks of these values
    rows = [np.zeros((0, encoder.embed_dim), np.float32)]
    batches = iter_video_batches(list(paths), encoder.frames, encoder.image_size, batch_size, workers,
                                 timeout=timeout, sampling=encoder.frame_sampling)
    try:
        for batch in batches:
            if batch.failures:
                failure = batch.failures[0]
                raise DGLError(f"{failure.path}: {failure.reason}")
            if len(batch.frames):
                rows.append(np.asarray(encoder.encode_videos(batch.frames), dtype=np.float32))
    finally:
        batches.close()  # stops the decoders at once
    return np.concatenate(rows)


__all__ = ["EmbedSettings", "EmbedResult", "EmbedJob", "Reporter", "SilentReporter", "RowSource", "SCENES_WINDOW",
           "segmentation", "check_resume", "run_job", "embed_videos", "local_rows", "encode_files", "start_chunks",
           "chunk_file", "write_chunk"]
