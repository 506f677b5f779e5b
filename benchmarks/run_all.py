"""Rerun every benchmark script and regenerate the README's benchmark section from their JSON output.

Each script prints one JSON object on its last stdout line; it is stored in benchmarks/results/<name>.json
and rendered between the `<!-- bench:start -->` / `<!-- bench:end -->` markers of README.md, so the
numbers in the README always come from the code as it is. `--only NAME ...` reruns some and keeps the
stored results of the others; `--render` only rewrites the README from the stored results.
`--gpu PATH/gpu_check.json` stores the GPU check's output (`make gpu-check`, benchmarks/gpu_check/) as
benchmarks/results/gpu.json (nothing is rerun) and the section gains its "GPU" part; `--readme PATH` writes
another file than README.md (e.g. a copy, to look at the result).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"

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
    "index": ("bench_index.py", ["--rows", "1000000", "--nlist", "1024", "--kinds", "flat", "ivf-flat", "ivf-pq"],
              "FAISS index recall@10 and latency on 1M random 512-d vectors"),
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
    "index": [("runs.1.recall_at_10", "IVF-Flat recall@10, 1M random vectors"), ("runs.1.p50_ms", "IVF-Flat p50 ms")],
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
    results = {name: json.loads((RESULTS / f"{name}.json").read_text())
               for name in BENCHMARKS if (RESULTS / f"{name}.json").exists()}
    parts = [_summary(results), "<details><summary>all measured values</summary>"]
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
    """The README's GPU part from results/gpu.json (the GPU check's gpu_check.json), or one line without it."""
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


def write_readme(section: str, readme: Path | None = None) -> None:
    readme = readme or README
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{section}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="Rerun only these.")
    parser.add_argument("--render", action="store_true", help="Only rewrite the README from stored results.")
    parser.add_argument("--gpu", type=Path, metavar="GPU_CHECK_JSON",
                        help="Store this gpu_check.json as results/gpu.json and render (reruns nothing).")
    parser.add_argument("--readme", type=Path, default=README, help="The file to write (default: README.md).")
    args = parser.parse_args()
    if args.gpu:
        print(f"stored {store_gpu(args.gpu)}", file=sys.stderr)
    if not args.render and (args.only or not args.gpu):
        for name in args.only or BENCHMARKS:
            print(json.dumps(run(name)))
    write_readme(render(), args.readme)


if __name__ == "__main__":
    main()
