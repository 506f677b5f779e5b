"""`dgl eval`: retrieval metrics of a similarity matrix (--sims) or of a model on a dataset split (--model),
optionally with labelled re-ranked rows, and (--moments --window W) moment-retrieval metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dgl_deploy.cli import options as opt
from dgl_deploy.cli.app import command
from dgl_deploy.cli.options import Backend, DatasetKind, FrameSampling, Precision
from dgl_deploy.data.windows import Segmentation
from dgl_deploy.errors import DGLError
from dgl_deploy.evaluation.metrics import evaluate_similarity_file, format_metrics_table, load_npy, results_to_json
from dgl_deploy.evaluation.rerank import DSL_TEMPERATURE, QB_BETA, QB_K, RerankMethod


@command("eval")
def eval_command(
    sims: Optional[Path] = typer.Option(None, "--sims", help="(num_captions, num_videos) float .npy similarity matrix."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint (.safetensors/.pth) or export folder (with manifest.json) to evaluate."),
    dataset: Optional[DatasetKind] = opt.dataset("--model: "),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="--model: annotation file or directory."),
    videos: Optional[Path] = typer.Option(None, "--videos", help="--model: directory of the video files."),
    split: Optional[str] = typer.Option(None, "--split", help="--model: split of an annotations directory [the kind's test split]."),
    backend: Backend = opt.backend("--model: "),
    device: str = opt.device("--model: "),
    precision: Precision = opt.precision("--model: "),
    batch_size: int = opt.batch_size(32, "--model: "),
    workers: int = opt.workers(4, "--model: "),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="--model: leave out annotated videos whose file is missing."),
    frame_sampling: Optional[FrameSampling] = opt.frame_sampling("--model: ", "the model's own"),
    captions_to_videos: Optional[Path] = typer.Option(
        None, "--captions-to-videos", help="(num_captions,) int .npy: each caption's ground-truth video (default: diagonal)."
    ),
    rerank: Optional[RerankMethod] = typer.Option(
        None, "--rerank", help="Also report post-hoc re-ranked rows: dsl (dual softmax) or qbnorm (querybank norm)."
    ),
    query_bank: Optional[Path] = typer.Option(
        None, "--query-bank", help="qbnorm: .npy similarities of held-out (e.g. training) captions to the same videos."
    ),
    qb_test_queries: bool = typer.Option(
        False, "--qb-test-queries", help="qbnorm: use the test captions as the query bank (OPTIMISTIC, labelled so)."
    ),
    dsl_temperature: float = typer.Option(
        DSL_TEMPERATURE, "--dsl-temperature", help="dsl: softmax temperature (100 for cosine sims, ~1 for logit-scaled)."
    ),
    qb_beta: float = typer.Option(QB_BETA, "--qb-beta", help="qbnorm: inverted-softmax beta."),
    qb_k: int = typer.Option(QB_K, "--qb-k", help="qbnorm: top-k activation set (dynamic inverted softmax); 0 = normalise all."),
    moments: bool = typer.Option(
        False, "--moments", help="--model: also text -> moment R@1/5 at IoU 0.3/0.5/0.7 and mIoU over the split's videos "
                                 "cut into --window windows (captions with start/end times: charades, activitynet)."),
    window: Optional[float] = opt.window("--moments: seconds per window (giving it implies --moments)."),
    stride: Optional[float] = opt.stride("--moments: "),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON only."),
) -> None:
    """Text→video and video→text R@1/5/10, MdR, MnR (ties ranked pessimistically) of --sims or --model; with
    --moments, moment retrieval over windows after temporal NMS."""
    options = dict(test_queries_as_bank=qb_test_queries, dsl_temperature=dsl_temperature, qb_beta=qb_beta, qb_k=qb_k or None)
    if (sims is None) == (model is None):
        raise DGLError("give exactly one of --sims (a similarity matrix) or --model (a model to run on a dataset)")
    segmentation = _segmentation(moments, window, stride, model)
    moment_results = None
    if sims is not None:
        results = evaluate_similarity_file(sims, captions_to_videos, rerank, query_bank, **options)
        title = f"Retrieval metrics: {sims.name}"
    else:
        sampling = None if frame_sampling is None else frame_sampling.value
        results, moment_results, title = _evaluate_model(
            model, dataset, annotations, videos, split, backend.value, device, precision.value, batch_size, workers,
            skip_missing, sampling, captions_to_videos, rerank, query_bank, options, segmentation)
    if as_json:
        typer.echo(results_to_json({**results, **({"moments": moment_results} if moment_results else {})}))
        return
    Console().print(format_metrics_table(results, title=title))
    if moment_results:
        from dgl_deploy.evaluation.moments import format_moment_table

        Console().print(format_moment_table(moment_results, f"Text -> moment ({segmentation.describe()}, temporal NMS)"))


def _segmentation(moments: bool, window: Optional[float], stride: Optional[float],
                  model: Optional[Path]) -> Optional[Segmentation]:
    """The windows of --moments / --window / --stride (None: no moment metrics)."""
    from dgl_deploy.retrieval.embed_settings import segmentation

    if model is None and (moments or window is not None):
        raise DGLError("--moments/--window need --model (a model to run on a dataset with per-caption times)")
    if moments and window is None:
        raise DGLError("--moments needs --window W (seconds per window; e.g. --window 8 --stride 4 for Charades-STA)")
    return segmentation(window, stride)


def _evaluate_model(model: Path, dataset: Optional[DatasetKind], annotations: Optional[Path], videos: Optional[Path],
                    split: Optional[str], backend: str, device: str, precision: str, batch_size: int, workers: int, skip_missing: bool,
                    frame_sampling: Optional[str], captions_to_videos: Optional[Path], rerank: Optional[RerankMethod],
                    query_bank: Optional[Path], options: dict,
                    segmentation: Optional[Segmentation]) -> tuple[dict, Optional[dict], str]:
    """--model mode: run `evaluation.evaluate_model`, report left-out videos on stderr; (metrics, moment metrics
    or None, table title)."""
    from dgl_deploy.evaluation.evaluate import evaluate_model

    if dataset is None or annotations is None or videos is None:
        raise DGLError("--model needs --dataset, --annotations and --videos")
    if captions_to_videos is not None:
        raise DGLError("--captions-to-videos is for --sims; with --model the dataset gives each caption's video")
    bank = None if query_bank is None else load_npy(query_bank, "query bank")
    report = evaluate_model(model, dataset.value, annotations, videos, split, backend=backend, device=device,
                            precision=precision, batch_size=batch_size, workers=workers, skip_missing=skip_missing,
                            frame_sampling=frame_sampling, rerank=rerank, query_bank=bank, segmentation=segmentation,
                            **options)
    for failure in report.failures:
        typer.echo(f"warning: left out (with its captions): {failure.path}: {failure.reason}", err=True)
    title = (f"Retrieval metrics: {model.name} on {dataset.value} {split or ''} ({report.num_videos} videos, "
             f"{report.num_captions} captions, {report.frame_sampling} frames, {report.backend})")
    return report.metrics, report.moments, title
