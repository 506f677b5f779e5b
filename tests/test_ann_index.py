"""`dgl index build` (FAISS): recall vs exact search, refusal of other embeddings/models, `dgl query --index DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.retrieval.ann_index import (
    ExactIndex,
    IndexSettings,
    build_index,
    choose_kind,
    measure_recall,
    open_ann_index,
    open_index,
    resolve_settings,
)
from dgl_deploy.retrieval.search import Hit, top_k
from dgl_deploy.retrieval.store import StorePaths, open_store, write_set

faiss = pytest.importorskip("faiss")
runner = CliRunner()
ROWS, DIM = 5000, 64


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """FAISS's OpenMP k-means spins badly on a small shared machine (6 s vs 0.4 s for the PQ training here)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def write_store(emb: Path, vectors: np.ndarray, fingerprint: str, ids: list[str] | None = None) -> list[str]:
    """A minimal embedding set (the layout `dgl embed` writes) around given vectors."""
    ids = ids or [f"v{i:06d}.mp4" for i in range(len(vectors))]
    write_set(StorePaths.of(emb), [vectors], ids, dim=vectors.shape[1], dtype=np.float32,
              fields={"model_fingerprint": fingerprint, "model": None})
    return ids


def _normalised(rng: np.random.Generator, rows: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def random_set(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """5000 random unit vectors, and 200 queries that are noisy copies of known rows."""
    root = tmp_path_factory.mktemp("ann")
    rng = np.random.default_rng(7)
    vectors = _normalised(rng, ROWS)
    write_store(root / "emb.npy", vectors, "fp-a")
    targets = rng.choice(ROWS, 200, replace=False)
    queries = vectors[targets] + 0.08 * rng.standard_normal((200, DIM)).astype(np.float32)
    return root, queries / np.linalg.norm(queries, axis=1, keepdims=True), targets


@pytest.mark.parametrize("kind, min_top1", [("flat", 1.0), ("ivf-flat", 0.9), ("ivf-pq", 0.9), ("hnsw", 0.9)])
def test_top1_matches_exact(random_set, kind, min_top1) -> None:
    root, queries, targets = random_set
    result = build_index(root / "emb.npy", root / kind, IndexSettings(kind=kind, nlist=64, nprobe=8, pq_m=16, pq_bits=6))
    index = open_ann_index(root / kind)
    _, exact = top_k(np.load(root / "emb.npy"), queries, 1)
    assert np.array_equal(exact[:, 0], targets)  # the perturbed row is still the true nearest neighbour
    hits = index.search(queries, 10)
    top1 = np.mean([h[0].row == t for h, t in zip(hits, targets, strict=False)])
    print(f"{kind}: top-1 agreement with exact {top1:.3f}, build recall@10 {result.recall_at_10}")
    assert top1 >= min_top1
    assert result.recall_at_10 is not None and result.recall_at_10 > (0.99 if kind == "flat" else 0.3)
    assert json.loads((root / kind / "index.json").read_text())["recall_at_10"] == result.recall_at_10
    first = hits[0]
    assert [h.rank for h in first] == list(range(1, 11)) and all(a.score >= b.score for a, b in zip(first, first[1:], strict=False))
    assert first[0].id == f"v{targets[0]:06d}.mp4"


def test_auto_kind_and_settings() -> None:
    assert [choose_kind(n) for n in (10, 99_999, 100_000, 1_999_999, 2_000_000)] == \
        ["flat", "flat", "ivf-flat", "ivf-flat", "ivf-pq"]
    resolved = resolve_settings(IndexSettings(), 1_000_000, 512)
    assert (resolved.kind, resolved.nlist, resolved.nprobe, resolved.pq_m) == ("ivf-flat", 4096, 32, 64)
    assert (resolve_settings(IndexSettings(), 100_000, 512).nlist, resolve_settings(IndexSettings(), 100_000, 512).nprobe) \
        == (1024, 8)
    with pytest.raises(DGLError, match="pq_m"):
        resolve_settings(IndexSettings(kind="ivf-pq", pq_m=7), 5000, 64)
    with pytest.raises(DGLError, match="unknown index kind"):
        resolve_settings(IndexSettings(kind="lsh"), 5000, 64)


def test_refuses_other_embeddings_or_model(random_set, tmp_path) -> None:
    root, _, _ = random_set
    build_index(root / "emb.npy", tmp_path / "idx", IndexSettings(kind="ivf-flat", nlist=32, recall_queries=0))
    vectors = np.load(root / "emb.npy")
    write_store(tmp_path / "other_model.npy", vectors, "fp-b")
    with pytest.raises(DGLError, match="another model"):
        open_ann_index(tmp_path / "idx", tmp_path / "other_model.npy")
    write_store(tmp_path / "other_rows.npy", vectors[:-1], "fp-a")
    with pytest.raises(DGLError, match="other embeddings"):
        open_ann_index(tmp_path / "idx", tmp_path / "other_rows.npy")
    write_store(tmp_path / "other_ids.npy", vectors, "fp-a", [f"w{i}" for i in range(ROWS)])
    with pytest.raises(DGLError, match="other embeddings"):
        open_ann_index(tmp_path / "idx", tmp_path / "other_ids.npy")
    assert build_index(root / "emb.npy", tmp_path / "idx").added == 0  # the same set: up to date
    with pytest.raises(DGLError, match=r"already holds an index \(ivf-flat\) of .*emb.npy: pass --overwrite"):
        build_index(tmp_path / "other_rows.npy", tmp_path / "idx")
    with pytest.raises(DGLError, match="not an index folder"):
        open_index(tmp_path)


def test_index_moves_with_its_embeddings(random_set, tmp_path) -> None:
    root, queries, targets = random_set
    write_store(tmp_path / "a" / "emb.npy", np.load(root / "emb.npy"), "fp-a")
    build_index(tmp_path / "a" / "emb.npy", tmp_path / "a" / "idx", IndexSettings(recall_queries=0))
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    index = open_index(moved / "idx")
    assert index.store.paths.emb == moved / "emb.npy"
    assert index.search(queries[:2], 3)[0][0].row == targets[0]


def test_query_cli_uses_index_folder(tmp_path) -> None:
    from dgl_deploy.cli import app
    from dgl_deploy.model.checkpoint import save
    from dgl_deploy.model.model import create_model
    from dgl_deploy.runtime.backends.select import open_encoder

    save(create_model("dgl-tiny", pretrained=None), tmp_path / "model.safetensors")
    encoder = open_encoder(tmp_path / "model.safetensors", backend="torch", log=None)
    vectors = _normalised(np.random.default_rng(1), 300, encoder.embed_dim)
    write_store(tmp_path / "emb.npy", vectors, encoder.fingerprint)
    built = runner.invoke(app, ["index", "build", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "idx"),
                                "--kind", "hnsw", "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["kind"] == "hnsw"
    args = ["query", "a red circle", "--model", str(tmp_path / "model.safetensors"), "-k", "5", "--json"]
    exact = runner.invoke(app, args + ["--index", str(tmp_path / "emb.npy")])
    approx = runner.invoke(app, args + ["--index", str(tmp_path / "idx")])
    assert exact.exit_code == 0 and approx.exit_code == 0, approx.output
    assert json.loads(approx.stdout)[0]["results"][0] == json.loads(exact.stdout)[0]["results"][0]
    torch.manual_seed(123)
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "other.safetensors")
    refused = runner.invoke(app, ["query", "x", "--index", str(tmp_path / "idx"), "--model",
                                  str(tmp_path / "other.safetensors")])
    assert refused.exit_code == 1 and "another model" in refused.stderr
    bad = runner.invoke(app, ["index", "build", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "x"),
                              "--kind", "ivf-pq", "--pq-m", "7"])
    assert bad.exit_code == 1 and "pq_m 7" in bad.stderr


def test_damaged_index_manifest_or_settings_are_one_line(random_set, tmp_path) -> None:
    root, _, _ = random_set
    build_index(root / "emb.npy", tmp_path / "idx", IndexSettings(kind="ivf-flat", nlist=16, recall_queries=0))
    path = tmp_path / "idx" / "index.json"
    good = json.loads(path.read_text())
    settings = good["settings"]
    damaged = {"unreadable": "{", "a JSON list": json.dumps([good]),
               "unknown settings bogus": json.dumps({**good, "settings": {**settings, "bogus": 1}}),
               "'settings' missing": json.dumps({k: v for k, v in good.items() if k != "settings"}),
               "'count' missing or not int": json.dumps({**good, "count": "many"}),
               "nprobe must be a whole number in 1..2147483647, got -1": json.dumps({**good, "settings": {**settings, "nprobe": -1}}),
               "does not match": json.dumps({**good, "kind": "hnsw"})}
    for message, text in damaged.items():
        path.write_text(text)
        with pytest.raises(DGLError, match=f"index.json: .*{message}"):
            open_ann_index(tmp_path / "idx")
    path.write_text(json.dumps(good))
    for bad in (-1, 2**64):
        with pytest.raises(DGLError, match=f"nprobe must be a whole number in 1..2147483647, got {bad}"):
            open_ann_index(tmp_path / "idx", nprobe=bad)
    assert open_ann_index(tmp_path / "idx", nprobe=2).settings.nprobe == 2


def test_builds_that_cannot_work_are_refused(tmp_path) -> None:
    vectors = _normalised(np.random.default_rng(3), 30)
    write_store(tmp_path / "small.npy", vectors, "fp")
    with pytest.raises(DGLError, match="ivf-pq with 8-bit codes needs at least 256 rows .* has 30"):
        build_index(tmp_path / "small.npy", tmp_path / "pq", IndexSettings(kind="ivf-pq"))
    with pytest.raises(DGLError, match="nlist 64 needs at least 64 rows"):
        build_index(tmp_path / "small.npy", tmp_path / "ivf", IndexSettings(kind="ivf-flat", nlist=64))
    with pytest.raises(DGLError, match="nprobe must be"):
        IndexSettings(nprobe=-1)
    vectors[7, 2] = np.nan  # written by another tool: `dgl embed` never writes such a row
    np.save(tmp_path / "nan.npy", vectors)
    paths, small = StorePaths.of(tmp_path / "nan.npy"), StorePaths.of(tmp_path / "small.npy")
    paths.ids.write_text(small.ids.read_text())
    manifest = json.loads(small.manifest.read_text())
    paths.manifest.write_text(json.dumps({k: v for k, v in manifest.items() if k != "generation"}))
    with pytest.raises(DGLError, match="nan.npy: row 7 is NaN/inf"):
        build_index(tmp_path / "nan.npy", tmp_path / "nan_idx", IndexSettings(kind="flat"))
    assert not (tmp_path / "pq").exists() and not (tmp_path / "nan_idx").exists()


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq", "hnsw"])
def test_updated_set_adds_rows_without_retraining(tmp_path, kind) -> None:
    """Over an index of the same set, `build_index` adds the appended rows (IVF centroids unchanged), says when an
    IVF index is due for a rebuild, is up to date when nothing was added, and rebuilds (keeping the kind) after rows
    were removed; another kind without --overwrite is refused."""
    rng = np.random.default_rng(11)
    vectors, ids = _normalised(rng, 6500), [f"v{i:06d}.mp4" for i in range(6500)]
    emb, out = tmp_path / "emb.npy", tmp_path / "idx"
    settings = IndexSettings(kind=kind, nlist=32, nprobe=32, pq_m=16, pq_bits=6, recall_queries=50)
    write_store(emb, vectors[:2000], "fp-a", ids[:2000])
    assert build_index(emb, out, settings).added is None

    def centroids() -> np.ndarray | None:
        index = faiss.read_index(str(out / "index.faiss"))
        return faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 32) if kind.startswith("ivf") else None

    trained = centroids()
    write_store(emb, vectors[:3000], "fp-a", ids[:3000])  # `dgl embed --update`: rows appended
    result = build_index(emb, out)
    manifest = json.loads((out / "index.json").read_text())
    assert (result.added, result.kind, result.rebuild_due) == (1000, kind, None)
    assert manifest["count"] == 3000 and manifest["trained_rows"] == 2000
    assert manifest["generation"] == open_store(emb).manifest["generation"]
    if trained is not None:
        np.testing.assert_array_equal(centroids(), trained)  # not retrained
    index = open_ann_index(out)
    assert [hits[0].row for hits in index.search(vectors[[2500, 2999]], 1)] == [2500, 2999]
    assert build_index(emb, out).added == 0  # up to date: nothing written

    write_store(emb, vectors, "fp-a", ids)  # 3500 more: 4500 added since training, 2.25x the rows trained on
    result = build_index(emb, out)
    assert result.added == 3500 and (result.rebuild_due is not None) == kind.startswith("ivf")
    if result.rebuild_due:
        assert "4500 rows were added since the index was trained on 2000" in result.rebuild_due

    write_store(emb, vectors[1:], "fp-a", ids[1:])  # `--prune`: the first row dropped
    result = build_index(emb, out)
    assert result.added is None and result.kind == kind and result.count == 6499
    assert json.loads((out / "index.json").read_text())["trained_rows"] == 6499
    assert open_ann_index(out).search(vectors[[1]], 1)[0][0].id == ids[1]
    other = "hnsw" if kind != "hnsw" else "flat"
    with pytest.raises(DGLError, match="already holds an index"):
        build_index(emb, out, IndexSettings(kind=other))


def test_index_build_cli_says_added_and_rebuild_due(tmp_path) -> None:
    from dgl_deploy.cli import app

    rng = np.random.default_rng(12)
    vectors, ids = _normalised(rng, 4000), [f"v{i:06d}.mp4" for i in range(4000)]
    emb, out = tmp_path / "emb.npy", tmp_path / "idx"
    write_store(emb, vectors[:1000], "fp-a", ids[:1000])
    build = ["index", "build", str(emb), "--out", str(out), "--recall-queries", "0"]
    assert "ivf-flat index of 1000 rows built" in runner.invoke(app, [*build, "--kind", "ivf-flat", "--nlist", "16"]).output
    write_store(emb, vectors, "fp-a", ids)
    result = runner.invoke(app, build)
    assert result.exit_code == 0 and "3000 new rows added to the ivf-flat index (not retrained), now 4000" in result.output
    assert "rebuild due: 3000 rows were added since the index was trained on 1000" in result.output
    assert runner.invoke(app, build).output.startswith(f"up to date: {out} already indexes all 4000 rows")


def test_recall_holds_each_query_row_out_of_its_own_answers(random_set) -> None:
    """`measure_recall` queries with the set's own rows; the row itself (cosine 1, found by any index) counts for
    nothing: an index that answers only the query row scores 0, exact search 1, one right neighbour in ten 0.1."""
    root, _, _ = random_set
    store = open_store(root / "emb.npy")
    exact = ExactIndex(store)

    class Partial:
        def __init__(self, keep: int) -> None:
            self.store, self.keep = store, keep

        def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
            hits = exact.search(queries, k)  # [the row itself, its true neighbours ...]
            _, far = top_k(-store.vectors, queries, k)  # the worst rows: never true neighbours
            return [[*h[:1 + self.keep], *(Hit(0, 0.0, int(r), "", None, None) for r in f)][:k]
                    for h, f in zip(hits, far, strict=False)]

    assert measure_recall(exact, 50) == 1.0
    assert measure_recall(Partial(0), 50) == 0.0
    assert measure_recall(Partial(1), 50) == 0.1
    assert measure_recall(exact, 0) is None


def test_index_build_cli_prints_and_stores_recall(tmp_path) -> None:
    """`dgl index build` prints the recall@10 it measured (one line) and index.json holds the same number."""
    from dgl_deploy.cli import app

    rng = np.random.default_rng(13)
    centres = _normalised(rng, 40)
    rows = centres[rng.integers(0, 40, 3000)] + 0.3 / np.sqrt(DIM) * rng.standard_normal((3000, DIM))
    write_store(tmp_path / "emb.npy", (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), "fp-a")
    result = runner.invoke(app, ["index", "build", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "idx"),
                                 "--kind", "ivf-flat", "--recall-queries", "100"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("recall@10: "))
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert line.startswith(f"recall@10: {manifest['recall_at_10']:.3f} vs exact search (100 sampled rows")
    assert manifest["recall_queries"] == 100 and manifest["recall_at_10"] >= 0.9
