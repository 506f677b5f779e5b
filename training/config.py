"""Typed training settings. Defaults are the reference recipe (DGL_SPEC.md §4); a JSON or TOML file
(keys = field names) overrides them and explicit CLI flags override the file."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomllib

from dgl_deploy import defaults
from dgl_deploy.data.datasets import KINDS
from dgl_deploy.data.sampling import DEFAULT_SAMPLING, Sampling, check_sampling
from dgl_deploy.errors import DGLError
from dgl_deploy.limits import JSON_MAX_DEPTH, check_number, check_tree, parse_json

Amp = Literal["bf16", "fp16", "none"]

# Fields that only change how a run executes, not what it computes: a resumed run may change them
# (skip_missing only decides whether a missing file is an error; the training data is checked on resume).
RUNTIME_FIELDS = frozenset({"out", "workers", "frame_cache", "resume", "save_every", "val_batch_size", "tensorboard", "quiet",
                            "stop_after", "device", "skip_missing"})


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Batch sizes count videos (one caption sampled per video per step)."""

    # --- what to train ---
    model_name: str = "ViT-B-32"  # open_clip tower name ("ViT-B-32", "ViT-B-16", "dgl-tiny", ...)
    pretrained: str | None = "openai"  # open_clip tag, weights file, or None ("none") for random init
    latent: str = "transformer"  # shared latent space: "transformer" or "linear"
    frames: int = defaults.FRAMES  # [T] frames sampled per video
    frame_sampling: Sampling = DEFAULT_SAMPLING  # which frames: "uniform" or "reference" (data.sampling)
    max_words: int = defaults.MAX_WORDS  # [W] caption tokens incl. SOT/EOT
    # --- data ---
    dataset: str = "generic"  # dataset kind (datasets.KINDS)
    annotations: str = ""  # annotation file, or the directory holding the standard files
    videos: str = ""  # directory of the video files
    split: str | None = None  # training split of an annotations directory (None: the kind's train split)
    val_split: str | None = None  # validation split (None: the kind's own, else a held-out slice of train)
    val_fraction: float = 0.05  # held-out slice of train when there is no validation split (0 = no selection)
    skip_missing: bool = False  # leave out annotated videos whose file is missing (one warning) instead of failing
    frame_cache: str | None = None  # directory of decoded frames (decode each video once, mmap afterwards)
    workers: int = 4  # decoding processes
    # --- optimisation (reference recipe) ---
    epochs: int = 5  # passes over the training videos
    batch_size: int = 128  # global batch: videos per optimizer step, over all ranks and accumulation steps
    accum_steps: int = 1  # micro-batches per step; each is its own InfoNCE problem (fewer negatives)
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.2  # AdamW decoupled weight decay
    warmup: float = 0.1  # fraction of all steps with linear warm-up, then cosine decay to 0
    amp: Amp = "bf16"  # CUDA autocast precision (fp16 adds a GradScaler); CPU always runs fp32
    seed: int = 0  # seeds prompt init, random-init backbones, data order and caption choice
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1" (under torchrun: cuda:LOCAL_RANK)
    # --- run directory, logging, interruption ---
    out: str = ""  # run directory: checkpoints, state.pt, log.jsonl, config.json
    resume: bool = False  # continue the run in `out` from its state.pt
    save_every: int = 0  # also save state.pt every N optimizer steps (0: only at epoch ends)
    val_batch_size: int = 32  # videos per batch when embedding the validation split
    tensorboard: bool = False  # also log to out/tensorboard (skipped if tensorboard is not installed)
    quiet: bool = False  # no per-step progress lines (the per-epoch summary lines are still printed)
    stop_after: int | None = None  # interrupt after this many optimizer steps (state saved; for tests/demos)

    def __post_init__(self) -> None:
        for name, hint in typing.get_type_hints(TrainConfig).items():
            _check_setting(name, hint, getattr(self, name))
        if self.pretrained in ("none", ""):
            object.__setattr__(self, "pretrained", None)
        if self.dataset not in KINDS:
            raise DGLError(f"unknown dataset kind {self.dataset!r} (choose from {', '.join(KINDS)})")
        if self.latent not in ("transformer", "linear"):
            raise DGLError(f"unknown latent space {self.latent!r}: use 'transformer' or 'linear'")
        check_sampling(self.frame_sampling, "training setting frame_sampling")
        if self.amp not in ("bf16", "fp16", "none"):
            raise DGLError(f"unknown amp mode {self.amp!r}: use bf16, fp16 or none")
        for name in ("frames", "max_words", "epochs", "batch_size", "accum_steps", "workers", "val_batch_size"):
            if getattr(self, name) < 1:
                raise DGLError(f"training setting {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.accum_steps:
            raise DGLError(f"batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps}")
        if not 0 <= self.val_fraction < 0.5 or not 0 <= self.warmup < 1:
            raise DGLError(f"val_fraction must be in [0, 0.5) and warmup in [0, 1), got {self.val_fraction}, {self.warmup}")
        if self.lr <= 0 or self.weight_decay < 0 or self.save_every < 0:
            raise DGLError("lr must be > 0, weight_decay and save_every >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "training config") -> TrainConfig:
        """Build from a mapping of field names; unknown names raise DGLError naming `where`."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DGLError(f"{where}: unknown training setting(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except (TypeError, DGLError) as exc:
            raise DGLError(f"{where}: {exc}") from None

    def result_fields(self) -> dict[str, Any]:
        """The settings that determine the trained prompts (everything but RUNTIME_FIELDS)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


def _check_setting(name: str, hint: Any, value: Any) -> None:
    """DGLError naming the setting unless `value` fits its type `hint` (numbers finite and within SETTING_RANGE)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None and type(None) in options:
        return
    kinds = {typing.get_origin(o) is Literal and str or o for o in options} - {type(None)}
    setting = f"training setting {name}"
    if bool in kinds:
        if not isinstance(value, bool):
            raise DGLError(f"{setting} must be true or false, got {value!r:.80}")
    elif int in kinds or float in kinds:
        check_number(setting, value, *SETTING_RANGE[int in kinds], kind=int if int in kinds else float)
    elif not isinstance(value, str):
        raise DGLError(f"{setting} must be a string, got {value!r:.80}")


SETTING_RANGE = {True: (0, 2**31 - 1), False: (-1e9, 1e9)}  # integer settings / the others (then checked each)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """Settings from a `.json` or `.toml` file (a flat table of field names), bounded as every JSON input
    (`limits.parse_json`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DGLError(f"{path}: cannot read training config ({exc.strerror or exc})") from None
    if path.suffix.lower() != ".toml":
        data = parse_json(raw, f"{path}: training config")
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except RecursionError:
            raise DGLError(f"{path}: invalid TOML (nested more than {JSON_MAX_DEPTH} levels deep)") from None
        except (ValueError, tomllib.TOMLDecodeError) as exc:  # UnicodeDecodeError is a ValueError
            raise DGLError(f"{path}: invalid TOML ({exc})") from None
        check_tree(data, f"{path}: training config")
    if not isinstance(data, dict):
        raise DGLError(f"{path}: expected a table of training settings, got {type(data).__name__}")
    return data


def build_config(config_file: Path | str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < config file < `overrides` (None values are 'not given' and keep the lower layer)."""
    data = read_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, str(config_file or "training options"))
