"""`dgl serve` latency under a bounded local load: p50/p99 of GET /search over a real socket.

Builds a tiny random-init model (dgl-tiny) and `--rows` random unit embeddings carrying that model's
fingerprint (so the service accepts them), serves them with uvicorn on localhost (exact search over the
.npy, and the `auto` FAISS index folder), and sends `--requests` text queries, `--concurrency` at a time.
Latency includes HTTP, text encoding (torch CPU, one at a time under the encoder lock) and search.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from bench_index import write_random_store
from common import emit

from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.ann_index import IndexSettings, build_index
from dgl_deploy.retrieval.serve import create_app
from dgl_deploy.runtime.backends.select import open_encoder


def load(app, requests: int, concurrency: int) -> dict[str, float]:
    """Serve `app` on a free localhost port and time `requests` GET /search calls."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as http:
        def ask(i: int) -> float:
            start = time.perf_counter()
            http.get("/search", params={"q": f"a red circle moving left {i}", "k": 10}).raise_for_status()
            return time.perf_counter() - start

        ask(-1)  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            times = np.array(list(pool.map(ask, range(requests)))) * 1000
        wall = time.perf_counter() - started
    server.should_exit = True
    thread.join(10)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
            "requests_per_s": round(requests / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
        encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
        write_random_store(root / "emb.npy", args.rows, encoder.embed_dim, encoder.fingerprint)
        built = build_index(root / "emb.npy", root / "index", IndexSettings(recall_queries=100))
        runs = {}
        for name, index in (("exact", root / "emb.npy"), (built.kind, root / "index")):
            app = create_app(root / "model.safetensors", index, backend="torch")
            runs[name] = load(app, args.requests, args.concurrency)
        runs[built.kind]["build_recall_at_10"] = built.recall_at_10
    emit("serve", {"rows": args.rows, "dim": encoder.embed_dim, "requests": args.requests,
                   "concurrency": args.concurrency, "model": "dgl-tiny (random init, torch CPU)", "runs": runs})


if __name__ == "__main__":
    main()
