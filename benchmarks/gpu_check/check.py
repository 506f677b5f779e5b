"""The GPU check's driver: runs on the GPU machine (run.sh starts it after installing the carried wheels).

    python3 -P check.py run --repo REPO --out OUT --folder FOLDER [--budget 450] [--dry-run | --smoke]

`run` is plain stdlib: it starts every step as its own subprocess under a timeout (taken from one overall
deadline, so a hang costs that step only), and rewrites OUT/gpu_check.json after each step (partial results
survive a kill). Step outputs go to OUT/gpu_check.log. Steps, in order:

  env         versions, GPU, providers, import checks, whether the carried project wheel matches this tree
  pytest      `pytest -m "gpu or tensorrt"` on the test files that hold such tests (tensorrt ones skip here)
  parity      CUDA autocast fp16 / bf16 vs fp32 of both encoders (text, video) of a random-init DGL model,
              both latents; min cosine >= 0.999 (and CUDA fp32 vs CPU fp32 >= 0.9999)
  videos      the carried synthetic mp4s: PyAV decode (needs av on the image) -> CUDA fp32/fp16/bf16 vs CPU fp32
  train_b32   benchmarks/bench_train.py --device cuda --amp bf16 --batch-size 32 --baseline
  train_b128  the same at batch 128
  inference   bench_gpu.py's measurements for torch eager fp32, torch autocast fp16/bf16 (CUDA) and
              onnxruntime CPU fp32 (reference, small batches), plus ORT CPU vs torch CUDA parity
  runtimes    where installed (onnxruntime-gpu, tensorrt: `pip install ".[gpu]"`, run.sh's online mode): onnxruntime
              CUDA (OnnxEncoder(device="cuda"), fp16) and TensorRT (build_engines on a fresh export, TensorRTEncoder)
              videos/s and texts/s; where neither is, recorded "not installed" without starting anything

--dry-run writes the plan only (no torch); --smoke runs every step for real on CPU with dgl-tiny (to test
this file on a machine without a GPU). `step NAME` is the child entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MIN_COSINE = 0.999  # autocast fp16 / bf16 vs fp32
MIN_COSINE_DEVICE = 0.9999  # CUDA fp32 vs CPU fp32
LOG_TAIL_BYTES = 200_000  # per step, in OUT/gpu_check.log
NOT_COVERED = [
    "onnxruntime CUDA execution provider (onnxruntime-gpu is far over the 64 MiB a call can carry)",
    "TensorRT engines (tensorrt is not carried: the -m tensorrt tests skip)",
]

# name, timeout (s), least time worth starting it with (s), needs CUDA
STEPS: list[tuple[str, int, int, bool]] = [
    ("env", 60, 10, False),
    ("pytest", 150, 30, True),
    ("parity", 120, 30, True),
    ("videos", 60, 15, True),
    ("train_b32", 120, 40, True),
    ("train_b128", 150, 60, True),
    ("inference", 180, 60, True),
    ("runtimes", 420, 10, True),
]
CHILD_STEPS = ("env", "parity", "videos", "inference", "runtimes")
RUNTIMES = {"onnxruntime_cuda": "onnxruntime-gpu (CUDAExecutionProvider)", "tensorrt": "tensorrt"}


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic rewrite (a kill mid-write leaves the previous version)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def source_hashes(repo: Path) -> dict[str, str]:
    """sha256 of every file the project wheel is built from (prepare.py writes the same map)."""
    files = [repo / "pyproject.toml"]
    for top in ("dgl_deploy", "training", "export"):
        files += [p for p in (repo / top).rglob("*") if p.is_file() and p.suffix in (".py", ".json")
                  and "__pycache__" not in p.parts]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


# ----------------------------------------------------------------------------------------------- child steps


class StepSettings:
    """What the child steps read from the command line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.repo, self.folder, self.result = Path(args.repo), Path(args.folder), Path(args.result)
        self.smoke = args.smoke
        self.device = "cpu" if args.smoke else "cuda"
        self.model = "dgl-tiny" if args.smoke else "ViT-B-32"
        self.iters = 1 if args.smoke else 10
        self.data: dict[str, Any] = {"model": self.model, "device": self.device}

    def save(self) -> None:
        write_json(self.result, self.data)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _compare(reference, actual) -> dict[str, float]:
    from dgl_deploy.export.parity import compare

    return {k: round(v, 7) for k, v in compare(reference, actual).items()}


def step_env(s: StepSettings) -> bool:
    import importlib.metadata as md

    d = s.data
    d["python"] = platform.python_version()
    d["machine"] = platform.machine()
    names = ["torch", "torchvision", "open_clip_torch", "dgl-deploy", "numpy", "onnx", "onnxruntime",
             "onnxruntime-gpu", "onnxscript", "onnx_ir", "onnxslim", "tensorrt", "av", "pillow", "ftfy", "regex",
             "safetensors", "typer", "rich", "pytest", "pytest-timeout", "timm", "huggingface_hub"]
    versions = {}
    for name in names:
        try:
            dist = md.distribution(name)
            versions[name] = f"{dist.version} ({dist.locate_file('')})"
        except md.PackageNotFoundError:
            versions[name] = None
    d["packages"] = versions
    imports = {}
    for module in ("torch", "torchvision", "open_clip", "dgl_deploy.model.model", "dgl_deploy.export",
                   "dgl_deploy.training.loop", "dgl_deploy.runtime.backends.onnxruntime", "av"):
        try:
            imported = __import__(module, fromlist=["_"])
            imports[module] = f"ok ({Path(imported.__file__).parent})"
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding
            imports[module] = f"FAILED: {type(exc).__name__}: {exc}"
    d["imports"] = imports
    import torch

    d["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        d["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                    "bf16_supported": torch.cuda.is_bf16_supported()}
    with contextlib.suppress(Exception):
        import onnxruntime

        d["onnxruntime_providers"] = onnxruntime.get_available_providers()
    d["tensorrt_importable"] = importlib.util.find_spec("tensorrt") is not None
    with contextlib.suppress(Exception):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        d["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    s.save()
    failed = [m for m, v in imports.items() if v.startswith("FAILED") and m != "av"]
    return not failed


def _encoders(model, device: str, amps: tuple[str | None, ...]):
    from dgl_deploy.runtime.backends.torch_backend import TorchEncoder

    return {amp or "fp32": TorchEncoder(model, "gpu-check", device=device, amp=amp) for amp in amps}


def _parity_rows(s: StepSettings, model, texts: list[str], frames) -> dict[str, Any]:
    """CPU fp32 reference, then CUDA fp32 / fp16 / bf16 (the model is moved to CUDA)."""
    cpu = _encoders(model, "cpu", (None,))["fp32"]
    ref = {"text": cpu.encode_text(texts), "video": cpu.encode_videos(frames)}
    out = {name: {"text": enc.encode_text(texts), "video": enc.encode_videos(frames)}
           for name, enc in _encoders(model, s.device, (None, "fp16", "bf16")).items()}
    rows: dict[str, Any] = {}
    for role in ("text", "video"):
        rows[role] = {f"{s.device}_fp32_vs_cpu_fp32": _compare(ref[role], out["fp32"][role])}
        for amp in ("fp16", "bf16"):
            rows[role][f"{amp}_vs_fp32"] = _compare(out["fp32"][role], out[amp][role])
    return rows


def _rows_pass(rows: dict[str, Any]) -> bool:
    ok = True
    for role_rows in rows.values():
        for key, row in role_rows.items():
            ok &= row["min_cosine"] >= (MIN_COSINE_DEVICE if "_vs_cpu_" in key else MIN_COSINE)
    return ok


def step_parity(s: StepSettings) -> bool:
    import numpy as np
    import torch

    from dgl_deploy.export.parity import sample_frames
    from dgl_deploy.model.model import create_model

    s.data["criteria"] = {"autocast_min_cosine": MIN_COSINE, "device_min_cosine": MIN_COSINE_DEVICE}
    texts = [f"a {c} {shape} moves from the {a} to the {b}" for c, shape, a, b in
             [("red", "circle", "left", "right"), ("blue", "square", "top", "bottom"), ("green", "triangle", "right", "left"),
              ("yellow", "star", "bottom", "top")]] + ["a dog runs on the beach", "someone is cooking pasta in a kitchen",
                                                      "a man plays the guitar", "two cars race on a track"]
    ok = True
    for latent in ("transformer", "linear"):
        torch.manual_seed(0)
        model = create_model(s.model, pretrained=None, latent=latent).eval()
        frames = sample_frames(model.config.frames, model.image_size, 4, np.random.default_rng(0))
        rows = _parity_rows(s, model, texts, frames)
        s.data[latent] = rows
        s.data[f"{latent}_passed"] = _rows_pass(rows)
        ok &= s.data[f"{latent}_passed"]
        s.save()
        _log(f"parity {latent}: {json.dumps(rows)}")
        del model
        if s.device == "cuda":
            torch.cuda.empty_cache()
    s.data["passed"] = ok
    s.save()
    return ok


def step_videos(s: StepSettings) -> bool:
    import numpy as np
    import torch

    from dgl_deploy.data.frame_request import FrameRequest
    from dgl_deploy.data.video import decode_frames  # needs av (PyAV)
    from dgl_deploy.model.model import create_model

    videos = s.folder / "videos"
    rows = [json.loads(line) for line in (videos / "annotations.jsonl").read_text().splitlines() if line.strip()]
    torch.manual_seed(0)
    model = create_model(s.model, pretrained=None).eval()
    start = time.perf_counter()
    frames = np.stack([decode_frames(FrameRequest(videos / r["video"], model.config.frames, model.image_size)) for r in rows])
    s.data["decode_s"] = round(time.perf_counter() - start, 3)
    s.data["videos"] = len(rows)
    s.data["frames_shape"] = list(frames.shape)
    expected = json.loads((s.folder / "manifest.json").read_text()).get("videos", {}).get("decoded_sha256", {})
    key = f"{model.config.frames}x{model.image_size}"
    if key in expected:
        s.data["decode_matches_prepare"] = hashlib.sha256(frames.tobytes()).hexdigest() == expected[key]
    texts = [r["caption"][0] for r in rows]
    rows_out = _parity_rows(s, model, texts, frames)
    s.data["parity"] = rows_out
    s.data["passed"] = _rows_pass(rows_out)
    s.save()
    return s.data["passed"]


def _load_bench_gpu(repo: Path):
    """benchmarks/bench_gpu.py as a module (its sys.path insert of the checkout is undone: the installed
    dgl_deploy, with its training/export subpackages, must stay the one imported)."""
    import dgl_deploy  # noqa: F401 - cached before bench_gpu puts the checkout first on sys.path

    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location("bench_gpu", repo / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path[:] = saved
    return module


def step_inference(s: StepSettings) -> bool:
    import numpy as np
    import torch

    from dgl_deploy.export import export_onnx
    from dgl_deploy.export.parity import sample_frames
    from dgl_deploy.model.model import create_model
    from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder

    bench = _load_bench_gpu(s.repo)
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = create_model(s.model, pretrained=None).eval()
    frames_per_video, size = model.config.frames, model.image_size
    video_batches = (1, 2) if s.smoke else tuple(bench.VIDEO_BATCHES)
    text_batch = 16 if s.smoke else bench.TEXT_BATCH
    texts = [f"a video of object {i} moving across a {i % 7}-coloured scene" for i in range(text_batch)]
    cache = {b: sample_frames(frames_per_video, size, b, np.random.default_rng(b)) for b in video_batches + (8,)}
    s.data.update({"frames": frames_per_video, "image_size": size, "iters": s.iters, "text_batch": text_batch,
                   "results": {}, "note": "videos/s and texts/s, bench_gpu.throughput (2 warm-up calls)"})
    probe: dict[str, dict[str, Any]] = {}
    for amp in (None, "fp16", "bf16"):
        name = {None: "torch_eager_fp32", "fp16": "torch_autocast_fp16", "bf16": "torch_autocast_bf16"}[amp]
        enc = _encoders(model, s.device, (amp,))[amp or "fp32"]
        if s.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row = {}
        for batch in video_batches:
            row[f"videos_per_s_b{batch}"] = round(bench.throughput(
                lambda e=enc, f=cache[batch]: e.encode_videos(f), batch, s.iters, sync), 2)
        row["texts_per_s"] = round(bench.throughput(lambda e=enc: e.encode_text(texts), text_batch, s.iters, sync), 1)
        if s.device == "cuda":
            row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        probe[name] = {"text": enc.encode_text(texts[:16]), "video": enc.encode_videos(cache[8])}
        s.data["results"][f"{name}_{s.device}"] = row
        s.save()
        _log(f"inference {name}: {row}")
    # onnxruntime CPU fp32 for reference: export the same model (on CPU), small batches, fewer iterations
    model = model.cpu()
    folder = Path(tempfile.mkdtemp(prefix="dgl-gpu-check-export-")) / "export"
    start = time.perf_counter()
    export_onnx(model, folder, precisions=("fp32",), log=_log)
    s.data["onnx_export_s"] = round(time.perf_counter() - start, 1)
    s.save()
    ort = OnnxEncoder(folder, device="cpu", precision="fp32")
    ort_iters = 1 if s.smoke else 2
    row = {}
    for batch in (1, 8):
        row[f"videos_per_s_b{batch}"] = round(bench.throughput(
            lambda f=cache[batch]: ort.encode_videos(f), batch, ort_iters, lambda: None), 2)
    row["texts_per_s"] = round(bench.throughput(lambda: ort.encode_text(texts), text_batch, ort_iters, lambda: None), 1)
    row["iters"] = ort_iters
    s.data["results"]["onnxruntime_cpu_fp32"] = row
    ort_out = {"text": ort.encode_text(texts[:16]), "video": ort.encode_videos(cache[8])}
    s.data["onnxruntime_cpu_fp32_vs"] = {name: {role: _compare(ort_out[role], out[role]) for role in ort_out}
                                         for name, out in probe.items()}
    fp32_rows = s.data["onnxruntime_cpu_fp32_vs"]["torch_eager_fp32"]
    s.data["passed"] = all(r["min_cosine"] >= MIN_COSINE_DEVICE for r in fp32_rows.values()) and all(
        r["min_cosine"] >= MIN_COSINE for out in s.data["onnxruntime_cpu_fp32_vs"].values() for r in out.values())
    s.save()
    shutil.rmtree(folder.parent, ignore_errors=True)
    return s.data["passed"]


def runtimes_available(env: dict[str, Any]) -> dict[str, bool]:
    """Which of the GPU runtimes the env step found (onnxruntime's CUDA provider, an importable tensorrt)."""
    return {"onnxruntime_cuda": "CUDAExecutionProvider" in (env.get("onnxruntime_providers") or []),
            "tensorrt": bool(env.get("tensorrt_importable"))}


def step_runtimes(s: StepSettings) -> bool:
    """onnxruntime CUDA and TensorRT throughput on a fresh export of the inference step's model, where installed."""
    import numpy as np
    import torch

    have = runtimes_available({"onnxruntime_providers": _providers(),
                               "tensorrt_importable": importlib.util.find_spec("tensorrt") is not None})
    have = {k: v and s.device == "cuda" for k, v in have.items()}
    s.data["results"] = {k: {"status": "not installed"} for k, v in have.items() if not v}
    s.save()
    if not any(have.values()):
        s.data["passed"] = True
        s.save()
        return True
    from dgl_deploy.export import export_onnx
    from dgl_deploy.export.parity import sample_frames
    from dgl_deploy.model.model import create_model

    bench = _load_bench_gpu(s.repo)
    torch.manual_seed(0)
    model = create_model(s.model, pretrained=None).eval()
    text_batch = bench.TEXT_BATCH
    texts = [f"a video of object {i} moving across a {i % 7}-coloured scene" for i in range(text_batch)]
    cache = {b: sample_frames(model.config.frames, model.image_size, b, np.random.default_rng(b))
             for b in bench.VIDEO_BATCHES}
    reference = _encoders(model, "cpu", (None,))["fp32"]
    ref = {"text": reference.encode_text(texts[:16]), "video": reference.encode_videos(cache[8])}
    folder = Path(tempfile.mkdtemp(prefix="dgl-gpu-check-runtimes-")) / "export"
    start = time.perf_counter()
    export_onnx(model, folder, precisions=("fp16",), log=_log)
    s.data.update({"onnx_export_s": round(time.perf_counter() - start, 1), "iters": s.iters, "text_batch": text_batch})
    s.save()
    ok = True

    def measure(name: str, open_encoder) -> None:
        nonlocal ok
        try:
            start = time.perf_counter()
            enc, info = open_encoder()
            row: dict[str, Any] = {**info, "open_s": round(time.perf_counter() - start, 1)}
            for batch in bench.VIDEO_BATCHES:
                row[f"videos_per_s_b{batch}"] = round(bench.throughput(
                    lambda f=cache[batch]: enc.encode_videos(f), batch, s.iters, torch.cuda.synchronize), 2)
            row["texts_per_s"] = round(bench.throughput(lambda: enc.encode_text(texts), text_batch, s.iters,
                                                        torch.cuda.synchronize), 1)
            row["vs_cpu_fp32"] = {"text": _compare(ref["text"], enc.encode_text(texts[:16])),
                                  "video": _compare(ref["video"], enc.encode_videos(cache[8]))}
            ok &= all(r["min_cosine"] >= MIN_COSINE for r in row["vs_cpu_fp32"].values())
        except Exception as exc:  # noqa: BLE001 - recorded; the row says so instead of a number
            row = {"status": f"error: {type(exc).__name__}: {str(exc)[:300]}"}
            ok = False
        s.data["results"][name] = row
        s.save()
        _log(f"runtimes {name}: {row}")

    def open_ort():
        from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder

        enc = OnnxEncoder(folder, device="cuda", precision="fp16")
        return enc, {"precision": enc.precision, "providers": enc.session("video").get_providers()}

    def open_trt():
        from dgl_deploy.export.tensorrt import Profile, TrtSettings, build_engines
        from dgl_deploy.runtime.backends.tensorrt import TensorRTEncoder

        start = time.perf_counter()
        settings = TrtSettings(profiles={"video": Profile(1, 32, max(bench.VIDEO_BATCHES)),
                                         "text": Profile(1, text_batch, max(1024, text_batch))})
        build_engines(folder, settings, log=_log)
        build_s = round(time.perf_counter() - start, 1)
        import tensorrt

        enc = TensorRTEncoder(folder)
        return enc, {"precision": enc.precision, "engine_build_s": build_s, "tensorrt": tensorrt.__version__}

    if have["onnxruntime_cuda"]:
        measure("onnxruntime_cuda", open_ort)
    if have["tensorrt"]:
        measure("tensorrt", open_trt)
    s.data["passed"] = ok
    s.save()
    shutil.rmtree(folder.parent, ignore_errors=True)
    return ok


def _providers() -> list[str]:
    try:
        import onnxruntime

        return onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001 - no onnxruntime: no CUDA provider either
        return []


def child(args: argparse.Namespace) -> int:
    s = StepSettings(args)
    try:
        ok = globals()[f"step_{args.name}"](s)
    except Exception as exc:  # noqa: BLE001 - reported in the result, exit 2
        s.data["error"] = f"{type(exc).__name__}: {exc}"
        s.data["traceback"] = traceback.format_exc()[-4000:]
        s.save()
        traceback.print_exc()
        return 2
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------ orchestrator


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.repo, self.folder, self.out = Path(args.repo).resolve(), Path(args.folder).resolve(), Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = self.out / "gpu_check.json", self.out / "gpu_check.log"
        self.work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/dgl-gpu-check"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = args.t0 or time.time()
        self.deadline = self.t0 + args.budget
        mode = "dry-run" if args.dry_run else "smoke" if args.smoke else "gpu"
        self.results: dict[str, Any] = {"check": "dgl-deploy gpu-check", "mode": mode, "started_utc": now_utc(),
                                        "budget_s": args.budget, "repo": str(self.repo), "steps": {},
                                        "not_covered": NOT_COVERED}
        manifest = self.folder / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            self.results["prepared"] = {k: m.get(k) for k in ("created_utc", "git_head", "folder_mib", "wheels", "left_out")}
        install = self.work / "install.json"
        if install.is_file():
            self.results["install"] = json.loads(install.read_text())
            self.results["install"].update(rc=int(os.environ.get("GPU_CHECK_INSTALL_RC", -1)),
                                           seconds=int(os.environ.get("GPU_CHECK_INSTALL_S", -1)))
            imports = self.work / "importcheck.json"
            if args.dry_run and imports.is_file():
                self.results["install"]["import_check"] = json.loads(imports.read_text())
        self.cuda: bool | None = None
        self.env_result: dict[str, Any] = {}

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.t0, 1)
        write_json(self.json_path, self.results)

    def log(self, text: str) -> None:
        with self.log_path.open("a") as f:
            f.write(text)

    def command(self, name: str, result: Path) -> list[str]:
        py = [sys.executable, "-P"]
        if name in CHILD_STEPS:
            cmd = py + [str(Path(__file__).resolve()), "step", name, "--result", str(result), "--repo", str(self.repo),
                        "--folder", str(self.folder)]
            return cmd + (["--smoke"] if self.args.smoke else [])
        if name == "pytest":
            files = [str(p.relative_to(self.repo)) for p in sorted((self.repo / "tests").glob("test_*.py"))
                     if re.search(r"mark\.(gpu|tensorrt)\b", p.read_text())]
            return py + ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or tensorrt", "--timeout=120",
                         f"--junitxml={result.with_suffix('.xml')}", *files]
        batch = name.removeprefix("train_b")
        if self.args.smoke:
            return py + ["benchmarks/bench_train.py", "--device", "cpu", "--model", "dgl-tiny", "--frames", "4",
                         "--batch-size", "2", "--steps", "1", "--baseline"]
        return py + ["benchmarks/bench_train.py", "--device", "cuda", "--amp", "bf16", "--frames", "12",
                     "--batch-size", batch, "--steps", "3", "--baseline"]

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if name == "pytest":  # `from tests.conftest import ...` without the checkout's dgl_deploy/ on sys.path
            shim = self.work / "shim"
            shim.mkdir(parents=True, exist_ok=True)
            link = shim / "tests"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(self.repo / "tests")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(shim)]))
            if "DGL_SHARED_DIR" not in env and (self.repo / "shared" / "reference").is_dir():
                env["DGL_SHARED_DIR"] = str(self.repo / "shared")
        return env

    def run_step(self, name: str, timeout: int, least: int, needs_cuda: bool) -> None:
        record: dict[str, Any] = {"status": "skipped", "timeout_s": timeout}
        self.results["steps"][name] = record
        result = self.work / f"step_{name}.json"
        result.unlink(missing_ok=True)
        cmd = self.command(name, result)
        record["command"] = " ".join(cmd)
        left = self.deadline - time.time()
        if self.args.dry_run:
            record["reason"] = "dry run (plan only)"
        elif needs_cuda and self.cuda is False and not self.args.smoke:
            record["reason"] = "no CUDA GPU (torch.cuda.is_available() is False)"
        elif name == "runtimes" and self.env_result and not any(runtimes_available(self.env_result).values()):
            record["status"] = "not_installed"
            record["reason"] = "neither onnxruntime-gpu's CUDA provider nor tensorrt is installed here"
            record["result"] = {"results": {k: {"status": "not installed"} for k in RUNTIMES}}
        elif left < least:
            record["reason"] = f"out of time ({left:.0f} s left of the {self.args.budget} s budget, needs {least} s)"
        else:
            record["timeout_s"] = timeout = int(min(timeout, left - 3))
            self.execute(name, cmd, timeout, result, record)
        print(f"[gpu-check] {name:<11} {record['status']:<8} {record.get('seconds', 0):>6.1f} s  "
              f"{record.get('reason') or record.get('error') or ''}", flush=True)
        self.save()

    def execute(self, name: str, cmd: list[str], timeout: int, result: Path, record: dict[str, Any]) -> None:
        self.log(f"\n===== {name} ({now_utc()}, timeout {timeout} s)\n$ {' '.join(cmd)}\n")
        start = time.time()
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(cmd, cwd=self.repo, env=self.env(name), stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
            output.seek(0, os.SEEK_END)
            size = output.tell()
            output.seek(max(0, size - LOG_TAIL_BYTES))
            text = output.read().decode(errors="replace")
        self.log(text + f"\n----- {name}: rc={rc} after {time.time() - start:.1f} s\n")
        record["seconds"] = round(time.time() - start, 1)
        record["rc"] = rc
        record["status"] = "timeout" if rc is None else "ok" if rc == 0 else "failed" if rc == 1 else "error"
        if rc not in (0, 1):
            record["output_tail"] = text[-3000:]
        if name in CHILD_STEPS:
            if result.is_file():
                record["result"] = json.loads(result.read_text())
                record["error"] = record["result"].get("error")
            if name == "env":
                self.cuda = bool(record.get("result", {}).get("torch", {}).get("cuda_available"))
                self.env_result = record.get("result", {})
        elif name == "pytest":
            record["result"] = junit_counts(result.with_suffix(".xml"), text)
            if rc == 5:  # no test collected
                record["status"] = "failed"
        else:
            record["result"] = train_result(text)
            if rc == 1:
                record["status"] = "error"

    def run(self) -> int:
        self.log(f"\n##### gpu-check {self.results['mode']} started {self.results['started_utc']}\n")
        self.save()
        for name, timeout, least, needs_cuda in STEPS:
            if self.args.only and name not in self.args.only.split(","):
                continue
            self.run_step(name, timeout, least, needs_cuda)
        self.results["summary"] = summarize(self.results)
        self.results["finished_utc"] = now_utc()
        self.save()
        print(json.dumps(self.results["summary"], indent=2), flush=True)
        print(f"[gpu-check] results: {self.json_path}  log: {self.log_path}", flush=True)
        return 0 if self.results["summary"]["passed"] or self.args.dry_run else 1


def junit_counts(xml: Path, text: str) -> dict[str, Any]:
    """passed/failed/skipped/errors (and the names of failures) from pytest's junit XML."""
    if not xml.is_file():
        return {"summary_line": text.strip().splitlines()[-1] if text.strip() else ""}
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    cases = []
    for case in suite.iter("testcase"):
        state = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                state = f"{tag}: {(node.get('message') or '')[:200]}"
        cases.append(f"{case.get('classname')}::{case.get('name')} {state}")
    counts["cases"] = cases
    return counts


def train_result(text: str) -> dict[str, Any]:
    """bench_train.py prints one JSON object; add the speed-up and memory ratio over the eager baseline."""
    start = text.find("{\n")
    try:
        data = json.loads(text[start:text.rindex("}") + 1]) if start >= 0 else {}
    except ValueError:
        return {"unparsed_tail": text[-2000:]}
    rows = {r["impl"]: r for r in data.get("results", [])}
    ours, base = rows.get("dgl-deploy"), rows.get("eager baseline")
    if ours and base:
        data["speedup_vs_eager"] = round(base["step_s"] / ours["step_s"], 2)
        mem = "peak_gpu_mem_gib" if "peak_gpu_mem_gib" in ours else "peak_rss_gib"
        if ours.get(mem):
            data["memory_ratio_eager_over_ours"] = round(base[mem] / ours[mem], 2)
    return data


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    steps = results["steps"]
    by = {status: [n for n, r in steps.items() if r["status"] == status]
          for status in ("ok", "failed", "error", "timeout", "skipped")}
    summary: dict[str, Any] = {k: v for k, v in by.items() if v}
    summary["passed"] = bool(by["ok"]) and not (by["failed"] or by["error"] or by["timeout"] or by["skipped"])
    if results["mode"] == "dry-run":
        install = results.get("install", {})
        summary = {"passed": None, "dry_run": f"plan only; install rc={install.get('rc')}, "
                                              f"{len(install.get('installed', []))} wheels; project: {install.get('project')}"}
    parity = steps.get("parity", {}).get("result", {})
    worst = [row["min_cosine"] for latent in ("transformer", "linear") for role in parity.get(latent, {}).values()
             for key, row in role.items() if key.endswith("_vs_fp32")]
    if worst:
        summary["parity_worst_autocast_cosine"] = min(worst)
    for name in ("train_b32", "train_b128"):
        res = steps.get(name, {}).get("result", {})
        if "speedup_vs_eager" in res:
            summary[f"{name}_speedup_vs_eager"] = res["speedup_vs_eager"]
    project = results.get("install", {}).get("project", "")
    if "OLDER" in project or results.get("install", {}).get("rc", 0) not in (0, -1):
        summary["warnings"] = [f"install rc={results['install'].get('rc')}; project: {project}"]
    measured = steps.get("runtimes", {}).get("result", {}).get("results", {})
    summary["not_covered"] = [line for line, key in zip(NOT_COVERED, RUNTIMES, strict=True)
                              if not any(k.startswith("videos_per_s") for k in measured.get(key, {}))]
    return summary


def select(folder: Path, repo: Path, mode: str, dry_run: bool) -> int:
    """Which carried wheels run.sh installs: the project and open_clip always, the others only where this Python
    lacks the distribution (mode "all": every one). Where the project's sources changed since `make gpu-check`
    and setuptools is here (not in a dry run), run.sh builds the project from this tree instead of its wheel.
    Writes GPU_CHECK_WORK/selected.txt, install.json and rebuild."""
    import importlib.metadata as md

    work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/dgl-gpu-check"))
    always = {"dgl_deploy", "open_clip_torch"}  # the code under test: never the image's copy
    selected, from_image = [], {}
    for wheel in sorted((folder / "wheels").glob("*.whl")):
        dist = re.sub(r"[-_.]+", "_", wheel.name.split("-")[0]).lower()
        try:
            have = md.version(dist)
        except md.PackageNotFoundError:
            have = None
        if mode == "all" or dist in always or have is None:
            selected.append(wheel)
        else:
            from_image[dist] = have
    manifest = folder / "manifest.json"
    built = json.loads(manifest.read_text()).get("project_sources", {}) if manifest.is_file() else {}
    here = source_hashes(repo)
    changed = sorted(k for k in set(built) | set(here) if built.get(k) != here.get(k))
    rebuild = bool(changed) and not dry_run and importlib.util.find_spec("setuptools") is not None
    if rebuild:
        selected = [w for w in selected if not w.name.startswith("dgl_deploy-")]
    project = "carried wheel" if not changed else "built from this tree (the carried wheel is older)" if rebuild \
        else "carried wheel, OLDER than this tree: rerun make gpu-check"
    info = {"python": platform.python_version(), "mode": mode, "installed": [w.name for w in selected],
            "from_image": from_image, "project": project, "project_files_changed_since_prepare": changed[:50]}
    write_json(work / "install.json", info)
    (work / "selected.txt").write_text("".join(f"{w}\n" for w in selected))
    (work / "rebuild").write_text("1" if rebuild else "")
    print(f"[gpu-check] install {len(selected)} carried wheels; project: {project}; the image already has: "
          + (", ".join(f"{k} {v}" for k, v in from_image.items()) or "none of the others"), flush=True)
    return 0


# what the GPU image provides (torch 2.11, onnx, typer, onnxruntime and their requirements): an installed
# wheel whose import needs one of these is fine where they are absent (a dry run on a bare Python 3.12)
IMAGE_PROVIDES = {"torch", "numpy", "onnx", "onnxruntime", "typer", "rich", "click", "typing_extensions", "sympy",
                  "ml_dtypes", "google", "filelock", "fsspec", "jinja2", "networkx", "triton", "mpmath", "yaml"}


def import_check(site: Path, work: Path) -> int:
    """Import every top-level module of every wheel installed in `site` (dry run, Python 3.12 here)."""
    sys.path.insert(0, str(site))
    report: dict[str, dict[str, str]] = {}
    for info in sorted(site.glob("*.dist-info")):
        modules = set()
        for line in (info / "RECORD").read_text().splitlines():
            first = line.split(",")[0].split("/")
            top = first[0]
            if top.endswith((".dist-info", ".data", ".libs")) or top in ("bin", "..") or top.startswith("__"):
                continue
            if len(first) == 1 and top.endswith(".py"):
                modules.add(top[:-3])
            elif len(first) > 1 and (site / top / "__init__.py").is_file():
                modules.add(top)
        for module in sorted(modules):
            try:
                importlib.import_module(module)
                state = "ok"
            except ModuleNotFoundError as exc:
                root = (exc.name or "?").split(".")[0]
                state = f"needs {root} (from the image)" if root in IMAGE_PROVIDES else f"MISSING {root}"
            except Exception as exc:  # noqa: BLE001 - the finding
                state = f"ERROR {type(exc).__name__}: {str(exc)[:200]}"
            report.setdefault(info.name.removesuffix(".dist-info"), {})[module] = state
    bad = {d: m for d, m in report.items() if any(v.startswith(("MISSING", "ERROR")) for v in m.values())}
    write_json(work / "importcheck.json", {"python": platform.python_version(), "modules": report, "problems": bad})
    ok = sum(v == "ok" for m in report.values() for v in m.values())
    total = sum(len(m) for m in report.values())
    print(f"[gpu-check] import check ({platform.python_version()}): {ok}/{total} modules import here, the rest "
          f"need the image's torch/numpy/onnx; problems: {json.dumps(bad) if bad else 'none'}", flush=True)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--repo", default=".")
    run.add_argument("--folder", default=str(Path(__file__).resolve().parent))
    run.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/.work/gpu_out")
    run.add_argument("--budget", type=int, default=450, help="seconds for everything, counted from --t0")
    run.add_argument("--t0", type=float, default=None, help="start time (epoch s); default now")
    run.add_argument("--only", default="", help="comma-separated step names")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    step = sub.add_parser("step")
    step.add_argument("name", choices=CHILD_STEPS)
    step.add_argument("--result", required=True)
    step.add_argument("--repo", required=True)
    step.add_argument("--folder", required=True)
    step.add_argument("--smoke", action="store_true")
    pick = sub.add_parser("select")
    pick.add_argument("--folder", required=True)
    pick.add_argument("--repo", required=True)
    pick.add_argument("--mode", choices=("missing", "all"), default="missing")
    pick.add_argument("--dry-run", action="store_true")
    imports = sub.add_parser("importcheck")
    imports.add_argument("--site", required=True)
    args = parser.parse_args()
    if args.cmd == "select":
        return select(Path(args.folder), Path(args.repo), args.mode, args.dry_run)
    if args.cmd == "importcheck":
        return import_check(Path(args.site), Path(os.environ.get("GPU_CHECK_WORK", "/tmp/dgl-gpu-check")))
    if args.cmd == "step":
        return child(args)
    return Runner(args).run()


if __name__ == "__main__":
    sys.exit(main())
