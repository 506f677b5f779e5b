"""Embedding sets grown in place (`store.append_set`, `dgl embed --update`): only the new rows are written, and the
set's guarantees hold: a kill or a full disk at every step of an append leaves the old set or the new one (a reader
trusts the manifest's count), a kill between the append and the switch (a real SIGKILL) leaves the old set, a kill
after the switch leaves the new one with the old .npy headers until the next writer repairs them; range checksums
are resumed, not recomputed; the scan copy and segments follow the rows."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.retrieval import store as store_module
from dgl_deploy.retrieval.embed import embed_videos
from dgl_deploy.retrieval.store import (
    StorePaths,
    append_set,
    open_store,
    repair_set,
    verify_store,
    write_set,
    writer_lock,
)
from tests.test_store_embed import HOLD_LOCK, SETTINGS, FakeEncoder, _folder, clips  # noqa: F401 (clips: a fixture)

DIM = 8
FIELDS = {"model_fingerprint": "fp"}


def _rows(seed: int, count: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _spans(first: int, count: int) -> np.ndarray:
    return np.stack([np.arange(first, first + count), np.arange(first, first + count) + 1.0], axis=1)


def _write(emb: Path, rows: np.ndarray, ids: list[str], segmented: bool = False) -> StorePaths:
    fields = {**FIELDS, "settings": {"segments": {"window": 1.0, "stride": 1.0}}} if segmented else FIELDS
    write_set(StorePaths.of(emb), [rows], ids, dim=rows.shape[1], dtype=np.float32, fields=fields,
              spans=_spans(0, len(ids)) if segmented else None)
    return StorePaths.of(emb)


def _append(emb: Path, rows: np.ndarray, ids: list[str], before: Callable[[], object] = lambda: None) -> dict:
    """Append as `dgl embed --update` does: under the writer lock, to the set opened under it (`before` is called
    just before `append_set`)."""
    paths = StorePaths.of(emb)
    with writer_lock(paths):
        repair_set(paths)
        store = open_store(emb)
        spans = None if store.spans is None else _spans(len(store.ids), len(ids))
        before()
        return append_set(store, [rows], ids, dtype=np.float32, fields=store.manifest | FIELDS, spans=spans)


def _files(emb: Path) -> dict[str, tuple[int, int]]:
    """(inode, size) of each generation file of the set."""
    return {p.name: (p.stat().st_ino, p.stat().st_size) for p in sorted(emb.parent.iterdir()) if ".gen-" in p.name}


def _state(emb: Path) -> tuple[list[str], np.ndarray]:
    store = open_store(emb)
    return store.ids, np.array(store.vectors)


@pytest.fixture(autouse=True)
def small_scan_copy(monkeypatch) -> None:
    monkeypatch.setattr(store_module, "SCAN_COPY_MIN_ROWS", 30)


@pytest.mark.parametrize("segmented", [False, True])
def test_append_writes_only_the_new_rows(tmp_path, segmented) -> None:
    emb, rows, ids = tmp_path / "emb.npy", _rows(0, 40), [f"v{i}" for i in range(40)]
    paths = _write(emb, rows, ids, segmented)
    before = _files(emb)
    generation = open_store(emb).manifest["generation"]
    head = paths.rows_file(generation).read_bytes()[128:]
    _append(emb, _rows(1, 3), ["n0", "n1", "n2"])
    _append(emb, _rows(2, 2), ["m0", "m1"])
    after = _files(emb)
    assert after.keys() == before.keys() and all(after[name][0] == before[name][0] for name in before)  # same files
    grown = {name: after[name][1] - before[name][1] for name in before}
    assert grown[f"emb.{generation}.npy"] == 5 * DIM * 4 and grown[f"emb.{generation}.scan16.npy"] == 5 * DIM * 2
    assert grown[f"emb.{generation}.ids.txt"] == 15 and grown.get(f"emb.{generation}.segments.npy", 80) == 80
    assert paths.rows_file(generation).read_bytes()[128:128 + len(head)] == head  # the old rows untouched
    store = open_store(emb)
    everything = np.concatenate([rows, _rows(1, 3), _rows(2, 2)])
    assert store.ids == ids + ["n0", "n1", "n2", "m0", "m1"] and store.version == f"{generation}+2"
    np.testing.assert_array_equal(store.vectors, everything)
    np.testing.assert_array_equal(store.scan_copy.rows, everything.astype(np.float16))
    np.testing.assert_array_equal(np.load(emb), everything)  # the public names: every row, every id
    assert paths.ids.read_text().split("\n")[:-1] == store.ids
    if segmented:
        np.testing.assert_array_equal(store.spans, _spans(0, 45))
        np.testing.assert_array_equal(np.load(paths.spans), _spans(0, 45))
    assert verify_store(emb).endswith("ids and segments match theirs" if segmented else "ids match theirs")


def test_range_checksums_are_resumed_and_checked(tmp_path, monkeypatch) -> None:
    """The checksum is one sha256 per RANGE_BYTES of rows: an append rehashes the last, partial range (after checking
    it) and its own; `dgl verify` checks every range; a damaged last range is refused by the append."""
    monkeypatch.setattr(store_module, "RANGE_BYTES", 2**16)
    emb = tmp_path / "emb.npy"
    paths = _write(emb, _rows(0, 600, 64), [f"v{i}" for i in range(600)])  # 153,600 bytes: 3 ranges
    _append(emb, _rows(1, 300, 64), [f"n{i}" for i in range(300)])
    recorded = open_store(emb).manifest["rows_checksum"]
    everything = np.concatenate([_rows(0, 600, 64), _rows(1, 300, 64)])
    fresh = write_set(StorePaths.of(tmp_path / "fresh.npy"), [everything], open_store(emb).ids, dim=64,
                      dtype=np.float32, fields=FIELDS)
    assert recorded["ranges_sha256"] == fresh["rows_checksum"]["ranges_sha256"] and len(recorded["ranges_sha256"]) == 4
    assert recorded["sample_sha256"] == fresh["rows_checksum"]["sample_sha256"]
    verify_store(emb)
    rows_file = paths.rows_file(open_store(emb).manifest["generation"])
    kept = rows_file.read_bytes()
    edited = np.load(rows_file, mmap_mode="r+")
    edited[[10, 11]] = edited[[11, 10]]  # inside the first range, outside the open's sample? verify finds it anyway
    edited.flush()
    del edited
    with pytest.raises(DGLError, match="the rows do not match their checksum"):
        verify_store(emb)
    rows_file.write_bytes(kept)
    edited = np.load(rows_file, mmap_mode="r+")
    edited[[850, 851]] = edited[[851, 850]]  # in the last, partial range: the next append rehashes it
    edited.flush()
    del edited
    with pytest.raises(DGLError, match=f"{rows_file.name}: the rows do not match their checksum"):
        _append(emb, _rows(2, 1, 64), ["x"])


class _Killed(BaseException):
    """A kill at a write step (not an OSError: the append does not clean up after it, as after a real kill)."""


STEP_CALLS = ("fsync", "replace", "pwrite", "ftruncate")  # every durable step of an append goes through one


def _count_steps(monkeypatch, fail_at: int | None, error: BaseException) -> list[str]:
    """Wrap the os calls of STEP_CALLS: the `fail_at`-th of them (all counted together) raises `error`."""
    calls: list[str] = []
    for name in STEP_CALLS:
        real = getattr(os, name)

        def step(*args: object, _real=real, _name=name) -> object:
            calls.append(_name)
            if len(calls) == fail_at:
                raise error
            return _real(*args)

        monkeypatch.setattr(os, name, step)
    return calls


@pytest.mark.parametrize("error", [_Killed(), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["kill", "full-disk"])
@pytest.mark.parametrize("segmented", [False, True])
def test_a_failure_at_every_step_of_an_append_leaves_the_old_or_the_new_set(tmp_path, monkeypatch, error,
                                                                           segmented) -> None:
    old_rows, old_ids = _rows(0, 40), [f"v{i}" for i in range(40)]
    new_rows, new_ids = _rows(1, 4), [f"n{i}" for i in range(4)]
    both = (old_ids + new_ids, np.concatenate([old_rows, new_rows]))
    _write(tmp_path / "base" / "emb.npy", old_rows, old_ids, segmented)
    counted: list[list[str]] = []
    shutil.copytree(tmp_path / "base", tmp_path / "count", symlinks=True)
    _append(tmp_path / "count" / "emb.npy", new_rows, new_ids,
            lambda: counted.append(_count_steps(monkeypatch, None, error)))
    monkeypatch.undo()
    calls = counted[0]
    steps, seen = len(calls), set()
    assert steps >= 8, calls
    for fail_at in range(1, steps + 1):
        folder = Path(shutil.copytree(tmp_path / "base", tmp_path / f"at{fail_at}", symlinks=True))
        emb, sizes = folder / "emb.npy", _files(folder / "emb.npy")
        with pytest.raises(type(error)):
            _append(emb, new_rows, new_ids, lambda at=fail_at: _count_steps(monkeypatch, at, error))
        monkeypatch.undo()
        ids, rows = _state(emb)
        switched = ids == both[0]
        seen.add(switched)
        assert ids == (both[0] if switched else old_ids)
        np.testing.assert_array_equal(rows, both[1] if switched else old_rows)
        public = np.load(emb)  # the old rows, or every row once the headers are rewritten
        np.testing.assert_array_equal(public, both[1][:len(public)])
        assert len(public) in (40, 44) and (switched or len(public) == 40)
        verify_store(emb)
        if isinstance(error, OSError) and not switched:
            assert _files(emb) == sizes  # a full disk: cut back to the old set at once
        _append(emb, _rows(2, 1), ["z"])  # the next writer repairs, then appends
        final_ids = (both[0] if switched else old_ids) + ["z"]
        final_rows = np.concatenate([both[1] if switched else old_rows, _rows(2, 1)])
        assert _state(emb)[0] == final_ids and StorePaths.of(emb).ids.read_text().split("\n")[:-1] == final_ids
        np.testing.assert_array_equal(np.load(emb), final_rows)
        np.testing.assert_array_equal(open_store(emb).scan_copy.rows, final_rows.astype(np.float16))
        if segmented:
            np.testing.assert_array_equal(np.load(StorePaths.of(emb).spans), _spans(0, len(final_ids)))
        verify_store(emb)
    assert seen == {False, True}


APPEND_AND_HANG = """
import sys, time
import numpy as np
from dgl_deploy.retrieval import store
from tests.test_store_append import _append, _rows

when = sys.argv[2]
real_write, real_repair = store.atomic_write_text, store.repair_set
calls = []

def hang(message):
    print(message, flush=True)
    time.sleep(120)

def write_text(path, text):  # the manifest: the switch
    if when == "before-switch":
        hang("appended")
    real_write(path, text)

def repair(paths):  # called first, then after the switch for the headers
    calls.append(paths)
    if when == "after-switch" and len(calls) == 2:
        hang("switched")
    real_repair(paths)

store.atomic_write_text, store.repair_set = write_text, repair
_append(sys.argv[1], _rows(1, 4), [f"n{i}" for i in range(4)])
"""


@pytest.mark.parametrize("when", ["before-switch", "after-switch"])
def test_a_sigkill_between_the_append_and_the_switch_or_the_headers(tmp_path, when) -> None:
    """A real SIGKILL after the rows, copy and ids were appended but before the manifest's rename leaves the old set
    (bytes past its count, ignored; a reader opening then sees the old set); one after the rename but before the
    headers leaves the new set, with np.load("emb.npy") giving the old rows until the next writer."""
    emb, old_rows, old_ids = tmp_path / "emb.npy", _rows(0, 40), [f"v{i}" for i in range(40)]
    _write(emb, old_rows, old_ids)
    sizes = _files(emb)
    child = subprocess.Popen([sys.executable, "-c", APPEND_AND_HANG, str(emb), when], stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).parent.parent)
    try:
        assert child.stdout.readline().strip() == ("appended" if when == "before-switch" else "switched")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    everything = np.concatenate([old_rows, _rows(1, 4)])
    assert all(_files(emb)[name][1] > sizes[name][1] for name in sizes)  # appended past the count
    ids, rows = _state(emb)
    expected = old_ids if when == "before-switch" else old_ids + [f"n{i}" for i in range(4)]
    assert ids == expected
    np.testing.assert_array_equal(rows, everything[:len(expected)])
    np.testing.assert_array_equal(np.load(emb), old_rows)  # the header still says 40 rows
    paths = StorePaths.of(emb)
    with writer_lock(paths):
        repair_set(paths)  # what the next `dgl embed` on the set does first
    np.testing.assert_array_equal(np.load(emb), everything[:len(expected)])
    assert paths.ids.read_text().split("\n")[:-1] == expected
    if when == "before-switch":
        assert _files(emb) == sizes
    verify_store(emb)


def test_a_nan_row_or_a_full_disk_mid_append_cuts_the_files_back(tmp_path) -> None:
    emb = tmp_path / "emb.npy"
    _write(emb, _rows(0, 40), [f"v{i}" for i in range(40)])
    before = _files(emb)
    bad = _rows(1, 3)
    bad[1, 2] = np.inf
    with pytest.raises(DGLError, match=r"row 41 \(n1\) is NaN/inf"):
        _append(emb, bad, ["n0", "n1", "n2"])
    assert _files(emb) == before and len(open_store(emb).ids) == 40

    def full_disk():
        yield _rows(1, 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    paths = StorePaths.of(emb)
    with writer_lock(paths), pytest.raises(OSError):
        append_set(open_store(emb), full_disk(), ["n0", "n1", "n2"], dtype=np.float32, fields=FIELDS)
    assert _files(emb) == before and len(open_store(emb).ids) == 40
    verify_store(emb)


def test_scan_copy_follows_the_rows(tmp_path) -> None:
    """A set reaching SCAN_COPY_MIN_ROWS by an append gets its copy then; a row beyond float16's range drops it."""
    emb = tmp_path / "emb.npy"
    _write(emb, _rows(0, 28), [f"v{i}" for i in range(28)])
    assert open_store(emb).scan_copy is None
    _append(emb, _rows(1, 3), ["a", "b", "c"])
    everything = np.concatenate([_rows(0, 28), _rows(1, 3)])
    np.testing.assert_array_equal(open_store(emb).scan_copy.rows, everything.astype(np.float16))
    _append(emb, _rows(2, 1) * 1e5, ["far"])
    store = open_store(emb)
    assert store.scan_copy is None and "scan_copy" not in store.manifest and len(store.ids) == 32
    assert not any("scan16" in name for name in _files(emb))
    verify_store(emb)


def test_sets_that_cannot_be_appended_to_get_a_new_generation(tmp_path) -> None:
    """A set whose checksum is one whole-file sha256 (written before range checksums) and an update at another
    dtype are written whole as a new generation, with every row."""
    emb = tmp_path / "emb.npy"
    paths = _write(emb, _rows(0, 5), [f"v{i}" for i in range(5)])
    manifest = json.loads(paths.manifest.read_text())
    rows_file = paths.rows_file(manifest["generation"])
    manifest["rows_checksum"] = {**{k: v for k, v in manifest["rows_checksum"].items()
                                    if k not in ("ranges_sha256", "range_bytes")},
                                 "sha256": hashlib.sha256(rows_file.read_bytes()[128:]).hexdigest()}
    paths.manifest.write_text(json.dumps(manifest))
    assert "every byte matches its checksum" in verify_store(emb)  # the older record still verifies
    _append(emb, _rows(1, 2), ["a", "b"])
    store = open_store(emb)
    assert store.manifest["generation"] != manifest["generation"] and "appends" not in store.manifest
    assert store.ids == [f"v{i}" for i in range(5)] + ["a", "b"] and not rows_file.exists()
    with writer_lock(paths):
        append_set(store, [_rows(2, 1)], ["c"], dtype=np.float16, fields=FIELDS)
    store = open_store(emb)
    assert store.vectors.dtype == np.float16 and len(store.ids) == 8 and "appends" not in store.manifest


def test_embed_update_appends_and_prune_writes_a_generation(clips, tmp_path) -> None:  # noqa: F811
    videos = _folder(clips, tmp_path / "v", range(3))
    out = tmp_path / "emb.npy"
    embed_videos(videos, out, FakeEncoder(), SETTINGS)
    first = open_store(out).manifest["generation"]
    _folder(clips, videos, range(3, 5))
    embed_videos(videos, out, FakeEncoder(), SETTINGS, update=True)
    store = open_store(out)
    assert store.manifest["generation"] == first and store.version == f"{first}+1" and len(store.ids) == 5
    (videos / "vid_00001.mp4").unlink()
    embed_videos(videos, out, FakeEncoder(), SETTINGS, update=True, prune=True)
    store = open_store(out)
    assert store.manifest["generation"] != first and store.version == store.manifest["generation"]
    assert len(store.ids) == 4 and len(np.load(out)) == 4


def test_a_second_writer_is_refused_during_an_update(clips, tmp_path) -> None:  # noqa: F811
    """`dgl embed --update` while another process holds the set's lock: refused, the set as it was."""
    videos = _folder(clips, tmp_path / "v", range(2))
    out = tmp_path / "emb.npy"
    embed_videos(videos, out, FakeEncoder(), SETTINGS)
    before = _files(out)
    _folder(clips, videos, range(2, 3))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DGLError, match=f"emb.npy is being written by process {holder.pid} "):
            embed_videos(videos, out, FakeEncoder(), SETTINGS, update=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _files(out) == before and len(open_store(out).ids) == 2
    assert embed_videos(videos, out, FakeEncoder(), SETTINGS, update=True).embedded == 1
    assert open_store(out).version.endswith("+1")
