"""FAISS index kinds vs exact search: build time, recall@10 and single-query latency on random vectors.

Writes `--rows` random unit vectors of `--dim` (default 1M x 512, ~2 GB, memory-mapped) as an embedding set,
builds each index kind with `dgl_deploy.retrieval.ann_index.build_index` (library defaults unless --nlist/--nprobe),
and queries it one query at a time with `--queries` noisy copies of random rows (cosine ~0.9 to their
source). recall@10 is against exact search on the same queries; `build_recall_at_10` is what the build
stored in the manifest (queries = the set's own rows). Random data has no cluster structure, so IVF
recall here is a pessimistic bound: real embeddings cluster and do better at the same nprobe.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit

from dgl_deploy.retrieval.ann_index import ExactIndex, IndexSettings, build_index, open_ann_index
from dgl_deploy.retrieval.search import CHUNK_ROWS
from dgl_deploy.retrieval.store import FORMAT, StorePaths, ids_digest, open_store


def write_random_store(emb: Path, rows: int, dim: int, fingerprint: str, model: str | None = None,
                       seed: int = 0) -> None:
    """An embedding set of `rows` random unit vectors, written chunk by chunk (memory stays bounded)."""
    paths = StorePaths.of(emb)
    emb.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(paths.emb, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, CHUNK_ROWS):
        block = rng.standard_normal((min(CHUNK_ROWS, rows - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    ids = [f"video_{i:08d}.mp4" for i in range(rows)]
    paths.ids.write_text("".join(f"{i}\n" for i in ids))
    paths.manifest.write_text(json.dumps({"format": FORMAT, "model_fingerprint": fingerprint, "model": model,
                                          "embed_dim": dim, "dtype": "float32", "count": rows,
                                          "ids_sha256": ids_digest(ids)}))


def noisy_queries(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Unit queries at cosine ~0.9 to `count` random rows."""
    rng = np.random.default_rng(seed)
    base = np.asarray(vectors[np.sort(rng.choice(vectors.shape[0], count, replace=False))], dtype=np.float32)
    noise = rng.standard_normal(base.shape, dtype=np.float32) * (0.48 / np.sqrt(base.shape[1]))
    queries = base + noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def latency_and_rows(index, queries: np.ndarray, k: int = 10) -> tuple[dict[str, float], list[set[int]]]:
    """One query at a time: p50/p99 milliseconds, and the rows found."""
    times, found = [], []
    for query in queries:
        start = time.perf_counter()
        hits = index.search(query[None], k)[0]
        times.append(time.perf_counter() - start)
        found.append({h.row for h in hits})
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf-flat", "ivf-pq", "hnsw"])
    parser.add_argument("--nlist", type=int)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[None], help="IVF: query-time values to sweep.")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[None], help="HNSW: query-time values to sweep.")
    parser.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads (spinning threads hurt on a busy "
                        "2-core machine).")
    parser.add_argument("--dir", type=Path, help="Work folder (default: a temp dir, removed at the end).")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        t0 = time.perf_counter()
        write_random_store(root / "emb.npy", args.rows, args.dim, "bench")
        generate_s = time.perf_counter() - t0
        exact = ExactIndex(open_store(root / "emb.npy"))
        queries = noisy_queries(exact.store.vectors, args.queries)
        exact_latency, truth = latency_and_rows(exact, queries)
        runs = [run for kind in args.kinds for run in run_kind(root, kind, args, queries, truth)]
    emit("index", {"rows": args.rows, "dim": args.dim, "queries": args.queries, "generate_s": round(generate_s, 1),
                   "exact": exact_latency, "runs": runs})


def run_kind(root: Path, kind: str, args: argparse.Namespace, queries: np.ndarray,
             truth: list[set[int]]) -> list[dict]:
    """Build one kind (defaults), then query it at each swept nprobe / efSearch."""
    settings = IndexSettings(kind=kind, nlist=args.nlist, recall_queries=args.queries)
    built = build_index(root / "emb.npy", root / kind, settings)
    sweep = args.nprobe if kind.startswith("ivf") else args.ef_search if kind == "hnsw" else [None]
    runs = []
    for value in sweep:
        index = open_ann_index(root / kind, nprobe=value if kind.startswith("ivf") else None,
                               ef_search=value if kind == "hnsw" else None)
        latency, found = latency_and_rows(index, queries)
        recall = np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=False)])
        params = {key: getattr(index.settings, key) for key in ("nlist", "nprobe", "pq_m", "ef_search")}
        runs.append({"kind": kind, "build_s": round(built.seconds, 1), "recall_at_10": round(float(recall), 4),
                     "build_recall_at_10": built.recall_at_10, **latency, "index_mb": round(
                         (root / kind / "index.faiss").stat().st_size / 2**20, 1), "params": params})
    return runs


if __name__ == "__main__":
    main()
