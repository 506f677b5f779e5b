"""`dgl serve`: text and video search over HTTP, 4xx for bad input in one error shape, bounded settings, a
tampered export refused at start-up, a concurrent burst, load shedding and a body deadline on a real socket."""

from __future__ import annotations

import functools
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import onnx
import pytest
import torch
from test_export import _scratch, exported_tiny
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app as cli_app
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.export.onnx_export import stamp_metadata
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval import serve
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.serve import ServeSettings, create_app
from dgl_deploy.runtime.backends.select import open_encoder

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

LIMITS = ServeSettings(max_upload_mb=1.0, max_query_chars=50, max_k=20, decode_timeout=20.0)


@functools.cache
def serve_files() -> Path:
    """Six synthetic videos, a dgl-tiny checkpoint and its embeddings (`emb.npy`), shared by the serve tests."""
    root = _scratch() / "serve"
    make_synthetic(root / "videos", videos=6, seed=2)
    torch.manual_seed(0)
    save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
    encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
    embed_videos(root / "videos", root / "emb.npy", encoder, EmbedSettings(workers=1))
    return root


def serve_app(settings: ServeSettings = LIMITS) -> object:
    root = serve_files()
    return create_app(root / "model.safetensors", root / "emb.npy", settings, backend="torch")


@contextmanager
def running(app: object) -> Iterator[str]:
    """`app` on a real socket (uvicorn in a thread); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(serve_app())


def test_text_and_video_search(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["rows"] == 6 and health["index"] == "exact"
    found = client.get("/search", params={"q": "a red circle moves right", "k": 3}).json()
    assert found["query"] == "a red circle moves right" and [h["rank"] for h in found["results"]] == [1, 2, 3]
    target = sorted((serve_files() / "videos").glob("*.mp4"))[2]
    with open(target, "rb") as handle:
        reply = client.post("/search/video", params={"k": 2}, files={"file": (target.name, handle, "video/mp4")})
    assert reply.status_code == 200, reply.text
    top = reply.json()["results"][0]
    assert top["id"] == target.name and top["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("params, status, message", [
    ({}, 422, "q: Field required"),
    ({"q": ""}, 422, "q:"),
    ({"q": "   "}, 400, "empty"),
    ({"q": "x" * 51}, 422, "at most 50"),
    ({"q": "x", "k": 0}, 422, "k:"),
    ({"q": "x", "k": 21}, 422, "k:"),
    ({"q": "x", "k": "ten"}, 422, "k:"),
])
def test_bad_text_queries(client, params, status, message) -> None:
    reply = client.get("/search", params=params)
    assert reply.status_code == status and message in reply.json()["error"], reply.text


def test_bad_uploads(client) -> None:
    reply = client.post("/search/video", files={"file": ("notes.mp4", b"this is not a video", "video/mp4")})
    assert reply.status_code == 400 and reply.json()["error"].startswith("notes.mp4: "), reply.text
    assert "dgl-upload" not in reply.text  # the temp path is not leaked
    reply = client.post("/search/video", files={"file": ("big.mp4", b"0" * (1 << 20 + 1), "video/mp4")})
    assert reply.status_code == 413 and "exceeds 1 MB" in reply.json()["error"]
    reply = client.post("/search/video", files={"other": ("a.mp4", b"x", "video/mp4")})
    assert reply.status_code == 422 and "file" in reply.json()["error"]
    reply = client.post("/search/video", content=b"garbage", headers={"content-type": "multipart/form-data"})
    assert 400 <= reply.status_code < 500 and set(reply.json()) == {"error"}
    assert client.get("/health").status_code == 200  # still serving


@pytest.mark.parametrize("method, path, status", [("get", "/nope", 404), ("put", "/search", 405),
                                                  ("get", "/search/video", 405)])
def test_one_error_shape(client, method: str, path: str, status: int) -> None:
    """Errors from the framework (unknown path, wrong method) have the documented {"error": ...} body too."""
    reply = getattr(client, method)(path)
    assert reply.status_code == status and set(reply.json()) == {"error"}, reply.text


def test_refuses_other_model(tmp_path) -> None:
    torch.manual_seed(123)
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "other.safetensors")
    with pytest.raises(DGLError, match="another model"):
        create_app(tmp_path / "other.safetensors", serve_files() / "emb.npy", backend="torch")


def test_tampered_export_refuses_to_start(tmp_path) -> None:
    """A graph changed after export (same shapes, other bytes) used to start and answer `/health` "ok" while
    every video search failed; the towers are now run once at start-up and the checksum refuses it."""
    folder = tmp_path / "export"
    shutil.copytree(exported_tiny()[1], folder)
    embed_videos(serve_files() / "videos", tmp_path / "emb.npy", open_encoder(folder, log=None),
                 EmbedSettings(workers=1))
    graph = onnx.load(str(folder / "video_encoder.onnx"))
    stamp_metadata(graph, {"dgl.note": "changed"})
    onnx.save(graph, str(folder / "video_encoder.onnx"))
    with pytest.raises(DGLError, match="video_encoder.onnx: checksum .* does not match manifest.json"):
        create_app(folder, tmp_path / "emb.npy")
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(folder), "--index", str(tmp_path / "emb.npy")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("error: ") and "checksum" in result.output


@pytest.mark.parametrize("change, match", [
    ({"max_k": 0}, "max_k must be an integer in 1..100000, got 0"),
    ({"max_pending": 0}, "max_pending must be an integer in 1..100000, got 0"),
    ({"decoders": 100}, "decoders must be an integer in 1..64"),
    ({"max_upload_mb": float("nan")}, "max_upload_mb must be a number"),
    ({"body_timeout": 0}, "body_timeout must be a number in 0.001..86400.0"),
    ({"max_query_chars": 2.5}, "max_query_chars must be an integer"),
])
def test_settings_are_bounded(change: dict, match: str) -> None:
    with pytest.raises(DGLError, match=match):
        ServeSettings(**change)


@pytest.mark.parametrize("flag", ["--max-k", "--max-pending", "--decoders", "--body-timeout", "--max-upload-mb"])
def test_cli_settings_are_bounded(flag: str) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--model", "m", "--index", "i", flag, "0"])
    assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.output, result.output


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                         ("0.0.0.0", True), ("192.168.1.5", True), ("example.org", True)])
def test_non_loopback_host_warns(monkeypatch, host: str, warns: bool) -> None:
    ran = {}
    monkeypatch.setattr(serve, "create_app", lambda *args, **kwargs: "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(kwargs))
    result = CliRunner().invoke(cli_app, ["serve", "--model", "m", "--index", "i", "--host", host])
    assert result.exit_code == 0 and ran["host"] == host, result.output
    assert ("warning: listening on" in result.output) == warns and ("no authentication" in result.output) == warns


@pytest.mark.timeout(120)
def test_concurrent_burst_on_a_socket() -> None:
    with running(serve_app()) as base, httpx.Client(base_url=base, timeout=30) as http:
        def ask(i: int) -> int:
            params = {"q": f"a blue square number {i}", "k": 5} if i % 5 else {"k": 5}  # every 5th is bad
            return http.get("/search", params=params).status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(ask, range(50)))
        assert codes.count(200) == 40 and codes.count(422) == 10
        assert time.perf_counter() - started < 60
        assert http.get("/health").json()["status"] == "ok"


def _stalled_upload(base: str) -> socket.socket:
    """A connection that sends an upload's headers and part of its body, then nothing."""
    host, port = base.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)))
    conn.sendall(b"POST /search/video HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n--b\r\n")
    return conn


@pytest.mark.timeout(120)
def test_stalled_uploads_hold_slots_then_time_out() -> None:
    """Requests being received count as pending: with two stalled uploads and max_pending=2, a query gets 503 with
    Retry-After at once; the stalled bodies get 408 at the body deadline and the connections are closed."""
    settings = ServeSettings(max_pending=2, body_timeout=1.5)
    with running(serve_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as http:
        stalled = [_stalled_upload(base) for _ in range(2)]
        time.sleep(0.5)  # both admitted and waiting for their bodies
        started = time.perf_counter()
        busy = http.get("/search", params={"q": "a red circle"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        assert busy.json()["error"].startswith("busy: 2 requests in progress")
        assert time.perf_counter() - started < 0.5
        assert http.get("/health").status_code == 200  # never refused
        for conn in stalled:
            conn.settimeout(10)
            reply = b""
            while chunk := conn.recv(4096):  # until the server closes the connection
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"request body not received within 1.5 s" in reply
            conn.close()
        assert http.get("/search", params={"q": "a red circle"}).status_code == 200
