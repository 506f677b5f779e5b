"""Rerun every benchmark script and regenerate the docs' benchmarks page from their JSON output.

Each script prints one JSON object on its last stdout line; it is stored in benchmarks/results/<name>.json (the
JSON is the record) and rendered into docs/benchmarks.md: a short table of headline results with their targets,
plots (docs/img/bench_*.png, matplotlib: the `bench` extra) and every measured value, so the numbers in the docs
always come from the code as it is. `--only NAME ...` reruns some and keeps the stored results of the others;
`--render` only rewrites the page (and the plots) from the stored results. `--gpu PATH/gpu_check.json` stores the
GPU check's output (`make gpu-check`, benchmarks/gpu_check/) as benchmarks/results/gpu.json (nothing is rerun) and
the page gains its "GPU" part; `--page PATH` writes another file than docs/benchmarks.md (e.g. a copy, to look at
the result; its plots go to an img/ folder beside it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAGE = HERE.parent / "docs" / "benchmarks.md"

# name -> (script, arguments, what it measures)
BENCHMARKS: dict[str, tuple[str, list[str], str]] = {
    "model": ("bench_model.py", [], "encode_video vs plain open_clip frames forward, ViT-B/32, 12 frames, batch 4, CPU fp32"),
    "decode": ("bench_decode.py", [], "decoding: 12 frames at 224^2 from 10 s 480p clips, videos/s per worker count"),
    "export": ("bench_export.py", [], "ViT-B/32 video encoder (12 frames, batch 4) and text encoder (batch 64): PyTorch vs ONNX "
               "Runtime fp32/int8 vs plain CLIP mean-pooled frames (PyTorch fp32), CPU, interleaved"),
    "train": ("bench_train.py", ["--baseline"], "training step time and peak memory, ViT-B/32, 12 frames, CPU"),
    "embed": ("bench_embed.py", ["--workdir", str(HERE / ".work")], "dgl embed pipeline vs encoder alone on pre-decoded frames"),
    "query": ("bench_query.py", ["--workdir", str(HERE / ".work")], "dgl query latency: text encoder fp32/int8, exact top-10 over "
              "float32/float16 rows, in process and as a whole process, interleaved"),
    "index": ("bench_index.py", ["--rows", "1000000", "--kinds", "flat", "ivf-flat", "ivf-pq", "hnsw", "--nprobe", "1",
                                 "4", "8", "64", "--refine", "4", "8", "--ef-search", "64", "128", "512", "--build-threads",
                                 "2"],
              "FAISS index recall@10 and latency on 1M clustered 512-d vectors shaped like video embeddings, held-out "
              "queries, library defaults and swept nprobe / refine / efSearch"),
    "serve": ("bench_serve.py", [], "dgl serve latency under bounded local load"),
    "ray": ("bench_ray.py", [], "Ray embedding throughput, 1 vs 2 CPU workers"),
    "segments": ("bench_segments.py", ["--dir", str(HERE / ".work" / "segments"), "--workdir", str(HERE / ".work"),
                                       "--pipeline", "--rss-minutes", "2", "6", "12"],
                 "segmented dgl embed (10 s windows every 5 s, 12 frames): window decode strategies and segmented "
                 "embed vs encoder alone on a 10-min 640x360 clip, peak RSS on 2, 6 and 12 min 1080p clips"),
}


def run(name: str) -> dict:
    script, args, _ = BENCHMARKS[name]
    print(f"running {script} ...", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    result = _last_json(proc.stdout)
    if proc.returncode != 0 or result is None:
        result = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "returncode": proc.returncode}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _last_json(stdout: str) -> dict | None:
    """The last JSON object printed: the whole output (pretty-printed) or the last line that parses."""
    for candidate in [stdout, *reversed(stdout.splitlines())]:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _flatten(data: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(data, dict):
        return [pair for key, value in data.items() for pair in _flatten(value, f"{prefix}{key}." if prefix or key else "")]
    if isinstance(data, list):
        return [pair for i, value in enumerate(data) for pair in _flatten(value, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), data)]


# headline numbers: benchmark -> [(dotted key in its JSON, label)]
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "model": [("dgl_overhead_percent", "DGL encode_video overhead over plain CLIP frames (%; target <= 15)"),
              ("dgl_videos_per_s", "DGL ViT-B/32 videos/s, 12 frames, torch fp32")],
    "decode": [("runs.0.videos_per_s", "decode videos/s, 1 worker (480p, 12 frames)"),
               ("runs.1.videos_per_s", "decode videos/s, 2 workers")],
    "export": [("video_per_s.onnxruntime_fp32.speedup", "ORT fp32 / PyTorch video speed-up (target >= 1.5)"),
               ("video_per_s.onnxruntime_int8.speedup", "ORT int8 / PyTorch video speed-up (target >= 2.5)"),
               ("int8_vs_clip_meanpool", "ORT int8 DGL / plain CLIP mean-pooled frames (PyTorch fp32), videos/s"),
               ("video_per_s.dgl_encoder_int8.speedup", "DGL video encoder as `dgl embed` runs it on CPU (int8, a "
                "single-threaded video per core at once) / PyTorch"),
               ("dgl_encoder_int8_vs_clip_meanpool", "same / plain CLIP mean-pooled frames (PyTorch fp32), videos/s"),
               ("video_per_s.onnxruntime_int8.per_s", "DGL videos/s, ORT int8, 12 frames, batch 4"),
               ("video_per_s.clip_meanpool_torch_fp32.per_s", "plain CLIP mean-pooled videos/s, PyTorch fp32"),
               ("video_per_s.onnxruntime_int8.cosine", "ORT int8 cosine to fp32 (target >= 0.99)"),
               ("text_per_s.onnxruntime_int8.per_s", "text encoder texts/s, ORT int8, batch 64")],
    "train": [("results.0.step_s", "training step s, ViT-B/32, batch 4, CPU"),
              ("results.1.step_s", "same step, eager loop-per-frame baseline"),
              ("results.0.peak_rss_gib", "peak RSS GiB")],
    "embed": [("efficiency_percent", "dgl embed pipeline / encoder-only rate (%; target >= 90)"),
              ("pipeline_videos_per_s", "dgl embed videos/s (ViT-B/32 int8)"),
              ("peer.dgl_vs_clip_meanpool", "dgl embed (auto precision) / plain-CLIP mean-pool pipeline (PyTorch fp32), "
               "videos/s end to end, same settings (target >= 2.5)"),
              ("peer.dgl_vs_clip_meanpool_best_batch", "same, the plain-CLIP pipeline at its fastest batch (4)"),
              ("peer.dgl_vs_clip_meanpool_side_by_side", "same, the plain-CLIP pipeline scheduled like dgl embed (a "
               "single-threaded video per core at once)"),
              ("peer.videos_per_s.dgl_embed_auto", "dgl embed videos/s, auto precision, peer run"),
              ("peer.videos_per_s.clip_meanpool_torch_fp32", "plain-CLIP mean-pool pipeline videos/s, peer run (batch 16)"),
              ("peer.videos_per_s.clip_meanpool_torch_fp32_best_batch", "plain-CLIP mean-pool pipeline videos/s, batch 4"),
              ("peer.videos_per_s.clip_meanpool_torch_fp32_side_by_side", "plain-CLIP mean-pool pipeline videos/s, "
               "side by side"),
              ("peer.dgl_auto_vs_fp32_cosine.min", "dgl embed auto-precision rows: min cosine to fp32 rows")],
    "query": [("auto_precision", "precision `auto` picks on CPU for this export"),
              ("query_100000.text_int8_rows_float32.p50_ms", "query p50 ms at 100k float32 rows: int8 text + exact top-10 "
               "(target <= 20)"),
              ("query_100000.text_int8_rows_float32.p99_ms", "query p99 ms at 100k float32 rows (target <= 30)"),
              ("query_100000.text_int8_rows_float16.p50_ms", "query p50 ms at 100k float16 rows (target <= 20)"),
              ("query_100000.text_int8_rows_float16.p99_ms", "query p99 ms at 100k float16 rows (target <= 30)"),
              ("query_1000000.text_int8_rows_float16.p50_ms", "query p50 ms at 1M float16 rows (target <= 60)"),
              ("query_1000000.text_int8_rows_float32.p50_ms", "query p50 ms at 1M float32 rows (target <= 60)"),
              ("exact_top10.100000.float32.p50_ms", "exact top-10 p50 ms, 100k float32 rows"),
              ("exact_top10.100000.float16.p50_ms", "exact top-10 p50 ms, 100k float16 rows"),
              ("exact_top10.1000000.float16.p50_ms", "exact top-10 p50 ms, 1M float16 rows"),
              ("exact_top10.1000000.float32.p50_ms", "exact top-10 p50 ms, 1M float32 rows (float16 scan copy + exact "
               "re-score)"),
              ("exact_top10.1000000.float32_without_scan_copy.p50_ms", "exact top-10 p50 ms, 1M float32 rows, "
               "float32 scan only"),
              ("process_100000.int8.p50_s", "whole `dgl query` process s, int8 (target <= 2)")],
    "index": [("runs.1.recall_at_10", "IVF-Flat recall@10, 1M clustered vectors, defaults (target >= 0.95)"),
              ("runs.1.p50_ms", "IVF-Flat p50 ms (target <= 5)")],
    "serve": [("runs.exact.p50_ms", "dgl serve p50 ms, 100k exact, 8 concurrent"), ("runs.exact.p99_ms", "p99 ms")],
    "ray": [("runs.0.videos_per_s", "Ray embed videos/s, 1 CPU"), ("runs.1.videos_per_s", "Ray embed videos/s, 2 CPUs")],
    "segments": [("pipeline.efficiency_percent", "segmented dgl embed / encoder-only windows/s (%; target >= 90)"),
                 ("pipeline.pipeline_windows_per_s", "segmented dgl embed windows/s, 10-min clip (ViT-B/32, --precision auto)"),
                 ("runs.0.windows_per_s", "window decode windows/s, one forward pass (10-min 640x360)"),
                 ("rss.2min.decoder_peak_rss_mb", "decoder peak RSS MB, 2-min 1080p file"),
                 ("rss.6min.decoder_peak_rss_mb", "decoder peak RSS MB, 6-min 1080p file"),
                 ("rss.2min.job_process_peak_rss_mb", "embed process peak RSS MB (model included), 2-min 1080p file"),
                 ("rss.6min.job_process_peak_rss_mb", "embed process peak RSS MB (model included), 6-min 1080p file"),
                 ("rss.12min.decoder_peak_rss_mb", "decoder peak RSS MB, 12-min 1080p file"),
                 ("rss.12min.job_process_peak_rss_mb", "embed process peak RSS MB (model included), 12-min 1080p file")],
}


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary(results: dict[str, dict]) -> str:
    rows = []
    for name, picks in HEADLINES.items():
        flat = dict(_flatten(results.get(name, {})))
        rows += [f"| {name} | {label} | {_fmt(flat[key])} |" for key, label in picks if key in flat]
    return "| benchmark | measure | value |\n|---|---|---|\n" + "\n".join(rows)


def render() -> str:
    results = load_results()
    parts = [_summary(results), '<details markdown="1"><summary>all measured values</summary>']
    for name, (script, _, what) in BENCHMARKS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        machine = result.pop("machine", None)
        rows = [f"| {key} | {_fmt(value)} |" for key, value in _flatten(result) if key != "benchmark"]
        where = f" — {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {machine['date']}" if isinstance(machine, dict) else ""
        parts.append(f"**{name}** (`benchmarks/{script}`): {what}{where}\n\n| measure | value |\n|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts + ["</details>", render_gpu()])


NOT_MEASURED = "GPU: not measured here (no GPU machine was lent; `make gpu-check` prepares the run)"
NOT_INSTALLED = "not installed"
VIDEO_BATCHES = (1, 8, 32, 128)
# inference rows of the GPU check: key in gpu_check.json -> label
GPU_INFERENCE = [("torch_eager_fp32_cuda", "torch eager fp32"), ("torch_autocast_fp16_cuda", "torch autocast fp16"),
                 ("torch_autocast_bf16_cuda", "torch autocast bf16"), ("onnxruntime_cpu_fp32", "onnxruntime CPU fp32 (reference)")]
GPU_RUNTIMES = [("onnxruntime_cuda", "onnxruntime CUDA"), ("tensorrt", "TensorRT")]


def _step(gpu: dict, name: str) -> dict:
    step = gpu.get("steps", {}).get(name)
    return step if isinstance(step, dict) else {}


def _cell(value: object, suffix: str = "") -> str:
    return "-" if value is None else f"{_fmt(value)}{suffix}"


def _gpu_header(gpu: dict) -> str:
    env = _step(gpu, "env").get("result", {})
    card = env.get("gpu") or {}
    torch_info = env.get("torch") or {}
    name = card.get("name") or "unknown GPU"
    smi = str(env.get("nvidia_smi") or "").splitlines()
    driver = smi[0].split(",")[1].strip() if smi and smi[0].count(",") >= 2 else None
    facts = [f"torch {torch_info['version']}" if torch_info.get("version") else None,
             f"CUDA {torch_info['cuda']}" if torch_info.get("cuda") else None,
             f"driver {driver}" if driver else None,
             f"{card['memory_gib']} GiB" if card.get("memory_gib") else None]
    versions = ", ".join(f for f in facts if f)
    when = gpu.get("finished_utc") or gpu.get("started_utc")
    return (f"**GPU** (`make gpu-check`, benchmarks/gpu_check/): {name}" + (f" — {versions}" if versions else "")
            + (f", {when}" if when else "") + f"; check mode {gpu.get('mode', '?')}")


def _gpu_parity(gpu: dict) -> list[str]:
    result = _step(gpu, "parity").get("result", {})
    rows = []
    for latent in ("transformer", "linear"):
        for role in ("text", "video"):
            found = result.get(latent, {}).get(role, {})
            for dtype in ("fp16", "bf16"):
                row = found.get(f"{dtype}_vs_fp32")
                if isinstance(row, dict) and "min_cosine" in row:
                    rows.append(f"| autocast parity | {role} tower, {latent} latent, {dtype} vs fp32: min cosine | "
                                f"{_fmt(row['min_cosine'])} |")
    return rows or [f"| autocast parity | cosine per tower and dtype | not measured ({_step(gpu, 'parity').get('status', 'no step')}) |"]


def _gpu_train(gpu: dict) -> list[str]:
    rows = []
    for batch in (32, 128):
        step = _step(gpu, f"train_b{batch}")
        impls = {r.get("impl"): r for r in step.get("result", {}).get("results", []) if isinstance(r, dict)}
        if not impls:
            rows.append(f"| training, batch {batch} | s/step, peak memory | not measured ({step.get('status', 'no step')}) |")
            continue
        for impl, label in (("dgl-deploy", "dgl-deploy"), ("eager baseline", "eager baseline")):
            r = impls.get(impl)
            if r is None:
                continue
            mem = r.get("peak_gpu_mem_gib", r.get("peak_rss_gib"))
            rows.append(f"| training, batch {batch} | {label}: s/step; peak GPU memory GiB | "
                        f"{_cell(r.get('step_s'))}; {_cell(mem)} |")
        speedup = step.get("result", {}).get("speedup_vs_eager")
        if speedup is not None:
            rows.append(f"| training, batch {batch} | speed-up over eager baseline | {_fmt(speedup)}x |")
    return rows


def _inference_row(label: str, row: dict) -> str:
    cells = [_cell(row.get(f"videos_per_s_b{b}")) for b in VIDEO_BATCHES]
    return f"| {label} | " + " | ".join(cells) + f" | {_cell(row.get('texts_per_s'))} |"


def _gpu_inference(gpu: dict) -> list[str]:
    results = _step(gpu, "inference").get("result", {}).get("results", {})
    runtimes_step = _step(gpu, "runtimes")
    runtimes = runtimes_step.get("result", {}).get("results", {})
    text_batch = _step(gpu, "inference").get("result", {}).get("text_batch")
    head = ("| implementation | " + " | ".join(f"videos/s b{b}" for b in VIDEO_BATCHES)
            + f" | texts/s{f' (batch {text_batch})' if text_batch else ''} |\n|---|" + "---|" * (len(VIDEO_BATCHES) + 1))
    lines = [head]
    blank = " | ".join(["-"] * len(VIDEO_BATCHES))
    for key, label in GPU_INFERENCE:
        row = results.get(key)
        lines.append(_inference_row(label, row) if isinstance(row, dict)
                     else f"| {label} | {blank} | not measured |")
    for key, label in GPU_RUNTIMES:
        row = runtimes.get(key)
        if isinstance(row, dict) and any(k.startswith("videos_per_s_b") or k == "texts_per_s" for k in row):
            lines.append(_inference_row(f"{label} {row.get('precision', '')}".strip(), row))
        else:  # never a number that was not measured
            why = (row or {}).get("status") if isinstance(row, dict) else None
            lines.append(f"| {label} | {' | '.join([why or NOT_INSTALLED] * len(VIDEO_BATCHES))} | {why or NOT_INSTALLED} |")
    return lines


def render_gpu(path: Path | None = None) -> str:
    """The page's GPU part from results/gpu.json (the GPU check's gpu_check.json), or one line without it."""
    path = path or RESULTS / "gpu.json"
    if not path.is_file():
        return NOT_MEASURED
    gpu = json.loads(path.read_text())
    table = ["| part | measure | value |", "|---|---|---|", *_gpu_parity(gpu), *_gpu_train(gpu)]
    return "\n\n".join([_gpu_header(gpu), "\n".join(table),
                         "Inference, ViT-B/32, 12 frames (videos/s per batch size; texts/s):",
                         "\n".join(_gpu_inference(gpu))])


def store_gpu(source: Path) -> Path:
    """Copy a GPU check's gpu_check.json to results/gpu.json (checked to be one first)."""
    data = json.loads(source.read_text())
    if not isinstance(data, dict) or "steps" not in data:
        raise SystemExit(f"{source}: not a gpu_check.json (no 'steps')")
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / "gpu.json"
    shutil.copyfile(source, target)
    return target


# the headline results and their targets: (benchmark, dotted key, result, comparison, target)
TARGETS: list[tuple[str, str, str, str, float]] = [
    ("embed", "peer.dgl_vs_clip_meanpool", "`dgl embed` (auto precision) / the plain-CLIP pipeline (PyTorch fp32), "
     "videos/s end to end, same settings", ">=", 2.5),
    ("export", "video_per_s.onnxruntime_int8.speedup", "ONNX Runtime int8 video encoder / PyTorch eager", ">=", 2.5),
    ("export", "video_per_s.onnxruntime_fp32.speedup", "ONNX Runtime fp32 video encoder / PyTorch eager", ">=", 1.5),
    ("export", "video_per_s.onnxruntime_int8.cosine", "int8 video embeddings: cosine to fp32", ">=", 0.99),
    ("query", "query_100000.text_int8_rows_float32.p50_ms", "one-text query at 100k rows, p50 ms (loaded process)",
     "<=", 20),
    ("query", "query_100000.text_int8_rows_float32.p99_ms", "one-text query at 100k rows, p99 ms", "<=", 30),
    ("query", "query_1000000.text_int8_rows_float32.p50_ms", "one-text query at 1M rows, p50 ms", "<=", 60),
    ("query", "process_100000.int8.p50_s", "a whole `dgl query` process at 100k rows, s", "<=", 2),
    ("embed", "efficiency_percent", "`dgl embed` pipeline / encoder-only rate, %", ">=", 90),
    ("segments", "pipeline.efficiency_percent", "segmented `dgl embed` / encoder-only windows/s, %", ">=", 90),
    ("decode", "long.floor_over_ours", "window decoding: single-pass floor time / ours (1 = at the floor)", ">=", 0.8),
    ("model", "dgl_overhead_percent", "DGL encode_video overhead over plain CLIP frames, %", "<=", 15),
    ("index", "runs.1.recall_at_10", "IVF-Flat recall@10 at 1M clustered rows, default settings", ">=", 0.95),
    ("index", "runs.1.p50_ms", "IVF-Flat single-query p50 ms at 1M clustered rows, default settings", "<=", 5),
]

INTRO = """\
Measured with `make bench` (`benchmarks/run_all.py` reruns every script, stores its JSON in `benchmarks/results/`
and rewrites this page and its plots) on this project's machines: 2 CPU cores (x86_64: AVX2, or AVX-512 VNNI where
the notes below say so), no GPU. Models are random-init (speed does not depend on the weights). Comparisons are
interleaved A/B runs, medians; the load average and the date of each run are in its JSON. The runs on these shared
2-core machines vary by up to 20 % between repetitions (seconds per run in the JSON). GPU rows come from
`make gpu-check` (`run_all.py --gpu gpu_check.json`, see [GPU check](gpu-check.md)). Earlier results are in
`CHANGELOG.md`."""

# the page's hand-written part: what the numbers mean (why, not history: that goes to CHANGELOG.md)
NOTES = HERE / "notes.md"


def _met(value: object, op: str, target: float) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return "yes" if (value >= target if op == ">=" else value <= target) else "**no**"


def _targets(results: dict[str, dict]) -> str:
    rows = []
    for name, key, label, op, target in TARGETS:
        flat = dict(_flatten(results.get(name, {})))
        if key in flat:
            value = flat[key]
            rows.append(f"| {label} | {_fmt(value)} | {op.replace('>=', '≥').replace('<=', '≤')} {_fmt(target)} | "
                        f"{_met(value, op, target)} | `{name}` |")
    return "| result | measured | target | met | benchmark |\n|---|---|---|---|---|\n" + "\n".join(rows)


def _get(flat: dict[str, object], key: str) -> float | None:
    value = flat.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bar_labels(ax, bars, values: list[float], fmt: str = "{:.3g}") -> None:
    ax.margins(y=0.12)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")


def _plot_embed(plt, results: dict[str, dict]):
    """dgl embed vs the plain-CLIP pipeline, videos/s end to end (embed.json, peer)."""
    flat = dict(_flatten(results.get("embed", {})))
    series = [("dgl embed\n(auto precision)", "peer.videos_per_s.dgl_embed_auto"),
              ("plain CLIP\n(batch 16)", "peer.videos_per_s.clip_meanpool_torch_fp32"),
              ("plain CLIP\n(fastest batch)", "peer.videos_per_s.clip_meanpool_torch_fp32_best_batch"),
              ("plain CLIP\n(side by side)", "peer.videos_per_s.clip_meanpool_torch_fp32_side_by_side")]
    found = [(label, _get(flat, key)) for label, key in series if _get(flat, key) is not None]
    if len(found) < 2 or not found[0][0].startswith("dgl"):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    values = [v for _, v in found]
    bars = ax.bar([label for label, _ in found], values, color=["#2a7ab9"] + ["#b0b0b0"] * (len(found) - 1))
    _bar_labels(ax, bars, values)
    ax.set_ylabel("videos/s")
    ax.set_title(f"End to end on {flat.get('peer.videos', '?')} videos, ViT-B/32, 12 frames (higher is better)",
                 fontsize=9)
    return fig


def _plot_query(plt, results: dict[str, dict]):
    """Query latency against rows (query.json)."""
    flat = dict(_flatten(results.get("query", {})))
    sizes = sorted({int(key.split(".")[0].split("_")[1]) for key in flat if key.startswith("query_")
                    and key.split(".")[0].split("_")[1].isdigit()})
    series = [("query, float32 rows (int8 text + exact top-10)", "query_{n}.text_int8_rows_float32.p50_ms", "o-"),
              ("query, float16 rows", "query_{n}.text_int8_rows_float16.p50_ms", "s-"),
              ("exact top-10 only, float32 rows", "exact_top10.{n}.float32.p50_ms", "o--"),
              ("exact top-10 only, float32 scan without the float16 copy", "exact_top10.{n}.float32_without_scan_copy.p50_ms",
               "x:")]
    lines = []
    for label, key, style in series:
        points = [(n, _get(flat, key.format(n=n))) for n in sizes]
        points = [(n, v) for n, v in points if v is not None]
        if points:
            lines.append((label, style, points))
    if not lines or len(sizes) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, style, points in lines:
        ax.plot([n for n, _ in points], [v for _, v in points], style, label=label)
    targets = [(n, t) for n, t in ((100_000, _get(flat, "target_query_p50_ms_at_100k")),
                                   (1_000_000, _get(flat, "target_query_ms_at_1m"))) if t is not None]
    if targets:
        ax.plot([n for n, _ in targets], [t for _, t in targets], "r_", markersize=18, markeredgewidth=2,
                label="target (p50)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sizes, [f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M" for n in sizes])
    ax.set_xlabel("rows in the set")
    ax.set_ylabel("p50 ms (lower is better)")
    ax.set_title("One-text query in a loaded process, 512-d rows, 2 CPU cores", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _plot_window_decode(plt, results: dict[str, dict]):
    """Window decoding against the single-pass floor (decode.json `long`, else segments.json `runs`)."""
    decode = dict(_flatten(results.get("decode", {})))
    long_part = [(label, _get(decode, f"long.median_s.{key}")) for key, label in
                 (("ours", "window decoding\n(dgl embed --window)"), ("floor", "single-pass floor\n(every frame once)"),
                  ("timeline", "timeline pass\n(packets only)"))]
    long_part = [(label, v) for label, v in long_part if v is not None]
    runs = results.get("segments", {}).get("runs")
    names = {"forward": "window decoding\n(one forward pass)", "every_frame": "single-pass floor\n(every frame once)",
             "seek_per_window": "a seek per window"}
    segment_part = [(names.get(run.get("strategy"), str(run.get("strategy"))), float(run["seconds"]))
                    for run in runs or [] if isinstance(run, dict) and isinstance(run.get("seconds"), (int, float))]
    panels = [(title, data) for title, data in (
        (f"decode.json: {decode.get('long.clip.size', 'long clip')}, windows of {decode.get('long.window', '?')} s",
         long_part), (f"segments.json: {results.get('segments', {}).get('clip', 'long clip')}", segment_part))
        if len(data) >= 2]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 if len(panels) == 1 else 9.6, 3.6), squeeze=False)
    for ax, (title, data) in zip(axes[0], panels, strict=True):
        values = [v for _, v in data]
        bars = ax.bar([label for label, _ in data], values,
                      color=["#2a7ab9" if label.startswith("window") else "#b0b0b0" for label, _ in data])
        _bar_labels(ax, bars, values, "{:.3g} s")
        ax.set_ylabel("seconds (lower is better)")
        ax.set_title(title, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    return fig


def _plot_int8(plt, results: dict[str, dict]):
    """int8 against fp32: speed-up over PyTorch eager and cosine to fp32 (export.json)."""
    flat = dict(_flatten(results.get("export", {})))
    speed = [(f"{tower}\n{label}", _get(flat, f"{tower}_per_s.{key}.speedup"))
             for tower in ("video", "text")
             for key, label in (("onnxruntime_fp32", "fp32"), ("onnxruntime_int8", "int8"),
                                ("dgl_encoder_int8", "int8, as dgl embed"))]
    speed = [(label, v) for label, v in speed if v is not None]
    cosine = [(f"{tower} int8", _get(flat, f"{tower}_per_s.onnxruntime_int8.cosine")) for tower in ("video", "text")]
    cosine = [(label, v) for label, v in cosine if v is not None]
    if not speed:
        return None
    fig, axes = plt.subplots(1, 2 if cosine else 1, figsize=(9.6 if cosine else 6.4, 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]} if cosine else None)
    ax = axes[0][0]
    values = [v for _, v in speed]
    bars = ax.bar([label for label, _ in speed], values,
                  color=["#2a7ab9" if "int8" in label else "#b0b0b0" for label, _ in speed])
    _bar_labels(ax, bars, values, "{:.2f}x")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speed-up over PyTorch eager fp32")
    ax.set_title("ONNX Runtime on CPU, ViT-B/32 (higher is better)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    if cosine:
        ax = axes[0][1]
        values = [v for _, v in cosine]
        bars = ax.bar([label for label, _ in cosine], values, color="#2a7ab9")
        _bar_labels(ax, bars, values, "{:.4f}")
        ax.set_ylim(min(0.99, min(values) - 0.001), 1.0)
        ax.axhline(0.999, color="red", linewidth=0.8, linestyle="--")
        ax.set_title("cosine to fp32\n(red: auto's 0.999)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    return fig


# plots of the page: file name under img/ -> (title, caption, function)
PLOTS: dict[str, tuple[str, str, object]] = {
    "bench_embed.png": ("dgl embed vs the plain-CLIP pipeline", "Videos per second end to end, same videos, decoder, "
                        "batch and threads (`benchmarks/bench_embed.py`).", _plot_embed),
    "bench_query.png": ("Query latency against rows", "p50 of a one-text query in a loaded process, and of the "
                        "exact top-10 search alone (`benchmarks/bench_query.py`).", _plot_query),
    "bench_window_decode.png": ("Window decoding against the single-pass floor", "Decoding every window of a long "
                                "video, against decoding each of its frames once in order (the floor) "
                                "(`benchmarks/bench_decode.py`, `benchmarks/bench_segments.py`).", _plot_window_decode),
    "bench_int8.png": ("int8 and fp32: speed and cosine", "Encoder speed-up over PyTorch eager and the int8 "
                       "embeddings' cosine to fp32 (`benchmarks/bench_export.py`).", _plot_int8),
}


def load_results() -> dict[str, dict]:
    return {name: json.loads((RESULTS / f"{name}.json").read_text())
            for name in BENCHMARKS if (RESULTS / f"{name}.json").exists()}


def write_plots(img: Path, results: dict[str, dict] | None = None) -> list[str]:
    """Draw the page's plots (PNG, matplotlib's Agg backend) into `img`; a plot whose data is missing is skipped
    (and an old file of it removed). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results() if results is None else results
    img.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (_, _, draw) in PLOTS.items():
        fig = draw(plt, results)
        if fig is None:
            (img / filename).unlink(missing_ok=True)
            continue
        fig.tight_layout()
        fig.savefig(img / filename, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(filename)
    return written


GENERATED = ("<!-- generated by benchmarks/run_all.py from benchmarks/results/*.json; do not edit: "
             "`make bench` reruns the benchmarks and rewrites it -->")


def render_page(img: Path | None = None) -> str:
    """The docs' benchmarks page: headline results with targets, the plots found in `img`, every value, GPU."""
    img = img or PAGE.parent / "img"
    results = load_results()
    plots = [f"### {title}\n\n![{title}](img/{filename})\n\n{caption}"
             for filename, (title, caption, _) in PLOTS.items() if (img / filename).is_file()]
    parts = ["# Benchmarks", GENERATED, INTRO, "## Headline results", _targets(results)]
    if plots:
        parts += ["## Plots", *plots]
    if NOTES.is_file():
        parts += ["## Notes", re.sub(r"^<!--.*?-->\s*", "", NOTES.read_text(), flags=re.S).strip()]
    parts += ["## All headline numbers", render(), ""]
    return "\n\n".join(parts)


def write_page(page: Path | None = None) -> Path:
    """Draw the plots (when matplotlib is installed) and write the page."""
    page = page or PAGE
    try:
        write_plots(page.parent / "img")
    except ImportError:
        print("matplotlib is not installed (pip install 'dgl-deploy[bench]'): the plots were not redrawn",
              file=sys.stderr)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_page(page.parent / "img"))
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="Rerun only these.")
    parser.add_argument("--render", action="store_true", help="Only rewrite the page and plots from stored results.")
    parser.add_argument("--gpu", type=Path, metavar="GPU_CHECK_JSON",
                        help="Store this gpu_check.json as results/gpu.json and render (reruns nothing).")
    parser.add_argument("--page", type=Path, default=PAGE, help="The page to write (default: docs/benchmarks.md).")
    args = parser.parse_args()
    if args.gpu:
        print(f"stored {store_gpu(args.gpu)}", file=sys.stderr)
    if not args.render and (args.only or not args.gpu):
        for name in args.only or BENCHMARKS:
            print(json.dumps(run(name)))
    print(f"wrote {write_page(args.page)}", file=sys.stderr)


if __name__ == "__main__":
    main()
