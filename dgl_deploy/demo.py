"""The offline demo behind `dgl demo`: the whole pipeline on CPU, and what DGL adds over plain CLIP.

1. Synthetic videos: a coloured shape moving left/right/up/down; captions name colour, shape and
   the direction of motion ("a red circle moves from left to right").
2. No pretrained CLIP can be downloaded here, so a tiny CLIP is first pre-trained on *single frames*
   with static captions ("a red circle at the top left") and saved as an ordinary open_clip state dict.
3. That CLIP is frozen. Baselines on held-out test videos: plain CLIP with mean-pooled frame
   embeddings, and DGL with its initial (untrained) prompts.
4. DGL prompt tuning on the video-level motion captions, which no single frame can answer; then the same
   evaluation.
5. ONNX export, `dgl embed` of the test videos, `dgl query` with a few captions, `dgl eval` on ONNX.
6. Search inside long videos: a few long synthetic videos of several motion events between still distractor
   segments (`dgl make-data synthetic-long`), cut into windows and embedded by the tuned export and by plain
   CLIP (mean-pooled frames); every event's caption searches all windows (temporal NMS, as `dgl query`), and
   the moment R@1 at IoU 0.5 of both is reported (`dgl eval --moments`), with one example's timestamps.

Every step calls the library functions behind the `dgl` commands; the artifacts stay in `out/`. The three steps
that need the training and export extras (pre-training, tuning, export) are passed in as `DemoSteps`: only the
CLI imports dgl_deploy.training and dgl_deploy.export (tests/test_layout.py), so `cli/demo.py` fills them in and
this module, like the rest of the library, runs and imports without those extras.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.backends.select import Log


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; `quick()` is the CI version."""

    out: str = "demo_out"  # folder for every artifact (data, CLIP, run, export, embeddings)
    train_videos: int = 240  # synthetic training videos
    test_videos: int = 60  # held-out videos for evaluation, embedding and queries
    frames: int = 8  # frames per video (T)
    max_words: int = 16  # caption tokens (the synthetic captions are short)
    model_name: str = "dgl-mini"  # registered tiny open_clip tower
    pretrain_steps: int = 300  # image-text steps of the tiny CLIP
    epochs: int = 60  # DGL prompt-tuning epochs
    batch_size: int = 48  # DGL batch
    lr: float = 4e-3  # DGL learning rate (the recipe has 2e-3 for batch 128 on MSR-VTT; tiny data likes more)
    workers: int = 2  # decoding processes
    seed: int = 0  # data, init and order
    long_videos: int = 6  # long videos for moment search
    long_events: int = 4  # motion events in each
    long_event_seconds: float = 4.0  # seconds per event (distractors: 1-2 times that); windows of this, stride half

    def quick(self) -> DemoConfig:
        return replace(self, train_videos=48, test_videos=16, pretrain_steps=100, epochs=3, batch_size=16,
                       long_videos=2, long_events=2, long_event_seconds=2.0)


Pretrain = Callable[[np.ndarray, list[str], Path, DemoConfig, Log], Path]
"""(frames (N, H, W, 3) uint8, a static caption each, the state dict to write, config, log) -> the file written."""
Tune = Callable[[Path, Path, Path, Path, DemoConfig], tuple[Path | None, int | None]]
"""(train annotations, CLIP state dict, run folder, frame cache, config) -> (selected checkpoint, its 1-based epoch);
no checkpoint: training produced no model."""
Export = Callable[[Path, Path, Log], None]
"""(checkpoint, export folder, log): ONNX export (fp32 + int8) with its parity check."""


@dataclass(frozen=True)
class DemoSteps:
    """The demo's steps that need the training and export extras, given by the caller (`cli.demo.STEPS`)."""

    pretrain: Pretrain  # pre-trains the tiny CLIP on single frames
    tune: Tune  # DGL prompt tuning of the frozen CLIP
    export: Export  # the tuned model as an export folder


def run_demo(steps: DemoSteps, config: DemoConfig = DemoConfig(), log: Log = print) -> dict:
    """Run every step, print what happens, return the numbers (also written to out/demo_results.json)."""
    out = Path(config.out)
    train_ann, test_ann = _make_data(out, config, log)
    clip_path = _pretrain(steps, out, train_ann, config, log)
    results = {"before": _baselines(out, test_ann, clip_path, config, log)}
    model_path = _tune(steps, out, train_ann, clip_path, config, log)
    results["after"] = {"dgl_tuned_torch": _r1(_evaluate(model_path, test_ann, config, "torch"))}
    log(f"DGL tuned (torch): t2v R@1 {results['after']['dgl_tuned_torch']['t2v']:.1f}")
    export_dir = _export(steps, out, model_path, log)
    for precision in ("fp32", "int8"):
        results["after"][f"dgl_tuned_onnx_{precision}"] = _r1(_evaluate(export_dir, test_ann, config, "onnxruntime",
                                                                         precision))
    results["queries"] = _embed_and_query(out, export_dir, test_ann, config, log)
    results["long"] = _long_videos(out, export_dir, clip_path, config, log)
    _summary(results, log)
    (out / "demo_results.json").write_text(json.dumps(results, indent=1))
    return results


def _indented(log: Log) -> Log:
    """`log` for the lines of a step's own output (indented under the step's title)."""
    return lambda message: log("      " + message)


def _make_data(out: Path, config: DemoConfig, log: Log) -> tuple[Path, Path]:
    from dgl_deploy.data.synthetic import make_synthetic

    log(f"[1/7] synthetic videos: {config.train_videos} train + {config.test_videos} test -> {out / 'data'}")
    train = make_synthetic(out / "data" / "train", config.train_videos, seed=config.seed)
    test = make_synthetic(out / "data" / "test", config.test_videos, seed=config.seed + 1)
    return train, test


def _frame_pairs(annotations: Path, config: DemoConfig) -> tuple[np.ndarray, list[str]]:
    """Decoded frames of every training video and a static caption for each frame."""
    from dgl_deploy.data.loader import iter_video_batches
    from dgl_deploy.data.sampling import frame_indices
    from dgl_deploy.data.synthetic import frame_caption

    rows = [json.loads(line) for line in annotations.read_text().splitlines()]
    image_size = _image_size(config.model_name)
    frames, captions = [], []
    for batch in iter_video_batches([annotations.parent / r["video"] for r in rows], config.frames, image_size,
                                    32, config.workers):
        for index, stack in zip(batch.indices, batch.frames, strict=False):
            meta = rows[index]["meta"]
            picked = frame_indices(meta["num_frames"], meta["fps"], config.frames)
            frames.append(stack)  # (T, H, W, 3)
            captions += [frame_caption(meta, i / max(1, meta["num_frames"] - 1)) for i in picked]
    return np.concatenate(frames), captions


def _image_size(name: str) -> int:
    """The tower's input size, from its open_clip config (importing model.backbone registers the tiny towers)."""
    import open_clip

    import dgl_deploy.model.backbone  # noqa: F401

    return int(open_clip.get_model_config(name)["vision_cfg"]["image_size"])


def _pretrain(steps: DemoSteps, out: Path, train_ann: Path, config: DemoConfig, log: Log) -> Path:
    images, captions = _frame_pairs(train_ann, config)
    log(f"[2/7] pre-training a tiny CLIP ({config.model_name}) on {len(captions)} single frames with static "
        f"captions ({len(set(captions))} distinct), e.g. {captions[0]!r}")
    return steps.pretrain(images, captions, out / "clip.safetensors", config, _indented(log))


def _tune(steps: DemoSteps, out: Path, train_ann: Path, clip_path: Path, config: DemoConfig, log: Log) -> Path:
    log(f"[4/7] DGL prompt tuning on motion captions: {config.epochs} epochs, batch {config.batch_size} "
        f"(run folder {out / 'run'})")
    checkpoint, best_epoch = steps.tune(train_ann, clip_path, out / "run", out / "frame_cache", config)
    if checkpoint is None:
        raise DGLError(f"{out / 'run'}: training produced no model")
    log(f"      best epoch {best_epoch} (chosen on a held-out slice of train) -> {checkpoint}")
    return Path(checkpoint)


def _export(steps: DemoSteps, out: Path, model_path: Path, log: Log) -> Path:
    log(f"[5/7] ONNX export with baked prompts + parity check -> {out / 'export'}")
    steps.export(model_path, out / "export", _indented(log))
    return out / "export"


def _test_set(test_ann: Path):  # noqa: ANN202
    from dgl_deploy.data.datasets import load_dataset

    return load_dataset("generic", test_ann, test_ann.parent)


def _r1(evaluation) -> dict:  # noqa: ANN001
    return {direction: evaluation.metrics[direction]["R@1"] for direction in ("t2v", "v2t")}


def _baselines(out: Path, test_ann: Path, clip_path: Path, config: DemoConfig, log: Log) -> dict:
    import torch

    from dgl_deploy.evaluation.evaluate import evaluate_encoder
    from dgl_deploy.model.checkpoint import model_fingerprint
    from dgl_deploy.model.model import create_model
    from dgl_deploy.runtime.backends.meanpool import open_meanpool_encoder
    from dgl_deploy.runtime.backends.torch_backend import TorchEncoder

    log(f"[3/7] baselines on {config.test_videos} held-out videos (frozen CLIP, no tuning)")
    dataset = _test_set(test_ann)
    meanpool = evaluate_encoder(open_meanpool_encoder(config.model_name, str(clip_path), config.frames), dataset,
                                workers=config.workers)
    torch.manual_seed(config.seed)  # the same initial prompts the training run starts from
    untuned = create_model(config.model_name, str(clip_path), frames=config.frames)
    initial = evaluate_encoder(TorchEncoder(untuned, model_fingerprint(untuned)), dataset, workers=config.workers)
    results = {"clip_meanpool": _r1(meanpool), "dgl_untuned": _r1(initial)}
    log(f"      plain CLIP, mean-pooled frames: t2v R@1 {results['clip_meanpool']['t2v']:.1f}")
    log(f"      DGL, initial prompts:           t2v R@1 {results['dgl_untuned']['t2v']:.1f}")
    return results


def _evaluate(model: Path, test_ann: Path, config: DemoConfig, backend: str, precision: str = "auto"):  # noqa: ANN202
    from dgl_deploy.evaluation.evaluate import evaluate_model

    return evaluate_model(model, "generic", test_ann, test_ann.parent, backend=backend, precision=precision,
                          workers=config.workers)


def _embed_and_query(out: Path, export_dir: Path, test_ann: Path, config: DemoConfig, log: Log) -> list[dict]:
    from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
    from dgl_deploy.retrieval.query import run_query
    from dgl_deploy.runtime.backends.select import open_encoder

    log(f"[6/7] dgl embed {test_ann.parent} (ONNX Runtime), then dgl query")
    encoder = open_encoder(export_dir, backend="onnxruntime", device="cpu")
    embedded = embed_videos(test_ann.parent, out / "emb.npy", encoder, EmbedSettings(workers=config.workers),
                            overwrite=True, model=str(export_dir))
    log(f"      {embedded.embedded} videos embedded in {embedded.seconds:.1f} s -> {out / 'emb.npy'}")
    rows = [json.loads(line) for line in test_ann.read_text().splitlines()]
    picks = [rows[i] for i in range(0, len(rows), max(1, len(rows) // 3))][:3]
    results = run_query(out / "emb.npy", [row["caption"][0] for row in picks], k=3, backend="onnxruntime",
                        device="cpu")
    for row, result in zip(picks, results, strict=False):
        hits = ", ".join(f"{h['id']} ({h['score']:.2f})" for h in result["results"])
        log(f"      {result['query']!r} (true: {row['video']}) -> {hits}")
    return results


def _long_videos(out: Path, export_dir: Path, clip_path: Path, config: DemoConfig, log: Log) -> dict:
    """Moment R@1 (IoU 0.5) of the tuned export and of plain CLIP on long synthetic videos, and one example."""
    from dgl_deploy.data.datasets import load_dataset
    from dgl_deploy.data.long_clips import make_synthetic_long
    from dgl_deploy.data.windows import Segmentation
    from dgl_deploy.evaluation.moments import evaluate_moments
    from dgl_deploy.runtime.backends.meanpool import open_meanpool_encoder
    from dgl_deploy.runtime.backends.select import open_encoder

    seconds = config.long_event_seconds
    annotations = make_synthetic_long(out / "data" / "long", config.long_videos, config.long_events,
                                      seed=config.seed + 2, event_seconds=seconds)
    windows = Segmentation(seconds, seconds / 2)
    log(f"[7/7] search inside long videos: {config.long_videos} videos x {config.long_events} events "
        f"-> {annotations.parent}, windows {windows.describe()}, temporal NMS")
    dataset = load_dataset("charades", annotations.parent, annotations.parent)
    encoders = {"dgl_tuned": open_encoder(export_dir, backend="onnxruntime", device="cpu"),
                "clip_meanpool": open_meanpool_encoder(config.model_name, str(clip_path), config.frames)}
    found = {name: evaluate_moments(encoder, dataset, windows, config.workers) for name, encoder in encoders.items()}
    results = {"videos": config.long_videos, "events": config.long_events, "window": windows.window,
               "stride": windows.stride, **{name: evaluation.metrics for name, evaluation in found.items()}}
    for name, label in (("dgl_tuned", "DGL tuned (ONNX)"), ("clip_meanpool", "plain CLIP, mean-pooled")):
        metrics = results[name]
        log(f"      {label:24s} moment R@1 IoU=0.5 {metrics['R@1,IoU=0.5']:5.1f}  (R@5 IoU=0.5 "
            f"{metrics['R@5,IoU=0.5']:.1f}, mIoU {metrics['mIoU']:.1f})")
    tuned = found["dgl_tuned"]
    truth, hits = tuned.truths[0], tuned.predictions[0][:3]
    results["example"] = {"query": tuned.captions[0], "true": {"id": truth.video, "start": truth.start, "end": truth.end},
                          "found": [{"id": h.id, "start": h.start, "end": h.end, "score": h.score} for h in hits]}
    log(f"      {tuned.captions[0]!r} (true: {truth.video} {truth.start:.1f}-{truth.end:.1f} s) -> "
        + ", ".join(f"{h.id} {h.start:.1f}-{h.end:.1f} s ({h.score:.2f})" for h in hits))
    return results


def _summary(results: dict, log: Log) -> None:
    before, after = results["before"], results["after"]
    log("text -> video R@1 on held-out videos (video -> text in brackets):")
    for label, key, part in (("plain CLIP, mean-pooled frames", "clip_meanpool", before),
                             ("DGL before tuning", "dgl_untuned", before), ("DGL after tuning (torch)",
                                                                            "dgl_tuned_torch", after),
                             ("DGL after tuning (ONNX Runtime fp32)", "dgl_tuned_onnx_fp32", after),
                             ("DGL after tuning (ONNX Runtime int8)", "dgl_tuned_onnx_int8", after)):
        log(f"  {label:38s} {part[key]['t2v']:5.1f}  ({part[key]['v2t']:.1f})")
    long = results["long"]
    log(f"text -> moment R@1 at IoU 0.5 in {long['videos']} long videos ({long['videos'] * long['events']} events): "
        f"DGL tuned {long['dgl_tuned']['R@1,IoU=0.5']:.1f}, plain CLIP {long['clip_meanpool']['R@1,IoU=0.5']:.1f}")
