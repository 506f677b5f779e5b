"""`dgl serve`: text and video search over HTTP, 4xx for bad input in one error shape, bounded settings, a
tampered export refused at start-up, a concurrent burst, load shedding and a body deadline on a real socket; and
the search page's routes: its static files, videos with HTTP ranges, only indexed files (no paths, `..`, absolute
ids or links out of the folder), the token, cached posters, moments and "more like this" (the page itself runs in
a browser in test_search_page.py)."""

from __future__ import annotations

import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app as cli_app
from dgl_deploy.export.onnx_export import stamp_metadata
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval import serve, serve_guards
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.serve import ServeSettings, create_app
from dgl_deploy.runtime.backends.select import open_encoder
from tests.conftest import make_serve_files, running_app

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

LIMITS = ServeSettings(max_upload_mb=1.0, max_query_chars=50, max_k=20, decode_timeout=20.0)


@pytest.fixture(scope="module")
def serve_files(tmp_path_factory) -> Path:
    """Six synthetic videos, a dgl-tiny checkpoint and its embeddings (`emb.npy`), shared by the serve tests."""
    return make_serve_files(tmp_path_factory.mktemp("serve"))


def serve_app(root: Path, settings: ServeSettings = LIMITS, **options) -> object:
    """The app over the set in `root` (posters cached in `root`/posters unless given)."""
    options.setdefault("poster_cache", root / "posters")
    return create_app(root / "model.safetensors", root / "emb.npy", settings, backend="torch", **options)


@pytest.fixture(scope="module")
def client(serve_files) -> TestClient:
    return TestClient(serve_app(serve_files))


def test_text_and_video_search(client, serve_files) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["rows"] == 6 and health["index"] == "exact"
    found = client.get("/search", params={"q": "a red circle moves right", "k": 3}).json()
    assert found["query"] == "a red circle moves right" and [h["rank"] for h in found["results"]] == [1, 2, 3]
    target = sorted((serve_files / "videos").glob("*.mp4"))[2]
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


def test_refuses_other_model(tmp_path, serve_files) -> None:
    torch.manual_seed(123)
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "other.safetensors")
    with pytest.raises(DGLError, match="another model"):
        create_app(tmp_path / "other.safetensors", serve_files / "emb.npy", backend="torch")


def test_tampered_export_refuses_to_start(tmp_path, serve_files, tiny_export) -> None:
    """A graph changed after export (same shapes, other bytes) used to start and answer `/health` "ok" while
    every video search failed; the towers are now run once at start-up and the checksum refuses it."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_export[1], folder)
    embed_videos(serve_files / "videos", tmp_path / "emb.npy", open_encoder(folder, log=None),
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
def test_concurrent_burst_on_a_socket(serve_files) -> None:
    with running_app(serve_app(serve_files)) as base, httpx.Client(base_url=base, timeout=30) as http:
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
    conn.sendall(b"POST /search/video HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n--b\r\n")
    return conn


@pytest.mark.timeout(120)
def test_stalled_uploads_hold_slots_then_time_out(serve_files) -> None:
    """Requests being received count as pending: with two stalled uploads and max_pending=2, a query gets 503 with
    Retry-After at once; the stalled bodies get 408 at the body deadline and the connections are closed."""
    settings = ServeSettings(max_pending=2, body_timeout=1.5)
    with running_app(serve_app(serve_files, settings)) as base, httpx.Client(base_url=base, timeout=30) as http:
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


# ---- the search page's routes: static files, video ranges, only indexed files, token, posters, more like this ----

def _video(root: Path, n: int) -> Path:
    return sorted((root / "videos").glob("*.mp4"))[n]


def test_page_and_its_files(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")):
        reply = client.get(f"/static/{name}")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind), name
        if name != "icon.svg":  # (its xmlns is a name, not a download)
            assert "http:" not in reply.text and "https:" not in reply.text and "//" not in reply.text.replace(
                "// ", "").replace("//\n", ""), f"{name} loads something from elsewhere"
    assert "http" not in page.text and "/static/app.js" in page.text
    for path in ("/static/nope.js", "/static/..%2fserve.py", "/static/index.html"):
        reply = client.get(path)
        assert reply.status_code == 404 and set(reply.json()) == {"error"}, path
    assert client.get("/docs").status_code == 200
    assert {"/search", "/search/video", "/search/similar", "/video", "/poster"} <= set(client.get("/openapi.json").json()["paths"])


def test_video_ranges(client, serve_files) -> None:
    path = _video(serve_files, 1)
    data = path.read_bytes()
    whole = client.get("/video", params={"id": path.name})
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"
    for header, start, end in (("bytes=100-199", 100, 199), ("bytes=-10", len(data) - 10, len(data) - 1),
                               (f"bytes={len(data) - 50}-", len(data) - 50, len(data) - 1)):
        part = client.get("/video", params={"id": path.name}, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == data[start:end + 1] and part.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert client.get("/video", params={"id": path.name}, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    head = client.head("/video", params={"id": path.name})
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content


@pytest.mark.parametrize("video_id", ["../emb.npy", "../model.safetensors", "../../../../../../etc/passwd", "/etc/passwd",
                                      "videos/../vid_00000.mp4", "./vid_00000.mp4", "vid_00000.mp4/", "%2e%2e/emb.npy",
                                      "..\\emb.npy", "vid_00000.mp4\x00", "annotations.jsonl", "ABSOLUTE"])
def test_only_indexed_videos_are_served(client, serve_files, video_id: str) -> None:
    """The client names an indexed video by its id; anything else (a path, `..`, an absolute path, a file beside
    the videos that is not in the index) is 404, on every media route."""
    if video_id == "ABSOLUTE":
        video_id = str(_video(serve_files, 0))
    for route in ("/video", "/poster"):
        reply = client.get(route, params={"id": video_id})
        assert reply.status_code == 404 and set(reply.json()) == {"error"}, (route, reply.text)
        assert "in the index" in reply.json()["error"]
    assert client.get("/video", params={"id": ""}).status_code == 422


def test_links_out_of_the_video_folder_are_refused(tmp_path, serve_files) -> None:
    """A video replaced by a link after indexing is served only if the link stays in the indexed folder: a link
    to a file outside it (a symlink escape) is 403, on every media route."""
    root = tmp_path / "set"
    shutil.copytree(serve_files, root, symlinks=True, ignore=shutil.ignore_patterns("posters"))
    secret = tmp_path / "secret.mp4"
    shutil.copy(_video(root, 0), secret)
    escape, inside, missing, broken = (_video(root, n) for n in (1, 2, 4, 5))
    escape.unlink()
    escape.symlink_to(secret)
    inside.unlink()
    inside.symlink_to(_video(root, 3).name)  # a relative link to a video beside it
    with TestClient(serve_app(root)) as http:
        for route in ("/video", "/poster"):
            reply = http.get(route, params={"id": escape.name})
            assert reply.status_code == 403 and "outside the folders the index was built from" in reply.json()["error"]
            assert http.get(route, params={"id": inside.name}).status_code == 200
        missing.unlink()
        reply = http.get("/video", params={"id": missing.name})
        assert reply.status_code == 404 and "not there any more" in reply.json()["error"]
        broken.write_bytes(b"no longer a video")
        posters = http.app.state.service.posters
        for _ in range(2):  # the failure is remembered: not decoded again
            reply = http.get("/poster", params={"id": broken.name})
            assert reply.status_code == 404 and reply.json()["error"].startswith(f"no poster for '{broken.name}': ")
            assert str(tmp_path) not in reply.text  # the server's paths are not shown
        assert posters.decoded == 1  # the link inside the folder's poster only


def test_token_on_every_request(serve_files) -> None:
    token = "s3cret-Token_1"
    name = _video(serve_files, 0).name
    with TestClient(serve_app(serve_files, token=token)) as http:
        for path, params in (("/health", {}), ("/search", {"q": "a red circle"}), ("/video", {"id": name}),
                             ("/poster", {"id": name}), ("/search/similar", {"id": name})):
            refused = http.get(path, params=params)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            assert "needs a token" in refused.json()["error"]
            wrong = http.get(path, params=params, headers={"Authorization": "Bearer s3cret-Token_2"})
            assert wrong.status_code == 401 and wrong.json()["error"] == "wrong token"
            assert http.get(path, params={**params, "token": "nope"}).status_code == 401
            assert http.get(path, params=params, headers={"Authorization": f"Bearer {token}"}).status_code == 200, path
            assert http.get(path, params=params, headers={"Authorization": f"bearer {token}"}).status_code == 200
            assert http.get(path, params={**params, "token": token}).status_code == 200, path
        part = http.get("/video", params={"id": name, "token": token}, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and len(part.content) == 10
        with open(_video(serve_files, 0), "rb") as handle:
            upload = http.post("/search/video", files={"file": (name, handle, "video/mp4")})
        assert upload.status_code == 401
        for public in ("/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
            assert http.get(public).status_code == 200, public  # no index data: the page asks for the token
    with pytest.raises(DGLError, match="token must be"):
        serve_app(serve_files, token="")
    with pytest.raises(DGLError, match="token must be"):
        serve_app(serve_files, token="with space")


def test_posters_are_made_once(tmp_path, serve_files) -> None:
    from io import BytesIO

    from PIL import Image

    cache = tmp_path / "posters"
    first, second = _video(serve_files, 0).name, _video(serve_files, 1).name
    with TestClient(serve_app(serve_files, poster_cache=cache)) as http:
        posters = http.app.state.service.posters
        reply = http.get("/poster", params={"id": first})
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
        assert Image.open(BytesIO(reply.content)).size == (256, 256) and posters.decoded == 1
        again = http.get("/poster", params={"id": first, "start": 0})
        assert again.content == reply.content and posters.decoded == 1  # from the cache: not decoded again
        assert http.get("/poster", params={"id": second}).status_code == 200 and posters.decoded == 2
        assert len(list(cache.rglob("*.jpg"))) == 2
        refused = http.get("/poster", params={"id": first, "start": 1.0})  # a whole-video set: no moment at 1 s
        assert refused.status_code == 404 and "no moment starting at 1 s" in refused.json()["error"]
        for bad in ("-1", "nan", "inf", "1e30"):
            assert http.get("/poster", params={"id": first, "start": bad}).status_code == 422, bad
        assert posters.decoded == 2
    with TestClient(serve_app(serve_files, poster_cache=cache)) as http:  # a restart keeps the cache
        assert http.get("/poster", params={"id": first}).content == reply.content
        assert http.app.state.service.posters.decoded == 0


def test_concurrent_requests_for_one_poster_decode_once(tmp_path, serve_files) -> None:
    name = _video(serve_files, 5).name
    with running_app(serve_app(serve_files, poster_cache=tmp_path / "posters")) as base, \
            httpx.Client(base_url=base, timeout=30) as http, ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: http.get("/poster", params={"id": name}), range(6)))
        assert {r.status_code for r in replies} == {200} and len({r.content for r in replies}) == 1
    assert len(list((tmp_path / "posters").rglob("*.jpg"))) == 1


def test_segmented_results_have_moments_with_posters(tmp_path, serve_files) -> None:
    """A set whose rows are moments (spans: start, end seconds) gives each hit its `start`/`end`; posters exist
    for those starts only, and differ from the first frame. (The spans are set on the opened store here.)"""
    import numpy as np

    with TestClient(serve_app(serve_files, poster_cache=tmp_path / "posters")) as http:
        store = http.app.state.service.index.store
        store.spans = np.array([[1.0, 2.0] if row % 2 else [0.0, 1.0] for row in range(len(store.ids))])
        found = http.get("/search", params={"q": "a red circle", "k": 6}).json()["results"]
        assert {(h["start"], h["end"]) for h in found} == {(1.0, 2.0), (0.0, 1.0)}
        moment = next(h for h in found if h["start"] == 1.0)
        late = http.get("/poster", params={"id": moment["id"], "start": moment["start"]})
        early = http.get("/poster", params={"id": moment["id"]})
        assert late.status_code == early.status_code == 200 and late.content != early.content
        assert http.get("/poster", params={"id": moment["id"], "start": 1.5}).status_code == 404
        similar = http.get("/search/similar", params={"id": moment["id"], "row": moment["row"], "k": 2}).json()
        assert similar["query"] == f"similar:{moment['id']}@1" and all("start" in h for h in similar["results"])


def test_more_like_this(client, serve_files) -> None:
    """GET /search/similar searches with the stored row of an indexed video: its neighbours, itself left out,
    in the order a search with the same video uploaded gives them."""
    target = _video(serve_files, 3)
    reply = client.get("/search/similar", params={"id": target.name, "k": 3})
    assert reply.status_code == 200, reply.text
    similar = reply.json()
    assert similar["query"] == f"similar:{target.name}" and [h["rank"] for h in similar["results"]] == [1, 2, 3]
    with open(target, "rb") as handle:
        uploaded = client.post("/search/video", params={"k": 4}, files={"file": (target.name, handle)}).json()
    assert uploaded["results"][0]["id"] == target.name
    assert [h["id"] for h in similar["results"]] == [h["id"] for h in uploaded["results"][1:]]
    for h, u in zip(similar["results"], uploaded["results"][1:], strict=True):
        assert h["score"] == pytest.approx(u["score"], abs=1e-4)
    for params, status in (({"id": "nope.mp4"}, 404), ({"id": target.name, "row": 0}, 404),
                           ({"id": target.name, "row": 10**6}, 404), ({"id": target.name, "k": 0}, 422),
                           ({"id": target.name, "row": -1}, 422), ({}, 422)):
        bad = client.get("/search/similar", params=params)
        assert bad.status_code == status and set(bad.json()) == {"error"}, (params, bad.text)


def test_indexed_videos_of_a_second_folder(tmp_path) -> None:
    """Ids recorded as ../other/x.mp4 (a second folder embedded into the set) are served from that folder, and
    only from it; recorded absolute or indirect ids are not served."""
    from types import SimpleNamespace

    import numpy as np

    from dgl_deploy.retrieval.serve_media import IndexedVideos, MediaError

    (tmp_path / "first").mkdir()
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    for name in ("first/a.mp4", "other/sub/b.mp4", "outside/c.mp4", "d.mp4"):
        (tmp_path / name).write_bytes(b"video")
    (tmp_path / "other" / "link.mp4").symlink_to(tmp_path / "outside" / "c.mp4")
    ids = ["a.mp4", "../other/sub/b.mp4", "../other/link.mp4", str(tmp_path / "d.mp4"), "../other/../d.mp4"]
    store = SimpleNamespace(ids=ids, spans=np.array([[0, 5], [2.5, 5], [0, 1], [0, 1], [0, 1]], np.float64),
                            recorded_path=lambda key: tmp_path / "first", paths=SimpleNamespace(manifest=Path("m")))
    videos = IndexedVideos(store)
    assert videos.resolve("a.mp4") == (tmp_path / "first" / "a.mp4").resolve()
    assert videos.resolve("../other/sub/b.mp4") == (tmp_path / "other" / "sub" / "b.mp4").resolve()
    for refused, status in (("../other/link.mp4", 403), (str(tmp_path / "d.mp4"), 403), ("../other/../d.mp4", 403),
                            ("../outside/c.mp4", 404), ("../d.mp4", 404)):
        with pytest.raises(MediaError) as caught:
            videos.resolve(refused)
        assert caught.value.status == status, refused
    assert videos.check_moment("../other/sub/b.mp4", 2.5) == 2500 and videos.check_moment("a.mp4", 0) == 0
    with pytest.raises(MediaError, match="no moment starting at 2.5 s"):
        videos.check_moment("a.mp4", 2.5)
    assert videos.row_of("../other/sub/b.mp4") == 1
    unrecorded = IndexedVideos(SimpleNamespace(ids=ids, recorded_path=lambda key: None,
                                               paths=SimpleNamespace(manifest=Path("emb.manifest.json"))))
    with pytest.raises(MediaError, match="does not record the folder"):
        unrecorded.resolve("a.mp4")


def test_access_log_hides_tokens() -> None:
    import logging

    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/video?id=a.mp4&token=s3cret&x=1", "1.1", 206), None)
    assert serve_guards.RedactTokens().filter(record) and "s3cret" not in record.getMessage()
    assert "/video?id=a.mp4&token=***&x=1" in record.getMessage()
    assert serve_guards.log_config()["handlers"]["access"]["filters"] == ["redact_tokens"]


@pytest.mark.parametrize("host, token, warning", [("127.0.0.1", "abc", None), ("0.0.0.0", "abc", "unencrypted"),
                                                  ("0.0.0.0", None, "no authentication")])
def test_cli_token(monkeypatch, host: str, token: str | None, warning: str | None) -> None:
    ran: dict = {}
    monkeypatch.setattr(serve, "create_app", lambda *args, **kwargs: ran.update(kwargs) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(run=kwargs))
    monkeypatch.delenv("DGL_SERVE_TOKEN", raising=False)
    args = ["serve", "--model", "m", "--index", "i", "--host", host, "--poster-cache", "pc"]
    result = CliRunner().invoke(cli_app, args, env={"DGL_SERVE_TOKEN": token} if token else {})
    assert result.exit_code == 0, result.output
    assert ran["token"] == token and ran["poster_cache"] == Path("pc")
    assert ran["run"]["log_config"]["handlers"]["access"]["filters"] == ["redact_tokens"]
    assert (warning in result.output) if warning else "warning" not in result.output
    result = CliRunner().invoke(cli_app, ["serve", "--model", "m", "--index", "i", "--token", "a b"])
    assert result.exit_code == 1 and result.output.startswith("error: the token must be")


def test_page_routes_over_an_index_folder(tmp_path, serve_files, client) -> None:
    """With a `dgl index build` folder, "more like this" gives what exact search gives, and the videos are found
    through the index's embeddings."""
    pytest.importorskip("faiss")
    from dgl_deploy.retrieval.ann_index import IndexSettings, build_index

    build_index(serve_files / "emb.npy", tmp_path / "index", IndexSettings(kind="flat"))
    name = _video(serve_files, 2).name
    app = create_app(serve_files / "model.safetensors", tmp_path / "index", LIMITS, backend="torch",
                     poster_cache=tmp_path / "posters")
    with TestClient(app) as http:
        assert http.get("/health").json()["index"] == "flat"
        similar = http.get("/search/similar", params={"id": name, "k": 4}).json()["results"]
        exact = client.get("/search/similar", params={"id": name, "k": 4}).json()["results"]
        assert [h["id"] for h in similar] == [h["id"] for h in exact]
        assert http.get("/video", params={"id": name}, headers={"Range": "bytes=0-3"}).content == \
            _video(serve_files, 2).read_bytes()[:4]
        assert http.get("/poster", params={"id": name}).status_code == 200
