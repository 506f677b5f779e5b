"""Decoded frames from a decoder process to its parent through shared memory instead of the pipe.

Through the pipe an array is pickled, copied into the socket, read back and unpickled: four copies and a few
hundred system calls per group of frames, a large share of a long file's decoding CPU (CHANGELOG.md). Here the
parent owns one shared block per worker, `SLOTS` slots of a size it chooses per request (`SharedFrames.block`):
the worker copies an array into the next slot (`FrameWriter.put`) and sends a small `Ticket`; the parent copies it out
(`SharedFrames.take`) and frees the slot with one byte on a pipe of its own, made with the worker process. The
worker counts arrays sent and freed, so it fills one slot while the parent empties the other and never
overwrites an array not taken yet (the parent takes arrays in the order they were sent).

The block is an anonymous memory file (memfd_create: no name in /dev/shm, so nothing is left behind however the
processes end, and Docker's 64 MB /dev/shm does not limit it), reserved in full when it is made (posix_fallocate:
no room is an error here, in the parent, never a SIGBUS in the worker). Its descriptor goes to the worker over
the pipe's socket (SCM_RIGHTS) right after the first request that names it. Where there is no memfd (not
Linux) or no room, `block` returns None and arrays travel through the pipe as before.
"""

from __future__ import annotations

import itertools
import mmap
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

import numpy as np

SLOTS = 2  # arrays in flight per worker: the worker fills one slot while the parent empties the other
_ids = itertools.count(1)


def frame_bytes(count: int, image_size: int) -> int:
    """Bytes of `count` (S, S, 3) uint8 frames: the slot a request needs."""
    return count * image_size * image_size * 3


@dataclass(frozen=True)
class Block:
    """Where a worker writes: which block (its descriptor follows the first request naming it) and the size of
    each of its slots."""

    id: int
    slot_bytes: int


@dataclass(frozen=True)
class Ticket:
    """A uint8 array waiting in a slot of the block."""

    slot: int  # 0 .. SLOTS - 1
    shape: tuple[int, ...]


class _Mapping:
    """A block's descriptor (kept to hand to a worker; the mapping holds its own) and its mapping here."""

    def __init__(self, fd: int, block: Block) -> None:
        self.fd, self.block = fd, block
        self.memory = mmap.mmap(fd, SLOTS * block.slot_bytes)

    def slot(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, np.uint8, self.memory, offset=index * self.block.slot_bytes)

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


class SharedFrames:
    """The parent side for one worker process (module docstring). Not thread-safe: one per worker."""

    def __init__(self) -> None:
        self._mapping: _Mapping | None = None
        self._freed: Connection | None = None  # the current worker's pipe of freed slots
        self._holder: tuple[int, int] | None = None  # (worker pid, block id) of the worker that has the descriptor

    def bind(self, freed: Connection) -> None:
        """A new worker process (every slot free), with its own pipe of freed slots (the writing end)."""
        if self._freed is not None:
            self._freed.close()
        self._freed = freed

    def block(self, nbytes: int) -> Block | None:
        """The block for arrays of up to `nbytes`, made (or grown) here; None when shared memory cannot hold it."""
        if self._mapping is None or self._mapping.block.slot_bytes < nbytes:
            self._drop_block()
            block = Block(next(_ids), nbytes)
            try:
                self._mapping = _Mapping(_reserved(SLOTS * nbytes), block)
            except (OSError, AttributeError):  # no room, or no memfd_create on this platform
                return None
        return self._mapping.block

    def hand_over(self, conn: Connection, pid: int, block: Block | None) -> None:
        """After a request naming `block`: its descriptor to the worker `pid`, unless that worker has it."""
        if block is not None and self._mapping is not None and self._holder != (pid, block.id):
            send_handle(conn, self._mapping.fd, pid)
            self._holder = (pid, block.id)

    def take(self, item: Ticket | np.ndarray) -> np.ndarray:
        """The array a worker sent: copied out of its slot (which is then free again), or as it came."""
        if not isinstance(item, Ticket):
            return item
        assert self._mapping is not None and self._freed is not None, "a ticket without a block"
        out = self._mapping.slot(item.slot, item.shape).copy()
        try:
            self._freed.send_bytes(b"")
        except OSError:  # the worker has gone since it sent the array: its slots no longer matter
            pass
        return out

    def close(self) -> None:
        """Drop the block (the memory goes once the worker lets go of it too) and the pipe of freed slots."""
        if self._freed is not None:
            self._freed.close()
            self._freed = None
        self._drop_block()

    def _drop_block(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
            self._mapping, self._holder = None, None


def _reserved(size: int) -> int:
    """A new anonymous memory file of `size` bytes, every page reserved now (OSError when they cannot be)."""
    fd = os.memfd_create("dgl-frames", os.MFD_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class FrameWriter:
    """The worker side (module docstring): `use` at each request, `put` for each array."""

    def __init__(self, conn: Connection, freed: Connection) -> None:
        self._conn, self._freed = conn, freed  # the worker's pipe, and the reading end of the freed slots' pipe
        self._mapping: _Mapping | None = None
        self._block: Block | None = None  # the current request's
        self._sent = self._taken = 0  # arrays put in slots, and taken out by the parent

    def use(self, block: Block | None) -> None:
        """The block of the request just received; its descriptor is read from the pipe if it is new here."""
        self._block = block
        if block is not None and (self._mapping is None or self._mapping.block != block):
            fd = recv_handle(self._conn)
            if self._mapping is not None:
                self._mapping.close()
            self._mapping = _Mapping(fd, block)

    def put(self, array: np.ndarray) -> Ticket | np.ndarray:
        """A ticket for `array` (uint8) copied into the next slot, once that slot is free; the array itself when
        the request has no block or the array does not fit a slot."""
        if self._block is None or self._mapping is None or array.nbytes > self._block.slot_bytes \
                or array.dtype != np.uint8:
            return array
        while self._sent - self._taken >= SLOTS:
            try:
                self._freed.recv_bytes()
            except (EOFError, OSError):  # the parent is gone
                raise SystemExit(0) from None
            self._taken += 1
        slot = self._sent % SLOTS
        np.copyto(self._mapping.slot(slot, array.shape), array)
        self._sent += 1
        return Ticket(slot, array.shape)


__all__ = ["SLOTS", "Block", "Ticket", "SharedFrames", "FrameWriter", "frame_bytes"]
