"""The training loop: prompt tuning of a frozen CLIP with a symmetric InfoNCE loss (DGL_SPEC.md §4).

Only `model.prompt_parameters()` are optimised. The CLIP weights have requires_grad=False and the
frames / token ids do not require grad, so autograd records nothing before the first prompt enters
(patch embedding, ln_pre, token embedding run graph-free) and never computes weight gradients of the
frozen towers; backward only carries activation gradients back to the prompts.

Gradient accumulation (`accum_steps` = k): the step's batch is split into k micro-batches, each is its
own InfoNCE problem (B/k videos, B/k - 1 negatives) and the k losses are averaged. Memory then scales
with B/k, but so do the negatives: this is *not* equivalent to one batch of B (that would need a
GradCache-style two-pass scheme); prefer more GPUs (embeddings are gathered over ranks) to accumulation.

Model selection: after every epoch the prompts are saved as `epoch_{n}.safetensors` and scored on the
validation split (text->video R@1); `model.safetensors` is a copy of the best epoch, ties going to the
later epoch (more training at equal validation score). Without validation the last epoch is used.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dgl_deploy.data.frame_cache import FrameCache
from dgl_deploy.errors import DGLError
from dgl_deploy.evaluation.evaluate import embed_dataset, similarity
from dgl_deploy.evaluation.metrics import retrieval_metrics
from dgl_deploy.files import atomic_path, atomic_write_text
from dgl_deploy.model import checkpoint
from dgl_deploy.model.model import DGLModel, create_model
from dgl_deploy.model.pixels import normalize
from dgl_deploy.model.tokenizer import tokenizer_for
from dgl_deploy.runtime.backends.torch_backend import TorchEncoder
from dgl_deploy.training.config import TrainConfig
from dgl_deploy.training.data import StepBatch, data_fingerprint, iter_steps, load_splits, steps_per_epoch
from dgl_deploy.training.distributed import DistInfo, gather_with_grad, global_count, init_distributed, sum_gradients
from dgl_deploy.training.log import RunLog, format_eta
from dgl_deploy.training.state import STATE_NAME, EpochRecord, Progress, load_state, save_state, set_rng_state

FINAL_NAME = "model.safetensors"


@dataclass
class TrainResult:
    """What a `train` call did."""

    run_dir: Path
    completed: bool  # False when stopped early by `stop_after` (resume with resume=True)
    checkpoint: Path | None  # RUN_DIR/model.safetensors (the selected epoch) when completed
    best_epoch: int | None  # 1-based epoch copied to model.safetensors
    history: list[EpochRecord] = field(default_factory=list)  # one record per finished epoch
    skipped: list[str] = field(default_factory=list)  # training videos that failed to decode
    steps: int = 0  # optimizer steps done in the whole run


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of (N, N) text x video logits whose matching pairs are on the diagonal."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Any:
    """LR factor per step: linear warm-up from 0 to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    """'auto' -> CUDA when available; under torchrun a CUDA device is cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DGLError(f"device {name!r}: CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Torch's deterministic kernels inside the block (same seed on the same machine: same prompts), the
    caller's settings after it. A kernel without a deterministic version warns instead of failing. cuBLAS
    reads its workspace setting when first used in the process: it is set here unless the environment has one."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


class Trainer:
    """One run: model, optimizer, schedule, data and run directory."""

    def __init__(self, cfg: TrainConfig) -> None:
        if not (cfg.out and cfg.annotations and cfg.videos):
            raise DGLError("training needs --annotations, --videos and a run directory --out")
        self.cfg, self.run_dir = cfg, Path(cfg.out)
        self.dist = init_distributed(cfg.device != "cpu" and torch.cuda.is_available())
        if cfg.batch_size % (self.dist.world * cfg.accum_steps):
            raise DGLError(f"batch_size {cfg.batch_size} must be divisible by world size x accum_steps "
                           f"({self.dist.world} x {cfg.accum_steps})")
        self.device = resolve_device(cfg.device, self.dist)
        self.train_set, self.val_set = load_splits(cfg)
        self.model = self._build_model()
        self.params = list(self.model.prompt_parameters().values())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps = steps_per_epoch(len(self.train_set.items), cfg.batch_size, self.dist.world)
        total = self.steps * cfg.epochs
        schedule = cosine_with_warmup(total, math.ceil(cfg.warmup * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.amp = cfg.amp if self.device.type == "cuda" else "none"  # CPU trains in fp32
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.tokenize = tokenizer_for(self.model)
        self._warned: set[str] = set()  # warnings already printed (one per video)
        self.identity = {"config": cfg.result_fields(), "train data": data_fingerprint(self.train_set.items),
                         "backbone": self.model.backbone.fingerprint}

    def _build_model(self) -> DGLModel:
        torch.manual_seed(self.cfg.seed)  # prompt init (and a random-init backbone) follow the seed
        model = create_model(self.cfg.model_name, self.cfg.pretrained, latent=self.cfg.latent,
                             frames=self.cfg.frames, max_words=self.cfg.max_words,
                             frame_sampling=self.cfg.frame_sampling)
        return model.to(self.device).train()

    # ---- run directory ----------------------------------------------------------------------------------
    def start(self) -> Progress:
        """Fresh run (refuses a directory holding one) or the saved progress when resuming."""
        state_path = self.run_dir / STATE_NAME
        if not self.cfg.resume:
            if state_path.exists() or (self.run_dir / FINAL_NAME).exists():
                raise DGLError(f"{self.run_dir}: already holds a training run; pass --resume or choose another --out")
            if self.dist.main:
                atomic_write_text(self.run_dir / "config.json", _json(self.cfg.to_dict()))
            return Progress()
        state = load_state(state_path, self.identity)
        with torch.no_grad():
            for name, param in self.model.prompt_parameters().items():
                param.copy_(state["prompts"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return Progress.from_dict(state["progress"])

    def save(self, progress: Progress) -> None:
        if self.dist.main:
            save_state(self.run_dir / STATE_NAME, progress, prompts=self.model.prompt_parameters(),
                       optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, identity=self.identity)

    # ---- one optimizer step -----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def step(self, batch: StepBatch) -> float | None:
        """Forward/backward over the micro-batches and one optimizer update; None when the global batch has
        fewer than 2 videos (no contrastive signal: the update is skipped, the schedule still advances)."""
        if global_count(len(batch.items), self.dist.world, self.device) < 2:
            self.scheduler.step()
            return None
        ids = self.tokenize(batch.captions)  # (B', W)
        frames = torch.from_numpy(batch.frames)  # (B', T, S, S, 3) uint8
        total = 0.0
        for part in torch.arange(len(batch.items)).tensor_split(self.cfg.accum_steps):
            if len(part) == 0 and self.dist.world == 1:
                continue
            with self._autocast():
                text, video = self.model(ids[part].to(self.device), normalize(frames[part].to(self.device)))  # (b, E)
            text = gather_with_grad(text.float(), self.dist.world)  # (N, E) over ranks
            video = gather_with_grad(video.float(), self.dist.world)
            loss = contrastive_loss(self.model.logits(text, video)) / self.cfg.accum_steps
            self.scaler.scale(loss).backward()
            total += loss.item()
        sum_gradients(self.params, self.dist.world)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    # ---- validation -------------------------------------------------------------------------------------
    def validate(self) -> float | None:
        """Text->video R@1 on the validation split (main rank; None without one)."""
        if self.val_set is None or not self.dist.main:
            return None
        encoder = TorchEncoder(self.model, "training", str(self.device), None if self.amp == "none" else self.amp)
        cache = FrameCache(self.cfg.frame_cache) if self.cfg.frame_cache else None
        embeddings = embed_dataset(encoder, self.val_set, self.cfg.val_batch_size, self.cfg.workers, cache,
                                   self.cfg.frame_sampling)
        self.model.train()
        for failure in embeddings.failures:
            self.log_warn_once(str(failure.path), f"validation video skipped: {failure.path}: {failure.reason}")
        return float(retrieval_metrics(similarity(embeddings), embeddings.caption_to_video)["t2v"]["R@1"])

    def log_warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warn(message)

    # ---- the run ----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        progress = self.start()
        self._warned.update(progress.skipped)
        self._clock = (time.monotonic(), progress.global_step)  # this session's start: for the per-epoch ETA
        self.log = RunLog(self.run_dir, main=self.dist.main, quiet=self.cfg.quiet, tensorboard=self.cfg.tensorboard)
        try:
            val_videos = len(self.val_set.items) if self.val_set else 0
            self.log.record("start", resume=self.cfg.resume, step=progress.global_step, train_videos=len(self.train_set.items),
                            val_videos=val_videos, steps_per_epoch=self.steps,
                            device=str(self.device), amp=self.amp, world=self.dist.world)
            what = f"resuming at epoch {progress.epoch + 1}" if self.cfg.resume else "training"
            self.log.summary(f"{what}: {len(self.train_set.items)} videos ({val_videos} for validation), "
                             f"{self.cfg.epochs} epochs of {self.steps} steps, {self.device}")
            while progress.epoch < self.cfg.epochs:
                if not self._run_epoch(progress):
                    return self._result(progress, completed=False)
            return self._finish(progress)
        finally:
            self.log.close()

    def _run_epoch(self, progress: Progress) -> bool:
        """Train the rest of the current epoch, then checkpoint + validate; False if stopped by stop_after."""
        clock, done_here = time.monotonic(), 0
        epoch = progress.epoch
        for batch in iter_steps(self.train_set, self.cfg, self.model.image_size, epoch, progress.step_in_epoch,
                                self.dist.rank, self.dist.world):
            self._report_failures(batch, progress)
            started = time.monotonic()
            loss = self.step(batch)
            progress.step_in_epoch += 1
            progress.global_step += 1
            progress.epoch_loss_sum += loss or 0.0
            done_here += 1
            self._log_step(progress, loss, len(batch.items), time.monotonic() - started, (time.monotonic() - clock) / done_here)
            if self.cfg.save_every and progress.global_step % self.cfg.save_every == 0:
                self.save(progress)
            if self.cfg.stop_after is not None and progress.global_step >= self.cfg.stop_after:
                self.save(progress)
                self.log.record("stopped", step=progress.global_step)
                return False
        self._end_epoch(progress)
        return True

    def _report_failures(self, batch: StepBatch, progress: Progress) -> None:
        for failure in batch.failures:
            if str(failure.path) not in progress.skipped:
                progress.skipped.append(str(failure.path))
                self.log.record("skipped_video", path=str(failure.path), reason=failure.reason)
            self.log_warn_once(str(failure.path), f"training video skipped: {failure.path}: {failure.reason}")

    def _log_step(self, progress: Progress, loss: float | None, videos: int, step_s: float, mean_s: float) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        samples = videos * self.dist.world / max(step_s, 1e-9)
        remaining = self.steps * self.cfg.epochs - progress.global_step
        self.log.record("step", step=progress.global_step, epoch=progress.epoch + 1, loss=loss, lr=lr,
                        samples_per_s=round(samples, 2), videos=videos)
        loss_text = "skipped" if loss is None else f"{loss:.4f}"
        self.log.say(f"epoch {progress.epoch + 1}/{self.cfg.epochs} step {progress.step_in_epoch}/{self.steps} "
                     f"loss {loss_text} lr {lr:.2e} {samples:.1f} samples/s ETA {format_eta(remaining * mean_s)}")

    def _end_epoch(self, progress: Progress) -> None:
        number = progress.epoch + 1
        name = f"epoch_{number}.safetensors"
        if self.dist.main:
            checkpoint.save(self.model, self.run_dir / name)
        val_r1 = self.validate()
        if self.dist.world > 1:
            torch.distributed.barrier()
        loss = progress.epoch_loss_sum / max(1, progress.step_in_epoch)
        progress.history.append(EpochRecord(number, loss, val_r1, name))
        progress.epoch, progress.step_in_epoch, progress.epoch_loss_sum = number, 0, 0.0
        self.save(progress)
        self.log.record("epoch", step=progress.global_step, epoch=number, loss=loss, val_r1=val_r1, checkpoint=name)
        self.log.summary(self._epoch_line(progress, loss, val_r1))

    def _epoch_line(self, progress: Progress, loss: float, val_r1: float | None) -> str:
        """`epoch i/N: loss, validation R@1, elapsed, ETA` (time per step so far in this session, validation included)."""
        started, first_step = self._clock
        elapsed = time.monotonic() - started
        left = elapsed / max(1, progress.global_step - first_step) * (self.steps * self.cfg.epochs - progress.global_step)
        validation = "no validation" if val_r1 is None else f"val t2v R@1 {val_r1:.1f}"
        return (f"epoch {progress.epoch}/{self.cfg.epochs}: loss {loss:.4f}, {validation}, "
                f"{format_eta(elapsed)} elapsed, ETA {format_eta(left)}")

    def _finish(self, progress: Progress) -> TrainResult:
        """Copy the selected epoch's checkpoint to model.safetensors."""
        best = select_epoch(progress.history)
        if self.dist.main:
            with atomic_path(self.run_dir / FINAL_NAME) as tmp:
                tmp.write_bytes((self.run_dir / best.checkpoint).read_bytes())
            self.log.record("done", step=progress.global_step, best_epoch=best.epoch, val_r1=best.val_r1)
            self.log.summary(f"done: {self.run_dir / FINAL_NAME} = epoch {best.epoch}"
                             + ("" if best.val_r1 is None else f" (validation t2v R@1 {best.val_r1:.1f})"))
        return self._result(progress, completed=True, best=best.epoch)

    def _result(self, progress: Progress, completed: bool, best: int | None = None) -> TrainResult:
        final = self.run_dir / FINAL_NAME if completed else None
        return TrainResult(self.run_dir, completed, final, best, progress.history, progress.skipped, progress.global_step)


def select_epoch(history: list[EpochRecord]) -> EpochRecord:
    """Best validation R@1, ties to the later epoch; the last epoch without validation."""
    scored = [record for record in history if record.val_r1 is not None]
    if not scored:
        return history[-1]
    return max(reversed(scored), key=lambda record: record.val_r1)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or with `cfg.resume`, continue) the prompt-tuning run described by `cfg`, with deterministic
    kernels: data order, caption choice and prompt init already follow `cfg.seed`."""
    with deterministic_kernels():
        return Trainer(cfg).run()
