"""Crash-isolated decoder subprocesses: one worker process per `WorkerProcess`, started from a forkserver that
has imported the worker's module once (fast restarts), killed and restarted after a hang or a crash.

A worker runs `worker_loop`: it ignores Ctrl-C (the parent's to handle), silences fd 2 (FFmpeg prints
there; the reason of a failure travels back in the reply), says ('ready', None), then answers each request with
the messages its handler sends, or ('error', reason) for a VideoError or anything else the decoder throws.
Frames travel through shared memory (`shared_frames`): the parent's `WorkerProcess.frames`, the worker's
`FrameWriter`, and the pipe of freed slots between them, made with each worker process.

Workers run at the encoder's CPU priority. The encoder's CPU runs are single-threaded and side by side, so a slice
a decoder takes stalls no other encoder thread; a lowered priority only starved the decoders (one decoder feeding
the encoder from a long file at nice 10 left the encoder waiting for frames; benchmarks/notes.md, decoder priority).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from typing import Any

from dgl_deploy.data.decoder import VideoError, decoder_message
from dgl_deploy.data.shared_frames import FrameWriter, SharedFrames
from dgl_deploy.errors import DGLError

STARTUP_TIMEOUT_S = 180.0  # starting a fresh worker on a loaded machine; not counted against any time limit
Connection = mp.connection.Connection


def worker_loop(conn: Connection, freed: Connection, handle: Callable[[Any, FrameWriter], None]) -> None:
    """The worker side: `handle(request, writer)` sends the replies of each request, its frames through `writer`
    (see the module docstring); `freed`: the reading end of the worker's pipe of freed slots."""
    writer = FrameWriter(conn, freed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        try:
            block, job = request
            writer.use(block)
            handle(job, writer)
        except VideoError as exc:
            conn.send(("error", exc.reason))
        except Exception as exc:  # anything else the decoder throws is still this file's failure
            conn.send(("error", f"decoder failed: {type(exc).__name__}: {decoder_message(exc)}"))


class WorkerProcess:
    """The parent side of one worker: `connection()` starts it when needed, `stop()` kills it (and wakes a
    thread waiting on it with EOF), `close()` for good; `frames` takes the frames it sends. Not thread-safe: one
    per thread."""

    def __init__(self, target: Callable[[Connection, Connection], None], preload: str, name: str) -> None:
        self._target, self._preload, self._name = target, preload, name
        self.frames = SharedFrames()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._closed = False

    def connection(self) -> Connection:
        """The running worker's pipe, starting a worker first if there is none (or it died)."""
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            return self._conn
        return self._start()

    def _start(self) -> Connection:
        if self._closed:
            raise DGLError(f"{type(self).__name__} is closed")
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([self._preload])
        parent, child = ctx.Pipe()
        freed, free_slot = ctx.Pipe(duplex=False)
        self.frames.bind(free_slot)
        self._proc = ctx.Process(target=self._target, args=(child, freed), daemon=True, name=self._name)
        try:
            self._proc.start()
        except RuntimeError as exc:  # multiprocessing re-imports an unguarded __main__ script
            self._proc = None
            raise DGLError("cannot start the video decoder process: put the calling script's code under "
                           "`if __name__ == '__main__':` (Python multiprocessing rule)") from exc
        finally:
            child.close()
            freed.close()
        self._conn = parent
        try:
            if not parent.poll(STARTUP_TIMEOUT_S) or parent.recv() != ("ready", None):
                raise TimeoutError
        except (TimeoutError, EOFError, OSError):
            code = self.stop()
            raise DGLError(f"the video decoder process failed to start (exit code {code}); see its stderr") from None
        return parent

    def send(self, job: Any, nbytes: int = 0) -> Connection:
        """Send `job` to the worker (started if needed) with the shared block for arrays of up to `nbytes` (0: the
        job returns none); the worker's pipe."""
        conn = self.connection()
        block = self.frames.block(nbytes) if nbytes else None
        conn.send((block, job))
        self.frames.hand_over(conn, self._proc.pid, block)
        return conn

    def stop(self) -> int | None:
        """Kill the worker; its exit code (negative = signal), None when none ran."""
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        code = None
        if proc is not None and proc.pid is not None:  # kill first: a waiting thread then wakes up with EOF
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            code = proc.exitcode
        if conn is not None:
            conn.close()
        return code

    def close(self) -> None:
        """Kill the subprocess and free its shared memory; the object cannot be used afterwards."""
        self._closed = True
        self.stop()
        self.frames.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
