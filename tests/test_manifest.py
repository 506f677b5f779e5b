"""Export manifest: round trip, damaged and untrusted manifests (types, sizes, file names, links), checksum,
model-identity and graph-signature checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app
from dgl_deploy.export.onnx_export import stamp_metadata
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
from dgl_deploy.runtime.manifest import (
    FINGERPRINT_KEY,
    MANIFEST_FILE,
    Manifest,
    check_same_model,
    graph_signature,
    load_manifest,
    sha256_file,
    verified_file,
    write_manifest,
)


@pytest.fixture
def copied_export(tmp_path: Path, tiny_export) -> Path:
    """A private copy of the session's tiny export, free to damage."""
    folder = tmp_path / "ex"
    shutil.copytree(tiny_export[1], folder)
    return folder


def test_round_trip(tmp_path: Path, tiny_export) -> None:
    manifest = tiny_export[2]
    write_manifest(tmp_path, manifest)
    again = load_manifest(tmp_path)
    assert again == manifest and isinstance(again, Manifest)
    assert again.inputs["video"].dtype == "uint8" and again.inputs["text"].shape == ("B", "W")
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


def test_missing_precision_is_named(tiny_export) -> None:
    with pytest.raises(DGLError, match="no int8 video graph .*has: fp32"):
        tiny_export[2].graph("video", "int8")


def test_changed_graph_refused_by_checksum(tmp_path: Path, copied_export) -> None:
    folder = copied_export
    entry = load_manifest(folder).graph("text", "fp32")
    with open(folder / entry.file, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DGLError, match="checksum .* does not match"):
        verified_file(folder, entry.file, entry.sha256)


def _edit_manifest(folder: Path, edit) -> None:
    data = json.loads((folder / MANIFEST_FILE).read_text())
    edit(data)
    (folder / MANIFEST_FILE).write_text(json.dumps(data))


def test_graph_of_another_model_refused(tmp_path: Path, tiny_export, golden_export, copied_export) -> None:
    """A graph exported from another model, placed next to this manifest, is refused: by its declared shapes when
    they differ (at open), by its checksum, and, if someone also edits the checksum in the manifest, by the
    fingerprint inside the graph."""
    folder = copied_export
    golden_frames = golden_export("transformer")[2].frames
    shutil.copyfile(golden_export("transformer")[1] / "video_encoder.onnx", folder / "video_encoder.onnx")
    with pytest.raises(DGLError, match=rf"video_encoder.onnx: the graph maps uint8 \('B', {golden_frames},.*says uint8 "
                                       rf"\('B', {tiny_export[2].frames},"):
        OnnxEncoder(folder, device="cpu")
    same_shapes = onnx.load(str(tiny_export[1] / "video_encoder.onnx"))
    stamp_metadata(same_shapes, {FINGERPRINT_KEY: "0123456789abcdef"})  # as if exported from another model
    onnx.save(same_shapes, str(folder / "video_encoder.onnx"))
    with pytest.raises(DGLError, match="checksum"):
        OnnxEncoder(folder, device="cpu").session("video")
    _edit_manifest(folder, lambda data: [g.update(sha256=sha256_file(folder / g["file"])) for g in data["graphs"]])
    with pytest.raises(DGLError, match="exported from model 0123456789abcdef but .* describes model"):
        OnnxEncoder(folder, device="cpu", precision="fp32").session("video")


def _set(path: str, value):
    """An edit of the manifest JSON setting the key at dotted `path` (list items by index)."""
    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data[key]
        data[int(last) if isinstance(data, list) else last] = value
    return edit


@pytest.mark.parametrize("path, value, match", [
    ("image_size", 20000, "image_size must be an integer in 16..1024, got 20000"),
    ("frames", 0, "frames must be an integer in 1..1024"),
    ("max_words", 4096, "max_words must be an integer in 2..1024"),
    ("embed_dim", 10**9, "embed_dim must be an integer"),
    ("frames", 2.5, "manifest.frames: expected int, got 2.5"),
    ("frames", "4", "manifest.frames: expected int"),
    ("frames", True, "manifest.frames: expected int, got true"),
    ("frames", 8, r"inputs .* disagree with frames=8"),
    ("inputs", [], "manifest.inputs: expected dict"),
    ("inputs.video.shape", "B,4", "manifest.inputs.video.shape: expected tuple"),
    ("graphs", {"a": 1}, "manifest.graphs: expected tuple"),
    ("graphs.0", "text_encoder.onnx", r"manifest.graphs\[0\]: expected an object"),
    ("graphs.0.parity", {"min_cosine": "high"}, "parity.min_cosine: expected float"),
    ("graphs.0.role", "audio", "unknown role/precision 'audio'"),
    ("graphs.0.sha256", "abc", "recorded sha256 'abc' is not 64 hex digits"),
    ("graphs.0.file", "../outside/text_encoder.onnx", "'../outside/text_encoder.onnx' is not a plain file name"),
    ("graphs.0.file", "/etc/passwd", "'/etc/passwd' is not a plain file name"),
    ("graphs.0.file", "..", "'..' is not a plain file name"),
    ("tokenizer", "sub/bpe.txt.gz", "'sub/bpe.txt.gz' is not a plain file name"),
    ("tokenizer_sha256", None, "bpe_simple_vocab_16e6.txt.gz: recorded sha256 None"),
    ("graphs.0.surprise", 1, "manifest.graphs\\[0\\]: unknown key 'surprise'"),
    ("probes.0.file", "../probe_text.npy", "'../probe_text.npy' is not a plain file name"),
    ("probes.1.reference_sha256", "abc", "recorded sha256 'abc' is not 64 hex digits"),
    ("probes.1.role", "text", r"probes \['text', 'text'\] are not one per tower"),
])
def test_untrusted_manifest_fields_refused(tmp_path: Path, path: str, value, match: str, copied_export) -> None:
    folder = copied_export
    _edit_manifest(folder, _set(path, value))
    with pytest.raises(DGLError, match=f"manifest.json: damaged manifest \\(.*{match}"):
        load_manifest(folder)


def test_missing_key_and_non_object_manifest(tmp_path: Path, copied_export) -> None:
    folder = copied_export
    _edit_manifest(folder, lambda data: data.pop("graphs"))
    with pytest.raises(DGLError, match="damaged manifest \\(manifest: missing key 'graphs'\\)"):
        load_manifest(folder)
    (folder / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(DGLError, match="not a dgl-deploy export manifest"):
        load_manifest(folder)


def test_sizes_edited_consistently_are_refused_at_open(tmp_path: Path, copied_export) -> None:
    """frames edited in both the sizes and the signatures still disagree with the graph: refused when the export
    is opened (before any video is decoded at the edited size), not by an onnxruntime traceback later."""
    folder = copied_export

    def edit(data: dict) -> None:
        data["frames"] = 8
        data["inputs"]["video"]["shape"][1] = 8
    _edit_manifest(folder, edit)
    with pytest.raises(DGLError, match=r"video_encoder.onnx: the graph maps uint8 \('B', 4, 32, 32, 3\)"):
        OnnxEncoder(folder, device="cpu")


def test_symlink_out_of_the_folder_refused(tmp_path: Path, copied_export) -> None:
    folder = copied_export
    outside = tmp_path / "outside.onnx"
    (folder / "text_encoder.onnx").rename(outside)
    (folder / "text_encoder.onnx").symlink_to(outside)
    with pytest.raises(DGLError, match="text_encoder.onnx: links outside the export folder"):
        OnnxEncoder(folder, device="cpu")


def test_graph_signature_reads_declared_shapes(tiny_export) -> None:
    folder = tiny_export[1]
    ids, embedding = graph_signature(folder / "text_encoder.onnx")
    assert (ids.name, ids.dtype, ids.shape[1:]) == ("ids", "int64", ("W",))  # any length up to max_words
    assert (embedding.dtype, embedding.shape[1:]) == ("float32", (64,))
    frames = graph_signature(folder / "video_encoder.onnx")[0]
    assert (frames.dtype, frames.shape[1:]) == ("uint8", (4, 32, 32, 3)) and isinstance(frames.shape[0], str)


def test_not_an_onnx_file_is_one_line(tmp_path: Path, copied_export) -> None:
    folder = copied_export
    (folder / "video_encoder.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(DGLError, match="video_encoder.onnx: not a readable ONNX graph"):
        OnnxEncoder(folder, device="cpu")


def test_check_same_model() -> None:
    check_same_model("abc", "abc", "index")
    with pytest.raises(DGLError, match="embeddings.json: made by model abc, not by model def"):
        check_same_model("abc", "def", "embeddings.json")


def test_info_on_an_export_folder_reads_the_manifest(tiny_export) -> None:
    result = CliRunner().invoke(app, ["info", str(tiny_export[1])])
    assert result.exit_code == 0, result.output
    assert "graphs         text fp32, video fp32" in result.output and '"frames": 4' in result.output
    assert json.loads(CliRunner().invoke(app, ["info", str(tiny_export[1]), "--json"]).output)["frames"] == 4
