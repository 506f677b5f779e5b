"""`dgl serve`: text and video search over HTTP, 4xx for bad input, a concurrent burst on a real socket."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from dgl_deploy import DGLError
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.serve import ServeSettings, create_app
from dgl_deploy.runtime.backends.select import open_encoder

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

LIMITS = ServeSettings(max_upload_mb=1.0, max_query_chars=50, max_k=20, decode_timeout=20.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("serve")
    make_synthetic(root / "videos", videos=6, seed=2)
    save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
    encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
    embed_videos(root / "videos", root / "emb.npy", encoder, EmbedSettings(workers=1))
    return root, create_app(root / "model.safetensors", root / "emb.npy", LIMITS, backend="torch")


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return TestClient(served[1])


def test_text_and_video_search(served, client) -> None:
    root, _ = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["rows"] == 6 and health["index"] == "exact"
    found = client.get("/search", params={"q": "a red circle moves right", "k": 3}).json()
    assert found["query"] == "a red circle moves right" and [h["rank"] for h in found["results"]] == [1, 2, 3]
    target = sorted((root / "videos").glob("*.mp4"))[2]
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
    assert 400 <= reply.status_code < 500
    assert client.get("/nope").status_code == 404
    assert client.get("/health").status_code == 200  # still serving


def test_refuses_other_model(served, tmp_path) -> None:
    root, _ = served
    torch.manual_seed(123)
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "other.safetensors")
    with pytest.raises(DGLError, match="another model"):
        create_app(tmp_path / "other.safetensors", root / "emb.npy", backend="torch")


@pytest.mark.timeout(120)
def test_concurrent_burst_on_a_socket(served) -> None:
    server = uvicorn.Server(uvicorn.Config(served[1], host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            def ask(i: int) -> int:
                params = {"q": f"a blue square number {i}", "k": 5} if i % 5 else {"k": 5}  # every 5th is bad
                return http.get("/search", params=params).status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(ask, range(50)))
            seconds = time.perf_counter() - started
            assert codes.count(200) == 40 and codes.count(422) == 10
            assert seconds < 60
            assert http.get("/health").json()["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(10)


def test_busy_gets_503(served) -> None:
    root, _ = served
    app = create_app(root / "model.safetensors", root / "emb.npy", ServeSettings(max_pending=0), backend="torch")
    reply = TestClient(app).get("/search", params={"q": "x"})
    assert reply.status_code == 503 and "busy" in reply.json()["error"]
