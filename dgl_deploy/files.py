"""Atomic file writes (a temp file in the same folder, fsync, then os.replace: never a half-written output),
atomic symlink switches, and an exclusive per-output lock for writers (fcntl.flock, released by the OS when
the holding process dies, holder pid recorded in the lock file)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dgl_deploy.errors import DGLError


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it replaces `path` atomically, on error it is removed (an
    OSError that names no file, such as a full disk while writing, names `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a write to the temp file (a full disk): name the output, as the error line does
            exc.filename = str(path)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_symlink(link: Path | str, target: str) -> None:
    """Make `link` a symlink to `target` (relative to the link's folder) in one rename, whatever it was before."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def exclusive_lock(path: Path | str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, holder pid written in it, removed on release) while writing
    `what`; a second holder is refused with a DGLError naming the first one's pid. A killed holder's lock is
    released by the OS, so a stale lock file never blocks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, what)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # before unlocking: a waiter that opened this file sees it is gone and retries
        os.close(fd)


def _acquire(path: Path, what: str) -> int:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DGLError(f"{what} is being written by process {holder} (lock {path}): wait for it to finish, "
                           "or stop it") from None
        if _same_file(path, fd):  # not released and removed by the holder between our open and lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
