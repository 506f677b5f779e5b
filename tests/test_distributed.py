"""Multi-process training on CPU: `torchrun --nproc_per_node 2 -m dgl_deploy train` (gloo, chosen without CUDA)
runs the multi-GPU code path. Two ranks with a global batch of 8 give the model of one process with batch 8
(same data order), resume works across ranks, only rank 0 writes, a dead rank ends the job with an error.

What "the same model" can mean: the step losses agree to the last bit and the embeddings to ~2e-7, but raw
parameters cannot be compared at 1e-5. Two ranks sum the same gradient in another float order, and Adam's
first steps are ~lr * sign(g): where the true gradient is 0 (the attention key bias: softmax ignores it) the
float noise's sign decides a 5e-3 step that changes nothing downstream. So the test compares what the model
computes: text and video embeddings of fixed inputs (<= 1e-5) and the generated prompts (<= 1e-4)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.model.loading import load_model
from dgl_deploy.model.pixels import normalize

pytestmark = pytest.mark.slow  # two torchrun jobs of two ranks each: ~1-2 minutes on 2 cores


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    make_synthetic(root, 16, seed=0)
    return root


def _train_args(data: Path, out: Path, epochs: int = 2) -> list[str]:
    return ["train", "--model-name", "dgl-tiny", "--pretrained", "none", "--dataset", "generic",
            "--annotations", str(data / "annotations.jsonl"), "--videos", str(data), "--out", str(out),
            "--frames", "4", "--max-words", "16", "--batch-size", "8", "--epochs", str(epochs), "--lr", "5e-3",
            "--workers", "1", "--val-fraction", "0", "--device", "cpu", "--seed", "0", "--quiet"]


def _torchrun(args: list[str], nproc: int, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dgl_deploy", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _max_diff(run_a: Path, run_b: Path) -> tuple[float, float]:
    """(max abs difference of text+video embeddings of fixed inputs, of the generated prompts)."""
    a, b = (load_model(str(run / "model.safetensors")).eval() for run in (run_a, run_b))
    generator = torch.Generator().manual_seed(0)
    frames = normalize(torch.randint(0, 256, (3, 4, a.image_size, a.image_size, 3), generator=generator,
                                     dtype=torch.uint8))  # (B, T, 3, S, S)
    ids = torch.randint(1, 400, (3, 16), generator=generator)  # (B, W)
    with torch.no_grad():
        outputs = max((a.encode_video(frames) - b.encode_video(frames)).abs().max().item(),
                      (a.encode_text(ids) - b.encode_text(ids)).abs().max().item())
        prompts = max((x - y).abs().max().item() for x, y in zip(a.prompts(), b.prompts(), strict=True))
    return outputs, prompts


def test_two_ranks_equal_one_process(data: Path, tmp_path: Path) -> None:
    single = subprocess.run([sys.executable, "-m", "dgl_deploy", *_train_args(data, tmp_path / "one")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    double = _torchrun(_train_args(data, tmp_path / "two"), nproc=2)
    assert double.returncode == 0, double.stderr
    outputs, prompts = _max_diff(tmp_path / "one", tmp_path / "two")
    assert outputs <= 1e-5 and prompts <= 1e-4, (outputs, prompts)
    # only rank 0 writes: one log, one state, one set of checkpoints
    assert [p.name for p in (tmp_path / "two").glob("log*.jsonl")] == ["log.jsonl"]
    assert double.stdout.count("epoch 2/2") <= 1


def test_resume_across_ranks(data: Path, tmp_path: Path) -> None:
    """A 2-rank job killed mid-way (SIGKILL of the whole job) resumes from state.pt to the uninterrupted result."""
    run, args = tmp_path / "run", _train_args(data, tmp_path / "run", epochs=30) + ["--save-every", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dgl_deploy",
           *args]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (run / "state.pt").exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # already gone: the assertion below says why
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (run / "model.safetensors").exists(), "the job should have been killed before its end"
    resumed = _torchrun([*args, "--resume"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr
    straight = _torchrun(_train_args(data, tmp_path / "straight", epochs=30) + ["--save-every", "1"], nproc=2)
    assert straight.returncode == 0, straight.stderr
    outputs, prompts = _max_diff(run, tmp_path / "straight")
    assert outputs <= 1e-5 and prompts <= 1e-4, (outputs, prompts)


def _root_cause(stderr: str) -> tuple[int, int]:
    """(rank, exit code) of the first failure in torchrun's summary (its `Root Cause` block)."""
    block = stderr.partition("Root Cause (first observed failure):")[2]
    rank, code = re.search(r"rank\s*: (\d+)", block), re.search(r"exitcode\s*: (-?\d+)", block)
    assert rank and code, stderr
    return int(rank[1]), int(code[1])


def test_dead_rank_ends_the_job(data: Path, tmp_path: Path) -> None:
    """Rank 1 is killed at start-up (an injected crash): the job must fail, not hang. torchrun exits 1 and names
    rank 1's SIGKILL as the root cause (not a crash of its own in either rank); besides torchrun's report, the only
    traceback allowed is rank 0 losing its connection to the dead rank (gloo's "Connection reset/closed by peer",
    which happens when rank 0 reaches a collective before torchrun stops it)."""
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text(
        "import os, signal\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import threading\n"
        "    threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n")
    proc = _torchrun(_train_args(data, tmp_path / "run", epochs=50), nproc=2, timeout=240,
                     env={"PYTHONPATH": str(crash)})
    assert proc.returncode == 1, proc.stderr
    assert _root_cause(proc.stderr) == (1, -signal.SIGKILL)
    assert "ChildFailedError" in proc.stderr, proc.stderr
    lost_peer = len(re.findall(r"\[rank0\]: RuntimeError: .*Connection (?:reset|closed) by peer", proc.stderr))
    assert lost_peer <= 1 and proc.stderr.count("Traceback") == 1 + lost_peer, proc.stderr
