"""Export manifest: round trip, damaged files, checksum and model-identity checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_export import exported_golden, exported_tiny

from dgl_deploy import DGLError
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
from dgl_deploy.runtime.manifest import (
    MANIFEST_FILE,
    Manifest,
    check_same_model,
    load_manifest,
    sha256_file,
    verified_file,
    write_manifest,
)


def _copy_export(tmp_path: Path) -> Path:
    folder = tmp_path / "ex"
    shutil.copytree(exported_tiny()[1], folder)
    return folder


def test_round_trip(tmp_path: Path) -> None:
    manifest = exported_tiny()[2]
    write_manifest(tmp_path, manifest)
    again = load_manifest(tmp_path)
    assert again == manifest and isinstance(again, Manifest)
    assert again.inputs["video"].dtype == "uint8" and again.inputs["text"].shape == ("B", manifest.max_words)
    assert {g.role for g in again.graphs} == {"text", "video"} and all(len(g.sha256) == 64 for g in again.graphs)


@pytest.mark.parametrize("content,match", [
    (None, "not an export folder"),
    ("{not json", "unreadable manifest"),
    ('{"format": "other/1"}', "not a dgl-deploy export manifest"),
    ('{"format": "dgl-deploy-export/1", "fingerprint": "x"}', "damaged manifest"),
])
def test_bad_manifests_refused(tmp_path: Path, content: str | None, match: str) -> None:
    if content is not None:
        (tmp_path / MANIFEST_FILE).write_text(content)
    with pytest.raises(DGLError, match=match):
        load_manifest(tmp_path)


def test_missing_precision_is_named() -> None:
    with pytest.raises(DGLError, match="no int8 video graph .*has: fp32"):
        exported_tiny()[2].graph("video", "int8")


def test_changed_graph_refused_by_checksum(tmp_path: Path) -> None:
    folder = _copy_export(tmp_path)
    entry = load_manifest(folder).graph("text", "fp32")
    with open(folder / entry.file, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DGLError, match="checksum .* does not match"):
        verified_file(folder, entry.file, entry.sha256)


def test_graph_of_another_model_refused(tmp_path: Path) -> None:
    """A graph exported from another model, placed next to this manifest, is refused: first by its checksum,
    and, if someone also edits the checksum in the manifest, by the fingerprint inside the graph."""
    folder = _copy_export(tmp_path)
    foreign = exported_golden("transformer")[1] / "text_encoder.onnx"
    shutil.copyfile(foreign, folder / "text_encoder.onnx")
    with pytest.raises(DGLError, match="checksum"):
        OnnxEncoder(folder, device="cpu").session("text")
    data = json.loads((folder / MANIFEST_FILE).read_text())
    for graph in data["graphs"]:
        if graph["file"] == "text_encoder.onnx":
            graph["sha256"] = sha256_file(foreign)
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(DGLError, match="exported from model .* describes model"):
        OnnxEncoder(folder, device="cpu").session("text")


def test_check_same_model() -> None:
    check_same_model("abc", "abc", "index")
    with pytest.raises(DGLError, match="embeddings.json: made by model abc, not by model def"):
        check_same_model("abc", "def", "embeddings.json")
