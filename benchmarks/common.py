"""Shared helpers of the benchmark scripts: timing with warm-up, interleaved A/B timing, machine description
(with its load), JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np


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


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each of `fns` over `repeats` rounds after `warmup` rounds. Every round runs each once, the
    order rotated by one per round, so a change in machine load during the run hits every variant alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def percentiles(times: list[float], scale: float = 1000.0, unit: str = "ms") -> dict[str, float]:
    """p50 / p99 (and the count) of `times` seconds, in `unit` (`scale` units per second)."""
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank
    return {f"p50_{unit}": round(scale * statistics.median(ordered), 3), f"p99_{unit}": round(scale * p99, 3),
            "n": len(ordered)}


def load_average() -> float:
    """The 1-minute load average (2 cores: above ~0.5, something else is running)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), **cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average_1m_at_end": load_average(),
            "date": datetime.now(timezone.utc).date().isoformat()}


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and its int8-relevant vector extensions (Linux /proc/cpuinfo; {} elsewhere): int8
    speed differs several-fold between AVX2-only and AVX-512 VNNI hosts of the same core count."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", ""),
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]}


def emit(name: str, results: dict[str, Any]) -> None:
    """Print one JSON line: {"benchmark": name, "machine": ..., **results}."""
    print(json.dumps({"benchmark": name, "machine": machine(), **results}))


def warm_up(encoder: Any) -> None:
    """Run a batch of two blank videos through `encoder` before timing: it loads the session `dgl embed`'s batches
    use (on CPU, OnnxEncoder's single-threaded one; a lone video would load the every-core one, a second copy of
    the graph that the timed batches never use)."""
    encoder.encode_videos(np.zeros((2, encoder.frames, encoder.image_size, encoder.image_size, 3), np.uint8))


def exported_model(workdir: Path, name: str = "ViT-B-32", precisions: tuple[str, ...] = ("int8",)) -> Path:
    """A random-init (seeded) DGL model on `name`, saved and exported to ONNX (fp32 + `precisions`) under
    `workdir`; reused if there with those precisions."""
    import torch

    from dgl_deploy.export.pipeline import export_model
    from dgl_deploy.model.checkpoint import save
    from dgl_deploy.model.model import create_model
    from dgl_deploy.runtime.manifest import load_manifest

    workdir = Path(workdir)
    out = workdir / f"{name}-export"
    if not (out / "manifest.json").exists() or not set(precisions) <= set(load_manifest(out).precisions("text")):
        torch.manual_seed(0)
        checkpoint = save(create_model(name, pretrained=None), workdir / f"{name}.safetensors")
        export_model(checkpoint, out, precisions=precisions, overwrite=True, log=lambda _: None)
    return out
