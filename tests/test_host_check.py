"""`--precision auto` decided on the running host: the export ships a probe batch, each host runs it once per
export + ISA + onnxruntime version (cached), auto picks the fastest precision whose parity holds there and says
why; a forced precision that misses here warns, or is refused with strict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.runtime import host_check
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
from dgl_deploy.runtime.backends.select import open_encoder
from dgl_deploy.runtime.host_check import CACHE_FOLDER, HostCheck, PrecisionCheck, choose, cpu_isa, onnxruntime_version


@pytest.fixture
def export(int8_export, tmp_path) -> Path:
    """A copy of the session's int8 export without any host check cached in it."""
    return Path(shutil.copytree(int8_export[1], tmp_path / "ex", ignore=shutil.ignore_patterns(CACHE_FOLDER)))


def _fake_measure(monkeypatch, results: dict[str, PrecisionCheck]) -> list[str]:
    """Make the probe run return `results`; returns the precisions it was asked to measure."""
    asked: list[str] = []

    def measure(encoder, probes):  # noqa: ANN001, ANN202
        asked.append(encoder.precision)
        return results[encoder.precision]

    monkeypatch.setattr(host_check, "_measure", measure)
    return asked


def test_export_ships_a_probe_batch(int8_export) -> None:
    _, folder, manifest = int8_export
    assert sorted(p.role for p in manifest.probes) == ["text", "video"]
    ids, ids_ref = (np.load(folder / f, allow_pickle=False) for f in ("probe_text.npy", "probe_text.fp32.npy"))
    frames, frames_ref = (np.load(folder / f, allow_pickle=False) for f in ("probe_video.npy", "probe_video.fp32.npy"))
    assert ids.dtype == np.int64 and ids.shape == (8, manifest.max_words)
    assert frames.dtype == np.uint8 and frames.shape == (2, manifest.frames, manifest.image_size, manifest.image_size, 3)
    assert ids_ref.dtype == frames_ref.dtype == np.float32 and ids_ref.shape[1] == frames_ref.shape[1] == manifest.embed_dim
    fp32 = OnnxEncoder(folder, device="cpu", precision="fp32")  # the references are PyTorch fp32's
    np.testing.assert_allclose(fp32.encode_ids(ids), ids_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fp32.encode_videos(frames), frames_ref, atol=1e-4, rtol=0)


def test_auto_checks_this_host_once_and_says_why(export) -> None:
    lines: list[str] = []
    encoder = open_encoder(export, device="cpu", log=lines.append)
    check = encoder.host_check
    assert check is not None and set(check.results) == {"int8", "fp32"} and check.isa == cpu_isa()
    assert check.results["fp32"].min_cosine > 0.9999 and check.held("int8")  # the export's 7-bit int8 holds here
    assert encoder.precision == choose(check, ["int8", "fp32"])[0]
    assert len(lines) == 1 and f"auto picked {encoder.precision} on this host ({cpu_isa()}, onnxruntime" in lines[0]
    assert "int8 min cosine" in lines[0] and "x fp32's speed" in lines[0]
    cached = list((export / CACHE_FOLDER).iterdir())
    assert [p.name.split("-", 1)[1] for p in cached] == [f"{cpu_isa()}-onnxruntime-{onnxruntime_version()}.json"]
    again = OnnxEncoder(export, device="cpu")  # read from the cache: the same results
    assert again.host_check == check and again.precision == encoder.precision


def test_the_cache_is_per_isa_and_redone_when_damaged(export, monkeypatch, tmp_path) -> None:
    asked = _fake_measure(monkeypatch, {"int8": PrecisionCheck(0.9995, 1.0), "fp32": PrecisionCheck(1.0, 2.0)})
    assert OnnxEncoder(export, device="cpu").precision == "int8" and asked == ["int8", "fp32"]
    OnnxEncoder(export, device="cpu")
    assert len(asked) == 2  # cached
    monkeypatch.setattr(host_check, "cpu_isa", lambda: "avx2")  # another host class: measured again
    _fake_measure(monkeypatch, {"int8": PrecisionCheck(0.904, 1.0), "fp32": PrecisionCheck(1.0, 2.0)})
    encoder = OnnxEncoder(export, device="cpu")
    assert encoder.precision == "fp32" and "int8 min cosine 0.90400 < 0.999" in encoder.precision_note
    assert len(list((export / CACHE_FOLDER).iterdir())) == 2
    good = {"int8": {"min_cosine": 0.9995, "seconds": 1.0}, "fp32": {"min_cosine": 1.0, "seconds": 2.0}}
    for damaged in ({"int8": "?"}, {**good, "int8": {"min_cosine": float("nan"), "seconds": 1.0}},
                    {**good, "fp32": {"min_cosine": 1.0, "seconds": 0}}):
        for path in (export / CACHE_FOLDER).iterdir():
            path.write_text(json.dumps({"format": "dgl-deploy-host-check/1", "results": damaged}))
        asked = _fake_measure(monkeypatch, {"int8": PrecisionCheck(0.9995, 1.0), "fp32": PrecisionCheck(1.0, 2.0)})
        assert OnnxEncoder(export, device="cpu").precision == "int8" and asked == ["int8", "fp32"]  # measured again


def test_a_read_only_export_caches_in_the_users_folder(export, monkeypatch, tmp_path) -> None:
    shutil.rmtree(export / CACHE_FOLDER, ignore_errors=True)
    (export / CACHE_FOLDER).write_text("not a folder")  # nothing can be written there (as root too)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    asked = _fake_measure(monkeypatch, {"int8": PrecisionCheck(0.9995, 1.0), "fp32": PrecisionCheck(1.0, 2.0)})
    OnnxEncoder(export, device="cpu")
    OnnxEncoder(export, device="cpu")
    assert asked == ["int8", "fp32"] and len(list((tmp_path / "cache" / "dgl-deploy" / "host_checks").iterdir())) == 1


def test_choose_the_fastest_precision_that_holds() -> None:
    def check(int8: float, int8_seconds: float) -> HostCheck:
        return HostCheck("avx2", "1.0", {"int8": PrecisionCheck(int8, int8_seconds), "fp32": PrecisionCheck(1.0, 1.0)})

    assert choose(check(0.9995, 0.4), ["int8", "fp32"])[0] == "int8"
    picked, reason = choose(check(0.904, 0.4), ["int8", "fp32"])  # fast but wrong here
    assert picked == "fp32" and reason == ("auto picked fp32 on this host (avx2, onnxruntime 1.0; probe: int8 min cosine "
                                           "0.90400 < 0.999, 2.50x fp32's speed; fp32 min cosine 1.00000 >= 0.999)")
    assert choose(check(0.9995, 0.98), ["int8", "fp32"])[0] == "fp32"  # not faster by SPEED_MARGIN: fp32 wins
    assert choose(check(0.9995, 0.98), ["int8"])[0] == "int8"


def test_forced_precision_that_misses_here_warns_or_is_refused(export, monkeypatch) -> None:
    _fake_measure(monkeypatch, {"int8": PrecisionCheck(0.904, 1.0), "fp32": PrecisionCheck(1.0, 2.0)})
    lines: list[str] = []
    encoder = open_encoder(export, device="cpu", precision="int8", log=lines.append)
    assert encoder.precision == "int8" and len(lines) == 2 and lines[0] == f"{export}: using onnxruntime (CPU, int8)"
    assert lines[1].startswith(f"{export}: warning: int8 misses parity on this host ({cpu_isa()}, onnxruntime")
    assert "probe min cosine 0.90400 < 0.999 vs fp32" in lines[1] and "\n" not in lines[1]
    with pytest.raises(DGLError, match=r"--precision int8 refused \(--strict\): int8 misses parity on this host"):
        open_encoder(export, device="cpu", precision="int8", log=None, strict=True)
    assert open_encoder(export, device="cpu", precision="fp32", strict=True, log=None).precision == "fp32"


def test_exports_without_a_probe_keep_the_recorded_parity(export) -> None:
    manifest_file = export / "manifest.json"
    data = json.loads(manifest_file.read_text())
    data.pop("probes")  # as written before probes were shipped
    manifest_file.write_text(json.dumps(data))
    encoder = OnnxEncoder(export, device="cpu")
    assert encoder.host_check is None and encoder.precision == "int8"
    assert "from the export's recorded int8 parity" in encoder.precision_note and "re-export" in encoder.precision_note
