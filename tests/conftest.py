"""Shared fixtures: seeded torch, tiny random-init models (no downloads anywhere in the tests)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch


def _shared_dir() -> Path:
    """The project's shared/ folder: $DGL_SHARED_DIR, else ../shared beside the checkout, else /work/shared."""
    candidates = [os.environ.get("DGL_SHARED_DIR"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"]
    found = [Path(c) for c in candidates if c and (Path(c) / "reference").is_dir()]
    return found[0] if found else Path(__file__).resolve().parents[2] / "shared"


SHARED = _shared_dir()
REFERENCE = SHARED / "reference"
GOLDEN = REFERENCE / "golden"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def require_shared(path: Path) -> Path:
    """`path` under shared/, which must exist: a golden/reference test fails where its fixture is missing, never
    skips (a skipped parity check would look like a passed one)."""
    if not path.exists():
        pytest.fail(f"{path} not found: the golden/reference fixtures in shared/ are missing (looked in {SHARED}; "
                    "set $DGL_SHARED_DIR to the folder holding reference/ and real_videos/)", pytrace=False)
    return path


def golden_case(latent: str) -> tuple[Path, dict, Path]:
    """(reference checkpoint, its JSON config, its npz of inputs/outputs)."""
    pth, cfg, npz = (require_shared(GOLDEN / f"dgl_tiny_{latent}{ext}") for ext in (".pth", ".json", ".npz"))
    return pth, json.loads(cfg.read_text()), npz


@pytest.fixture(scope="session")
def tiny_model():
    """A dgl-tiny transformer-latent model with random (seeded) prompts and backbone."""
    from dgl_deploy.model.model import create_model

    torch.manual_seed(1)
    return create_model("dgl-tiny", pretrained=None).eval()


def run_quick_demo(out: Path) -> Path:
    """`dgl demo --quick` into `out` (a few CPU seconds); returns `out`."""
    from dgl_deploy.cli.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=str(out), workers=1).quick(), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """One quick demo per test session, shared by the demo and README tests."""
    return run_quick_demo(tmp_path_factory.mktemp("demo") / "demo_out")


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> tuple:
    """(model, folder, manifest): one fp32 export of a seeded dgl-tiny model for the whole session
    (exports take seconds; tests only read the files, or copy the folder before changing it)."""
    from dgl_deploy.export import export_onnx
    from dgl_deploy.model.model import create_model

    torch.manual_seed(3)
    model = create_model("dgl-tiny", pretrained=None).eval()
    out = tmp_path_factory.mktemp("export") / "tiny"
    return model, out, export_onnx(model, out, log=_quiet)


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory, tiny_export) -> tuple:
    """(model, folder, manifest): tiny_export's model exported with its int8 graphs, once per session (tests only
    read the files, or copy the folder before changing it)."""
    from dgl_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("export") / "tiny_int8"
    return tiny_export[0], out, export_onnx(tiny_export[0], out, precisions=("int8",), log=_quiet)


@pytest.fixture(scope="session")
def golden_export(tmp_path_factory):  # noqa: ANN201
    """latent -> (model, folder, manifest) of an imported golden reference checkpoint, exported once."""
    from dgl_deploy.export import export_onnx
    from dgl_deploy.model.reference import import_reference

    made: dict[str, tuple] = {}

    def get(latent: str) -> tuple:
        if latent not in made:
            pth, cfg, _ = golden_case(latent)
            model = import_reference(pth, frames=cfg["frames"], max_words=cfg["max_words"]).eval()
            out = tmp_path_factory.mktemp("export") / f"golden_{latent}"
            made[latent] = (model, out, export_onnx(model, out, log=_quiet))
        return made[latent]

    return get


@contextmanager
def running_app(app: object) -> Iterator[str]:
    """An ASGI `app` on a real socket (uvicorn in a thread, a free port); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_serve_files(root: Path) -> Path:
    """Six synthetic videos, a dgl-tiny checkpoint and its embeddings (`emb.npy`) in `root`, for serve tests."""
    from dgl_deploy.data.synthetic import make_synthetic
    from dgl_deploy.model.checkpoint import save
    from dgl_deploy.model.model import create_model
    from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
    from dgl_deploy.runtime.backends.select import open_encoder

    make_synthetic(root / "videos", videos=6, seed=2)
    torch.manual_seed(0)
    save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
    encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
    embed_videos(root / "videos", root / "emb.npy", encoder, EmbedSettings(workers=1))
    return root


TORCH_SIDE = ("torch", "torchvision", "open_clip", "onnx", "onnxscript", "onnxslim", "safetensors")  # not in [cpu]


def no_torch_env(folder: Path, blocked: tuple[str, ...] = TORCH_SIDE) -> dict[str, str]:
    """An environment whose Python cannot import `blocked` (a sitecustomize in `folder` sets them to None), as in
    a runtime-only install."""
    (folder / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{name!r}] = None\n"
                                                                     for name in blocked))
    return {**os.environ, "PYTHONPATH": str(folder), "COLUMNS": "200"}
