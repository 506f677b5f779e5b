"""Hostile and damaged inputs (issue 26, round 3): `dgl query -f` of 50,000 lines in flat memory, row checksums
(swapped rows, a row of 3e38, an edited float16 scan copy: refused in one line; the sampled open-time check and the
full `dgl verify`), every JSON reader against 100,000-deep nesting, NaN/inf/overflow in options and config keys
(named), non-UTF-8 file names and lists, 0-byte rows and segments files, a full disk and a hostile state.pt."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app
from dgl_deploy.cli.app import os_error_line
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.retrieval.embed import embed_videos
from dgl_deploy.retrieval.embed_parts import read_job
from dgl_deploy.retrieval.store import (
    CHECK_BLOCK,
    SCAN_COPY_MIN_ROWS,
    StorePaths,
    open_store,
    sampled_blocks,
    verify_store,
    write_set,
)
from dgl_deploy.runtime.backends import select
from tests.test_store_embed import SETTINGS, FakeEncoder

runner = CliRunner()
DEEP = "[" * 100_000 + "]" * 100_000
FINGERPRINT = "fake-1"


def _set(folder: Path, rows: int, dim: int = 8, dtype: str = "float32", spans: bool = False) -> StorePaths:
    """A set of `rows` seeded random unit rows (ids v0, v1, ...), written as `dgl embed` writes one."""
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    times = np.stack([np.arange(rows), np.arange(rows) + 1.0], axis=1) if spans else None
    paths = StorePaths.of(folder / "emb.npy")
    fields = {"model_fingerprint": FINGERPRINT}
    if spans:
        fields["settings"] = {"segments": {"window": 1.0, "stride": 1.0}}
    write_set(paths, [vectors], [f"v{i}" for i in range(rows)], dim=dim, dtype=dtype, fields=fields, spans=times)
    return paths


def _generation_file(paths: StorePaths, kind: str = "rows") -> Path:
    manifest = json.loads(paths.manifest.read_text())
    return {"rows": paths.rows_file, "scan": paths.scan_file, "spans": paths.spans_file}[kind](manifest["generation"])


def _one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message and len(message) < 600, message
    return message


def _cli_error(args: list[str]) -> str:
    """The one `error:` line (exit 1) a `dgl` command prints."""
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Aborted" not in result.output, result.output
    return _one_line(result.output)


# --- bounded work: `dgl query -f` -------------------------------------------------------------------------------

SCRATCH_QUERY = """
import resource, subprocess, sys
child = '''
import sys
import numpy as np
from dgl_deploy.runtime.backends import select
from dgl_deploy.runtime.device import CPU


class ScratchEncoder:
    \"\"\"Seeded unit rows, touching 64 KiB of scratch memory per text as a text tower's activations do.\"\"\"

    backend, frames, image_size, max_words, embed_dim, frame_sampling = "fake", 2, 16, 8, 8, "uniform"
    fingerprint = "fake-1"
    device, precision, manifest, host_check, video_lanes = CPU, "fp32", None, None, 0

    def encode_text(self, texts):
        scratch = np.ones((len(texts), 16384), np.float32)
        rows = np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32) * scratch[:, :8]
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def describe(self):
        return "scratch encoder"


select.open_encoder = lambda *args, **kwargs: ScratchEncoder()
from dgl_deploy.cli import main
sys.argv = ["dgl", *sys.argv[1:]]
main()
'''
with open(sys.argv[1], "w") as out:
    done = subprocess.run([sys.executable, "-c", child, *sys.argv[2:]], stdout=out)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_query_file_of_50000_lines_runs_in_flat_memory(tmp_path: Path) -> None:
    """`dgl query -f` with 50,000 lines: texts encoded and searched TEXT_BATCH at a time and the JSON streamed
    out, so the process peaks far under 2 GB although encoding all at once would touch 3.3 GB of scratch."""
    paths = _set(tmp_path, 1000)
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"a red circle number {n}\n" for n in range(50_000)))
    (tmp_path / "model").write_text("")
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-c", SCRATCH_QUERY, str(out), "query", "--index", str(paths.emb), "-f",
                           str(queries), "--model", str(tmp_path / "model"), "-k", "3", "--json"],
                          capture_output=True, text=True, timeout=600)
    code, peak_kib = map(int, done.stdout.split())
    assert code == 0, done.stderr
    results = json.loads(out.read_text())
    assert len(results) == 50_000 and results[49_999]["query"] == "a red circle number 49999"
    assert all(len(r["results"]) == 3 for r in results[::997])
    assert peak_kib < 2 * 2**20, f"peak RSS {peak_kib / 2**10:.0f} MiB"


@pytest.mark.slow
def test_query_file_of_50000_lines_with_a_real_model(tmp_path: Path) -> None:
    """The same with dgl-tiny through torch, end to end (about 100 s on two CPU cores; 5.1 GB before batching)."""
    from tests.conftest import make_serve_files

    root = make_serve_files(tmp_path / "set")
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"a dog surfing wave {n}\n" for n in range(50_000)))
    wrapper = "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); " \
              "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "dgl_deploy", "query", "--index",
                           str(root / "emb.npy"), "--model", str(root / "model.safetensors"), "-f", str(queries),
                           "--json"], capture_output=True, text=True)
    code, peak_kib = map(int, done.stdout.split())
    assert code == 0 and peak_kib < 2 * 2**20, (done.stderr, peak_kib)


# --- row integrity -----------------------------------------------------------------------------------------------

def test_swapped_rows_are_refused_in_one_line(tmp_path: Path) -> None:
    paths = _set(tmp_path, 40)
    rows_file = _generation_file(paths)
    rows = np.load(rows_file)
    rows[[3, 7]] = rows[[7, 3]]  # same bytes, same shape, same norms: only the checksum tells
    np.save(rows_file, rows)
    with pytest.raises(DGLError, match=f"{rows_file.name}: the rows do not match their checksum"):
        open_store(paths.emb)
    assert "do not match their checksum" in _cli_error(["query", "a dog", "--index", str(paths.emb)])
    assert "do not match their checksum" in _cli_error(["verify", str(paths.emb)])


def test_a_row_of_3e38_and_an_edited_scan_copy_are_refused(tmp_path: Path) -> None:
    """A float32 set with a float16 scan copy: a finite but foreign row (3e38) in the rows, and a same-shape edit
    or an inf (what 3e38 becomes in float16) in the copy, each refused by every open."""
    paths = _set(tmp_path, SCAN_COPY_MIN_ROWS, dim=4)
    assert verify_store(paths.emb).endswith("ids match theirs")
    rows_file, scan_file = _generation_file(paths), _generation_file(paths, "scan")
    for target, value, match in ((rows_file, 3e38, "the rows do not match"),
                                 (scan_file, 0.5, "the scan copy do not match"),
                                 (scan_file, np.inf, "row 5000 of the scan copy is NaN/inf")):
        kept = target.read_bytes()
        edited = np.load(target, mmap_mode="r+")
        edited[5000, 1] = value
        edited.flush()
        del edited
        with pytest.raises(DGLError, match=match):
            open_store(paths.emb)
        target.write_bytes(kept)
    open_store(paths.emb)


def test_the_open_time_check_is_sampled_and_verify_is_full(tmp_path: Path) -> None:
    """Beyond CHECK_SAMPLES blocks of rows an open checks a sample of them (first and last included); a swap in a
    block outside the sample passes the open and is caught by `dgl verify`."""
    paths = _set(tmp_path, 40_000, dim=64)  # 10 MB of rows: 157 blocks
    size = 40_000 * 64 * 4
    sampled = set(sampled_blocks(size))
    assert len(sampled) == 64 and {0, -(-size // CHECK_BLOCK) - 1} <= sampled
    block = next(b for b in range(1, 157) if b not in sampled)
    row = block * CHECK_BLOCK // (64 * 4) + 1
    rows_file = _generation_file(paths)
    rows = np.load(rows_file, mmap_mode="r+")
    rows[[row, row + 1]] = rows[[row + 1, row]]
    rows.flush()
    del rows
    open_store(paths.emb)
    assert "the rows do not match their checksum" in _cli_error(["verify", str(paths.emb)])


def test_sets_without_checksums_still_open(tmp_path: Path) -> None:
    """A set written before row checksums were recorded opens as before; `dgl verify` says it has none."""
    paths = _set(tmp_path, 10)
    manifest = json.loads(paths.manifest.read_text())
    del manifest["rows_checksum"]
    paths.manifest.write_text(json.dumps(manifest))
    open_store(paths.emb)
    result = runner.invoke(app, ["verify", str(paths.emb)])
    assert result.exit_code == 0 and "no checksum recorded" in result.output, result.output
    manifest["rows_checksum"] = {"sha256": "0" * 64, "sample_sha256": "x", "block": 3, "samples": 1}
    paths.manifest.write_text(json.dumps(manifest))
    with pytest.raises(DGLError, match="'rows_checksum' is not a checksum record"):
        open_store(paths.emb)


@pytest.mark.parametrize("kind", ["rows", "spans"])
def test_a_zero_byte_rows_or_segments_file_is_named(tmp_path: Path, kind: str) -> None:
    paths = _set(tmp_path, 10, spans=True)
    target = _generation_file(paths, kind)
    target.write_bytes(b"")
    line = _cli_error(["query", "a dog", "--index", str(paths.emb)])
    assert f"{target}: cannot read" in line and "the file is empty" in line


# --- JSON readers ------------------------------------------------------------------------------------------------

def _deep_readers(tmp_path: Path) -> dict[str, object]:
    """Reader name -> a call reading DEEP through that reader (each file written first)."""
    from dgl_deploy.data.datasets import load_dataset
    from dgl_deploy.model.checkpoint import FORMAT, read_config
    from dgl_deploy.model.config import BackboneSpec
    from dgl_deploy.retrieval.ann_index import open_index
    from dgl_deploy.runtime.manifest import load_manifest
    from training.config import build_config

    safetensors = pytest.importorskip("safetensors.numpy")
    paths = _set(tmp_path / "set", 4)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text(DEEP)
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index.json").write_text(DEEP)
    (tmp_path / "config.json").write_text(DEEP)
    (tmp_path / "config.toml").write_text(f"lr = {DEEP}\n")
    (tmp_path / "annotations.jsonl").write_text(DEEP + "\n")
    safetensors.save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"),
                          metadata={"format": FORMAT, "config": DEEP, "backbone": DEEP})
    manifest = paths.manifest.read_text()
    return {
        "set manifest": lambda: (paths.manifest.write_text(DEEP), open_store(paths.emb)),
        "set manifest, deep inside": lambda: (paths.manifest.write_text(manifest[:-1] + f', "settings": {DEEP}}}'),
                                              open_store(paths.emb)),
        "export manifest": lambda: load_manifest(tmp_path / "export"),
        "index.json": lambda: open_index(tmp_path / "index"),
        "train --config (JSON)": lambda: build_config(tmp_path / "config.json"),
        "train --config (TOML)": lambda: build_config(tmp_path / "config.toml"),
        "checkpoint metadata": lambda: read_config(tmp_path / "model.safetensors"),
        "backbone identity": lambda: BackboneSpec.from_json(DEEP),
        "annotations": lambda: load_dataset("generic", tmp_path / "annotations.jsonl", tmp_path),
    }


def test_every_json_reader_survives_deep_nesting(tmp_path: Path) -> None:
    """100,000-deep nesting in each JSON input: one DGLError line naming the file, never a RecursionError."""
    for name, read in _deep_readers(tmp_path).items():
        with pytest.raises(DGLError) as caught:
            read()
        assert "nested more than" in _one_line(str(caught.value)), name
    assert "nested more than" in _cli_error(["train", "--config", str(tmp_path / "config.json")])
    (tmp_path / "job.json").write_text(DEEP)
    assert read_job(tmp_path) is None  # an unreadable job file is redone


@pytest.mark.parametrize(("name", "text", "named"), [
    ("config.json", '{"lr": NaN}', "lr is nan"),
    ("config.json", '{"epochs": 1e400}', "epochs is inf"),
    ("config.json", '{"epochs": "abc"}', "training setting epochs must be an integer"),
    ("config.json", '{"epochs": 100000000000000000000000}', "training setting epochs must be an integer"),
    ("config.json", '{"lr": 1e-3, "warmup": -Infinity}', "warmup is -inf"),
    ("config.toml", "lr = nan\n", "lr is nan"),
    ("config.toml", "epochs = 1e400\n", "epochs is inf"),
    ("config.toml", "quiet = 1\n", "training setting quiet must be true or false"),
    ("config.json", b'{"videos": "caf\xe9"}', "invalid JSON"),
])
def test_config_numbers_are_finite_and_named(tmp_path: Path, name: str, text: str | bytes, named: str) -> None:
    config = tmp_path / name
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = _cli_error(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert str(config) in line and named in line


@pytest.mark.parametrize("args", [["train", "--lr", "nan"], ["train", "--warmup", "inf"],
                                  ["train", "--val-fraction", "1e400"],
                                  ["embed", "videos", "--out", "e.npy", "--model", "m", "--stride", "nan"],
                                  ["embed", "videos", "--out", "e.npy", "--model", "m", "--timeout", "nan"]])
def test_non_finite_options_are_refused_by_name(args: list[str]) -> None:
    """Unbounded float options by the command boundary (exit 1); bounded ones by Typer's bounds (usage, exit 2)."""
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output and (
        result.exit_code == 1 and result.output == f"error: {args[-2]} must be a finite number, got {float(args[-1])}\n"
        or result.exit_code == 2 and f"Invalid value for '{args[-2]}'" in result.output), result.output


# --- names in any encoding ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips") / "videos"
    make_synthetic(folder, videos=2, seed=2, seconds=0.5)
    return folder


def test_undecodable_file_names_are_listed_as_failed(tmp_path: Path, clips: Path, monkeypatch) -> None:
    """A file named with byte 0xff in a folder, and a Latin-1 `.txt` list naming files: the others are embedded,
    each undecodable name is a failure in readable form (\\xNN), in the summary and in the errors file."""
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clips / "vid_00000.mp4", folder / "ok.mp4")
    shutil.copy(clips / "vid_00001.mp4", bytes(folder / "bad") + b"\xff.mp4")
    shutil.copy(clips / "vid_00001.mp4", bytes(folder / "caf") + b"\xe9.mp4")
    result = embed_videos(folder, tmp_path / "a.npy", FakeEncoder(), SETTINGS)
    assert result.embedded == 1 and sorted(result.failures) == [
        ("bad\\xff.mp4", "the file name is not UTF-8 text: rename the file to embed it"),
        ("caf\\xe9.mp4", "the file name is not UTF-8 text: rename the file to embed it")]
    assert open_store(tmp_path / "a.npy").ids == ["ok.mp4"]
    listing = tmp_path / "list.txt"
    listing.write_bytes("videos/ok.mp4\nvideos/café.mp4\n".encode("latin-1"))
    monkeypatch.setattr(select, "open_encoder", lambda *_, **__: FakeEncoder())
    out = runner.invoke(app, ["embed", str(listing), "--out", str(tmp_path / "b.npy"), "--model", "m", "--quiet"])
    assert out.exit_code == 3 and "failed: videos/caf\\xe9.mp4: the file name is not UTF-8" in out.output, out.output
    assert "videos/caf\\xe9.mp4\t" in (tmp_path / "b.errors.tsv").read_text(encoding="utf-8")


# --- writes and training state ------------------------------------------------------------------------------------

def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    paths = _set(tmp_path, 4)

    def full(*_, **__) -> None:  # noqa: ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write() says: no file name

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as caught:
        _set(tmp_path, 4)
    line = os_error_line(caught.value)
    assert line.startswith(f"{paths.ids.parent}/emb.gen-") and line.endswith("(free some space, or write elsewhere)")


def test_a_hostile_training_state_is_one_whole_line(tmp_path: Path) -> None:
    import datetime

    torch = pytest.importorskip("torch")
    from training.state import FORMAT, load_state

    state = tmp_path / "state.pt"
    for content in (b"garbage", None):
        if content is None:
            torch.save({"format": FORMAT, "identity": {}, "when": datetime.date(2020, 1, 1)}, state)
        else:
            state.write_bytes(content)
        with pytest.raises(DGLError) as caught:
            load_state(state, {})
        message = _one_line(str(caught.value))
        assert message.startswith(f"{state}: unreadable training state (") and message.endswith("new run directory")
        reason = message.split("(", 1)[1].split(")")[0]
        assert not reason.endswith(" ") and ". " not in reason, reason
