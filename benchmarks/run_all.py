"""Rerun every benchmark script and regenerate the README's benchmark section from their JSON output.

Each script prints one JSON object on its last stdout line; it is stored in benchmarks/results/<name>.json
and rendered between the `<!-- bench:start -->` / `<!-- bench:end -->` markers of README.md, so the
numbers in the README always come from the code as it is. `--only NAME ...` reruns some and keeps the
stored results of the others; `--render` only rewrites the README from the stored results.
"""

from __future__ import annotations

import argparse
import json
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
               ("video_per_s.onnxruntime_int8.per_s", "DGL videos/s, ORT int8, 12 frames, batch 4"),
               ("video_per_s.clip_meanpool_torch_fp32.per_s", "plain CLIP mean-pooled videos/s, PyTorch fp32"),
               ("video_per_s.onnxruntime_int8.cosine", "ORT int8 cosine to fp32 (target >= 0.99)"),
               ("text_per_s.onnxruntime_int8.per_s", "text encoder texts/s, ORT int8, batch 64")],
    "train": [("results.0.step_s", "training step s, ViT-B/32, batch 4, CPU"),
              ("results.1.step_s", "same step, eager loop-per-frame baseline"),
              ("results.0.peak_rss_gib", "peak RSS GiB")],
    "embed": [("efficiency_percent", "dgl embed pipeline / encoder-only rate (%; target >= 90)"),
              ("pipeline_videos_per_s", "dgl embed videos/s (ViT-B/32 int8)")],
    "query": [("query_100000.text_int8_rows_float32.p50_ms", "query p50 ms at 100k: int8 text + exact top-10 (target <= 20)"),
              ("query_100000.text_int8_rows_float32.p99_ms", "query p99 ms at 100k (int8 text, float32 rows)"),
              ("exact_top10.100000.float32.p50_ms", "exact top-10 p50 ms, 100k float32 rows"),
              ("exact_top10.100000.float16.p50_ms", "exact top-10 p50 ms, 100k float16 rows"),
              ("exact_top10.1000000.float16.p50_ms", "exact top-10 p50 ms, 1M float16 rows"),
              ("process_100000.int8.p50_s", "whole `dgl query` process s, int8 (target <= 2)")],
    "index": [("runs.1.recall_at_10", "IVF-Flat recall@10, 1M random vectors"), ("runs.1.p50_ms", "IVF-Flat p50 ms")],
    "serve": [("runs.exact.p50_ms", "dgl serve p50 ms, 100k exact, 8 concurrent"), ("runs.exact.p99_ms", "p99 ms")],
    "ray": [("runs.0.videos_per_s", "Ray embed videos/s, 1 CPU"), ("runs.1.videos_per_s", "Ray embed videos/s, 2 CPUs")],
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
    return "\n\n".join(parts + ["</details>"])


def write_readme(section: str) -> None:
    text = README.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{section}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="Rerun only these.")
    parser.add_argument("--render", action="store_true", help="Only rewrite the README from stored results.")
    args = parser.parse_args()
    if not args.render:
        for name in args.only or BENCHMARKS:
            print(json.dumps(run(name)))
    write_readme(render())


if __name__ == "__main__":
    main()
