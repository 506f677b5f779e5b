"""`dgl serve` follows its index: a new generation of the set (`dgl embed --update`, `--prune`) or a rebuilt index
folder (`dgl index build`) is served within `interval` seconds, without a restart or a failed request. Rows appended
in place (`store.append_set`) come with a new manifest too, and are served as the version `gen-…+N`.

A thread stats the files that name what is served every `interval` seconds (the set's manifest; for an index
folder also its index.json and index.faiss): a few stat calls, nothing read. When they change, it opens the index
again the way start-up does (`open_index`: the manifest, rows, ids and segments cross-checked, the index against
its set), checks it against the encoder, builds its catalogue of videos, and only then replaces the served state
with one assignment. A request reads the state once and uses it to the end, so it never mixes two generations;
the old state's memory maps close when its last request lets go of it. A state that does not open (a set being
written, an index folder not yet rebuilt after its set was updated: `index.json` no longer matches the rows) is
not served: the current one stays, and the follower tries again at the next change of the files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.ann_index import INDEX_FILE, MANIFEST_FILE, AnnIndex, SearchIndex
from dgl_deploy.retrieval.serve_media import IndexedVideos
from dgl_deploy.retrieval.store import StorePaths

log = logging.getLogger(__name__)
Stamp = tuple[tuple[int, int, int] | None, ...]  # (inode, size, mtime ns) of each watched file, None: missing


@dataclass(frozen=True)
class Served:
    """One opened state of the served index: a request reads one from start to end (a switch replaces it whole)."""

    index: SearchIndex
    videos: IndexedVideos  # its videos and moments, for the media routes

    @property
    def kind(self) -> str:
        """"exact" for an embeddings .npy, else the FAISS kind of the index folder."""
        return self.index.settings.kind if isinstance(self.index, AnnIndex) else "exact"

    @property
    def generation(self) -> str | None:
        """The set's generation and appends since (`EmbeddingStore.version`; None for a set written before
        generations existed)."""
        return self.index.store.version

    @property
    def rows(self) -> int:
        return int(self.index.store.vectors.shape[0])


def watched_files(path: Path, index: SearchIndex | None = None) -> list[Path]:
    """The files whose change means `path` may hold a new state: the set's manifest; for an index folder its
    index.json and index.faiss, and (once opened) the manifest of its set."""
    if not path.is_dir():
        return [StorePaths.of(path).manifest] if path.suffix == ".npy" else [path]  # else: refused by the open
    return [path / MANIFEST_FILE, path / INDEX_FILE] + ([index.store.paths.manifest] if index is not None else [])


def stamp(files: list[Path]) -> Stamp:
    """What the files are now (a new file is renamed into place: another inode, or another size or time)."""
    def one(file: Path) -> tuple[int, int, int] | None:
        try:
            info = os.stat(file)
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    return tuple(one(file) for file in files)


class IndexFollower:
    """The served state of the index at `path`, opened now (`open_index`) and, once started, replaced by a thread
    when the files change (module docstring)."""

    def __init__(self, path: Path | str, open_index: Callable[[], SearchIndex]) -> None:
        self.path = Path(path)
        self._open = open_index
        self._check: Callable[[SearchIndex], None] = lambda index: None
        seen = stamp(watched_files(self.path))  # before opening: a change during the open is seen at the next poll
        index = open_index()
        self.current = Served(index, IndexedVideos(index.store))
        self._seen = seen + stamp(watched_files(self.path, index)[len(seen):])
        self.switches = 0  # new states served since start-up
        self._stop = threading.Event()

    def start(self, check: Callable[[SearchIndex], None], interval: float) -> None:
        """Follow the files every `interval` seconds (0: never); `check` refuses a new state (DGLError) that the
        service cannot serve (another model)."""
        self._check = check
        if interval > 0:
            threading.Thread(target=self._follow, args=(interval,), name="dgl-serve-follow", daemon=True).start()

    def poll(self) -> bool:
        """Serve the state on disk if the files changed and it opens; whether the served state was replaced."""
        now = stamp(watched_files(self.path, self.current.index))
        if now == self._seen:
            return False
        self._seen = now
        try:
            index = self._open()
            self._check(index)
        except DGLError as exc:
            log.warning("%s changed but is not served (still serving generation %s): %s", self.path,
                        self.current.generation, exc)
            return False
        videos = IndexedVideos(index.store)
        videos.load()  # the catalogue is built here, not by the first request
        self.current, self.switches = Served(index, videos), self.switches + 1
        log.info("%s: now serving generation %s (%d rows)", self.path, self.current.generation, self.current.rows)
        return True

    def _follow(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:  # never let the follower die: the next change is tried again
                log.exception("%s: following the index failed", self.path)

    def close(self) -> None:
        """Stop the thread (the served state stays usable)."""
        self._stop.set()


__all__ = ["Served", "IndexFollower", "watched_files", "stamp"]
