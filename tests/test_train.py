"""Training: overfitting a tiny model raises R@1, interrupt + resume is exact, corrupt videos are skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dgl_deploy.data.datasets import load_dataset
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.synthetic import make_synthetic, write_broken_files
from dgl_deploy.data.video import decode_frames
from dgl_deploy.evaluation.evaluate import embed_dataset, similarity
from dgl_deploy.evaluation.metrics import retrieval_metrics
from dgl_deploy.runtime.backends.torch_backend import TorchEncoder, open_torch_encoder
from dgl_deploy.training import TrainConfig, build_config, train
from dgl_deploy.training.data import epoch_order, holdout, iter_steps, load_splits
from dgl_deploy.training.loop import Trainer
from dgl_deploy.training.state import STATE_NAME


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic clips (+ a frame cache shared by the tests, so each clip is decoded once)."""
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, videos=16, seed=0)
    return root


def _config(root: Path, out: Path, **changes) -> TrainConfig:
    base = dict(model_name="dgl-tiny", pretrained="none", dataset="generic", annotations=str(root / "annotations.jsonl"),
                videos=str(root), out=str(out), frames=4, max_words=16, batch_size=4, epochs=2, lr=5e-3, workers=2,
                frame_cache=str(root / "cache"), quiet=True)
    return TrainConfig(**{**base, **changes})


def _t2v_r1(encoder, root: Path) -> float:
    embeddings = embed_dataset(encoder, load_dataset("generic", root / "annotations.jsonl", root), 16, 2)
    return retrieval_metrics(similarity(embeddings), embeddings.caption_to_video)["t2v"]["R@1"]


def _step_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "step"]


# 150 optimizer steps on 16 clips with a random-init tiny backbone: ~10 s on an idle 2-core CPU
def test_overfit_raises_training_r1(synthetic: Path, tmp_path: Path) -> None:
    cfg = _config(synthetic, tmp_path / "run", batch_size=16, epochs=150, lr=2e-3, val_fraction=0)
    trainer = Trainer(cfg)
    before = _t2v_r1(TorchEncoder(trainer.model, "init"), synthetic)
    trainer.model.train()
    result = trainer.run()
    after = _t2v_r1(open_torch_encoder(str(result.checkpoint)), synthetic)
    losses = _step_losses(result.run_dir)
    print(f"training-set t2v R@1 before {before:.1f} after {after:.1f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert result.completed and result.best_epoch == 150 and result.steps == 150
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3
    assert after >= before + 15 and after >= 3 * 100 / 16  # 16 videos: chance is 6.25 %


def test_frozen_towers_get_no_gradients(synthetic: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(synthetic, tmp_path / "run"))
    trainer.start()
    before = {k: v.clone() for k, v in trainer.model.prompt_parameters().items()}
    assert trainer.step(next(iter_steps(trainer.train_set, trainer.cfg, trainer.model.image_size, 0))) > 0
    assert all(p.grad is None for p in trainer.model.clip.parameters())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.prompt_parameters().items())


def test_interrupt_and_resume_matches_uninterrupted(synthetic: Path, tmp_path: Path) -> None:
    full = train(_config(synthetic, tmp_path / "full"))
    stopped = train(_config(synthetic, tmp_path / "resumed", stop_after=5))  # 4 steps per epoch: mid epoch 2
    assert not stopped.completed and stopped.steps == 5 and (stopped.run_dir / STATE_NAME).is_file()
    resumed = train(_config(synthetic, tmp_path / "resumed", resume=True))
    assert resumed.completed and resumed.steps == full.steps == 8
    for name in ("epoch_2.safetensors", "model.safetensors"):
        want, got = load_file(full.run_dir / name), load_file(resumed.run_dir / name)
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert [r.val_r1 for r in resumed.history] == [r.val_r1 for r in full.history]


def test_resume_refuses_changed_settings(synthetic: Path, tmp_path: Path) -> None:
    train(_config(synthetic, tmp_path / "run", stop_after=1))
    with pytest.raises(Exception, match="different config"):
        train(_config(synthetic, tmp_path / "run", resume=True, lr=1e-3))
    with pytest.raises(Exception, match="already holds a training run"):
        train(_config(synthetic, tmp_path / "run"))


def test_corrupt_training_video_is_skipped(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic, root, ignore=shutil.ignore_patterns("cache"))
    write_broken_files(root / "broken")
    with (root / "annotations.jsonl").open("a") as handle:
        handle.write(json.dumps({"video": "broken/text.mp4", "caption": ["not a video"]}) + "\n")
    result = train(_config(root, tmp_path / "run", frame_cache=None, val_fraction=0))
    assert result.completed and result.skipped == [str(root / "broken" / "text.mp4")]
    assert capsys.readouterr().err.count("training video skipped") == 1  # reported once over both epochs
    skipped = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines() if "skipped_video" in line]
    assert len(skipped) == 1 and "not a readable video" in skipped[0]["reason"]


def test_data_order_and_holdout_are_deterministic(synthetic: Path, tmp_path: Path) -> None:
    assert epoch_order(16, 0, 1) == epoch_order(16, 0, 1) != epoch_order(16, 0, 2)
    assert sorted(epoch_order(10, 3, 0, rank=0, world=2) + epoch_order(10, 3, 0, rank=1, world=2)) == list(range(10))
    train_set, val_set = load_splits(_config(synthetic, tmp_path))
    assert len(val_set.items) == 2 and len(train_set.items) == 14  # max(2, ceil(5 % of 16))
    again = holdout(load_dataset("generic", synthetic / "annotations.jsonl", synthetic), 0.05)[1]
    assert [i.video_id for i in again.items] == [i.video_id for i in val_set.items]


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('epochs = 3\nlr = 1e-3\npretrained = "none"\nframe_sampling = "reference"\n')
    cfg = build_config(path, lr=5e-4, batch_size=None)
    assert (cfg.epochs, cfg.lr, cfg.pretrained, cfg.batch_size, cfg.weight_decay) == (3, 5e-4, None, 128, 0.2)
    assert cfg.frame_sampling == "reference" and build_config(path, frame_sampling="uniform").frame_sampling == "uniform"
    assert "frame_sampling" in cfg.result_fields()  # a resumed run must keep it
    path.write_text('{"epoch": 3}')
    with pytest.raises(Exception, match="unknown training setting"):
        build_config(path.rename(tmp_path / "bad.json"))


def test_same_seed_same_prompts(synthetic: Path, tmp_path: Path) -> None:
    """Two runs with one seed give bit-identical checkpoints (data order, captions, init and kernels fixed)."""
    runs = [train(_config(synthetic, tmp_path / name)) for name in ("a", "b")]
    for name in ("epoch_1.safetensors", "epoch_2.safetensors", "model.safetensors"):
        first, second = (load_file(run.run_dir / name) for run in runs)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), name
    assert [r.val_r1 for r in runs[0].history] == [r.val_r1 for r in runs[1].history]
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back


def test_reference_sampling_trains_on_the_reference_frames(synthetic: Path, tmp_path: Path) -> None:
    cfg = _config(synthetic, tmp_path, frame_sampling="reference", frame_cache=None)
    dataset = load_dataset("generic", synthetic / "annotations.jsonl", synthetic)
    step = next(iter_steps(dataset, cfg, 32, epoch=0))
    item = dataset.items[step.items[0]]
    np.testing.assert_array_equal(step.frames[0], decode_frames(FrameRequest(item.path, 4, 32, item.segment, "reference")))
