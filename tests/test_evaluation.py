"""evaluation.embed_dataset / evaluate_model: multi-caption mapping, failed videos left out with their captions,
frame-sampling modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy.data.datasets import load_dataset
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.synthetic import make_synthetic, write_broken_files
from dgl_deploy.data.video import decode_frames
from dgl_deploy.evaluation.evaluate import embed_dataset, evaluate_model, similarity
from dgl_deploy.model import checkpoint
from dgl_deploy.runtime.backends.torch_backend import TorchEncoder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic clips (3 captions each) + one annotated text file posing as a video."""
    root = tmp_path_factory.mktemp("evaldata")
    make_synthetic(root, videos=6, seed=3)
    write_broken_files(root / "broken")
    with (root / "annotations.jsonl").open("a") as handle:
        handle.write(json.dumps({"video": "broken/text.mp4", "caption": ["x", "y"]}) + "\n")
    return root


def test_embed_dataset_leaves_out_failed_videos_with_captions(data: Path, tiny_model) -> None:
    dataset = load_dataset("generic", data / "annotations.jsonl", data)
    emb = embed_dataset(TorchEncoder(tiny_model, "t"), dataset, batch_size=4, workers=2)
    assert emb.video.shape == (6, tiny_model.embed_dim) and emb.text.shape == (18, tiny_model.embed_dim)
    assert emb.caption_to_video.tolist() == np.repeat(np.arange(6), 3).tolist()
    assert emb.video_items == list(range(6))
    assert [(f.index, f.path.name) for f in emb.failures] == [(6, "text.mp4")]
    np.testing.assert_allclose(np.linalg.norm(emb.video, axis=1), 1, rtol=1e-5)
    assert similarity(emb).shape == (18, 6)


def test_evaluate_model_from_checkpoint(data: Path, tiny_model, tmp_path: Path) -> None:
    path = checkpoint.save(tiny_model, tmp_path / "tiny.safetensors")
    report = evaluate_model(path, "generic", data / "annotations.jsonl", data, backend="torch", device="cpu",
                            batch_size=4, workers=2, rerank="dsl")
    assert (report.num_videos, report.num_captions, len(report.failures)) == (6, 18, 1)
    assert list(report.metrics) == ["t2v", "t2v +DSL", "v2t", "v2t +DSL"]
    assert report.metrics["t2v"]["queries"] == 18 and report.metrics["v2t"]["queries"] == 6



def test_evaluate_model_uses_the_recorded_sampling(data: Path, tiny_model, tmp_path: Path) -> None:
    path = checkpoint.save(tiny_model, tmp_path / "tiny.safetensors")  # no frame_sampling in its config: uniform
    report = evaluate_model(path, "generic", data / "annotations.jsonl", data, backend="torch", device="cpu", batch_size=4,
                            workers=2)
    assert report.frame_sampling == "uniform" and report.num_videos == 6


def test_reference_sampling_embeds_the_reference_frames(data: Path, tiny_model) -> None:
    dataset = load_dataset("generic", data / "annotations.jsonl", data)
    encoder = TorchEncoder(tiny_model, "t")
    embedded = embed_dataset(encoder, dataset, 4, 2, sampling="reference")
    item = dataset.items[embedded.video_items[0]]
    alone = encoder.encode_videos(decode_frames(FrameRequest(item.path, encoder.frames, encoder.image_size, item.segment, "reference"))[None])
    np.testing.assert_allclose(embedded.video[0], alone[0], atol=1e-5)
