"""Install profiles: size of site-packages and `dgl query` cold start, runtime install vs full install.

Creates two virtualenvs under --dir (reused when they exist): `runtime` with `pip install -e ".[cpu]"`
(no torch) and `full` with `pip install -e ".[cpu,export]"` (torch, open_clip, onnx tooling: what
training and export need). The full one exports a seeded dgl-tiny model and embeds 12 synthetic clips;
then each venv runs `dgl query "a red circle" --index emb.npy` as a new process, `--runs` times after
one warm-up, the two venvs interleaved (the OS file cache is warm: this is interpreter + import + model load + one query), and the
median wall time is reported. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"runtime": "cpu", "full": "cpu,export"}
PREPARE = """
import torch
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.export import export_onnx
from dgl_deploy.model.model import create_model
torch.manual_seed(0)
export_onnx(create_model("dgl-tiny", pretrained=None).eval(), "{dir}/export", log=lambda _: None)
make_synthetic("{dir}/videos", 12, seed=0)
"""


def venv(folder: Path, extras: str) -> Path:
    """A virtualenv with this project installed (editable) with `extras`; its bin folder."""
    if not (folder / "bin" / "dgl").exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([folder / "bin" / "pip", "install", "-q", "-e", f"{ROOT}[{extras}]"], check=True)
    return folder / "bin"


def site_packages_mb(folder: Path) -> int:
    out = subprocess.run(["du", "-sm", *map(str, folder.glob("lib/python*/site-packages"))], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def cold_starts_s(bins: dict[str, Path], work: Path, runs: int) -> dict[str, float]:
    """Median wall time of a `dgl query` process per venv; runs interleaved A/B so that load affects both."""
    cmds = {name: [str(b / "dgl"), "query", "a red circle", "--index", str(work / "emb.npy"), "-k", "3"]
            for name, b in bins.items()}
    for cmd in cmds.values():
        subprocess.run(cmd, check=True, capture_output=True)  # warm-up: file cache, .pyc
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "benchmarks" / ".work" / "install")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    bins = {name: venv(args.dir / name, extras) for name, extras in PROFILES.items()}
    work = args.dir / "data"
    if not (work / "emb.npy").exists():
        subprocess.run([bins["full"] / "python", "-c", PREPARE.format(dir=work)], check=True)
        subprocess.run([bins["full"] / "dgl", "embed", work / "videos", "--out", work / "emb.npy", "--model",
                        work / "export", "-q"], check=True)
    torch_absent = subprocess.run([bins["runtime"] / "python", "-c", "import torch"], capture_output=True)
    print(json.dumps({
        "profiles": {name: f".[{extras}]" for name, extras in PROFILES.items()},
        "runtime_has_torch": torch_absent.returncode == 0,
        "site_packages_mb": {name: site_packages_mb(args.dir / name) for name in PROFILES},
        "query_cold_start_s": cold_starts_s(bins, work, args.runs),
    }))


if __name__ == "__main__":
    main()
