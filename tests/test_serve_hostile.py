"""`dgl serve` against hostile files and requests (issue 26, round 3): links and `..` ids that leave the folder a
video was embedded from (after `dgl embed --update` of a second folder, and through a `.txt` list with redundant
`../`), a listed `page.html` (an mp4 with an HTML tail) that must not be served as a page, security headers on
every answer, a Host header of another site (DNS rebinding) without a token, "more like this" on a windowed set,
range errors in the JSON error shape, an unusable poster cache, and uploads shed while the server is busy."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app as cli_app
from dgl_deploy.data.windows import Segmentation
from dgl_deploy.retrieval import serve
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.serve import ServeSettings
from dgl_deploy.runtime.backends.select import open_encoder
from tests.conftest import make_serve_files, running_app
from tests.test_serve import _stalled_upload, _video, serve_app

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

HTML_TAIL = b"<!doctype html><html><script>document.title = sessionStorage.getItem('token')</script></html>"
OUTSIDE = "outside the folders the index was built from"


@pytest.fixture(scope="module")
def serve_files(tmp_path_factory) -> Path:
    """Six synthetic videos, a dgl-tiny checkpoint and its embeddings (`emb.npy`)."""
    return make_serve_files(tmp_path_factory.mktemp("serve-hostile"))


def _embed(root: Path, source: Path, out: Path, **options) -> None:
    """Embed `source` into `out` with the checkpoint of `root` (all of it: a failed video fails the test)."""
    settings = options.pop("settings", EmbedSettings(workers=1))
    encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
    result = embed_videos(source, out, encoder, settings, **options)
    assert not result.failures, result.failures


def _copy_set(serve_files: Path, to: Path) -> Path:
    shutil.copytree(serve_files, to, symlinks=True, ignore=shutil.ignore_patterns("posters"))
    return to


def _refused(http: TestClient, video_id: str) -> None:
    """`video_id` is 403 on every media route, in the JSON error shape."""
    for route in ("/video", "/poster", "/preview"):
        reply = http.get(route, params={"id": video_id})
        assert reply.status_code == 403 and OUTSIDE in reply.json()["error"], (route, video_id, reply.text)


def test_links_out_of_an_updated_set_are_refused(tmp_path, serve_files) -> None:
    """After `dgl embed OTHER --update`, ids `../../new/batch/x.mp4` are served from new/batch (recorded in the
    manifest) only: a video of either folder replaced by a link to a file beside new/batch (in neither folder) is
    403; a link to another file of new/batch, in another of its subfolders, is served."""
    root = _copy_set(serve_files, tmp_path / "set")
    batch = tmp_path / "new" / "batch"
    (batch / "sub").mkdir(parents=True)
    for n, name in ((0, "clip_0.mp4"), (1, "clip_1.mp4"), (2, "sub/clip_2.mp4")):
        shutil.copy(_video(root, n), batch / name)
    _embed(root, batch, root / "emb.npy", update=True)
    secret = tmp_path / "new" / "secret.mp4"  # in the parent of the second folder, not in it
    shutil.copy(_video(root, 3), secret)
    first, second, nested, sibling = _video(root, 0), batch / "clip_0.mp4", batch / "sub" / "clip_2.mp4", \
        batch / "clip_1.mp4"
    first_id, second_id, nested_id = first.name, "../../new/batch/clip_0.mp4", "../../new/batch/sub/clip_2.mp4"
    with TestClient(serve_app(root)) as http:
        store = http.app.state.service.index.store
        assert store.manifest["source_folders"] == ["../../new/batch"]
        assert {second_id, nested_id} <= set(store.ids)
        assert http.get("/video", params={"id": second_id}).content == second.read_bytes()
        for video in (first, second):
            video.unlink()
            video.symlink_to(secret)
        _refused(http, first_id)
        _refused(http, second_id)
        nested.unlink()
        nested.symlink_to(sibling)  # a link inside the folder it was embedded from is still served
        assert http.get("/video", params={"id": nested_id}).content == sibling.read_bytes()


@pytest.fixture(scope="module")
def listed_set(tmp_path_factory, serve_files) -> Path:
    """A set embedded from a `.txt` list: a video, `page.html` (a valid mp4 with an HTML tail), and a video in
    another folder named with more `../` than the path has folders (which normalise to the file system root)."""
    top = tmp_path_factory.mktemp("listed")
    root = _copy_set(serve_files, top / "set")
    elsewhere = top / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(_video(root, 1), elsewhere / "clip.mp4")
    (root / "videos" / "page.html").write_bytes(_video(root, 2).read_bytes() + HTML_TAIL)
    escape = "../" * (len(root.parts) + 3) + str(elsewhere / "clip.mp4").lstrip("/")
    (root / "videos" / "list.txt").write_text(f"{_video(root, 0).name}\npage.html\n{escape}\n")
    _embed(root, root / "videos" / "list.txt", root / "listed.npy")
    return root


def _listed_app(root: Path) -> object:
    return serve.create_app(root / "model.safetensors", root / "listed.npy", ServeSettings(),
                            backend="torch", poster_cache=root / "posters")


def test_links_out_of_a_listed_folder_are_refused(tmp_path, listed_set) -> None:
    """A list entry with redundant `../` does not widen what is served to /tmp: a listed video replaced by a link
    to a file beside its folder, or a video of the list's folder replaced by a link anywhere under /tmp, is 403."""
    root = _copy_set(listed_set, tmp_path / "set")
    private = tmp_path / "private.mp4"
    shutil.copy(_video(root, 3), private)
    with TestClient(_listed_app(root)) as http:
        ids = http.app.state.service.index.store.ids
        escape = next(i for i in ids if i.startswith("../"))
        elsewhere = Path(os.path.normpath(root / "videos" / escape))
        assert http.get("/video", params={"id": escape}).content == elsewhere.read_bytes()  # served from its folder
        first = root / "videos" / ids[0]
        for video in (first, elsewhere):
            video.unlink()
            video.symlink_to(private)
        _refused(http, ids[0])
        _refused(http, escape)


def test_a_listed_html_file_is_not_a_page(listed_set) -> None:
    """`page.html` (embedded: it is an mp4) is served as application/octet-stream, never text/html, with nosniff
    and a policy under which nothing runs; the videos keep their video type."""
    with TestClient(_listed_app(listed_set)) as http:
        assert "page.html" in http.app.state.service.index.store.ids
        for method in (http.get, http.head):
            reply = method("/video", params={"id": "page.html"})
            assert reply.status_code == 200 and reply.headers["content-type"] == "application/octet-stream"
            assert reply.headers["x-content-type-options"] == "nosniff"
            policy = reply.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "sandbox" in policy and "script-src" not in policy
        assert http.get("/video", params={"id": "page.html"}).content.endswith(HTML_TAIL)
        video = http.get("/video", params={"id": _video(listed_set, 0).name})
        assert video.headers["content-type"] == "video/mp4" and video.headers["x-content-type-options"] == "nosniff"


def test_every_answer_has_security_headers(serve_files) -> None:
    """nosniff and a Content-Security-Policy on every answer: the page (its own files only), JSON, errors, media,
    and the API docs (Swagger UI from its CDN, its inline script by hash)."""
    with TestClient(serve_app(serve_files)) as http:
        answers = {path: http.get(path, params=params) for path, params in (
            ("/", {}), ("/static/app.js", {}), ("/health", {}), ("/nope", {}), ("/search", {"q": "a red circle"}),
            ("/search", {}), ("/video", {"id": _video(serve_files, 0).name}), ("/poster", {"id": "nope.mp4"}),
            ("/docs", {}))}
        for path, reply in answers.items():
            assert reply.headers["x-content-type-options"] == "nosniff", path
            assert "default-src 'none'" in reply.headers["content-security-policy"], path
        assert "script-src 'self';" in answers["/"].headers["content-security-policy"]
        docs = answers["/docs"].headers["content-security-policy"]
        assert "'sha256-" in docs and "'unsafe-inline'" not in docs and "https://cdn.jsdelivr.net" in docs
        assert "sandbox" in answers["/health"].headers["content-security-policy"]


def test_other_hosts_are_refused_without_a_token(serve_files) -> None:
    """Without a token, a request for another host (a page of evil.example whose name was made to resolve to this
    machine) is 400 in the JSON error shape; the loopback names, the connection's own address and
    `allowed_hosts` are answered. With a token the token decides, as before."""
    app = serve_app(serve_files, allowed_hosts=["search.example.org"])
    name = _video(serve_files, 0).name
    with running_app(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        port = base.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.evil.example"):
            for path, params in (("/health", {}), ("/video", {"id": name}), ("/", {})):
                reply = http.get(path, params=params, headers={"Host": host})
                assert reply.status_code == 400 and "is not an address of this server" in reply.json()["error"], host
                assert reply.headers["x-content-type-options"] == "nosniff"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "search.example.org"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
    token = "hostile-token-1"
    with TestClient(serve_app(serve_files, token=token)) as http:
        evil = {"Host": "evil.example"}
        assert http.get("/health", headers=evil).status_code == 401
        assert http.get("/health", headers={**evil, "Authorization": f"Bearer {token}"}).status_code == 200
    with pytest.raises(DGLError, match="not a host name"):
        serve_app(serve_files, allowed_hosts=["evil example"])


def test_cli_allowed_hosts(monkeypatch) -> None:
    """`--allowed-host` (repeatable) reaches the app with the bound host; a malformed one is a one-line error."""
    ran: dict = {}
    monkeypatch.setattr(serve, "create_app", lambda *args, **kwargs: ran.update(kwargs) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.delenv("DGL_SERVE_TOKEN", raising=False)
    args = ["serve", "--model", "m", "--index", "i", "--host", "127.0.0.2"]
    result = CliRunner().invoke(cli_app, [*args, "--allowed-host", "a.example", "--allowed-host", "b.example:80"])
    assert result.exit_code == 0 and ran["allowed_hosts"] == ["127.0.0.2", "a.example", "b.example:80"], result.output
    result = CliRunner().invoke(cli_app, [*args, "--allowed-host", "a/b"])
    assert result.exit_code == 1 and result.output.startswith("error: not a host name or address: 'a/b'")


def test_similar_returns_k_on_a_windowed_set(tmp_path, serve_files) -> None:
    """On a set of windows, "more like this" leaves out all of the video's own moments and still returns k (the
    first k moments of the other videos a search with every row finds) when k exist."""
    import numpy as np

    from dgl_deploy.retrieval.moments import search_moments

    _embed(serve_files, serve_files / "videos", tmp_path / "windows.npy",
           settings=EmbedSettings(workers=1, segments=Segmentation(window=0.5, stride=0.5)))
    app = serve.create_app(serve_files / "model.safetensors", tmp_path / "windows.npy", ServeSettings(),
                           backend="torch", poster_cache=tmp_path / "posters")
    short = 0  # cases where k + 1 moments hold fewer than k of the other videos (what used to be returned)
    with TestClient(app) as http:
        index = http.app.state.service.index
        rows = len(index.store.ids)
        for n in range(6):
            name = _video(serve_files, n).name
            row = index.store.ids.index(name)
            assert index.store.ids.count(name) == 4
            vector = np.asarray(index.store.vectors[row:row + 1], np.float32)
            for per_video, k in ((0, 3), (0, 5), (2, 5), (1, 5)):
                found = search_moments(index, vector, rows, per_video)[0]
                others = [(h.id, h.row) for h in found if h.id != name]
                assert len(others) >= k
                short += sum(h.id != name for h in found[:k + max(per_video, 1)]) < k
                reply = http.get("/search/similar", params={"id": name, "k": k, "per_video": per_video}).json()
                assert [(h["id"], h["row"]) for h in reply["results"]] == others[:k], (name, per_video, reply)
                assert [h["rank"] for h in reply["results"]] == list(range(1, k + 1))
    assert short  # the set does exercise the bug


def test_range_errors_are_json(serve_files) -> None:
    """A range beyond the file is 416 and a malformed one 400, both in the JSON error shape; several ranges get the
    whole file as its video type (never a multipart body)."""
    path = _video(serve_files, 0)
    size = path.stat().st_size
    with TestClient(serve_app(serve_files)) as http:
        for header, status in ((f"bytes={size}-", 416), (f"bytes={size + 10}-{size + 20}", 416), ("items=0-1", 400),
                               ("bytes=9-2", 400), ("bytes=x-y", 400)):
            reply = http.get("/video", params={"id": path.name}, headers={"Range": header})
            assert reply.status_code == status and set(reply.json()) == {"error"}, (header, reply.text)
            assert reply.headers["content-type"] == "application/json"
            if status == 416:
                assert reply.headers["content-range"] == f"bytes */{size}"
        several = http.get("/video", params={"id": path.name}, headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and several.headers["content-type"] == "video/mp4"
        assert several.content == path.read_bytes()


def test_unusable_poster_cache_refuses_to_start(tmp_path, serve_files) -> None:
    """A poster cache that cannot be made (under /proc, even as root; under a file) fails at start-up, one line."""
    (tmp_path / "file").write_bytes(b"")
    for cache in ("/proc/nope", tmp_path / "file" / "posters"):
        with pytest.raises(DGLError, match="the poster cache cannot be made there"):
            serve_app(serve_files, poster_cache=cache)
    assert not list(tmp_path.glob(".dgl-poster-check-*"))


@pytest.mark.timeout(120)
def test_shed_uploads_get_the_503(serve_files) -> None:
    """With the only slot held by a stalled upload, a client that sends a whole upload larger than the sockets'
    buffers before reading (http.client, as most do) gets the 503 with Retry-After, not a connection reset (the
    server reads and drops the refused body before closing)."""
    import http.client
    import json

    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=big.mp4\r\n\r\n" + os.urandom(12 << 20) + \
        b"\r\n--b--\r\n"
    settings = ServeSettings(max_upload_mb=16.0, max_pending=1, body_timeout=20.0)
    with running_app(serve_app(serve_files, settings)) as base:
        stalled = _stalled_upload(base)
        time.sleep(0.5)  # admitted, waiting for its body
        try:
            for _ in range(3):
                conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
                conn.request("POST", "/search/video", body, {"Content-Type": "multipart/form-data; boundary=b"})
                reply = conn.getresponse()
                assert reply.status == 503 and reply.getheader("retry-after") == "1"
                assert "busy" in json.loads(reply.read())["error"]
                conn.close()
        finally:
            stalled.close()
