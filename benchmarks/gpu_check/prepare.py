"""Prepare the GPU check here (`make gpu-check`): a folder of everything the GPU machine lacks, and its command.

The GPU machine has Python 3.12 (x86_64), torch 2.11 (CUDA 13), onnx, typer and CPU onnxruntime, no network,
and takes at most 64 MiB of files a call (the working tree included). This script, with the .venv's Python:

  1. downloads (pip, --no-deps, cp312 manylinux x86_64 wheels only) the versions installed in this .venv of
     open_clip_torch and what it and the checks import that the image may lack, torchvision 0.26.0 (the
     release for torch 2.11), onnxscript/onnx_ir/onnxslim, pytest and pytest-timeout;
  2. builds the project's own wheel from a copy of its sources (nothing is written into the checkout);
  3. renders a few synthetic h264 clips (dgl_deploy.data.synthetic, which needs PyAV: made here, not there);
  4. copies run.sh and check.py beside them, writes manifest.json (sizes, hashes, what was left out and why)
     and COMMAND.txt, and prints the one command to run on the GPU machine;
  5. checks the set: `run.sh --dry-run` with a Python 3.12 if one is here (a real --target install of the
     wheels and an import of every module that needs nothing from the image), else pip --dry-run for cp312.

    python benchmarks/gpu_check/prepare.py [--out benchmarks/.work/gpu] [--max-mib 60] [--no-verify]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from check import source_hashes  # noqa: E402 - this folder's check.py

PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                              "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
              for arg in ("--platform", tag)]]
# (distribution, pinned version or None for the .venv's, why it travels, optional: dropped first when over budget)
WHEELS: list[tuple[str, str | None, str, bool]] = [
    ("open_clip_torch", None, "the CLIP towers (not in the image)", False),
    ("torchvision", "0.26.0", "imported by open_clip; 0.26.0 is built for torch 2.11 (CUDA 13)", False),
    ("ftfy", None, "open_clip's tokenizer", False),
    ("wcwidth", None, "ftfy", False),
    ("regex", None, "open_clip's tokenizer", False),
    ("tqdm", None, "imported by open_clip.pretrained", False),
    ("safetensors", None, "dgl_deploy.model.checkpoint", False),
    ("pillow", None, "torchvision, dgl_deploy.data.video", False),
    ("onnxscript", None, "torch.onnx's dynamo exporter", False),
    ("onnx_ir", None, "onnxscript", False),
    ("onnxslim", None, "dgl_deploy.export", False),
    ("colorama", None, "onnxslim", False),
    ("packaging", None, "pytest, onnxscript", False),
    ("pytest", None, "the -m gpu / -m tensorrt tests", False),
    ("pluggy", None, "pytest", False),
    ("iniconfig", None, "pytest", False),
    ("pygments", None, "pytest", False),
    ("pytest-timeout", None, "pyproject's --timeout addopt", False),
]
LEFT_OUT = {
    "onnxruntime-gpu": "hundreds of MiB, over the 64 MiB a call carries: the onnxruntime CUDA provider is not checked "
                       "(the check uses the image's CPU onnxruntime as reference)",
    "tensorrt": "GiB of libraries: not carried, so the -m tensorrt tests skip and no engine is built",
    "av": "PyAV's cp312 wheel is about 34 MiB (av 18.1, FFmpeg inside): with it the folder would pass 60 MiB, so "
          "the synthetic videos are rendered here and carried instead; the videos step decodes them only where the "
          "image has av (the decoder is PyAV since decord was dropped)",
    "huggingface_hub, timm": "optional imports of open_clip (caught ImportError); no weights can be fetched there",
    "faiss-cpu, fastapi, uvicorn, ray, httpx": "index/serve/ray profiles: not used by the GPU checks",
}
VIDEOS = {"count": 8, "size": (96, 128), "seconds": 2.0, "fps": 10}
MIB = 2**20


def log(line: str) -> None:
    print(f"[gpu-check prepare] {line}", flush=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def download(wheels_dir: Path) -> list[str]:
    specs = []
    for name, pin, _, _ in WHEELS:
        version = pin or md.version(name)
        specs.append(f"{name}=={version}")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check", *PLATFORM,
           "-d", str(wheels_dir), *specs]
    log(f"pip download {len(specs)} wheels for cp312 manylinux x86_64: {' '.join(specs)}")
    done = subprocess.run(cmd, capture_output=True, text=True)  # quiet: this machine's pip config warns a lot
    if done.returncode:
        print(done.stdout + done.stderr, file=sys.stderr)
        raise SystemExit(f"pip download failed (rc={done.returncode})")
    return specs


def build_project(wheels_dir: Path) -> dict[str, str]:
    """`pip wheel --no-deps` of a copy of the sources (no build/ or egg-info appears in the checkout)."""
    with tempfile.TemporaryDirectory(prefix="dgl-gpu-check-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (REPO / name).is_file():
                shutil.copy2(REPO / name, src / name)
        for top in ("dgl_deploy", "training", "export"):
            shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        hashes = source_hashes(src)
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                                "--disable-pip-version-check", "-w", str(wheels_dir), str(src)],
                               capture_output=True, text=True)
        if built.returncode:
            print(built.stdout + built.stderr, file=sys.stderr)
            raise SystemExit(f"pip wheel of the project failed (rc={built.returncode})")
    log(f"built the project wheel from {len(hashes)} source files")
    return hashes


def make_videos(folder: Path) -> dict:
    from dgl_deploy import defaults
    from dgl_deploy.data.frame_request import FrameRequest
    from dgl_deploy.data.synthetic import make_synthetic
    from dgl_deploy.data.video import decode_frames

    make_synthetic(folder, VIDEOS["count"], seed=0, size=VIDEOS["size"], seconds=VIDEOS["seconds"], fps=VIDEOS["fps"])
    rows = [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines() if line.strip()]
    import numpy as np

    frames = np.stack([decode_frames(FrameRequest(folder / r["video"], defaults.FRAMES, 224)) for r in rows])
    log(f"rendered {len(rows)} synthetic clips {VIDEOS['size'][0]}x{VIDEOS['size'][1]}, {VIDEOS['seconds']} s "
        f"({folder_bytes(folder) / 1024:.0f} KiB)")
    return {**VIDEOS, "decoded_sha256": {f"{defaults.FRAMES}x224": hashlib.sha256(frames.tobytes()).hexdigest()}}


def tree_bytes() -> int:
    """What else travels with the folder: tracked + untracked-not-ignored files, and a shared/ in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    total = sum((REPO / p).stat().st_size for p in listed if p and (REPO / p).is_file())
    if (REPO / "shared").is_dir():
        total += folder_bytes(REPO / "shared")
    return total


def git_head() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "dgl_deploy", "training", "export", "pyproject.toml"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")) if out.returncode == 0 else None


def fit(folder: Path, wheels_dir: Path, max_bytes: int, left_out: dict[str, str]) -> None:
    """Drop the optional wheels while the folder is over budget."""
    for name, _, why, optional in WHEELS:
        if folder_bytes(folder) <= max_bytes:
            return
        if optional:
            for wheel in wheels_dir.glob(f"{name}-*.whl"):
                wheel.unlink()
                left_out[name] = f"dropped to fit {max_bytes / MIB:.0f} MiB ({why})"
                log(f"over budget: left out {wheel.name}")
    if folder_bytes(folder) > max_bytes:
        raise SystemExit(f"{folder}: {folder_bytes(folder) / MIB:.1f} MiB even without the optional wheels "
                         f"(limit {max_bytes / MIB:.0f} MiB)")


def verify(folder: Path) -> int:
    """run.sh --dry-run: with a Python 3.12 where one is found (a real install + imports), else pip --dry-run."""
    candidates = [os.environ.get("GPU_CHECK_PY312"), shutil.which("python3.12"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    py = sys.executable
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, pip; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            py = candidate
            break
    log(f"verify: bash {folder / 'run.sh'} --dry-run with {py}")
    env = dict(os.environ, PYTHON=py, GPU_CHECK_WORK=tempfile.mkdtemp(prefix="dgl-gpu-check-dry-"),
               OUT=str(REPO / "benchmarks" / ".work" / "gpu_out"))
    env.pop("PYTHONPATH", None)
    shutil.rmtree(env["OUT"], ignore_errors=True)  # the dry run's own output folder (git-ignored)
    rc = subprocess.run(["bash", str(folder / "run.sh"), "--dry-run"], cwd=REPO, env=env).returncode
    shutil.rmtree(env["GPU_CHECK_WORK"], ignore_errors=True)
    return rc


def command_text(folder: Path) -> str:
    rel = folder.relative_to(REPO)
    return f"""# dgl-deploy GPU check, prepared {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `make gpu-check`.
# The one command, as a call of the device tool (the folder is git-ignored, so it must be named in carry):
run(command="bash {rel}/run.sh", carry=["{rel}"], timeout_s=540)
# Results come back from $OUT: gpu_check.json (summary + every step, rewritten after each step) and gpu_check.log.
# On any other CUDA machine with this checkout, Python 3.12 and torch 2.11:  OUT=/some/dir bash {rel}/run.sh
# Knobs (env): GPU_CHECK_BUDGET=450 (s, whole run), GPU_CHECK_INSTALL=all (install every carried wheel, not only
# the ones the image lacks), PYTHON=python3.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / ".work" / "gpu")
    parser.add_argument("--max-mib", type=float, default=60.0, help="the folder's size limit")
    parser.add_argument("--no-verify", action="store_true", help="skip the run.sh --dry-run check")
    args = parser.parse_args()
    folder = args.out.resolve()
    if folder.exists():
        shutil.rmtree(folder)
    wheels_dir = folder / "wheels"
    wheels_dir.mkdir(parents=True)
    specs = download(wheels_dir)
    hashes = build_project(wheels_dir)
    videos = make_videos(folder / "videos")
    for name in ("run.sh", "check.py"):
        shutil.copy2(HERE / name, folder / name)
    left_out = dict(LEFT_OUT)
    fit(folder, wheels_dir, int(args.max_mib * MIB), left_out)
    wheels = {w.name: {"mib": round(w.stat().st_size / MIB, 2), "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
              for w in sorted(wheels_dir.glob("*.whl"))}
    why = {name.replace("-", "_").lower(): reason for name, _, reason, _ in WHEELS}
    for name, info in wheels.items():
        info["why"] = why.get(name.split("-")[0].lower(), "the project itself (pip wheel --no-deps)")
    tree = tree_bytes()
    manifest = {"created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_head": git_head(),
                "requested": specs, "wheels": wheels, "left_out": left_out, "videos": videos,
                "project_sources": hashes}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / "COMMAND.txt").write_text(command_text(folder))
    size = folder_bytes(folder)
    manifest["folder_mib"] = round(size / MIB, 2)
    manifest["tree_mib"] = round(tree / MIB, 2)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = folder_bytes(folder)
    log(f"{folder.relative_to(REPO)}: {size / MIB:.2f} MiB ({len(wheels)} wheels, "
        f"{sum(w['mib'] for w in wheels.values()):.2f} MiB); the rest of the working tree: {tree / MIB:.2f} MiB; "
        f"together {(size + tree) / MIB:.2f} MiB of the 64 MiB a call carries")
    if size + tree > 64 * MIB:
        log("WARNING: folder + working tree exceed 64 MiB: the call would be refused")
    log("left out: " + "; ".join(f"{k}: {v}" for k, v in left_out.items()))
    rc = 0 if args.no_verify else verify(folder)
    print()
    print((folder / "COMMAND.txt").read_text(), end="")
    if rc:
        log(f"verification FAILED (rc={rc}): see above")
    return rc


if __name__ == "__main__":
    sys.exit(main())
