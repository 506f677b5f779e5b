"""The search page of `dgl serve` in a real browser (headless Chromium driven by Playwright): a text search shows
posters, a click plays the video from the moment's start (seeking through HTTP ranges), keyboard use, "more
like this", a clip upload, the messages for an empty query and an API error, moments of a segmented set, a
server with a token, and the search in the page's address (/?q=..., back and forward).

The model is a tiny random-init dgl-tiny exported to ONNX; the videos are synthetic. Skipped where Playwright
(`pip install playwright`) or a Chromium (`apt-get install chromium`; no browser download is needed) is missing,
unless $DGL_REQUIRE_BROWSER is set (CI): then that is a failure. $DGL_CHROMIUM names another Chromium.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest

from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.serve import ServeSettings, create_app
from dgl_deploy.runtime.backends.select import open_encoder
from tests.conftest import running_app

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
if os.environ.get("DGL_REQUIRE_BROWSER"):  # CI: a missing browser is a failure, not a skip
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
SETTINGS = ServeSettings(max_query_chars=50, max_k=50, decode_timeout=30.0)
TOKEN = "page-test-token-42"
WAIT_MS = 30_000


def _chromium() -> str | None:
    """A Chromium to drive: $DGL_CHROMIUM, else Debian's /usr/bin/chromium, else one on PATH."""
    for candidate in (os.environ.get("DGL_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    skip = pytest.fail if os.environ.get("DGL_REQUIRE_BROWSER") else pytest.skip
    executable = _chromium()
    if executable is None:
        skip("no Chromium found (apt-get install chromium, or set DGL_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except sync_api.Error as exc:
            skip(f"{executable} does not start under Playwright: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def video_set(tmp_path_factory, tiny_export) -> Path:
    """Six synthetic videos and their embeddings by the tiny ONNX export (`emb.npy`)."""
    root = tmp_path_factory.mktemp("page")
    make_synthetic(root / "videos", videos=6, seed=5, size=(72, 128), seconds=2.0, fps=10)
    embed_videos(root / "videos", root / "emb.npy", open_encoder(tiny_export[1], log=None), EmbedSettings(workers=1))
    return root


@contextmanager
def serving(root: Path, export: Path, spans: np.ndarray | None = None, **options) -> Iterator[str]:
    """The app over `root`'s set on a real socket (uvicorn in a thread); yields its base URL. `spans` makes the
    opened set a segmented one (each row a moment: start, end seconds)."""
    app = create_app(export, root / "emb.npy", SETTINGS, poster_cache=root / "posters", **options)
    if spans is not None:
        app.state.service.index.store.spans = spans
    with running_app(app) as url:
        yield url


@pytest.fixture(scope="module")
def base(video_set, tiny_export) -> Iterator[str]:
    with serving(video_set, tiny_export[1]) as url:
        yield url


class Page:
    """A fresh browser page on the search page, recording page errors, CSP violations and media responses."""

    def __init__(self, browser: object, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.media: list[tuple[str, int]] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", lambda msg: self.problems.append(msg.text) if "Content Security Policy" in msg.text
                     or "Refused to" in msg.text else None)
        self.page.on("response", lambda r: self.media.append((r.url, r.status)) if "/video?" in r.url else None)
        self.page.set_default_timeout(WAIT_MS)
        self.page.goto(url)

    def search(self, text: str, count: int | None = None) -> None:
        self.page.fill("#q", text)
        self.page.press("#q", "Enter")
        if count is not None:
            sync_api.expect(self.page.locator(".card")).to_have_count(count)

    def posters_loaded(self) -> None:
        self.page.wait_for_function("""() => {
            const posters = [...document.querySelectorAll('.card img.poster')];
            return posters.length > 0 && posters.every(p => p.complete && p.naturalWidth > 0);
        }""")

    def playing(self) -> dict:
        """Wait until the player has sought to the moment and played from it; its state."""
        self.page.wait_for_function("""() => {
            const v = document.getElementById('video');
            return v.dataset.ready === '1' && v.played.length > 0;
        }""")
        return self.page.evaluate("""() => {
            const v = document.getElementById('video');
            return {id: v.dataset.id, start: Number(v.dataset.start), currentTime: v.currentTime,
                    playedFrom: v.played.start(0), src: v.currentSrc, error: v.error && v.error.code};
        }""")

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def page(browser, base) -> Iterator[Page]:
    opened = Page(browser, base)
    yield opened
    opened.close()


def _ids(page: Page) -> list[str]:
    return page.page.evaluate("() => window.dglPage.state().hits.map(h => h.id)")


def test_search_shows_posters_and_plays_from_the_start(page: Page, video_set) -> None:
    sync_api.expect(page.page.locator("#status")).to_contain_text("6 indexed rows")
    page.search("a red circle moves to the right", count=6)
    page.posters_loaded()
    first = page.page.locator(".card").first
    hits = page.page.evaluate("() => window.dglPage.state().hits")
    assert {h["id"] for h in hits} == {p.name for p in (video_set / "videos").glob("*.mp4")}
    sync_api.expect(first.locator(".name")).to_have_text(hits[0]["id"])
    sync_api.expect(first.locator(".score")).to_have_text(f"{hits[0]['score']:.3f}")
    assert page.page.locator(".card .moment").count() == 0  # whole videos: no moment shown
    sync_api.expect(page.page.locator("#results-title")).to_contain_text("6 results for “a red circle")
    first.locator("img").click()
    state = page.playing()
    assert state["id"] == hits[0]["id"] and state["error"] is None
    assert state["start"] == 0 and state["playedFrom"] == pytest.approx(0, abs=0.05)
    assert 0 <= state["currentTime"] < 2.5
    assert any(status == 206 for url, status in page.media), page.media  # the browser fetched ranges


def test_keyboard(page: Page) -> None:
    page.search("a blue square", count=6)
    active = "() => document.activeElement.dataset.index"
    page.page.press("#q", "ArrowDown")
    assert page.page.evaluate(active) == "0"
    page.page.keyboard.press("ArrowRight")
    assert page.page.evaluate(active) == "1"
    page.page.keyboard.press("End")
    assert page.page.evaluate(active) == "5"
    page.page.keyboard.press("ArrowLeft")
    assert page.page.evaluate(active) == "4"
    columns = page.page.evaluate("() => { const c = [...document.querySelectorAll('.card')];"
                                 " return c.filter(x => x.offsetTop === c[0].offsetTop).length; }")
    page.page.keyboard.press("Home")
    page.page.keyboard.press("ArrowDown")
    assert page.page.evaluate(active) == str(min(columns, 5))
    page.page.keyboard.press("Home")
    page.page.keyboard.press("Enter")
    assert page.playing()["id"] == _ids(page)[0]
    page.page.locator(".card").nth(2).focus()
    page.page.keyboard.press(" ")
    page.page.wait_for_function(f"() => document.getElementById('video').dataset.id === {_ids(page)[2]!r}")
    assert page.playing()["id"] == _ids(page)[2]
    page.page.keyboard.press("Escape")
    sync_api.expect(page.page.locator("#player")).to_be_hidden()
    assert page.page.evaluate(active) == "2"  # focus goes back to the result


def test_more_like_this(page: Page) -> None:
    page.search("a green triangle", count=6)
    target = _ids(page)[1]
    page.page.locator(".card").nth(1).locator(".more").click()
    sync_api.expect(page.page.locator("#results-title")).to_contain_text(f"videos like {target}")
    sync_api.expect(page.page.locator(".card")).to_have_count(5)
    assert target not in _ids(page)
    page.posters_loaded()


def _address(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.page.url).query)


def test_the_search_lives_in_the_address(browser, base) -> None:
    """Loading /?q=... shows that search's results; each new search is a history entry (its query in the address),
    and back / forward show the searches again, query box included; "more like this" has an address too."""
    title, box = "#results-title", "#q"
    page = Page(browser, f"{base}/?{urlencode({'q': 'a red circle'})}")
    try:
        sync_api.expect(page.page.locator(title)).to_have_text("6 results for “a red circle”")
        sync_api.expect(page.page.locator(".card")).to_have_count(6)
        sync_api.expect(page.page.locator(box)).to_have_value("a red circle")
        first = _ids(page)
        page.search("a blue square")
        sync_api.expect(page.page.locator(title)).to_have_text("6 results for “a blue square”")
        assert _address(page) == {"q": ["a blue square"]}
        second = _ids(page)
        page.page.go_back()
        sync_api.expect(page.page.locator(title)).to_have_text("6 results for “a red circle”")
        sync_api.expect(page.page.locator(box)).to_have_value("a red circle")
        assert _address(page) == {"q": ["a red circle"]} and _ids(page) == first
        page.page.go_forward()
        sync_api.expect(page.page.locator(title)).to_have_text("6 results for “a blue square”")
        sync_api.expect(page.page.locator(box)).to_have_value("a blue square")
        assert _ids(page) == second
        target = page.page.evaluate("() => window.dglPage.state().hits[1]")
        page.page.locator(".card").nth(1).locator(".more").click()
        sync_api.expect(page.page.locator(title)).to_have_text(f"5 results for videos like {target['id']}")
        assert _address(page) == {"similar": [target["id"]], "row": [str(target["row"])]}
        similar = _ids(page)
        page.page.reload()  # a bookmarked / shared "more like this"
        sync_api.expect(page.page.locator(title)).to_have_text(f"5 results for videos like {target['id']}")
        assert _ids(page) == similar
        page.page.go_back()
        sync_api.expect(page.page.locator(title)).to_have_text("6 results for “a blue square”")
    finally:
        page.close()


def test_upload_a_clip(page: Page, video_set) -> None:
    clip = sorted((video_set / "videos").glob("*.mp4"))[3]
    page.page.set_input_files("#upload", str(clip))
    sync_api.expect(page.page.locator("#results-title")).to_contain_text(f"the clip “{clip.name}”")
    sync_api.expect(page.page.locator(".card")).to_have_count(6)
    top = page.page.locator(".card").first
    sync_api.expect(top.locator(".name")).to_have_text(clip.name)
    sync_api.expect(top.locator(".score")).to_have_text("1.000")


def test_messages_for_an_empty_query_and_an_api_error(page: Page) -> None:
    message = page.page.locator("#message")
    sync_api.expect(message).to_be_hidden()
    page.search("   ")
    sync_api.expect(message).to_be_visible()
    sync_api.expect(message).to_contain_text("The query is empty")
    page.search("x" * 60)  # longer than max_query_chars: the API's 422, in words
    sync_api.expect(message).to_contain_text("Error 422: q: String should have at most 50 characters")
    page.search("a red circle", count=6)
    sync_api.expect(message).to_be_hidden()
    page.page.set_input_files("#upload", files=[{"name": "notes.mp4", "mimeType": "video/mp4",
                                                 "buffer": b"this is not a video"}])
    sync_api.expect(message).to_contain_text("Error 400: notes.mp4: ")


def test_moments_of_a_segmented_set(browser, video_set, tiny_export) -> None:
    """Each row a moment (the second half of odd rows' videos): results show start-end, posters are those frames,
    and a click plays from the moment's start."""
    spans = np.array([[1.0, 2.0] if row % 2 else [0.0, 1.0] for row in range(6)])
    with serving(video_set, tiny_export[1], spans=spans) as url:
        page = Page(browser, url)
        try:
            page.search("a red circle", count=6)
            page.posters_loaded()
            hits = page.page.evaluate("() => window.dglPage.state().hits")
            late = next(n for n, h in enumerate(hits) if h["start"] == 1.0)
            card = page.page.locator(".card").nth(late)
            sync_api.expect(card.locator(".moment")).to_have_text("0:01–0:02")
            assert "start=1" in card.locator("img").get_attribute("src")
            card.click()
            state = page.playing()
            assert state["id"] == hits[late]["id"] and state["start"] == 1.0
            assert state["playedFrom"] == pytest.approx(1.0, abs=0.05) and 1.0 <= state["currentTime"] <= 2.1
            assert page.page.evaluate("() => window.dglPage.clock(75.25)") == "1:15.3"
        finally:
            page.close()


def test_token(browser, video_set, tiny_export) -> None:
    """A server with a token: the page asks for it, refuses a wrong one, then searches, shows posters and plays
    (media URLs carry the token); the token is kept across a reload of the tab (which runs the search again)."""
    with serving(video_set, tiny_export[1], token=TOKEN) as url:
        page = Page(browser, url)
        try:
            sync_api.expect(page.page.locator("#token-form")).to_be_visible()
            sync_api.expect(page.page.locator("#message")).to_contain_text("needs an access token")
            page.page.fill("#token", "wrong-token")
            page.page.press("#token", "Enter")
            sync_api.expect(page.page.locator("#message")).to_contain_text("not accepted")
            page.page.fill("#token", TOKEN)
            page.page.press("#token", "Enter")
            sync_api.expect(page.page.locator("#status")).to_contain_text("6 indexed rows")
            sync_api.expect(page.page.locator("#token-form")).to_be_hidden()
            page.search("a red circle", count=6)
            page.posters_loaded()
            page.page.locator(".card").first.click()
            assert page.playing()["error"] is None
            page.page.reload()  # the search is in the address: it runs again, with the kept token
            sync_api.expect(page.page.locator("#results-title")).to_have_text("6 results for “a red circle”")
            sync_api.expect(page.page.locator("#token-form")).to_be_hidden()
            page.page.goto(f"{url}/?{urlencode({'q': 'a blue square', 'token': TOKEN})}")  # a link with both
            sync_api.expect(page.page.locator("#results-title")).to_have_text("6 results for “a blue square”")
            assert _address(page) == {"q": ["a blue square"]}  # the token left the address, the search stayed
        finally:
            page.close()


def test_a_file_the_browser_cannot_play_plays_its_preview(browser, tmp_path, tiny_export) -> None:
    """Chromium has no AVI demuxer: the page falls back to the server's H.264 preview of the moment (time 0 = the
    moment's start); a file that cannot be previewed either is offered as a download, in one message."""
    from tests.test_decoder import ramp, write

    (tmp_path / "videos").mkdir()
    write(tmp_path / "videos" / "clip.avi", ramp(40, 72, 128), codec="mpeg4")
    write(tmp_path / "videos" / "gone.avi", ramp(20, 72, 128), codec="mpeg4")
    embed_videos(tmp_path / "videos", tmp_path / "emb.npy", open_encoder(tiny_export[1], log=None),
                 EmbedSettings(workers=1))
    (tmp_path / "videos" / "gone.avi").write_bytes(b"RIFF" + b"\0" * 4000)  # damaged after embedding
    with serving(tmp_path, tiny_export[1], spans=np.array([[2.0, 4.0], [0.0, 2.0]])) as url:
        page = Page(browser, url)
        try:
            page.page.evaluate("() => window.dglPage.playAt({id: 'clip.avi', start: 2.0, end: 4.0, row: 0})")
            state = page.playing()
            assert "/preview?" in state["src"] and state["error"] is None
            assert state["playedFrom"] == pytest.approx(0, abs=0.05)  # the preview starts at the moment
            page.page.evaluate("() => window.dglPage.playAt({id: 'gone.avi', start: 0.0, end: 2.0, row: 1})")
            message = page.page.locator("#message")
            sync_api.expect(message).to_contain_text("gone.avi cannot be played in this browser")
            sync_api.expect(message.locator("a")).to_have_attribute("href", "/video?id=gone.avi")
        finally:
            page.close()
