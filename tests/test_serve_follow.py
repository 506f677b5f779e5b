"""`dgl serve` follows its index: `dgl embed --update` while requests run in a loop (no failed request, the new
video found within 10 s), an index folder followed once rebuilt (never a set it does not match), a half-written or
damaged set never served; `/health` shows the generation and `/metrics` parses as Prometheus text and moves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.files import atomic_write_text
from dgl_deploy.retrieval.ann_index import IndexSettings, build_index
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.serve import ServeSettings, create_app
from dgl_deploy.retrieval.store import StorePaths
from dgl_deploy.runtime.backends.select import open_encoder
from tests.conftest import make_serve_files, running_app

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")
from fastapi.testclient import TestClient  # noqa: E402

NEW = "new_clip.mp4"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Six videos, a dgl-tiny checkpoint and their set (`emb.npy`), and one more video (not yet in the folder)."""
    root = make_serve_files(tmp_path_factory.mktemp("follow"))
    make_synthetic(root / "more", videos=1, seed=9)
    return root


@pytest.fixture
def root(made, tmp_path) -> Path:
    """A copy of `made` for one test (the tests change the set)."""
    return Path(shutil.copytree(made, tmp_path / "copy", symlinks=True))


def _app(root: Path, index: Path | None = None, interval: float = 0.0, **options) -> object:
    settings = ServeSettings(reload_interval=interval)
    return create_app(root / "model.safetensors", index or root / "emb.npy", settings, backend="torch",
                      poster_cache=root / "posters", **options)


def _add_video(root: Path) -> None:
    shutil.copy(root / "more" / "vid_00000.mp4", root / "videos" / NEW)


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition (the official parser)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.timeout(240)
def test_update_while_serving(root) -> None:
    """Requests in a loop on two threads while `dgl embed --update` adds a video: every answer is a success, and
    the server finds the new video within 10 s of the switch; `/metrics` shows it."""
    with running_app(_app(root, interval=0.5)) as base, httpx.Client(base_url=base, timeout=30) as http:
        before = http.get("/health").json()
        assert before["rows"] == 6 and before["generation"].startswith("gen-")
        first = _metrics(http.get("/metrics").text)
        statuses: list[int] = []
        stop = threading.Event()

        def ask() -> None:
            with httpx.Client(base_url=base, timeout=30) as own:
                while not stop.is_set():
                    for path, params in (("/search", {"q": "a red circle", "k": 10}), ("/health", {}),
                                         ("/search/similar", {"id": "vid_00001.mp4", "k": 10}),
                                         ("/video", {"id": "vid_00002.mp4"})):
                        statuses.append(own.get(path, params=params, headers={"range": "bytes=0-99"}).status_code)

        askers = [threading.Thread(target=ask) for _ in range(2)]
        for asker in askers:
            asker.start()
        try:
            _add_video(root)
            update = subprocess.Popen([sys.executable, "-m", "dgl_deploy", "embed", str(root / "videos"), "--out",
                                       str(root / "emb.npy"), "--model", str(root / "model.safetensors"), "--update",
                                       "--workers", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
            deadline = time.time() + 180
            while http.get("/search/similar", params={"id": NEW}).status_code != 200:  # 404 until switched in
                assert time.time() < deadline and update.poll() in (None, 0), update.stderr.read()
                time.sleep(0.05)
            found = time.time()
            assert update.wait(60) == 0, update.stderr.read()
            found_after = found - StorePaths.of(root / "emb.npy").manifest.stat().st_mtime  # since the switch (rename)
            assert found_after < 10, f"the new video was found {found_after:.1f} s after the switch"
            time.sleep(1.0)  # requests keep running on the new generation
        finally:
            stop.set()
            for asker in askers:
                asker.join(30)
        after = http.get("/health").json()
        assert after["rows"] == 7 and after["generation"] != before["generation"]
        found = http.get("/search", params={"q": "a red circle", "k": 7}).json()["results"]
        assert NEW in {hit["id"] for hit in found}
        assert http.get("/video", params={"id": NEW}).status_code == 200  # its file is served too
        assert http.get("/poster", params={"id": NEW}).status_code == 200
        assert len(statuses) > 20 and set(statuses) <= {200, 206}, sorted(set(statuses))
        last = _metrics(http.get("/metrics").text)
    print(f"new video found {found_after:.2f} s after the switch; {len(statuses)} requests, none failed")
    search_ok, health_ok = (("dgl_requests_total", (("route", route), ("status", "200"))) for route in ("/search", "/health"))
    assert last[search_ok] > first.get(search_ok, 0) and last[health_ok] > first[health_ok] >= 1  # counters move
    assert last[("dgl_request_seconds_count", (("route", "/search"),))] == last[search_ok]
    assert last[("dgl_index_rows", ())] == 7 and last[("dgl_index_switches_total", ())] == 1
    assert first[("dgl_index_info", (("generation", before["generation"]), ("kind", "exact")))] == 1
    assert last[("dgl_index_info", (("generation", after["generation"]), ("kind", "exact")))] == 1
    assert last[("dgl_decoder_restarts_total", ())] == 0 and ("dgl_encoder_queue_depth", ()) in last
    assert last[("dgl_requests_total", (("route", "/video"), ("status", "206")))] > 0
    assert not any(name == "dgl_shed_requests_total" for name, _ in last)  # nothing shed


def test_index_folder_follows_its_rebuilds(root) -> None:
    """An index folder is followed once `dgl index build` has caught up with the updated set; in between, the index
    no longer matches the set and the old state is served."""
    build_index(root / "emb.npy", root / "index", IndexSettings(kind="flat", recall_queries=0))
    app = _app(root, root / "index")
    client, follower = TestClient(app), app.state.service.follower
    before = client.get("/health").json()
    assert before["index"] == "flat" and before["rows"] == 6
    _add_video(root)
    encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
    embed_videos(root / "videos", root / "emb.npy", encoder, EmbedSettings(workers=1), update=True)
    assert not follower.poll()  # the set changed, the index was built from the old one: not served
    assert client.get("/health").json() == before
    assert client.get("/search", params={"q": "a red circle"}).status_code == 200
    build_index(root / "emb.npy", root / "index", IndexSettings(kind="flat", recall_queries=0), overwrite=True)
    assert follower.poll() and not follower.poll()  # switched once
    after = client.get("/health").json()
    assert after["rows"] == 7 and after["generation"] != before["generation"] and after["index"] == "flat"
    assert client.get("/search/similar", params={"id": NEW}).status_code == 200


def test_half_written_or_damaged_sets_are_never_served(root) -> None:
    """A manifest naming files not (yet) there, or a torn manifest, leaves the served state as it was."""
    app = _app(root)
    client, follower = TestClient(app), app.state.service.follower
    paths = StorePaths.of(root / "emb.npy")
    manifest = json.loads(paths.manifest.read_text())
    served = client.get("/health").json()
    atomic_write_text(paths.manifest, json.dumps({**manifest, "generation": "gen-000000000000"}))
    assert not follower.poll()
    paths.manifest.write_text('{"format": ')
    assert not follower.poll()
    assert client.get("/health").json() == served
    assert client.get("/search", params={"q": "a blue square"}).status_code == 200
    atomic_write_text(paths.manifest, json.dumps(manifest))
    assert follower.poll() and follower.switches == 1
    assert client.get("/health").json() == served


def test_metrics_need_the_token(root) -> None:
    client = TestClient(_app(root, token="s3cret"))
    assert client.get("/metrics").status_code == 401
    reply = client.get("/metrics", headers={"authorization": "Bearer s3cret"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = _metrics(reply.text)
    assert samples[("dgl_requests_total", (("route", "/metrics"), ("status", "401")))] == 1
    assert samples[("dgl_index_rows", ())] == 6
    client.get("/nope/../x", headers={"authorization": "Bearer s3cret"})
    again = _metrics(client.get("/metrics", headers={"authorization": "Bearer s3cret"}).text)
    assert again[("dgl_requests_total", (("route", "other"), ("status", "404")))] == 1


def test_metrics_count_decoder_restarts(root) -> None:
    """An upload whose decode runs past its time limit stops its decoder process: a restart in `/metrics`."""
    app = create_app(root / "model.safetensors", root / "emb.npy", ServeSettings(decode_timeout=0.001),
                     backend="torch", poster_cache=root / "posters")
    with TestClient(app) as client:
        video = root / "videos" / "vid_00000.mp4"
        reply = client.post("/search/video", files={"file": (video.name, video.read_bytes(), "video/mp4")})
        assert reply.status_code == 400 and "timed out" in reply.json()["error"], reply.text
        samples = _metrics(client.get("/metrics").text)
    assert samples[("dgl_decoder_restarts_total", ())] == 1
    assert samples[("dgl_requests_total", (("route", "/search/video"), ("status", "400")))] == 1
