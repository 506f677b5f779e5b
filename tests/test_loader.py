"""The parallel loader end to end on good + broken files, and the frame cache."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import dgl_deploy.data.loader as loader_module
from dgl_deploy.data.datasets import VideoItem
from dgl_deploy.data.frame_cache import FrameCache
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.loader import iter_video_batches
from dgl_deploy.data.synthetic import make_synthetic, write_broken_files
from dgl_deploy.data.video import decode_frames


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[int, str]]:
    """Good and broken files interleaved; returns (paths, {index of a broken file: expected reason})."""
    root = tmp_path_factory.mktemp("mixed")
    make_synthetic(root, videos=7, seed=5, size=(32, 32), seconds=1.0, fps=10)
    good = sorted(root.glob("vid_*.mp4"))
    broken = write_broken_files(root / "broken")
    paths: list[Path] = []
    reasons: dict[int, str] = {}
    for name, reason in broken.items():
        paths.append(good.pop())
        if reason is not None:
            reasons[len(paths)] = reason
        paths.append(root / "broken" / name)
    reasons[len(paths)] = "file not found"
    paths += [root / "missing.mp4", *good]
    return paths, reasons


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolate", [True, False])
def test_every_good_file_returned_every_broken_reported(mixed: tuple[list[Path], dict[int, str]], isolate: bool) -> None:
    paths, reasons = mixed
    batches = list(iter_video_batches(paths, 4, 24, batch_size=3, workers=2, isolate=isolate))
    indices = [i for b in batches for i in b.indices]
    failures = {f.index: f for b in batches for f in b.failures}
    assert indices == sorted(set(range(len(paths))) - set(reasons))  # input order, nothing lost
    assert set(failures) == set(reasons)
    for index, failure in failures.items():
        assert failure.path == paths[index] and failure.reason.startswith(reasons[index])
    assert all(b.frames.shape == (len(b.indices), 4, 24, 24, 3) for b in batches)
    assert all(len(b.indices) == 3 for b in batches[:-1])
    first = batches[0]
    assert np.array_equal(first.frames[0], decode_frames(FrameRequest(paths[first.indices[0]], 4, 24)))


def decoder_processes() -> int:
    return sum(p.name == "dgl-decode" for p in multiprocessing.active_children())


@pytest.mark.timeout(60)
def test_segments_and_early_close(tmp_path: Path) -> None:
    make_synthetic(tmp_path, videos=4, seed=1, size=(32, 32), seconds=2.0, fps=10)
    items = [VideoItem(p, ["x"], (0.0, 0.5), p.stem) for p in sorted(tmp_path.glob("*.mp4"))]
    before = decoder_processes()
    batches = iter_video_batches(items, 2, 16, batch_size=1, workers=2)
    batch = next(batches)
    assert np.array_equal(batch.frames[0], decode_frames(FrameRequest(items[0].path, 2, 16, (0.0, 0.5))))
    assert decoder_processes() > before
    batches.close()  # kills the decoders, returns at once
    assert decoder_processes() == before


@pytest.mark.timeout(60)
def test_frame_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_synthetic(tmp_path / "v", videos=3, seed=2, size=(32, 32), seconds=1.0, fps=10)
    paths = sorted((tmp_path / "v").glob("*.mp4"))
    cache = FrameCache(tmp_path / "cache")
    first = list(iter_video_batches(paths, 4, 16, batch_size=8, isolate=False, cache=cache))[0]
    assert cache.get(FrameRequest(paths[0], 4, 16)) is not None and cache.get(FrameRequest(paths[0], 5, 16)) is None

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(loader_module, "decode_frames", no_decoding)
    again = list(iter_video_batches(paths, 4, 16, batch_size=8, isolate=False, cache=cache))[0]
    assert np.array_equal(again.frames, first.frames)
    assert isinstance(cache.get(FrameRequest(paths[0], 4, 16)), np.memmap)

    shutil.copy(paths[1], paths[0])  # new content (size/mtime change) -> miss
    os.utime(paths[0], ns=(1, 1))
    assert cache.get(FrameRequest(paths[0], 4, 16)) is None
    assert cache.get(FrameRequest(paths[0], 4, 16, (0.0, 0.5))) is None  # other settings -> miss
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temp files
