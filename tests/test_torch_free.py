"""The runtime install works without torch: every inference command runs on an export folder in subprocesses
where `import torch` (and torchvision, open_clip, the onnx tooling, safetensors) fails, exactly as in a
`pip install "dgl-deploy[cpu]"` environment (PyAV, the decoder, is part of the base install); commands that need
torch fail with one line naming the extra."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.export import export_onnx
from dgl_deploy.model.model import create_model
from tests.conftest import TORCH_SIDE, no_torch_env

BLOCKED = TORCH_SIDE
DGL = [sys.executable, "-m", "dgl_deploy"]
IMPORT_CHECK = ("import importlib, sys\ntry:\n    importlib.import_module(sys.argv[1])\n"
                "except ModuleNotFoundError as error:\n    sys.exit(f'not importable: {error}')\n")  # exit 1, one line


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment whose Python cannot import torch & co. (a sitecustomize sets them to None)."""
    return no_torch_env(tmp_path_factory.mktemp("no_torch"), BLOCKED)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """An export folder and synthetic videos, made here with torch (as on a training machine)."""
    root = tmp_path_factory.mktemp("runtime")
    torch.manual_seed(0)
    export_onnx(create_model("dgl-tiny", pretrained=None).eval(), root / "export", log=lambda _: None)
    make_synthetic(root / "videos", 40, seed=0)
    return root


def run(env: dict[str, str], *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*DGL, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _import_error(name: str, **kwargs: object) -> str:
    """What `import name` says in a fresh Python: exit code 1 and one line for a module that is not there. Any
    other outcome (it imports, it crashes some other way, a traceback) fails the calling test."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_CHECK, name], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


def test_torch_is_really_blocked(env) -> None:
    for name in BLOCKED:
        assert _import_error(name, env=env) == f"not importable: import of {name} halted; None in sys.modules"


def test_generic_top_level_names_are_not_installed(tmp_path) -> None:
    """training/ and export/ install as dgl_deploy.training and dgl_deploy.export, nothing generic."""
    for name in ("training", "export"):
        assert _import_error(name, cwd=tmp_path) == f"not importable: No module named '{name}'"


def test_embed_kill_resume_update_without_torch(env, work, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    cmd = [*DGL, "embed", work / "videos", "--out", out, "--model", work / "export", "--chunk-size", "2",
           "--batch-size", "1", "--workers", "1", "-q"]
    proc = subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    parts = tmp_path / "emb.parts"
    deadline = time.time() + 120
    while not list(parts.rglob("*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run(env, *cmd[3:])  # resume (or a fresh run, when the kill came after the end)
    rows = np.load(out)
    assert rows.shape[0] == 40 and np.isfinite(rows).all()

    extra = tmp_path / "more"
    make_synthetic(extra, 2, seed=5)
    for video in extra.glob("*.mp4"):
        (work / "videos" / f"new_{video.name}").write_bytes(video.read_bytes())
    try:
        updated = run(env, *cmd[3:], "--update")
        assert np.load(out).shape[0] == 42, updated.stdout
    finally:
        for video in (work / "videos").glob("new_*.mp4"):
            video.unlink()


@pytest.fixture(scope="module")
def embedded(env, work) -> Path:
    out = work / "emb.npy"
    run(env, "embed", work / "videos", "--out", out, "--model", work / "export", "--workers", "1", "-q")
    return out


def test_query_text_video_file_json_without_torch(env, work, embedded, tmp_path) -> None:
    assert "vid_" in run(env, "query", "a red circle moves left", "--index", embedded, "-k", "3").stdout
    assert '"score"' in run(env, "query", "a shape", "--index", embedded, "--json").stdout
    queries = tmp_path / "queries.txt"
    queries.write_text("a blue square\na green triangle\n")
    assert run(env, "query", "--index", embedded, "--file", queries, "--json").stdout.count('"query"') == 2
    video = sorted((work / "videos").glob("*.mp4"))[3]
    assert f'"id": "{video.name}"' in run(env, "query", "--video", video, "--index", embedded, "-k", "1",
                                          "--json").stdout


def test_index_eval_info_without_torch(env, work, embedded, tmp_path) -> None:
    pytest.importorskip("faiss")
    run(env, "index", "build", embedded, "--out", tmp_path / "index")
    assert "vid_" in run(env, "query", "a shape", "--index", tmp_path / "index").stdout
    evaluated = run(env, "eval", "--model", work / "export", "--dataset", "generic", "--annotations",
                    work / "videos" / "annotations.jsonl", "--videos", work / "videos", "--workers", "1", "--json")
    assert '"t2v"' in evaluated.stdout
    info = run(env, "info", work / "export").stdout
    assert "frames" in info and "onnxruntime" not in info.lower() or "fp32" in info


def test_serve_text_and_upload_without_torch(env, work, embedded) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*DGL, "serve", "--model", str(work / "export"), "--index", str(embedded), "--port",
                               str(port), "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[1]
                time.sleep(0.2)
        assert httpx.get(f"{base}/search", params={"q": "a red circle", "k": 2}, timeout=30).status_code == 200
        video = sorted((work / "videos").glob("*.mp4"))[0]
        reply = httpx.post(f"{base}/search/video", params={"k": 1}, timeout=60,
                           files={"file": (video.name, video.read_bytes(), "video/mp4")})
        assert reply.status_code == 200 and video.name in reply.text
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.parametrize("args", [["train", "--out", "run"], ["export", "model.safetensors", "--out", "ex"],
                                  ["import-checkpoint", "ref.pth", "--out", "m.safetensors"]])
def test_torch_commands_name_the_extra(env, tmp_path, args) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "ref.pth").write_bytes(b"x")
    proc = subprocess.run([*DGL, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "pip install 'dgl-deploy[" in proc.stderr, proc.stderr


def test_checkpoint_on_the_runtime_install_names_the_extra(env, work, embedded, tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    proc = run(env, "query", "a dog", "--index", embedded, "--model", tmp_path / "model.safetensors", ok=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "dgl-deploy[train]" in proc.stderr
