"""The public Python API (`dgl_deploy.load_model`, `embed_videos`, `open_embeddings`, `EmbeddingSet.search`):
used alone on an export folder in a subprocess where torch & co. cannot be imported, it gives the same rows
(byte for byte) and the same hits as the `dgl embed` / `dgl query --json` commands; `import dgl_deploy` is lazy;
the docstrings' examples run (doctests); errors are one-line DGLErrors."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dgl_deploy
from dgl_deploy import api
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.embed import EmbedSettings
from dgl_deploy.retrieval.embed import embed_videos as library_embed
from dgl_deploy.runtime.backends.select import open_encoder
from tests.conftest import TORCH_SIDE, no_torch_env

BLOCKED = TORCH_SIDE
DGL = [sys.executable, "-m", "dgl_deploy"]
TEXT = "a red circle moves to the right"

# Only the public API: load, encode_text, encode_videos, embed_videos, open_embeddings, search.
API_SCRIPT = """
import dataclasses, json, sys
from pathlib import Path
import dgl_deploy
assert "numpy" not in sys.modules, "import dgl_deploy imported numpy"
import numpy as np

export, videos, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
TEXT, VIDEO = sys.argv[4], Path(sys.argv[5])
hits = lambda found: [dataclasses.asdict(hit) for hit in found]
model = dgl_deploy.load_model(export)
emb = dgl_deploy.embed_videos(videos, out / "emb.npy", model=model, workers=1)
seen = []
windows = dgl_deploy.embed_videos(videos, out / "win.npy", model=export, workers=1, window=1.0, progress=seen.append)
text = model.encode_text([TEXT, "a blue square"])
clips = model.encode_videos(sorted(videos.glob("*.mp4")))
frames = np.random.default_rng(0).integers(0, 256, (2, model.frames, model.image_size, model.image_size, 3), np.uint8)
np.save(out / "text.npy", text)
np.save(out / "clips.npy", clips)
np.save(out / "frames.npy", model.encode_videos(frames))
reopened = dgl_deploy.open_embeddings(out / "emb.npy")
result = {
    "model": [model.backend, model.precision, model.fingerprint, model.embed_dim],
    "len": [len(emb), len(windows)], "ids": emb.ids, "set_fingerprint": emb.fingerprint,
    "progress": [dataclasses.asdict(p) for p in seen], "failures": emb.job.failures,
    "text": hits(emb.search(TEXT, k=4)),
    "reopened_text": hits(reopened.search(TEXT, k=4, model=model)),
    "vector": hits(emb.search(text[0], k=4)),
    "video": hits(reopened.search(VIDEO, k=3)),
    "moments": hits(windows.search("a blue square", k=5, per_video=1)),
}
(out / "result.json").write_text(json.dumps(result))
blocked = [name for name in ("torch", "open_clip", "onnx") if sys.modules.get(name) is not None]
assert not blocked, blocked
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment whose Python cannot import torch & co. (as tests/test_torch_free.py does)."""
    return no_torch_env(tmp_path_factory.mktemp("no_torch"), BLOCKED)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "videos"
    make_synthetic(folder, videos=6, seed=5, size=(72, 128), seconds=2.0, fps=10)
    return folder


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, videos, tiny_export) -> Path:
    """A set made by the library's job (what `dgl embed` runs) with the tiny export."""
    out = tmp_path_factory.mktemp("api_set") / "emb.npy"
    library_embed(videos, out, open_encoder(tiny_export[1], log=None), EmbedSettings(workers=1),
                  model=str(tiny_export[1]))
    return out


def _run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, args)), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def _cli_hits(env: dict[str, str], *args: str | Path) -> list[dict]:
    """The hits of `dgl query ... --json` (one query), with start/end as the API's Hit has them."""
    results = json.loads(_run(env, *DGL, "query", *args, "--json").stdout)
    assert len(results) == 1
    return [{"start": None, "end": None, **hit} for hit in results[0]["results"]]


def test_the_public_api_gives_the_cli_rows_and_hits_without_torch(env, videos, tiny_export, tmp_path) -> None:
    export = tiny_export[1]
    cli, out = tmp_path / "cli", tmp_path / "api"
    out.mkdir()
    video = sorted(videos.glob("*.mp4"))[3]
    _run(env, sys.executable, "-c", API_SCRIPT, export, videos, out, TEXT, video)
    for name, extra in (("emb.npy", ()), ("win.npy", ("--window", "1"))):
        _run(env, *DGL, "embed", videos, "--out", cli / name, "--model", export, "--workers", "1", "-q", *extra)
    result = json.loads((out / "result.json").read_text())

    for name in ("emb", "win"):  # the same bytes: rows, ids, and the windows' segments
        for suffix in (".npy", ".ids.txt") + ((".segments.npy",) if name == "win" else ()):
            assert (out / (name + suffix)).read_bytes() == (cli / (name + suffix)).read_bytes(), name + suffix
    assert result["len"] == [6, 12] and result["ids"] == sorted(p.name for p in videos.glob("*.mp4"))
    assert result["model"][:2] == ["onnxruntime", "fp32"] and result["model"][2] == result["set_fingerprint"]
    assert result["failures"] == []
    progress = result["progress"]
    assert progress[0] == {"done": 0, "total": 6, "failed": 0} and progress[-1] == {"done": 6, "total": 6, "failed": 0}

    # the same hits as `dgl query --json`: text, a video (video -> video), moments of a windowed set
    assert result["text"] == _cli_hits(env, TEXT, "--index", cli / "emb.npy", "-k", "4")
    assert result["reopened_text"] == result["text"] and len(result["text"]) == 4
    assert result["vector"] == result["text"]  # a text's vector searches as the text does
    assert result["video"] == _cli_hits(env, "--video", video, "--index", cli / "emb.npy", "-k", "3")
    assert result["video"][0]["id"] == video.name and result["video"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    moments = _cli_hits(env, "a blue square", "--index", cli / "win.npy", "-k", "5", "--per-video", "1")
    assert result["moments"] == moments and all(hit["start"] is not None for hit in moments)

    # encodings: float32, L2-normalised; the files' embeddings are the set's rows (same decoding)
    text, clips, frames = (np.load(out / f"{name}.npy") for name in ("text", "clips", "frames"))
    rows = np.load(cli / "emb.npy")
    for vectors, count in ((text, 2), (clips, 6), (frames, 2)):
        assert vectors.dtype == np.float32 and vectors.shape == (count, rows.shape[1])
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clips, rows, atol=2e-5)


def test_import_dgl_deploy_is_lazy(env) -> None:
    proc = _run(env, sys.executable, "-c", "import sys, dgl_deploy; print(sorted(m for m, module in sys.modules.items() if module "
                "and (m.split('.')[0] in ('numpy', 'onnxruntime', 'torch') or m.startswith('dgl_deploy.'))))")
    assert proc.stdout.strip() == "['dgl_deploy.errors']"
    assert set(dgl_deploy.__all__) == {"DGLError", "__version__", "load_model", "embed_videos", "open_embeddings",
                                       "Model", "EmbeddingSet", "EmbedProgress", "Hit"}
    for name in dgl_deploy.__all__:
        assert getattr(dgl_deploy, name) is not None and name in dir(dgl_deploy)
    assert dgl_deploy.Hit is api.Hit and {"id", "score", "start", "end", "row"} <= set(api.Hit.__dataclass_fields__)
    with pytest.raises(AttributeError):
        dgl_deploy.no_such_name  # noqa: B018
    assert (Path(dgl_deploy.__file__).parent / "py.typed").is_file()


def _doctests() -> list[doctest.DocTest]:
    return [test for test in doctest.DocTestFinder().find(api) if test.examples]


@pytest.mark.parametrize("test", _doctests(), ids=lambda test: test.name)
def test_docstring_examples(test: doctest.DocTest, videos, embeddings, tiny_export, tmp_path) -> None:
    test.globs.update(dgl_deploy=dgl_deploy, np=np, export=tiny_export[1], videos=videos, embeddings=embeddings,
                      tmp=tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_every_public_name_is_documented_with_an_example() -> None:
    names = {test.name.removeprefix("dgl_deploy.api.") for test in _doctests()}
    assert {"dgl_deploy.api", "Model", "load_model", "embed_videos", "open_embeddings", "EmbeddingSet",
            "EmbeddingSet.search", "Model.encode_text", "Model.encode_videos"} <= names


def _one_line(call) -> str:  # noqa: ANN001
    with pytest.raises(DGLError) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_errors_are_one_line(embeddings, tiny_export, tmp_path) -> None:
    emb = dgl_deploy.open_embeddings(embeddings)
    model = dgl_deploy.load_model(tiny_export[1])
    assert "no such model" in _one_line(lambda: dgl_deploy.load_model(tmp_path / "none"))
    assert "unknown backend" in _one_line(lambda: dgl_deploy.load_model(tiny_export[1], backend="x"))
    assert "not found" in _one_line(lambda: dgl_deploy.open_embeddings(tmp_path / "none.npy"))
    assert "shape (" in _one_line(lambda: emb.search(np.ones(3, np.float32)))
    assert "NaN" in _one_line(lambda: emb.search(np.full(emb.vectors.shape[1], np.nan)))
    assert "k must be" in _one_line(lambda: emb.search(emb.vectors[0], k=0))
    assert "per_video" in _one_line(lambda: emb.search(emb.vectors[0], per_video=-1))
    assert "empty" in _one_line(lambda: emb.search("  "))
    assert "strings" in _one_line(lambda: model.encode_text([1, 2]))
    assert "uint8" in _one_line(lambda: model.encode_videos(np.zeros((1, 2, 3), np.float32)))
    assert "vid_missing.mp4" in _one_line(lambda: model.encode_videos([tmp_path / "vid_missing.mp4"]))
    assert model.encode_text([]).shape == (0, model.embed_dim)
    assert emb.search(TEXT, k=2, model=tiny_export[1]) == emb.search(TEXT, k=2)  # the set's model, as a path
    assert "--stride needs --window" in _one_line(
        lambda: dgl_deploy.embed_videos(tmp_path, tmp_path / "e.npy", model=model, stride=1.0))
    assert "batch_size" in _one_line(
        lambda: dgl_deploy.embed_videos(tmp_path, tmp_path / "e.npy", model=model, batch_size=0))
    (tmp_path / "e.parts").mkdir()
    assert "unfinished job" in _one_line(
        lambda: dgl_deploy.embed_videos(tmp_path, tmp_path / "e.npy", model=model, resume=False))
    assert not (tmp_path / "e.npy").exists()
