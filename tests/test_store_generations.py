"""Embedding sets on disk: generation switch (a failure at any write step leaves a complete set), free-space
check, and the checks every open makes (manifest, rows, ids)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy import files as files_module
from dgl_deploy.retrieval import store as store_module
from dgl_deploy.retrieval.ann_index import open_index
from dgl_deploy.retrieval.search import search
from dgl_deploy.retrieval.store import FORMAT, StorePaths, ids_digest, open_store, write_set

DIM = 8


def _rows(seed: int, count: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(emb: Path, rows: np.ndarray, ids: list[str]) -> None:
    write_set(StorePaths.of(emb), [rows], ids, dim=DIM, dtype=np.float32, fields={"model_fingerprint": "fp"})


def _hand_written(emb: Path, rows: np.ndarray, ids: list[str], **manifest: object) -> StorePaths:
    """A set without generations (the layout before them, or written by another tool): emb.npy is the rows."""
    paths = StorePaths.of(emb)
    np.save(paths.emb, rows)
    paths.ids.write_text("".join(f"{i}\n" for i in ids))
    fields = {"format": FORMAT, "model_fingerprint": "fp", "count": len(ids), "ids_sha256": ids_digest(ids)}
    paths.manifest.write_text(json.dumps({**fields, **manifest}))
    return paths


def _generation_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".gen-" in p.name)


@pytest.fixture
def old_set(tmp_path) -> tuple[Path, np.ndarray, list[str]]:
    emb, rows, ids = tmp_path / "emb.npy", _rows(0, 5), [f"v{i}.mp4" for i in range(5)]
    _write(emb, rows, ids)
    return emb, rows, ids


def test_layout_public_names_follow_the_generation(old_set) -> None:
    emb, rows, ids = old_set
    np.testing.assert_array_equal(np.load(emb), rows)  # the public name loads like a plain .npy
    assert emb.with_name("emb.ids.txt").read_text().split() == ids
    new_rows, new_ids = _rows(1, 7), [f"w{i}.mp4" for i in range(7)]
    _write(emb, new_rows, new_ids)
    store = open_store(emb)
    assert store.ids == new_ids and store.manifest["generation"] in store.paths.data_files(store.manifest)[0].name
    np.testing.assert_array_equal(np.load(emb), new_rows)
    assert len(_generation_files(emb.parent)) == 2  # the old generation was removed after the switch


STEPS = [("replace", n) for n in range(1, 6)] + [("fsync", n) for n in range(1, 4)]  # rows, ids, manifest, links


@pytest.mark.parametrize("call, failing", STEPS)
def test_failure_at_any_write_step_leaves_a_complete_set(old_set, monkeypatch, call, failing) -> None:
    emb, rows, ids = old_set
    new_rows, new_ids = _rows(1, 7), [f"w{i}.mp4" for i in range(7)]
    real = getattr(os, call)
    calls: list[object] = []

    def fail_once(*args: object) -> object:
        calls.append(args)
        if len(calls) == failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(files_module.os, call, fail_once)
    with pytest.raises(OSError):
        _write(emb, new_rows, new_ids)
    monkeypatch.undo()
    store = open_store(emb)
    switched = call == "replace" and failing > 3  # only the symlinks were left to update
    assert store.ids == (new_ids if switched else ids)
    np.testing.assert_array_equal(store.vectors, new_rows if switched else rows)
    _write(emb, new_rows, new_ids)  # the rerun completes and cleans up
    assert open_store(emb).ids == new_ids and len(_generation_files(emb.parent)) == 2
    np.testing.assert_array_equal(np.load(emb), new_rows)


def test_failure_mid_rows_keeps_old_set(old_set) -> None:
    emb, rows, ids = old_set

    def blocks():
        yield _rows(1, 3)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_set(StorePaths.of(emb), blocks(), [f"w{i}" for i in range(6)], dim=DIM, dtype=np.float32,
                  fields={"model_fingerprint": "fp"})
    assert open_store(emb).ids == ids and len(_generation_files(emb.parent)) == 2  # no temp left behind


def test_refuses_without_free_space(old_set, monkeypatch) -> None:
    emb, rows, ids = old_set
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(DGLError, match=r"MB needed.*0\.0 MB free"):
        _write(emb, _rows(1, 50_000), [f"w{i}" for i in range(50_000)])
    monkeypatch.undo()
    assert open_store(emb).ids == ids and len(_generation_files(emb.parent)) == 2


def test_nan_rows_are_never_written(old_set) -> None:
    emb, rows, ids = old_set
    bad = _rows(1, 4)
    bad[2, 5] = np.nan
    with pytest.raises(DGLError, match=r"row 2 \(w2\) is NaN/inf"):
        _write(emb, bad, [f"w{i}" for i in range(4)])
    assert open_store(emb).ids == ids


def test_set_without_generation_opens_and_is_replaced(tmp_path) -> None:
    rows, ids = _rows(0, 3), ["a", "b", "c"]
    _hand_written(tmp_path / "emb.npy", rows, ids)
    assert open_store(tmp_path / "emb.npy").ids == ids
    _write(tmp_path / "emb.npy", _rows(1, 2), ["d", "e"])
    assert (tmp_path / "emb.npy").is_symlink() and open_store(tmp_path / "emb.npy").ids == ["d", "e"]


def test_open_refuses_damaged_sets(tmp_path) -> None:
    rows, ids = _rows(0, 4), ["a", "b", "c", "d"]
    emb = tmp_path / "emb.npy"
    cases = {
        "checksum": (rows, ["b", "a", "c", "d"], {"ids_sha256": ids_digest(ids)}),  # reordered ids, same count
        "int64": (rows.astype(np.int64), ids, {}),
        "complex": (rows.astype(np.complex64), ids, {}),
        "float64": (rows.astype(np.float64), ids, {}),
        "expected 2-D": (rows[None], ids, {}),
        "8 dimensions, the manifest says 16": (rows, ids, {"embed_dim": 16}),
        "disagree": (rows, ids, {"count": 5}),
        r"damaged manifest \(no 'count'\)": (rows, ids, {"count": None}),
        r"damaged manifest \('model_fingerprint' is int": (rows, ids, {"model_fingerprint": 3}),
        "bad generation": (rows, ids, {"generation": "../x"}),
    }
    for message, (data, written_ids, manifest) in cases.items():
        paths = _hand_written(emb, data, written_ids, **manifest)
        with pytest.raises(DGLError, match=message):
            open_store(emb)
    for text, message in (("{", "unreadable manifest"), ("[1, 2]", "a JSON list"), ('{"format": "x"}', "format 'x'"),
                          (b"\xff\xfe", "unreadable manifest")):
        paths.manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(DGLError, match=message):
            open_store(emb)


def test_not_found_is_said_plainly(tmp_path) -> None:
    with pytest.raises(DGLError, match="emb_idx: not found"):
        open_index(tmp_path / "emb_idx")  # a typo'd index folder: not "embeddings are written as .npy"
    with pytest.raises(DGLError, match="nope.npy: not found"):
        open_store(tmp_path / "nope.npy")


def test_search_refuses_nan_rows_and_queries(tmp_path) -> None:
    rows = _rows(0, 6)
    rows[4] = np.inf
    _hand_written(tmp_path / "emb.npy", rows, [f"v{i}" for i in range(6)])
    store = open_store(tmp_path / "emb.npy")
    with pytest.raises(DGLError, match=r"emb.npy: row 4 is NaN/inf"):
        search(store, _rows(1, 1), 1)  # even when the bad row would not be among the results
    with pytest.raises(DGLError, match="NaN/inf for the query"):
        search(store, np.full((1, DIM), np.nan, np.float32), 1)


def test_large_float32_sets_get_a_float16_scan_copy(tmp_path, monkeypatch) -> None:
    """A float32 set of SCAN_COPY_MIN_ROWS rows or more is written with its float16 copy (recorded in the
    manifest, replaced with the generation); search through it equals the float32 scan; smaller and float16
    sets, and rows beyond float16's range, get none; a damaged copy is refused."""
    monkeypatch.setattr(store_module, "SCAN_COPY_MIN_ROWS", 6)
    emb = tmp_path / "emb.npy"
    _write(emb, _rows(0, 5), [f"v{i}" for i in range(5)])
    assert open_store(emb).scan_copy is None and "scan16" not in " ".join(_generation_files(tmp_path))
    rows = _rows(1, 40)
    _write(emb, rows, [f"w{i}" for i in range(40)])
    store = open_store(emb)
    np.testing.assert_array_equal(store.scan_copy.rows, rows.astype(np.float16))
    assert store.scan_copy.max_norm == pytest.approx(1, abs=1e-6) == store.manifest["scan_copy"]["max_row_norm"]
    assert sum("scan16" in name for name in _generation_files(tmp_path)) == 1
    query = _rows(2, 1)
    hits = search(store, query, 7)
    assert [h.row for h in hits[0]] == list(np.argsort(-(rows @ query[0]), kind="stable")[:7])
    big = rows * 1e5  # norms beyond float16's range: no copy
    _write(emb, big, [f"w{i}" for i in range(40)])
    assert open_store(emb).scan_copy is None and "scan_copy" not in open_store(emb).manifest
    write_set(StorePaths.of(emb), [rows], [f"w{i}" for i in range(40)], dim=DIM, dtype=np.float16,
              fields={"model_fingerprint": "fp"})
    assert open_store(emb).scan_copy is None and "scan16" not in " ".join(_generation_files(tmp_path))
    _write(emb, rows, [f"w{i}" for i in range(40)])
    copy = StorePaths.of(emb).scan_file(open_store(emb).manifest["generation"])
    np.save(copy, rows[:39].astype(np.float16))
    with pytest.raises(DGLError, match=r"scan16.npy: the scan copy \(float16 \(39, 8\).*damaged"):
        open_store(emb)
