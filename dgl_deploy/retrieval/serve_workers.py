"""`dgl serve`'s workers, off the event loop: the encoder queue (one thread runs every encoder call, text before
video), the decoder pools (decoder processes, each used by one thread) and the uploads saved for them.

Backends are not assumed thread-safe, hence one encoder thread; text queries go before queued videos, so text
latency stays low while uploads decode. A decoder process is not thread-safe either, hence one thread each; a
process stopped after a hang or crash counts as a restart (`/metrics`), and the next job starts a new one.

Torch-free; PyAV is imported with the first decoder process, not with this module.
"""

from __future__ import annotations

import itertools
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from dgl_deploy.data.discover import VIDEO_EXTENSIONS

if TYPE_CHECKING:  # PyAV is imported when a service starts, not with the CLI
    from dgl_deploy.data.video import DecodeProcess

TEXT, VIDEO, STOP = 0, 1, 2  # encoder queue priorities: text first


class EncoderQueue:
    """One thread runs every encoder call, in priority order (TEXT before VIDEO), first come first served within."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        threading.Thread(target=self._work, name="dgl-serve-encoder", daemon=True).start()

    def depth(self) -> int:
        """Calls waiting for the encoder (not counting the one running)."""
        return self._jobs.qsize()

    def submit(self, priority: int, job: Callable[[], np.ndarray]) -> Future[np.ndarray]:
        """Queue `job` at `priority` (TEXT or VIDEO); its result (or exception) comes back in the future."""
        future: Future[np.ndarray] = Future()
        self._jobs.put((priority, next(self._order), job, future))
        return future

    def _work(self) -> None:
        while True:
            priority, _, job, future = self._jobs.get()
            if priority == STOP:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # handed to the waiting request
                    future.set_exception(exc)

    def close(self) -> None:
        """Stop the thread once the queued calls have run."""
        self._jobs.put((STOP, next(self._order), None, None))


class DecoderPool:
    """`size` decoder processes, each used by one thread of a pool of that size (DecodeProcess is not thread-safe)."""

    def __init__(self, size: int) -> None:
        from dgl_deploy.data.video import DecodeProcess

        pool = self
        self.restarts = 0  # decoder processes stopped after a hang or crash (the next job starts a new one)
        self._closing = False
        self._count = threading.Lock()

        class CountedDecodeProcess(DecodeProcess):
            """A decoder process whose stops, other than the pool's close, count as restarts."""

            def stop(self) -> int | None:
                code = super().stop()
                if code is not None and not pool._closing:
                    with pool._count:
                        pool.restarts += 1
                return code

        self._decoders = [CountedDecodeProcess() for _ in range(size)]
        self._idle: queue.SimpleQueue[DecodeProcess] = queue.SimpleQueue()
        for decoder in self._decoders:
            self._idle.put(decoder)
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="dgl-serve-decode")

    def submit(self, job: Callable[[DecodeProcess], np.ndarray]) -> Future[np.ndarray]:
        """Run `job` with the next idle decoder process, on the pool's threads."""
        return self._threads.submit(self._run, job)

    def _run(self, job: Callable[[DecodeProcess], np.ndarray]) -> np.ndarray:
        decoder = self._idle.get()
        try:
            return job(decoder)
        finally:
            self._idle.put(decoder)

    def close(self) -> None:
        """Kill the decoder processes (a decode in progress fails) and stop the threads."""
        self._closing = True
        self._threads.shutdown(wait=False, cancel_futures=True)
        for decoder in self._decoders:
            decoder.close()


@contextmanager
def saved_upload(upload: BinaryIO, name: str) -> Iterator[Path]:
    """The uploaded file as a temp file (keeping a known video extension, for the decoder), removed after."""
    suffix = Path(name).suffix.lower()
    handle, tmp = tempfile.mkstemp(prefix="dgl-upload-", suffix=suffix if suffix in VIDEO_EXTENSIONS else ".bin")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.read(1 << 20):
                out.write(chunk)
        yield Path(tmp)
    finally:
        os.remove(tmp)


__all__ = ["TEXT", "VIDEO", "EncoderQueue", "DecoderPool", "saved_upload"]
