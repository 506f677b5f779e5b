"""The `dgl demo` pipeline (dgl_deploy.demo) with its training and export steps: only the CLI may import
dgl_deploy.training and dgl_deploy.export, so it is here that the library's pipeline gets them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgl_deploy import demo
from dgl_deploy.demo import DemoConfig, DemoSteps
from dgl_deploy.runtime.backends.select import Log


def _pretrain(images: np.ndarray, captions: list[str], path: Path, config: DemoConfig, log: Log) -> Path:
    from dgl_deploy.training.clip_pretrain import PretrainConfig, pretrain_clip

    settings = PretrainConfig(model_name=config.model_name, steps=config.pretrain_steps, seed=config.seed)
    return pretrain_clip(images, captions, path, settings, log=log)


def _tune(annotations: Path, clip: Path, run: Path, frame_cache: Path,
          config: DemoConfig) -> tuple[Path | None, int | None]:
    from dgl_deploy.training import TrainConfig, train

    cfg = TrainConfig(model_name=config.model_name, pretrained=str(clip), frames=config.frames,
                      max_words=config.max_words, dataset="generic", annotations=str(annotations),
                      videos=str(annotations.parent), out=str(run), epochs=config.epochs, batch_size=config.batch_size,
                      lr=config.lr, workers=config.workers, frame_cache=str(frame_cache), seed=config.seed,
                      device="cpu", quiet=True, resume=(run / "state.pt").exists())
    result = train(cfg)
    return result.checkpoint, result.best_epoch


def _export(model: Path, folder: Path, log: Log) -> None:
    from dgl_deploy.export.pipeline import export_model

    export_model(model, folder, overwrite=True, log=log)


STEPS = DemoSteps(pretrain=_pretrain, tune=_tune, export=_export)


def run_demo(config: DemoConfig = DemoConfig(), log: Log = print) -> dict:
    """`dgl_deploy.demo.run_demo` with the steps above; returns the demo's numbers."""
    return demo.run_demo(STEPS, config, log)
