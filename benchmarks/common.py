"""Shared helpers of the benchmark scripts: timing with warm-up, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def timeit(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median / min seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).date().isoformat()}


def emit(name: str, results: dict[str, Any]) -> None:
    """Print one JSON line: {"benchmark": name, "machine": ..., **results}."""
    print(json.dumps({"benchmark": name, "machine": machine(), **results}))


def exported_model(workdir: Path, name: str = "ViT-B-32", precisions: tuple[str, ...] = ()) -> Path:
    """A random-init DGL model on `name`, saved and exported to ONNX under `workdir` (reused if there)."""
    from dgl_deploy.export.pipeline import export_model
    from dgl_deploy.model.checkpoint import save
    from dgl_deploy.model.model import create_model

    workdir = Path(workdir)
    out = workdir / f"{name}-export"
    if not (out / "manifest.json").exists():
        checkpoint = save(create_model(name, pretrained=None), workdir / f"{name}.safetensors")
        export_model(checkpoint, out, precisions=precisions, overwrite=True, log=lambda _: None)
    return out
