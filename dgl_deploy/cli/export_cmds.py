"""`dgl export MODEL --out DIR`: ONNX encoders with baked-in prompts (+ fp16/int8 variants, TensorRT engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgl_deploy import defaults
from dgl_deploy.cli.app import command


@command("export")
def export_command(
    model: Path = typer.Argument(..., help="dgl-deploy checkpoint (.safetensors) or DGL reference checkpoint (.pth)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder to create (graphs + manifest.json)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write fp16 graphs for GPU runtimes."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also write dynamically quantised int8 graphs (the CPU "
                              "speed; `--precision auto` uses them where their parity with fp32 held)."),
    opset: int = typer.Option(defaults.OPSET, "--opset", min=defaults.OPSET, help="ONNX opset."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export folder."),
    trt: bool = typer.Option(False, "--trt", help="Also build TensorRT engines (needs tensorrt + a CUDA GPU)."),
    trt_precision: str = typer.Option("fp16", "--trt-precision", help="Engine precision: fp16, fp32, int8, fp8."),
    video_batch: Optional[str] = typer.Option(None, "--video-batch", help="Video engine batch MIN,OPT,MAX [1,32,128]."),
    text_batch: Optional[str] = typer.Option(None, "--text-batch", help="Text engine batch MIN,OPT,MAX [1,256,1024]."),
    workspace: float = typer.Option(4.0, "--workspace", help="TensorRT builder workspace limit in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file (reused)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild TensorRT engines made for another GPU/version."),
) -> None:
    """Export a trained model to standalone ONNX encoders; parity with PyTorch is checked before writing."""
    from dgl_deploy.export.pipeline import export_model
    from dgl_deploy.export.tensorrt import Profile, TrtSettings, with_profile

    settings = None
    if trt:
        settings = TrtSettings(precision=trt_precision, workspace_gib=workspace, rebuild=rebuild,
                               **({"timing_cache": timing_cache} if timing_cache else {}))
        settings = with_profile(settings, "video", Profile.parse(video_batch) if video_batch else None)
        settings = with_profile(settings, "text", Profile.parse(text_batch) if text_batch else None)
    precisions = tuple(p for p, on in (("fp16", fp16), ("int8", int8)) if on)
    export_model(model, out, precisions=precisions, opset=opset, overwrite=overwrite, trt=settings, log=typer.echo)
