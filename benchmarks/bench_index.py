"""FAISS index kinds vs exact search: build time, recall@10 and single-query latency on clustered or random vectors.

Writes `--rows` vectors of `--dim` (default 1M x 512, ~2 GB, memory-mapped) as an embedding set: by default drawn
from a seeded hierarchical Gaussian mixture shaped like real video embeddings (below), queried with `--queries`
fresh draws from the same mixture (held out: not rows of the set); `--data random`: unit Gaussian rows (no
cluster structure, the worst case for IVF) queried with noisy copies of rows. Builds each index kind with
`dgl_deploy.retrieval.ann_index.build_index` (library defaults unless --nlist) and queries it one query at a time
at its default and at each swept --nprobe / --refine / --ef-search. recall@10 is against exact search on the same
queries; `build_recall_at_10` is what the build stored in the manifest (queries = the set's own rows, each held out
of its own answers). p50_ms is wall time; cpu_p50_ms the querying thread's CPU time, what a query costs without
the waits another job on a shared host adds (exact search: the calling thread's share only). `--hnsw-rows`
measures HNSW on a smaller set from the same mixture (a single-threaded 1M build takes very long on 2 cores).
Prints one JSON line (the machine, its ISA and load averages at start and end included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from common import emit, load_average

from dgl_deploy.retrieval.ann_index import ExactIndex, IndexSettings, build_index, open_ann_index
from dgl_deploy.retrieval.search import CHUNK_ROWS
from dgl_deploy.retrieval.store import FORMAT, StorePaths, ids_digest, open_store


def write_random_store(emb: Path, rows: int, dim: int, fingerprint: str, model: str | None = None,
                       seed: int = 0) -> None:
    """An embedding set of `rows` random unit vectors (no cluster structure: the worst case for IVF), written chunk by
    chunk (memory stays bounded)."""
    rng = np.random.default_rng(seed)

    def draw(count: int) -> np.ndarray:
        block = rng.standard_normal((count, dim), dtype=np.float32)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    _write_store(emb, rows, dim, fingerprint, model, draw)


# Clustered data, shaped like real video embeddings (`write_clustered_store`): a hierarchical Gaussian mixture on the
# unit sphere. A shared direction (CLIP embeddings are anisotropic: random pairs have cosine ~0.2-0.4, not 0),
# TOPICS topics, SUBTOPICS subtopics spread over them, CLUSTERS clusters ("videos", their rows its windows or
# near-duplicate uploads) spread over those; every centre = sqrt(.3) shared + sqrt(.2) topic + sqrt(.2) subtopic +
# sqrt(.3) own (unit random directions, normalised), a row = its centre + isotropic noise of norm SPREAD (per cluster,
# uniform in the range), normalised. Cosines between rows: random ~0.26, one topic ~0.43, one subtopic ~0.6, one
# cluster 0.83-0.94 (near duplicates); cluster sizes are log-normal (sigma 1: mean ~10 rows at 1M, some ~10x the
# median). A query is a fresh draw (held out: not a row of the set); its top 10 are its cluster's rows, then rows
# of its subtopic, which IVF must find in other lists.
TOPICS = 1_000
SUBTOPICS = 10_000
CLUSTERS = 100_000
SPREAD = (0.25, 0.45)


@dataclass(frozen=True)
class Mixture:
    centres: np.ndarray  # (CLUSTERS, dim) unit
    spreads: np.ndarray  # (CLUSTERS,) noise norm per cluster
    weights: np.ndarray  # (CLUSTERS,) probabilities

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` unit rows drawn from the mixture (float32)."""
        dim = self.centres.shape[1]
        labels = rng.choice(len(self.weights), size=count, p=self.weights)
        noise = rng.standard_normal((count, dim), dtype=np.float32) * (self.spreads[labels, None] / np.sqrt(dim))
        rows = self.centres[labels] + noise
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_mixture(dim: int, seed: int = 0, clusters: int = CLUSTERS) -> Mixture:
    """The seeded hierarchical mixture described above."""
    rng = np.random.default_rng(seed)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    topic = rng.integers(0, TOPICS, SUBTOPICS)
    subtopic = rng.integers(0, SUBTOPICS, clusters)
    centres = np.sqrt(0.3) * unit(1) + np.sqrt(0.2) * unit(TOPICS)[topic[subtopic]] + \
        np.sqrt(0.2) * unit(SUBTOPICS)[subtopic] + np.sqrt(0.3) * unit(clusters)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spreads = rng.uniform(*SPREAD, size=clusters).astype(np.float32)
    weights = rng.lognormal(0.0, 1.0, size=clusters)
    return Mixture(centres.astype(np.float32), spreads, weights / weights.sum())


def write_clustered_store(emb: Path, rows: int, dim: int, fingerprint: str, seed: int = 0) -> Mixture:
    """An embedding set of `rows` vectors drawn from `make_mixture(dim, seed)`, written chunk by chunk; returns the
    mixture (for held-out queries: `mixture.sample` with another generator)."""
    mixture = make_mixture(dim, seed)
    rng = np.random.default_rng(seed + 1)
    _write_store(emb, rows, dim, fingerprint, None, lambda count: mixture.sample(count, rng))
    return mixture


def _write_store(emb: Path, rows: int, dim: int, fingerprint: str, model: str | None, draw) -> None:
    paths = StorePaths.of(emb)
    emb.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(paths.emb, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, CHUNK_ROWS):
        out[start:start + min(CHUNK_ROWS, rows - start)] = draw(min(CHUNK_ROWS, rows - start))
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
    """One query at a time: p50/p99 wall milliseconds, p50 of the thread's CPU milliseconds (what the query costs
    without the waits a shared, loaded host adds to wall time), and the rows found."""
    times, cpu, found = [], [], []
    for query in queries:
        start, start_cpu = time.perf_counter(), time.thread_time()
        hits = index.search(query[None], k)[0]
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
        found.append({h.row for h in hits})
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "cpu_p50_ms": round(float(np.percentile(np.array(cpu) * 1000, 50)), 3)}, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered",
                        help="clustered: the mixture above, queries held out from it (what users have); random: unit "
                        "Gaussian rows, queries = noisy copies of rows (the worst case for IVF).")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf-flat", "ivf-pq", "hnsw"])
    parser.add_argument("--nlist", type=int, nargs="+", default=[None], help="IVF: values to build (default: the "
                        "library's).")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[], help="IVF: query-time values swept besides the "
                        "default.")
    parser.add_argument("--refine", type=int, nargs="+", default=[], help="IVF-PQ: query-time values swept besides the "
                        "default.")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[], help="HNSW: query-time values swept besides "
                        "the default.")
    parser.add_argument("--hnsw-rows", type=int, help="Build HNSW over a set of this many rows (same mixture) instead "
                        "of --rows: a single-threaded HNSW build of 1M rows takes very long on 2 busy cores.")
    parser.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads for queries (spinning threads "
                        "hurt on a busy 2-core machine).")
    parser.add_argument("--build-threads", type=int, default=1, help="OpenMP threads while building.")
    parser.add_argument("--dir", type=Path, help="Work folder (default: a temp dir, removed at the end).")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    load_at_start = load_average()
    kinds = [k for k in args.kinds if k != "hnsw" or not args.hnsw_rows]
    sets = [(args.rows, kinds)] + ([(args.hnsw_rows, ["hnsw"])] if args.hnsw_rows and "hnsw" in args.kinds else [])
    result: dict = {"rows": args.rows, "dim": args.dim, "data": args.data, "queries": args.queries, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rows, set_kinds in sets:
            root = (args.dir or Path(tmp)) / f"{args.data}_{rows}"
            t0 = time.perf_counter()
            if args.data == "clustered":
                mixture = write_clustered_store(root / "emb.npy", rows, args.dim, "bench")
                queries = mixture.sample(args.queries, np.random.default_rng(12345))  # held out: not rows of the set
            else:
                write_random_store(root / "emb.npy", rows, args.dim, "bench")
                queries = noisy_queries(open_store(root / "emb.npy").vectors, args.queries)
            generate_s = round(time.perf_counter() - t0, 1)
            exact = ExactIndex(open_store(root / "emb.npy"))
            exact_latency, truth = latency_and_rows(exact, queries)
            top1 = np.sort(exact.store.vectors @ queries[:20].T, axis=0)[-1]  # how close the nearest row is
            result.setdefault("sets", []).append({"rows": rows, "generate_s": generate_s, "exact": exact_latency,
                                                  "query_top1_cosine_p50": round(float(np.median(top1)), 3)})
            result["runs"] += [run for kind in set_kinds for nlist in (args.nlist if kind.startswith("ivf") else [None])
                               for run in run_kind(root, kind, nlist, args, queries, truth)]
    emit("index", {**result, "load_average_1m_at_start": load_at_start,
                   "host": "shared: other jobs ran on the same 2 cores (see the load averages)"})


def run_kind(root: Path, kind: str, nlist: int | None, args: argparse.Namespace, queries: np.ndarray,
             truth: list[set[int]]) -> list[dict]:
    """Build one kind (library defaults unless `nlist`), then query it at its default and each swept nprobe /
    efSearch."""
    settings = IndexSettings(kind=kind, nlist=nlist, recall_queries=args.queries)
    out = root / (kind if nlist is None else f"{kind}_{nlist}")
    import faiss

    faiss.omp_set_num_threads(args.build_threads)
    built = build_index(root / "emb.npy", out, settings)
    faiss.omp_set_num_threads(args.faiss_threads)
    name = {"ivf-flat": "nprobe", "ivf-pq": "nprobe", "hnsw": "ef_search"}.get(kind)
    sweep = [(name, v) for v in {"nprobe": args.nprobe, "ef_search": args.ef_search}.get(name, [])]
    sweep += [("refine", v) for v in args.refine] if kind == "ivf-pq" else []
    runs = []
    for key, value in [(None, None), *sweep]:
        index = open_ann_index(out, nprobe=value if key == "nprobe" else None,
                               ef_search=value if key == "ef_search" else None)
        if key == "refine":
            index.settings = replace(index.settings, refine=value)
        latency, found = latency_and_rows(index, queries)
        recall = np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=False)])
        params = {key: getattr(index.settings, key) for key in ("nlist", "nprobe", "pq_m", "refine", "hnsw_m",
                                                                "ef_construction", "ef_search")}
        runs.append({"kind": kind, "rows": index.store.vectors.shape[0], "default": key is None,
                     "build_s": round(built.seconds, 1), "recall_at_10": round(float(recall), 4),
                     "build_recall_at_10": built.recall_at_10, **latency,
                     "index_mb": round((out / "index.faiss").stat().st_size / 2**20, 1), "params": params})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    return runs


if __name__ == "__main__":
    main()
