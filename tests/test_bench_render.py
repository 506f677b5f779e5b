"""benchmarks/run_all.py renders the docs' benchmarks page (headline results with targets, plots, every value, the
GPU part from a small fake gpu_check.json) without running a benchmark; the page in the repository is the one the
stored JSON renders to."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("run_all_under_test", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "results"
    results.mkdir()
    (results / "model.json").write_text(json.dumps({"dgl_videos_per_s": 1.5, "dgl_overhead_percent": 3.0}))
    monkeypatch.setattr(module, "RESULTS", results)
    monkeypatch.setattr(module, "PAGE", tmp_path / "docs" / "benchmarks.md")  # never the real one
    return module


def fake_gpu_check() -> dict:
    inference = {f"videos_per_s_b{b}": 100.0 * b for b in (1, 8, 32, 128)} | {"texts_per_s": 4321.5}
    train = {"results": [{"impl": "dgl-deploy", "step_s": 0.25, "peak_gpu_mem_gib": 7.5},
                         {"impl": "eager baseline", "step_s": 0.75, "peak_gpu_mem_gib": 30.25}],
             "speedup_vs_eager": 3.0}
    parity = {latent: {role: {"cuda_fp32_vs_cpu_fp32": {"min_cosine": 0.99999},
                              "fp16_vs_fp32": {"min_cosine": 0.99987}, "bf16_vs_fp32": {"min_cosine": 0.99912}}
                       for role in ("text", "video")} for latent in ("transformer", "linear")}
    return {"check": "dgl-deploy gpu-check", "mode": "gpu", "finished_utc": "2025-01-02T03:04:05+00:00", "steps": {
        "env": {"status": "ok", "result": {
            "gpu": {"name": "NVIDIA Fake 80GB", "memory_gib": 79.1},
            "torch": {"version": "2.11.0+cu130", "cuda": "13.0"},
            "nvidia_smi": "NVIDIA Fake 80GB, 580.65.06, 81559 MiB"}},
        "parity": {"status": "ok", "result": parity},
        "train_b32": {"status": "ok", "result": train},
        "train_b128": {"status": "timeout", "result": {}},
        "inference": {"status": "ok", "result": {"text_batch": 256, "results": {
            "torch_eager_fp32_cuda": inference, "torch_autocast_fp16_cuda": inference,
            "torch_autocast_bf16_cuda": inference,
            "onnxruntime_cpu_fp32": {"videos_per_s_b1": 2.5, "videos_per_s_b8": 3.5, "texts_per_s": 99.0}}}},
        "runtimes": {"status": "not_installed", "result": {"results": {
            "onnxruntime_cuda": {"status": "not installed"}, "tensorrt": {"status": "not installed"}}}},
    }}


def test_without_gpu_json_one_line(run_all) -> None:
    assert run_all.render_gpu() == run_all.NOT_MEASURED
    section = run_all.render()
    assert section.rstrip().endswith(run_all.NOT_MEASURED)
    assert section.count("GPU: not measured here") == 1


def test_gpu_part(run_all, tmp_path: Path) -> None:
    source = tmp_path / "gpu_check.json"
    source.write_text(json.dumps(fake_gpu_check()))
    assert run_all.store_gpu(source) == run_all.RESULTS / "gpu.json"
    text = run_all.render_gpu()
    assert "NVIDIA Fake 80GB" in text and "torch 2.11.0+cu130" in text and "CUDA 13.0" in text
    assert "driver 580.65.06" in text
    assert "| autocast parity | video tower, transformer latent, bf16 vs fp32: min cosine | 0.9991 |" in text
    assert text.count("| autocast parity |") == 8
    assert "| training, batch 32 | dgl-deploy: s/step; peak GPU memory GiB | 0.25; 7.5 |" in text
    assert "| training, batch 32 | eager baseline: s/step; peak GPU memory GiB | 0.75; 30.25 |" in text
    assert "| training, batch 32 | speed-up over eager baseline | 3x |" in text
    assert "| training, batch 128 | s/step, peak memory | not measured (timeout) |" in text
    assert "| torch autocast bf16 | 100 | 800 | 3200 | 1.28e+04 | 4322 |" in text
    assert "| onnxruntime CPU fp32 (reference) | 2.5 | 3.5 | - | - | 99 |" in text
    for label in ("onnxruntime CUDA", "TensorRT"):  # rows without a measurement: never a number
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert row == f"| {label} | " + " | ".join(["not installed"] * 5) + " |"
    assert "GPU: not measured" not in text


def test_measured_runtime_row(run_all, tmp_path: Path) -> None:
    data = fake_gpu_check()
    data["steps"]["runtimes"] = {"status": "ok", "result": {"results": {
        "tensorrt": {"precision": "fp16", "videos_per_s_b1": 500.0, "videos_per_s_b8": 900.0,
                     "videos_per_s_b32": 1000.0, "videos_per_s_b128": 1100.0, "texts_per_s": 20000.0}}}}
    (run_all.RESULTS / "gpu.json").write_text(json.dumps(data))
    text = run_all.render_gpu()
    assert "| TensorRT fp16 | 500 | 900 | 1000 | 1100 | 2e+04 |" in text
    assert "| onnxruntime CUDA | not installed |" in text


def test_cli_gpu_renders_into_a_copy(run_all, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "gpu_check.json"
    source.write_text(json.dumps(fake_gpu_check()))
    page = tmp_path / "copy" / "benchmarks.md"
    monkeypatch.setattr(run_all, "run", lambda name: pytest.fail(f"benchmark {name} was run"))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--gpu", str(source), "--page", str(page)])
    run_all.main()
    text = page.read_text()
    assert text.startswith("# Benchmarks\n") and run_all.GENERATED in text
    assert "NVIDIA Fake 80GB" in text and "| model |" in text
    assert json.loads((run_all.RESULTS / "gpu.json").read_text())["mode"] == "gpu"
    assert not (REPO / "docs" / "benchmarks.md").samefile(page)


def test_headline_targets(run_all) -> None:
    (run_all.RESULTS / "query.json").write_text(json.dumps({"query_100000": {"text_int8_rows_float32": {
        "p50_ms": 12.5, "p99_ms": 31.0}}}))
    table = run_all._targets(run_all.load_results())
    assert "| one-text query at 100k rows, p50 ms (loaded process) | 12.5 | ≤ 20 | yes | `query` |" in table
    assert "| one-text query at 100k rows, p99 ms | 31 | ≤ 30 | **no** | `query` |" in table
    assert "| DGL encode_video overhead over plain CLIP frames, % | 3 | ≤ 15 | yes | `model` |" in table
    assert "1M rows" not in table  # a result that was not measured has no row


def test_plots_skip_missing_data(run_all, tmp_path: Path) -> None:
    """Only the model benchmark is stored: no plot has its data, none is drawn and the page links none."""
    pytest.importorskip("matplotlib")
    img = tmp_path / "img"
    img.mkdir()
    (img / "bench_query.png").write_bytes(b"stale")
    assert run_all.write_plots(img) == []
    assert not (img / "bench_query.png").exists()
    page = run_all.render_page(img)
    assert "## Plots" not in page and "![" not in page and "## Headline results" in page


def test_plots_from_stored_results(tmp_path: Path) -> None:
    """Every plot is drawn from the repository's stored JSON (PNG files)."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("run_all_stored", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_plots(tmp_path)
    assert written == list(module.PLOTS)
    for name in written:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name


def test_page_in_repo_is_rendered_from_the_stored_json() -> None:
    """docs/benchmarks.md and its plots are what `benchmarks/run_all.py --render` makes of benchmarks/results/."""
    spec = importlib.util.spec_from_file_location("run_all_repo", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = REPO / "docs" / "benchmarks.md"
    assert page.read_text() == module.render_page(page.parent / "img"), \
        "docs/benchmarks.md is stale: run `python benchmarks/run_all.py --render` (or `make bench`)"
    for name in module.PLOTS:
        assert (REPO / "docs" / "img" / name).is_file(), f"docs/img/{name} is missing: run run_all.py --render"
