"""`dgl query`: exact search, refusal of other models' indexes, JSON output, video -> video."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dgl_deploy.cli import app
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.search import top_k
from dgl_deploy.runtime.backends.select import open_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    make_synthetic(root / "videos", videos=8, seed=5)
    save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
    encoder = open_encoder(root / "model.safetensors", backend="torch")
    embed_videos(root / "videos", root / "emb.npy", encoder, EmbedSettings(workers=1),
                 model=str(root / "model.safetensors"))
    return root


def test_top_k_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    scores, rows = top_k(vectors, queries, 7, chunk_rows=97)  # chunk boundaries inside the top-k
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :7]
    np.testing.assert_array_equal(rows, expected)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert top_k(vectors[:3], queries, 10)[1].shape == (4, 3)


def test_query_json_uses_recorded_model(index) -> None:
    result = runner.invoke(app, ["query", "a red circle", "a blue square", "--index", str(index / "emb.npy"),
                                 "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["query"] for d in data] == ["a red circle", "a blue square"]
    assert all(len(d["results"]) == 3 and d["results"][0]["rank"] == 1 for d in data)
    assert not any("start" in hit or "end" in hit for d in data for hit in d["results"])  # whole videos: no times


def test_video_query_finds_itself(index) -> None:
    target = sorted((index / "videos").glob("*.mp4"))[4]
    result = runner.invoke(app, ["query", "--video", str(target), "--index", str(index / "emb.npy"), "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["results"][0]
    assert top["id"] == target.name and top["score"] == pytest.approx(1.0, abs=1e-5)


def test_query_refuses_other_model(index, tmp_path) -> None:
    torch.manual_seed(123)  # other weights than the model that made the index
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "other.safetensors")
    result = runner.invoke(app, ["query", "x", "--index", str(index / "emb.npy"), "--model",
                                 str(tmp_path / "other.safetensors")])
    assert result.exit_code == 1 and "another model" in result.stderr


def test_query_bad_inputs(index, tmp_path) -> None:
    result = runner.invoke(app, ["query", "--index", str(index / "emb.npy")])
    assert result.exit_code == 1 and "query texts" in result.stderr
    result = runner.invoke(app, ["query", "x", "--index", str(tmp_path / "none.npy")])
    assert result.exit_code == 1 and "none" in result.stderr
    result = runner.invoke(app, ["query", "x", "--index", str(tmp_path / "emb_idx")])  # a typo'd folder
    assert result.exit_code == 1 and result.stderr == f"error: {tmp_path / 'emb_idx'}: not found\n"
    for blank in ("", "   "):
        result = runner.invoke(app, ["query", "a cat", blank, "--index", str(index / "emb.npy"), "--json"])
        assert result.exit_code == 1 and "query text is empty (query 2 of 2)" in result.stderr
    queries = tmp_path / "queries.txt"
    queries.write_bytes(b"a red circle\n\xff\xfe broken\n")
    result = runner.invoke(app, ["query", "--file", str(queries), "--index", str(index / "emb.npy")])
    assert result.exit_code == 1 and result.stderr == f"error: {queries}: line 2 is not UTF-8 text\n"


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A tiny DGL model overfitted on 8 synthetic clips (one caption each), exported, its clips embedded."""
    from dgl_deploy.export.pipeline import export_model
    from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
    from dgl_deploy.training import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    annotations = make_synthetic(root / "videos", videos=8, seed=11)
    rows = [json.loads(line) for line in annotations.read_text().splitlines()]
    annotations.write_text("".join(json.dumps({**r, "caption": r["caption"][:1]}) + "\n" for r in rows))
    result = train(TrainConfig(model_name="dgl-tiny", pretrained="none", frames=4, max_words=16, dataset="generic",
                               annotations=str(annotations), videos=str(annotations.parent), out=str(root / "run"),
                               epochs=150, batch_size=8, lr=2e-3, workers=1, val_fraction=0, quiet=True,
                               frame_cache=str(root / "cache")))
    export_model(result.checkpoint, root / "export", log=lambda _: None)
    embed_videos(annotations.parent, root / "emb.npy", OnnxEncoder(root / "export"), EmbedSettings(workers=1),
                 model=str(root / "export"))
    return root, rows


@pytest.mark.timeout(240)
def test_query_finds_the_described_video(trained_export) -> None:
    root, rows = trained_export
    captions = [row["caption"][0] for row in rows]
    result = runner.invoke(app, ["query", *captions, "--index", str(root / "emb.npy"), "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    found = [hit["results"][0]["id"] for hit in json.loads(result.stdout)]
    assert found == [row["video"] for row in rows]


@pytest.mark.parametrize("seconds,shown", [(0, "00:00"), (9.96, "00:10"), (2.5, "00:02.5"), (61.04, "01:01"),
                                           (3725.3, "1:02:05.3")])
def test_moment_clock_shows_tenths_only_when_needed(seconds: float, shown: str) -> None:
    from dgl_deploy.cli.embed_cmds import _clock

    assert _clock(seconds) == shown
