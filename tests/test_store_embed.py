"""`dgl embed` jobs and their sets: a failed switch or a full disk keeps the old set and the finished work,
one writer per output, ids of a second folder, deleted videos and --prune, NaN rows, reruns after a finished
or refused job, stale chunks, settings checks, the recorded model path. A fake encoder keeps them fast."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy import files as files_module
from dgl_deploy.cli import app
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.retrieval import embed_merge
from dgl_deploy.retrieval import store as store_module
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos, write_chunk
from dgl_deploy.retrieval.query import resolve_model
from dgl_deploy.retrieval.store import StorePaths, open_store
from dgl_deploy.runtime.device import CPU

SETTINGS = EmbedSettings(batch_size=1, chunk_size=1, workers=1)


class FakeEncoder:
    """Colour statistics as embeddings; `poison` sets the row of the n-th video encoded to a value (NaN, 1e6);
    `crash_after` raises on later calls."""

    backend, frames, image_size, max_words, embed_dim, frame_sampling = "fake", 2, 16, 8, 6, "uniform"
    device, precision, manifest, host_check, video_lanes = CPU, "fp32", None, None, 0

    def __init__(self, fingerprint: str = "fake-1", poison: dict[int, float] | None = None,
                 crash_after: int | None = None) -> None:
        self.fingerprint, self.poison, self.crash_after = fingerprint, poison or {}, crash_after
        self.seen = self.calls = 0

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("encoder crashed")
        pixels = frames.astype(np.float32).reshape(len(frames), -1, 3)
        rows = np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1) + 1.0
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        for i in range(len(rows)):
            if self.seen + i in self.poison:
                rows[i] = self.poison[self.seen + i]
        self.seen += len(rows)
        return rows

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), self.embed_dim), np.float32) / np.sqrt(self.embed_dim)

    def describe(self) -> str:
        return "fake encoder"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips") / "videos"
    make_synthetic(folder, videos=6, seed=2, seconds=0.5)
    return folder


def _folder(clips: Path, dest: Path, picks: range, names: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(picks):
        shutil.copy(clips / f"vid_{i:05d}.mp4", dest / (names[n] if names else f"vid_{i:05d}.mp4"))
    return dest


def _snapshot(out: Path) -> tuple[list[str], np.ndarray]:
    store = open_store(out)
    return store.ids, np.array(store.vectors)


def _fail_when_replacing(monkeypatch, name: str) -> None:
    real = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(files_module.os, "replace", replace)


def test_failed_switch_keeps_old_set_and_finished_work(clips, tmp_path, monkeypatch) -> None:
    videos = _folder(clips, tmp_path / "v", range(4))
    out = tmp_path / "emb.npy"
    embed_videos(videos, out, FakeEncoder(), SETTINGS)
    ids, rows = _snapshot(out)
    _folder(clips, videos, range(4, 6))
    _fail_when_replacing(monkeypatch, "emb.manifest.json")  # a kill or full disk at the switch
    with pytest.raises(OSError):
        embed_videos(videos, out, FakeEncoder(), SETTINGS, update=True)
    monkeypatch.undo()
    assert _snapshot(out)[0] == ids
    np.testing.assert_array_equal(_snapshot(out)[1], rows)
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 10))
    with pytest.raises(DGLError, match=r"not enough free space .* MB needed"):
        embed_videos(videos, out, FakeEncoder(), SETTINGS, update=True)
    monkeypatch.undo()
    assert _snapshot(out)[0] == ids and len(list((tmp_path / "emb.parts").glob("chunk_*.npz"))) == 2
    encoder = FakeEncoder()
    result = embed_videos(videos, out, encoder, SETTINGS, update=True)
    assert encoder.calls == 0 and result.embedded == 2  # the finished chunks were used, not redone
    assert _snapshot(out)[0] == ids + ["vid_00004.mp4", "vid_00005.mp4"]
    np.testing.assert_array_equal(_snapshot(out)[1][:4], rows)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("emb")) == \
        sorted(["emb.npy", "emb.ids.txt", "emb.manifest.json", "emb.errors.tsv", *_generation_names(out)])


def _generation_names(out: Path) -> list[str]:
    store = open_store(out)
    return [p.name for p in store.paths.data_files(store.manifest)]


HOLD_LOCK = """
import sys, time
from dgl_deploy.retrieval.store import StorePaths, writer_lock
with writer_lock(StorePaths.of(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_embed_on_same_output_is_refused(clips, tmp_path) -> None:
    videos = _folder(clips, tmp_path / "v", range(2))
    out = tmp_path / "emb.npy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DGLError, match=f"emb.npy is being written by process {holder.pid} "):
            embed_videos(videos, out, FakeEncoder(), SETTINGS)
        assert not (tmp_path / "emb.parts").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up: the OS releases the lock, its file stays
        holder.wait()
    assert (tmp_path / "emb.lock").exists()
    assert embed_videos(videos, out, FakeEncoder(), SETTINGS).embedded == 2
    assert not (tmp_path / "emb.lock").exists()


def test_update_from_another_folder_never_skips(clips, tmp_path) -> None:
    first = _folder(clips, tmp_path / "a", range(3))
    out = tmp_path / "emb.npy"
    embed_videos(first, out, FakeEncoder(), SETTINGS)
    other = _folder(clips, tmp_path / "b", range(3, 5), ["vid_00000.mp4", "vid_00001.mp4"])  # same names
    result = embed_videos(other, out, FakeEncoder(), SETTINGS, update=True)
    assert result.embedded == 2 and result.missing == 0
    store = open_store(out)
    assert store.ids[3:] == ["../b/vid_00000.mp4", "../b/vid_00001.mp4"]
    assert store.manifest["source_root"] == str(first) and store.manifest["source_root_relative"] == "a"
    assert not np.allclose(store.vectors[0], store.vectors[3])
    _folder(clips, first / "sub", range(5, 6))
    assert embed_videos(first / "sub", out, FakeEncoder(), SETTINGS, update=True).embedded == 1
    assert open_store(out).ids[-1] == "sub/vid_00005.mp4"  # as an update from the first folder would name it
    assert embed_videos(first, out, FakeEncoder(), SETTINGS, update=True).up_to_date


def test_deleted_videos_are_counted_then_pruned(clips, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("dgl_deploy.runtime.backends.select.open_encoder", lambda *a, **k: FakeEncoder())
    videos = _folder(clips, tmp_path / "v", range(5))
    out = tmp_path / "emb.npy"
    args = ["embed", str(videos), "--out", str(out), "--model", str(tmp_path / "m"), "--chunk-size", "2",
            "--workers", "1", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    ids, rows = _snapshot(out)
    for name in ("vid_00001.mp4", "vid_00003.mp4"):
        (videos / name).unlink()
    kept = CliRunner().invoke(app, [*args, "--update"])
    assert kept.exit_code == 0 and "up to date" in kept.stdout and "2 rows have no video file" in kept.stdout
    assert CliRunner().invoke(app, [*args, "--prune"]).exit_code == 1  # --prune needs --update
    pruned = CliRunner().invoke(app, [*args, "--update", "--prune"])
    assert pruned.exit_code == 0 and "2 dropped" in pruned.stdout and "(3 rows)" in pruned.stdout, pruned.output
    assert _snapshot(out)[0] == [ids[0], ids[2], ids[4]]
    np.testing.assert_array_equal(_snapshot(out)[1], rows[[0, 2, 4]])
    videos.rename(tmp_path / "moved")  # the root is gone: not a deletion of its videos
    refused = CliRunner().invoke(app, [*args[:1], str(tmp_path / "moved"), *args[2:], "--update", "--prune"])
    assert refused.exit_code == 1 and "--prune is refused" in refused.stderr


def test_non_finite_rows_become_failures(clips, tmp_path) -> None:
    videos = _folder(clips, tmp_path / "v", range(4))
    encoder = FakeEncoder(poison={1: np.nan, 2: 1e6})
    result = embed_videos(videos, tmp_path / "emb.npy", encoder, EmbedSettings(batch_size=2, workers=1, fp16=True))
    assert [(i, "NaN" in r, "float16" in r) for i, r in result.failures] == \
        [("vid_00001.mp4", True, False), ("vid_00002.mp4", False, True)]
    store = open_store(tmp_path / "emb.npy")
    assert store.ids == ["vid_00000.mp4", "vid_00003.mp4"] and np.isfinite(store.vectors).all()


def test_rerun_after_a_job_killed_before_cleanup_is_up_to_date(clips, tmp_path, monkeypatch) -> None:
    videos = _folder(clips, tmp_path / "v", range(3))
    out = tmp_path / "emb.npy"
    monkeypatch.setattr(embed_merge, "remove_parts", lambda parts: None)  # killed right after the switch
    embed_videos(videos, out, FakeEncoder(), SETTINGS)
    monkeypatch.undo()
    assert (tmp_path / "emb.parts" / "job.json").exists()
    result = embed_videos(videos, out, FakeEncoder(), SETTINGS)  # the same command again
    assert result.up_to_date and result.rows == 3 and not (tmp_path / "emb.parts").exists()
    _folder(clips, videos, range(3, 4))
    with pytest.raises(DGLError, match="lacks 1 of the 4 videos: use --update"):
        embed_videos(videos, out, FakeEncoder(), SETTINGS)


def test_refused_or_failed_runs_leave_nothing_behind(clips, tmp_path) -> None:
    videos = _folder(clips, tmp_path / "v", range(3))
    out, parts = tmp_path / "emb.npy", tmp_path / "emb.parts"
    with pytest.raises(RuntimeError, match="crashed"):
        embed_videos(videos, out, FakeEncoder(crash_after=0), SETTINGS)
    assert not parts.exists() and not (tmp_path / "emb.lock").exists()
    parts.mkdir()
    (parts / "job.json").write_text('{"model_fingerprint": "another"}')  # no chunk: nothing to lose
    embed_videos(videos, out, FakeEncoder("fake-1"), SETTINGS)
    with pytest.raises(DGLError, match="another model"):
        embed_videos(videos, out, FakeEncoder("fake-2"), SETTINGS, update=True)
    assert not parts.exists() and not (tmp_path / "emb.lock").exists()


def test_stale_chunk_is_redone_not_merged(clips, tmp_path) -> None:
    videos = _folder(clips, tmp_path / "v", range(4))
    reference = embed_videos(videos, tmp_path / "ref.npy", FakeEncoder(), SETTINGS)
    out = tmp_path / "emb.npy"
    with pytest.raises(RuntimeError):
        embed_videos(videos, out, FakeEncoder(crash_after=2), SETTINGS)
    parts = StorePaths.of(out).parts
    write_chunk(parts / "chunk_000000.npz", np.ones((1, 6), np.float32), ["other.mp4"], [], False,
                precision="fp32")
    encoder = FakeEncoder()
    embed_videos(videos, out, encoder, SETTINGS)
    assert encoder.calls == 3 and reference.embedded == 4  # chunk 0 redone, chunk 1 reused
    assert _snapshot(out)[0] == _snapshot(tmp_path / "ref.npy")[0]
    np.testing.assert_allclose(_snapshot(out)[1], _snapshot(tmp_path / "ref.npy")[1], atol=1e-6)


@pytest.mark.parametrize("bad", [{"chunk_size": -4}, {"batch_size": 0}, {"workers": 2.5}, {"workers": True},
                                 {"timeout": float("nan")}, {"timeout": 0}, {"fp16": "yes"}])
def test_embed_settings_are_checked(bad) -> None:
    with pytest.raises(DGLError, match=f"EmbedSettings: {next(iter(bad))} must be"):
        EmbedSettings(**bad)


def test_recorded_model_follows_a_copied_set(clips, tmp_path) -> None:
    (tmp_path / "a" / "model").mkdir(parents=True)
    embed_videos(_folder(clips, tmp_path / "a" / "v", range(1)), tmp_path / "a" / "emb.npy", FakeEncoder(), SETTINGS,
                 model=str(tmp_path / "a" / "model"))
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    shutil.rmtree(tmp_path / "a")
    store = open_store(tmp_path / "b" / "emb.npy")
    assert store.manifest["model_relative"] == "model"
    assert resolve_model(store, None) == str(tmp_path / "b" / "model")
    shutil.rmtree(tmp_path / "b" / "model")
    with pytest.raises(DGLError, match="not there any more .* pass --model"):
        resolve_model(store, None)
