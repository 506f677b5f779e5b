"""`dgl serve` under load on a real socket: text queries stay fast while uploads decode (decoding runs in the
decoder processes, not under the encoder), and overload is shed with 503 + Retry-After, quickly."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy.data import video
from dgl_deploy.retrieval.serve import ServeSettings, create_app
from tests.conftest import make_serve_files, running_app

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

SETTINGS = ServeSettings(max_upload_mb=1.0, max_query_chars=50, max_k=20, decode_timeout=30.0, decoders=2)


@pytest.fixture(scope="module")
def serve_files(tmp_path_factory) -> Path:
    """Six synthetic videos, a dgl-tiny checkpoint and its embeddings (`emb.npy`)."""
    return make_serve_files(tmp_path_factory.mktemp("serve-load"))


def serve_app(root: Path, settings: ServeSettings) -> object:
    return create_app(root / "model.safetensors", root / "emb.npy", settings, backend="torch",
                      poster_cache=root / "posters")


def _text_latencies_under_uploads(base: str, videos: list[Path], uploaders: int,
                                  queries: int) -> tuple[list[float], list[int]]:
    """Seconds per text query, sent one after another while `uploaders` threads keep uploading `videos`; and the
    status codes of the uploads."""
    done = threading.Event()
    codes: list[int] = []

    def upload(i: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while not done.is_set():
                path = videos[i % len(videos)]
                reply = http.post("/search/video", params={"k": 3}, files={"file": (path.name, path.read_bytes())})
                codes.append(reply.status_code)

    latencies = []
    with ThreadPoolExecutor(uploaders) as pool, httpx.Client(base_url=base, timeout=60) as http:
        for i in range(uploaders):
            pool.submit(upload, i)
        time.sleep(1.0)  # uploads in flight (and decoders started)
        try:
            for i in range(queries):
                started = time.perf_counter()
                reply = http.get("/search", params={"q": f"a red circle number {i}", "k": 5})
                latencies.append(time.perf_counter() - started)
                assert reply.status_code == 200, reply.text
        finally:
            done.set()
    return latencies, codes


def _slow_decoding(monkeypatch, seconds: float) -> None:
    """Every decode takes `seconds` longer (as a large video would), in the decoder thread of the service."""
    real = video.DecodeProcess.decode

    def slow(self, *args, **kwargs) -> np.ndarray:
        time.sleep(seconds)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(video.DecodeProcess, "decode", slow)


def _report(what: str, latencies: list[float]) -> float:
    p99 = float(np.percentile(latencies, 99))
    print(f"\n{what}: text p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
          f"over {len(latencies)} queries")
    return p99


@pytest.mark.timeout(180)
def test_text_latency_while_uploads_decode(serve_files) -> None:
    videos = sorted((serve_files / "videos").glob("*.mp4"))
    with running_app(serve_app(serve_files, SETTINGS)) as base:
        latencies, codes = _text_latencies_under_uploads(base, videos, uploaders=4, queries=60)
    assert codes and set(codes) == {200}
    assert _report("4 concurrent uploaders", latencies) < 1.0


@pytest.mark.timeout(180)
def test_slow_decodes_do_not_hold_text_queries(monkeypatch, serve_files) -> None:
    """Each upload takes 0.5 s to decode (a large video): text queries must not wait for them, as they did when
    decoding ran under the encoder lock (p99 was then several decode times)."""
    _slow_decoding(monkeypatch, 0.5)
    videos = sorted((serve_files / "videos").glob("*.mp4"))
    with running_app(serve_app(serve_files, SETTINGS)) as base:
        latencies, codes = _text_latencies_under_uploads(base, videos, uploaders=4, queries=40)
    assert codes and set(codes) == {200}
    assert _report("4 uploaders, 0.5 s decodes", latencies) < 0.4


@pytest.mark.timeout(120)
def test_overload_is_shed_quickly(monkeypatch, serve_files) -> None:
    """100 concurrent requests behind slow uploads with max_pending=8: the excess gets 503 + Retry-After at once
    (it used to queue behind the upload, none refused)."""
    _slow_decoding(monkeypatch, 2.0)
    path = sorted((serve_files / "videos").glob("*.mp4"))[0]
    with running_app(serve_app(serve_files, ServeSettings(max_upload_mb=1.0, max_pending=8, decoders=1))) as base, \
            httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=200)) as http:
        def request(i: int) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            if i % 10 == 0:
                reply = http.post("/search/video", files={"file": (path.name, path.read_bytes())})
            else:
                reply = http.get("/search", params={"q": f"query {i}"})
            return reply.status_code, time.perf_counter() - started, reply.headers.get("retry-after")

        with ThreadPoolExecutor(100) as pool:
            results = list(pool.map(request, range(100)))
    refused = [r for r in results if r[0] == 503]
    assert refused and all(seconds < 1.0 and retry == "1" for _, seconds, retry in refused), results
    assert {code for code, _, _ in results} <= {200, 503}
