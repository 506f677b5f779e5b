"""The files behind `dgl serve`'s search page: the indexed videos (streamed with HTTP ranges) and their poster
frames (one JPEG per (video, moment start), made once and cached on disk).

Which files may be served: only those of the index. The client names a video by its id as recorded in the
index (never a path); an id that is not in the index is 404. The id is joined to the source folder recorded
in the embeddings manifest (`source_root`) and normalised, and each id is checked against its own folder, never
against a folder another id names: an id inside the source folder against the source folder; an id recorded
relative to it as `../other/x.mp4` against the folder embedded into the same set with `--update` that holds it
(the manifest's `source_folders`, the innermost), else (a `.txt` list entry outside the list's folder, a set
that does not record them) against the folder the id names its file in. The file, links followed, must lie in
that folder's real path. Anything else (a video replaced by a link to a file outside its folder, a
recorded absolute id, `..` after a name) is 403. A set that does not record its source folder serves no files.
Files are served as the video type of their extension (`media_type`), any other name as application/octet-stream:
never as a type a browser would render as a page.

Posters: a representative frame of the moment (of the whole video for start 0 in a whole-video set): of
POSTER_CANDIDATES frames sampled over it, the least uniform (`video.representative`: never a black fade when the
moment holds anything else), decoded by `decoders` decoder processes (a time limit per file, off the event loop;
at most `max_pending` waiting, more get 503), centre-cropped to POSTER_SIZE and written as JPEG into the cache
folder, keyed by (id, start, file size and mtime): a page view reads files, it never decodes twice. Only the
starts of the index's moments have posters (a segmented set's segment starts, else 0), so the cache never holds
more files than the index has rows.

Torch-free; PyAV is imported with the first decoder process, not with this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dgl_deploy.data.discover import VIDEO_EXTENSIONS
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.preview import PREVIEW_FPS, PREVIEW_SECONDS, PREVIEW_SIDE
from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path
from dgl_deploy.retrieval.store import EmbeddingStore

if TYPE_CHECKING:
    from dgl_deploy.data.video import DecodeProcess

    class DecoderPool(Protocol):
        def submit(self, job: Callable[[DecodeProcess], Any]) -> Future[Any]: ...

        def close(self) -> None: ...

POSTER_SIZE = 256  # pixels (square, centre-cropped)
POSTER_QUALITY = 85
POSTER_CANDIDATES = 8  # frames sampled over the moment; the poster is the least uniform (`video.representative`)
POSTER_DECODERS = 2  # decoder processes for posters (a pool apart from the upload decoders)
MOMENT_MS = 1000  # moment starts are matched to the millisecond


class MediaError(Exception):
    """A refused media request: HTTP `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _shown(video_id: str) -> str:
    """The id for an error message (bounded: it comes from the client)."""
    return repr(video_id if len(video_id) <= 200 else video_id[:200] + "...")


def _within(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies under it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def media_type(path: Path | str) -> str:
    """The content type a video file is served as: the video type of its extension (VIDEO_EXTENSIONS), else
    application/octet-stream (a listed `page.html` is never served as a page)."""
    import mimetypes

    name = Path(path).name
    guessed = mimetypes.guess_type(name)[0] if Path(name).suffix.lower() in VIDEO_EXTENSIONS else None
    return guessed if guessed and guessed.startswith("video/") else "application/octet-stream"


class IndexedVideos:
    """The videos of an embedding set as files, and its moments: which ids, rows and starts exist."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        recorded = store.recorded_path("source_root")
        self.root = Path(os.path.abspath(recorded)) if recorded is not None else None
        added = getattr(store, "manifest", {}).get("source_folders") or []  # relative to the root
        self.folders = [os.path.normpath(self.root / folder) for folder in added] if self.root is not None else []
        self._lock = threading.Lock()
        self._first_row: dict[str, int] | None = None  # built on first use (one pass over the ids)
        self._starts: dict[str, dict[int, float]] = {}  # id -> moment start (ms) -> its end (s); empty: whole videos
        self._rows: dict[str, int] = {}  # id -> its number of rows (moments)

    def load(self) -> None:
        """Build the catalogue of ids, rows and moments now (else the first request that needs it does)."""
        self._catalogue()

    def _catalogue(self) -> dict[str, int]:
        with self._lock:
            if self._first_row is None:
                first: dict[str, int] = {}
                rows: dict[str, int] = {}
                for row, video_id in enumerate(self.store.ids):
                    first.setdefault(video_id, row)
                    rows[video_id] = rows.get(video_id, 0) + 1
                spans = getattr(self.store, "spans", None)
                if spans is not None:
                    starts: dict[str, dict[int, float]] = {}
                    spans = np.asarray(spans)
                    for video_id, start, end in zip(self.store.ids, np.rint(spans[:, 0] * MOMENT_MS), spans[:, 1],
                                                    strict=True):
                        starts.setdefault(video_id, {})[int(start)] = float(end)
                    self._starts = starts
                self._rows, self._first_row = rows, first
            return self._first_row

    def row_of(self, video_id: str, row: int | None = None) -> int:
        """The row of `video_id` (its first, or `row` checked to be one of its rows); 404 otherwise."""
        first = self._catalogue()
        if video_id not in first:
            raise MediaError(404, f"no video {_shown(video_id)} in the index")
        if row is None:
            return first[video_id]
        if not 0 <= row < len(self.store.ids) or self.store.ids[row] != video_id:
            raise MediaError(404, f"row {row} is not a moment of {_shown(video_id)}")
        return row

    def rows_of(self, video_id: str) -> int:
        """How many rows (moments) `video_id` has in the index (0: none)."""
        self._catalogue()
        return self._rows.get(video_id, 0)

    def check_moment(self, video_id: str, start: float) -> int:
        """`start` (seconds) as milliseconds if it is 0 or a moment start of `video_id`, else 404."""
        self._catalogue()
        if not np.isfinite(start) or start < 0:
            raise MediaError(422, f"start must be a number of seconds >= 0, got {start}")
        ms = int(round(start * MOMENT_MS))
        if ms and ms not in self._starts.get(video_id, ()):
            raise MediaError(404, f"{_shown(video_id)} has no moment starting at {start:g} s in the index")
        return ms

    def moment(self, video_id: str, start_ms: int) -> tuple[float, float] | None:
        """The (start, end) seconds of the moment of `video_id` starting at `start_ms` (a checked start); None for
        a whole video."""
        self._catalogue()
        end = self._starts.get(video_id, {}).get(start_ms)
        return None if end is None else (start_ms / MOMENT_MS, end)

    def resolve(self, video_id: str) -> Path:
        """The file of `video_id`, resolved and checked to lie in its own folder (module docstring)."""
        first = self._catalogue()
        if video_id not in first:
            raise MediaError(404, f"no video {_shown(video_id)} in the index")
        if self.root is None:
            raise MediaError(404, f"{self.store.paths.manifest.name} does not record the folder the videos were "
                                  "embedded from: no video files are served")
        parts = PurePosixPath(video_id).parts
        ups = next((n for n, part in enumerate(parts) if part != ".."), len(parts))
        if PurePosixPath(video_id).is_absolute() or PureWindowsPath(video_id).is_absolute() or \
                ".." in parts[ups:] or "\\" in video_id or "\0" in video_id:
            raise MediaError(403, f"{_shown(video_id)} is recorded as an absolute or indirect path: not served")
        path = os.path.normpath(self.root / video_id)
        real = os.path.realpath(path)
        if not _within(real, os.path.realpath(self._folder_of(path))):
            raise MediaError(403, f"{_shown(video_id)} leads outside the folders the index was built from (a "
                                  "link?): not served")
        if not os.path.isfile(real):
            raise MediaError(404, f"{_shown(video_id)}: the file is not there any more")
        return Path(real)

    def _folder_of(self, path: str) -> str:
        """The folder an id's normalised `path` was embedded from: the source folder if it lies there, else the
        innermost recorded folder holding it, else the folder the id names its file in (never a wider one)."""
        root = os.path.normpath(self.root or "")
        if _within(path, root):
            return root
        return max((folder for folder in self.folders if _within(path, folder)), key=len,
                   default=os.path.dirname(path))


def default_poster_cache(index: Path | str) -> Path:
    """The poster cache of an index when none is given: the user's cache folder, one subfolder per index path."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(os.path.abspath(index).encode()).hexdigest()[:16]
    return base / "dgl-deploy" / "posters" / digest


def _check_writable(folder: Path) -> None:
    """DGLError unless a folder can be made in `folder` or its nearest existing parent (tried, then removed: the
    cache itself is made with the first poster, not at start-up)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".dgl-poster-check-", dir=existing))
    except OSError:
        raise DGLError(f"{folder}: the poster cache cannot be {'written' if existing == folder else 'made'} there: "
                       "pass --poster-cache with a writable folder") from None


class Posters:
    """Poster frames, made on first request by a small pool of decoder processes and cached as JPEG files."""

    NOUN, SUFFIX, VARIANT = "poster", ".jpg", f"{POSTER_SIZE}"  # what is made; its file type; what changes it

    def __init__(self, videos: Callable[[], IndexedVideos], folder: Path | str, decoders: DecoderPool, *,
                 decode_timeout: float, max_pending: int) -> None:
        self.videos = videos  # the served index's videos now (a new generation of the set brings new ones)
        self.folder = Path(os.path.abspath(folder))
        _check_writable(self.folder)
        self.decode_timeout, self.max_pending = decode_timeout, max_pending
        self.decoded = 0  # frames decoded since start (a cached poster is never decoded again)
        self._count = threading.Lock()
        self._pool = decoders
        self._pending: dict[str, asyncio.Future[None]] = {}  # key -> decode in progress (event loop only)
        self._failed: dict[str, str] = {}  # key -> why (not retried until the file changes)

    async def get(self, video_id: str, start: float) -> Path:
        """The cached file of (video, start), made first if needed. Raises MediaError."""
        from dgl_deploy.data.video import VideoError

        videos = self.videos()  # one state for the whole request
        path = await asyncio.to_thread(videos.resolve, video_id)
        start_ms = videos.check_moment(video_id, start)
        stat = path.stat()
        key = hashlib.sha256(f"{video_id}\0{start_ms}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.VARIANT}".encode()
                             ).hexdigest()[:32]
        target = self.folder / key[:2] / f"{key}{self.SUFFIX}"
        if target.is_file():
            return target
        if key in self._failed:
            raise MediaError(404, f"no {self.NOUN} for {_shown(video_id)}: {self._failed[key]}")
        job = self._pending.get(key)
        if job is None:
            if len(self._pending) >= self.max_pending:
                raise MediaError(503, f"busy: {self.max_pending} {self.NOUN}s being made, retry later")
            moment = videos.moment(video_id, start_ms)
            job = asyncio.wrap_future(self._pool.submit(lambda decoder: self._make(decoder, path, moment, target)))
            self._pending[key] = job
            job.add_done_callback(lambda done: self._finished(key, done))
        try:
            await asyncio.shield(job)  # a client that goes away does not cancel the decode others may wait for
        except VideoError as exc:  # its message names the file's path: the client gets the id only
            raise MediaError(404, f"no {self.NOUN} for {_shown(video_id)}: {exc.reason}") from None
        return target

    def _finished(self, key: str, job: asyncio.Future[None]) -> None:
        self._pending.pop(key, None)
        error = None if job.cancelled() else job.exception()
        if error is not None and hasattr(error, "reason"):  # a VideoError: this file cannot be decoded
            self._failed[key] = error.reason

    def _make(self, decoder: DecodeProcess, path: Path, moment: tuple[float, float] | None, target: Path) -> None:
        from PIL import Image

        from dgl_deploy.data.video import representative

        request = FrameRequest(path, POSTER_CANDIDATES, POSTER_SIZE, moment)
        frames = decoder.decode(request, timeout=self.decode_timeout)  # (C, S, S, 3)
        with self._count:
            self.decoded += 1
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic_path(target) as tmp:
            Image.fromarray(frames[representative(frames)]).save(tmp, "JPEG", quality=POSTER_QUALITY)

    def close(self) -> None:
        self._pool.close()


class Previews(Posters):
    """Short H.264 previews of moments (`data.preview`) for files a browser cannot play, made on first request
    like posters (the same decoder pool, time limit and pending cap) and cached beside them as MP4 files."""

    NOUN, SUFFIX, VARIANT = "preview", ".mp4", f"{PREVIEW_SIDE}/{PREVIEW_SECONDS:g}/{PREVIEW_FPS}"

    def _make(self, decoder: DecodeProcess, path: Path, moment: tuple[float, float] | None, target: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.parent.mkdir(exist_ok=True, mode=0o700)
        decoder.preview(path, moment, target, timeout=self.decode_timeout)
        with self._count:
            self.decoded += 1


__all__ = ["MediaError", "IndexedVideos", "Posters", "Previews", "default_poster_cache", "media_type", "POSTER_SIZE"]
