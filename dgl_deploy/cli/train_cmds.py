"""`dgl train`: prompt-tune DGL on a dataset (defaults = the reference recipe, see training/config.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from dgl_deploy.cli import options as opt
from dgl_deploy.cli.app import command
from dgl_deploy.cli.options import DatasetKind, FrameSampling


class Latent(str, Enum):
    transformer = "transformer"
    linear = "linear"


class Amp(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


@command("train")
def train_command(
    model_name: Optional[str] = typer.Option(None, "--model-name", help="open_clip tower: ViT-B-32, ViT-B-16, dgl-tiny, ... [ViT-B-32]"),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="CLIP weights: open_clip tag (openai), a file, or none. [openai]"),
    dataset: Optional[DatasetKind] = opt.dataset(),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Annotation file, or the directory of the standard files."),
    videos: Optional[Path] = typer.Option(None, "--videos", help="Directory of the video files."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (checkpoints, state.pt, log.jsonl)."),
    split: Optional[str] = typer.Option(None, "--split", help="Training split of an annotations directory [the kind's train split]."),
    latent: Optional[Latent] = typer.Option(None, "--latent", help="Shared latent space. [transformer]"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="[5]"),
    batch_size: Optional[int] = opt.batch_size(None, what="Global batch in videos. [128]"),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW peak learning rate. [2e-3]"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="[0.2]"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Warm-up fraction of all steps (then cosine). [0.1]"),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Frames per video. [12]"),
    frame_sampling: Optional[FrameSampling] = opt.frame_sampling("", "uniform"),
    max_words: Optional[int] = typer.Option(None, "--max-words", min=2, help="Caption tokens incl. SOT/EOT. [32]"),
    accum_steps: Optional[int] = typer.Option(None, "--accum-steps", min=1, help="Micro-batches per step (each its own InfoNCE). [1]"),
    amp: Optional[Amp] = typer.Option(None, "--amp", help="CUDA mixed precision; CPU runs fp32. [bf16]"),
    workers: Optional[int] = opt.workers(None, "[4] "),
    frame_cache: Optional[Path] = typer.Option(None, "--frame-cache", help="Cache decoded frames in this directory."),
    val_split: Optional[str] = typer.Option(None, "--val-split", help="Validation split for model selection [the kind's own]."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Held-out slice of train without a val split (0: none). [0.05]"),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Leave out annotated videos whose file is missing."),
    seed: Optional[int] = typer.Option(None, "--seed", help="[0]"),
    device: Optional[str] = opt.device("[auto] ", default=None),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=0, help="Also save state.pt every N steps. [0: epoch ends]"),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML file of settings (flags override it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its state.pt."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to OUT/tensorboard (if installed)."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-step progress lines (one line per epoch remains)."),
) -> None:
    """Train the prompts of a frozen CLIP; OUT/model.safetensors is the epoch best on validation."""
    options = dict(locals())  # every option, before any other local name exists
    from dgl_deploy.training import build_config, train

    # on/off flags: an unset one is "not given" (None), so a --config file may still turn it on
    switches = {flag: options.pop(flag) or None for flag in ("resume", "tensorboard", "quiet", "skip_missing")}
    options.pop("config")
    options = {k: (v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    cfg = build_config(config, **options, **switches)
    result = train(cfg)
    typer.echo(result.checkpoint if result.completed else f"stopped after step {result.steps}; resume with --resume")
