"""Frames from decoder processes through shared memory (`data.shared_frames`): more groups than slots arrive
whole and in order, equal to an in-process decode; with no room for a block they come through the pipe; a
killed worker's successor gets the block and every slot free; the parent keeps no descriptor of a closed
worker's block; a worker waiting for a slot leaves once its parent is gone."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy.data import shared_frames
from dgl_deploy.data.decoder import VideoError
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.shared_frames import SLOTS, FrameWriter, SharedFrames, Ticket
from dgl_deploy.data.video import DecodeProcess, decode_frames
from dgl_deploy.data.window_decode import WindowDecodeProcess, decode_windows
from dgl_deploy.data.windows import Segmentation
from tests.test_decoder import ramp, write

SEGMENTS = Segmentation(2.0, 1.0)
T, S, GROUP_FRAMES = 4, 32, 8  # 2 windows per group: a 12 s clip gives more groups than slots


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("shm") / "ramp.mp4", ramp(120, 64, 96), rate=10)


@pytest.fixture()
def tickets(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each array the parent took came as a ticket (shared memory) rather than through the pipe."""
    seen: list[bool] = []
    take = SharedFrames.take

    def spy(self: SharedFrames, item: Ticket | np.ndarray) -> np.ndarray:
        seen.append(isinstance(item, Ticket))
        return take(self, item)

    monkeypatch.setattr(SharedFrames, "take", spy)
    return seen


def _blocks() -> int:
    """Descriptors of frame blocks open in this process."""
    return sum("dgl-frames" in os.readlink(f) for f in Path("/proc/self/fd").iterdir() if f.exists())


def _assert_same_groups(got: list, expected: list) -> None:
    assert [(g.first, g.total) for g in got] == [(g.first, g.total) for g in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.spans, b.spans)


def test_window_groups_through_shared_memory_equal_an_in_process_decode(clip: Path, tickets: list[bool]) -> None:
    before = _blocks()
    expected = list(decode_windows(clip, SEGMENTS, T, S, GROUP_FRAMES))
    with WindowDecodeProcess() as worker:
        for _ in range(2):  # the second request reuses the block and the slots
            _assert_same_groups(list(worker.stream(clip, SEGMENTS, T, S, 30, GROUP_FRAMES)), expected)
        assert _blocks() > before
    assert len(expected) > SLOTS and tickets == [True] * (2 * len(expected))
    assert _blocks() == before


def test_no_room_for_a_block_sends_frames_through_the_pipe(clip: Path, tickets: list[bool],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full(size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shared_frames, "_reserved", full)
    expected = list(decode_windows(clip, SEGMENTS, T, S, GROUP_FRAMES))
    with WindowDecodeProcess() as worker:
        _assert_same_groups(list(worker.stream(clip, SEGMENTS, T, S, 30, GROUP_FRAMES)), expected)
    assert tickets and not any(tickets)


def test_a_killed_worker_is_replaced_with_every_slot_free(clip: Path, tickets: list[bool]) -> None:
    expected = list(decode_windows(clip, SEGMENTS, T, S, GROUP_FRAMES))
    with WindowDecodeProcess() as worker:
        stream = worker.stream(clip, SEGMENTS, T, S, 30, GROUP_FRAMES)
        next(stream)
        worker._proc.kill()  # noqa: SLF001 (a crash while the worker may hold a slot)
        with pytest.raises(VideoError, match="crashed"):
            list(stream)
        _assert_same_groups(list(worker.stream(clip, SEGMENTS, T, S, 30, GROUP_FRAMES)), expected)
    assert all(tickets)


def test_whole_videos_through_shared_memory(clip: Path, tickets: list[bool]) -> None:
    requests = [FrameRequest(clip, T, S, (start, start + 4.0)) for start in range(SLOTS + 3)]
    with DecodeProcess() as worker:
        for request in requests:
            np.testing.assert_array_equal(worker.decode(request), decode_frames(request))
    assert tickets == [True] * len(requests)


def test_a_waiting_worker_leaves_when_its_parent_is_gone() -> None:
    parent, child = mp.Pipe()
    freed, free_slot = mp.Pipe(duplex=False)
    frames = SharedFrames()
    frames.bind(free_slot)
    block = frames.block(64)
    frames.hand_over(parent, os.getpid(), block)
    writer = FrameWriter(child, freed)
    writer.use(block)
    for _ in range(SLOTS):
        writer.put(np.zeros(64, np.uint8))  # every slot filled, none taken back
    frames.close()  # the parent's end of the freed slots' pipe too
    with pytest.raises(SystemExit):
        writer.put(np.zeros(64, np.uint8))
