"""`dgl embed` and `dgl query`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import typer

from dgl_deploy.cli import options as opt
from dgl_deploy.cli.app import command
from dgl_deploy.cli.options import Backend, Precision
from dgl_deploy.data.windows import DEFAULT_SCENE_THRESHOLD
from dgl_deploy.retrieval.embed_settings import SCENES_WINDOW

EXIT_SOME_FAILED = 3  # `dgl embed` finished, but some files could not be embedded (see the errors file)


class _BarReporter:
    """Rich progress bar: files done / total, videos/s, ETA, failures."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.failed = 0
        self.progress = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]} videos/s"), TimeRemainingColumn(),
                                 TextColumn("failed {task.fields[failed]}"), transient=True, console=_stderr())
        self.task = None

    def start(self, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("embed", total=total, completed=done, rate="-", failed=0)

    def advance(self, ok: int, failed: int) -> None:
        self.failed += failed
        task = self.progress.tasks[0]
        speed = task.speed
        self.progress.update(self.task, advance=ok + failed, failed=self.failed,
                             rate=f"{speed:.1f}" if speed else "-")

    def close(self) -> None:
        self.progress.stop()


class _JsonReporter:
    """One JSON line per finished chunk on stderr, for scripts."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        print(json.dumps({"event": "start", "total": total, "done": done}), file=sys.stderr, flush=True)

    def advance(self, ok: int, failed: int) -> None:
        self.done += ok + failed
        print(json.dumps({"event": "progress", "done": self.done, "total": self.total, "ok": ok, "failed": failed}),
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _QuietReporter(_JsonReporter):
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: int, failed: int) -> None:
        pass


def _stderr():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True)


def _reporter(quiet: bool, json_log: bool) -> _BarReporter | _JsonReporter:
    if json_log:
        return _JsonReporter()
    return _QuietReporter() if quiet else _BarReporter()


@command("embed")
def embed(
    videos: Path = typer.Argument(..., help="Folder of videos (recursive), a .txt file list, or a .csv/.jsonl annotation file."),
    out: Path = typer.Option(..., "--out", "-o", help="Embeddings file to write (.npy); ids, manifest and errors go beside it."),
    model: Path = typer.Option(..., "--model", "-m", help="Export folder (ONNX/TensorRT) or checkpoint (.safetensors/.pth)."),
    backend: Backend = opt.backend(),
    device: str = opt.device(),
    precision: Precision = opt.precision(),
    strict: bool = opt.strict(),
    batch_size: int = opt.batch_size(16),
    workers: int = opt.workers(2),
    chunk_size: int = typer.Option(256, "--chunk-size", min=1, max=1_000_000, help="Videos per resumable chunk."),
    fp16: bool = typer.Option(False, "--fp16", help="Store float16 embeddings (half the size)."),
    window: Optional[float] = opt.window("Search inside long videos: one row per window of this many seconds "
                                         "(default: one row per video)."),
    stride: Optional[float] = opt.stride("With --window: "),
    scenes: bool = typer.Option(False, "--scenes", help="Cut at shot boundaries (PySceneDetect), split shots longer than --window "
                                                        f"(default {SCENES_WINDOW:g} s), merge shots under a quarter of it. "
                                                        "Needs pip install 'dgl-deploy[scenes]'."),
    scene_threshold: float = typer.Option(DEFAULT_SCENE_THRESHOLD, "--scene-threshold", min=0.001, max=1e6,
                                          help="With --scenes: ContentDetector threshold (lower: more cuts)."),
    timeout: float = opt.timeout(60.0, "--timeout", "one file (with --window: one group of its windows)"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted job (the default)."),
    update: bool = typer.Option(False, "--update", help="Add only videos the existing embeddings do not have."),
    prune: bool = typer.Option(False, "--prune", help="With --update: drop the rows whose video file no longer exists."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing embeddings (and any unfinished job)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    json_log: bool = typer.Option(False, "--json-log", help="Progress and summary as JSON lines (stderr / stdout)."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run on Ray: 'local' (start one here), 'auto' (the running cluster) or ray://host:port. "
                            "Needs pip install 'dgl-deploy[ray]'."),
    ray_encoders: int = typer.Option(1, "--ray-encoders", min=1, max=1024, help="With --ray: encoder actors (each loads the model once)."),
) -> None:
    """Embed a folder of videos; resumable, skips and lists bad files (exit code 3 if any failed)."""
    from dgl_deploy.retrieval.embed import EmbedSettings, check_resume, embed_videos, segmentation
    from dgl_deploy.retrieval.store import StorePaths
    from dgl_deploy.runtime.backends.select import open_encoder

    # the steps of dgl_deploy.embed_videos (dgl_deploy.api), with the CLI's progress display and --ray
    paths = StorePaths.of(out)
    check_resume(out, resume, overwrite)
    settings = EmbedSettings(batch_size=batch_size, workers=workers, chunk_size=chunk_size, fp16=fp16, timeout=timeout,
                             segments=segmentation(window, stride, scenes, scene_threshold))
    if ray is None:
        # open_encoder says which backend it chose (one stderr line), except in quiet / JSON-log mode
        encoder = open_encoder(model, backend=backend.value, device=device, precision=precision.value, strict=strict,
                               **({"log": None} if quiet or json_log else {}))
    reporter = _reporter(quiet, json_log)
    try:
        if ray is None:
            result = embed_videos(videos, out, encoder, settings, update=update, overwrite=overwrite, prune=prune,
                                  reporter=reporter, model=str(model))
        else:
            from dgl_deploy.retrieval.ray_embed import RaySettings, embed_videos_ray

            result = embed_videos_ray(videos, out, model, settings, RaySettings(
                address=ray, encoders=ray_encoders, backend=backend.value, device=device,
                precision=precision.value), update=update,
                overwrite=overwrite, prune=prune, reporter=reporter)
    except KeyboardInterrupt:
        reporter.close()
        kept = f"finished chunks are kept in {paths.parts}" if paths.parts.exists() else "no chunk was finished"
        typer.echo(f"interrupted: {kept}; rerun the same command to continue", err=True)
        raise typer.Exit(130) from None
    reporter.close()
    _summary(result, paths, json_log)
    if result.failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def _summary(result, paths, json_log: bool) -> None:  # noqa: ANN001
    rate = result.embedded / result.seconds if result.seconds else 0.0
    if json_log:
        typer.echo(json.dumps({"event": "done", "out": str(result.out), "found": result.total,
                               "embedded": result.embedded, "new_rows": result.new_rows, "existing": result.existing,
                               "failed": len(result.failures), "missing": result.missing, "pruned": result.pruned,
                               "rows": result.rows, "precision": result.precision, "up_to_date": result.up_to_date,
                               "seconds": round(result.seconds, 3), "videos_per_second": round(rate, 3)}))
        return
    if result.up_to_date:
        typer.echo(f"up to date: {result.out} already holds all {result.total} videos ({result.rows} rows), "
                   "nothing written")
    else:
        pruned = f", {result.pruned} dropped (--prune)" if result.pruned else ""
        windows = f" as {result.new_rows} windows" if result.new_rows != result.embedded else ""
        windows += f" at {result.precision}" if result.new_rows else ""
        typer.echo(f"{result.embedded} embedded{windows}, {result.existing} rows kept{pruned}, {len(result.failures)} failed of "
                   f"{result.total} videos in {result.seconds:.1f} s ({rate:.1f} videos/s) -> {result.out} "
                   f"({result.rows} rows)")
    if result.missing:
        typer.echo(f"{result.missing} rows have no video file any more (deleted or moved): "
                   "`--update --prune` drops them")
    for video_id, reason in result.failures[:10]:
        typer.echo(f"  failed: {video_id}: {reason}", err=True)
    if len(result.failures) > 10:
        typer.echo(f"  ... {len(result.failures) - 10} more in {paths.errors}", err=True)


@command("query")
def query(
    texts: Optional[list[str]] = typer.Argument(None, help="Query texts (several allowed)."),
    index: Path = typer.Option(..., "--index", "-i", help="Embeddings (.npy) written by `dgl embed`, or an index folder from `dgl index build`."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model to encode queries (default: the one that made the index)."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, max=100_000, help="Results per query."),
    queries_file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read more queries from a file, one per line."),
    video: Optional[Path] = typer.Option(None, "--video", help="Search with a video instead of text (video -> video)."),
    backend: Backend = opt.backend(),
    device: str = opt.device(),
    precision: Precision = opt.precision(),
    strict: bool = opt.strict(),
    per_video: int = typer.Option(
        0, "--per-video", min=0, max=100_000, help="Moments per video in a set made with --window, after temporal "
                                                   "NMS (1: the best moment of each video; 0: no limit)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Search embeddings with text (or a video); the query model must be the one that made them. Hits of a set
    made with --window are moments: video, start and end (seconds); adjacent or overlapping matching windows
    of a video are merged into one moment and the weaker windows around it left out (temporal NMS)."""
    from dgl_deploy.retrieval.query import stream_query

    results = stream_query(index, texts or [], model=model, k=k, queries_file=queries_file, video=video,
                           backend=backend.value, device=device, precision=precision.value, per_video=per_video,
                           strict=strict)
    if as_json:
        _print_json(results)
        return
    _print_hits(results)


def _print_json(results: Iterator[dict]) -> None:
    """The results as one JSON list, as `json.dumps(list, indent=1)` writes it, one query at a time."""
    opening = "["
    for result in results:
        item = json.dumps(result, indent=1).replace("\n", "\n ")  # one level deeper, as inside the list
        sys.stdout.write(f"{opening}\n {item}")
        opening = ","
    sys.stdout.write("[]\n" if opening == "[" else "\n]\n")


def _print_hits(results: Iterable[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for result in results:
        table = Table(title=result["query"], title_justify="left")
        for column, justify in (("rank", "right"), ("score", "right"), ("video", "left")):
            table.add_column(column, justify=justify)
        for hit in result["results"]:
            moment = f"  {_clock(hit['start'])}-{_clock(hit['end'])}" if "start" in hit else ""
            table.add_row(str(hit["rank"]), f"{hit['score']:.4f}", f"{hit['id']}{moment}")
        console.print(table)


def _clock(seconds: float) -> str:
    """mm:ss (h:mm:ss from an hour on), with tenths when the time is not whole seconds (as on the search page)."""
    tenths = round(seconds * 10)
    minutes, secs = divmod(tenths // 10, 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
    return f"{clock}.{tenths % 10}" if tenths % 10 else clock
