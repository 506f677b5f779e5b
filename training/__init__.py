"""Prompt tuning of DGL on a frozen CLIP: `train(TrainConfig(...))`, or `dgl train` on the command line."""

from dgl_deploy.training.config import TrainConfig, build_config
from dgl_deploy.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "build_config", "train"]
