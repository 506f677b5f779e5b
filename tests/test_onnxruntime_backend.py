"""onnxruntime backend: torch-free tokenizer identical to open_clip's, encoder parity with the torch
backend, input checks, and a query start-up that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dgl_deploy import DGLError
from dgl_deploy.export.parity import TOKENIZER_CORPUS, sample_frames
from dgl_deploy.model.checkpoint import model_fingerprint
from dgl_deploy.model.tokenizer import Tokenizer
from dgl_deploy.runtime.backends.base import Encoder, used_words
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder, physical_cores
from dgl_deploy.runtime.backends.torch_backend import TorchEncoder
from dgl_deploy.runtime.tokenizer import BPETokenizer, open_clip_bpe_file

EXTRA_CORPUS = (
    "The quick brown fox jumps over the lazy dog", "a   man\n\n   cooks pasta", "I'M HERE!!! ...", "2024-01-01 at 10:30pm",
    "emoji 😀😃😄 and kanji 漢字 and arabic مرحبا", "don't won't shouldn't y'all", "naïve résumé coöperate",
    "café&nbsp;au&nbsp;lait", "x" * 80 + " y", "zero-width\u200bspace", "tab\tseparated\tvalues", "ＦＵＬＬＷＩＤＴＨ",
)


@pytest.mark.parametrize("max_words", [4, 16, 32, 77])
def test_runtime_tokenizer_matches_open_clip(max_words: int) -> None:
    corpus = list(TOKENIZER_CORPUS + EXTRA_CORPUS)
    expected = Tokenizer(max_words)(corpus).numpy()
    actual = BPETokenizer(open_clip_bpe_file(), max_words)(corpus)
    assert actual.dtype == np.int64 and actual.shape == (len(corpus), max_words)
    np.testing.assert_array_equal(actual, expected)


@pytest.fixture(scope="module")
def encoders(tiny_export):  # noqa: ANN201
    model, folder, _ = tiny_export
    return TorchEncoder(model, model_fingerprint(model)), OnnxEncoder(folder, device="cpu")


def test_encoder_matches_torch_backend(encoders) -> None:
    torch_enc, onnx_enc = encoders
    assert isinstance(onnx_enc, Encoder) and onnx_enc.fingerprint == torch_enc.fingerprint
    assert (onnx_enc.frames, onnx_enc.image_size, onnx_enc.max_words, onnx_enc.embed_dim) == \
        (torch_enc.frames, torch_enc.image_size, torch_enc.max_words, torch_enc.embed_dim)
    texts = ["a red circle moves left", "", "Ünïcode & <b>html</b> 123", "a dog " * 20]
    np.testing.assert_allclose(onnx_enc.encode_text(texts), torch_enc.encode_text(texts), atol=1e-4, rtol=0)
    frames = sample_frames(onnx_enc.frames, onnx_enc.image_size, 3, np.random.default_rng(5))
    got = onnx_enc.encode_videos(frames)
    assert got.dtype == np.float32 and got.shape == (3, onnx_enc.embed_dim)
    np.testing.assert_allclose(got, torch_enc.encode_videos(frames), atol=1e-4, rtol=0)
    assert onnx_enc.describe() == "onnxruntime (CPU, fp32)"


def test_cpu_video_runs_go_side_by_side(tiny_export) -> None:
    """On CPU a batch of videos runs one video per run, one single-threaded run per core at once; the rows come
    back in input order, equal to one-by-one runs. A lone video (and texts) takes every core, unless the
    single-threaded session is loaded already (no second copy of the graph)."""
    _, folder, _ = tiny_export
    cores = physical_cores()
    lone_first, batch_first = OnnxEncoder(folder, device="cpu"), OnnxEncoder(folder, device="cpu")
    frames = sample_frames(lone_first.frames, lone_first.image_size, 5, np.random.default_rng(9))
    lone = lone_first.encode_videos(frames[:1])
    assert _threads(lone_first) == {("video", None): cores}
    rows = batch_first.encode_videos(frames)
    np.testing.assert_array_equal(rows, np.concatenate([batch_first.encode_videos(f[None]) for f in frames]))
    np.testing.assert_array_equal(rows[:1], lone)
    batch_first.encode_text(["a"])
    assert _threads(batch_first) == {("video", 1): 1, ("text", None): cores}
    np.testing.assert_array_equal(lone_first.encode_videos(frames), rows)
    assert _threads(lone_first) == {("video", None): cores, ("video", 1): 1}


def _threads(encoder: OnnxEncoder) -> dict:
    return {key: session.get_session_options().intra_op_num_threads for key, session in encoder._sessions.items()}


def test_text_graph_runs_only_up_to_the_last_eot(encoders) -> None:
    """The text graph takes any token length: the ids cut after the batch's last EOT (what encode_ids feeds it)
    give the embeddings of the whole zero-padded ids, alone and next to a longer caption."""
    onnx_enc = encoders[1]
    ids = onnx_enc.tokenize(["a dog", "a red circle moves to the left of the screen", ""])
    assert used_words(ids[:1]) == 4 and used_words(torch.from_numpy(ids[2:])) == 2 and used_words(ids) < ids.shape[1]
    session = onnx_enc.session("text")
    whole = session.run(None, {session.get_inputs()[0].name: ids})[0]
    np.testing.assert_allclose(onnx_enc.encode_ids(ids), whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx_enc.encode_ids(ids[:1]), whole[:1], atol=1e-5, rtol=0)


def test_bad_inputs(encoders) -> None:
    onnx_enc = encoders[1]
    with pytest.raises(DGLError, match="uint8"):
        onnx_enc.encode_videos(np.zeros((1, onnx_enc.frames, onnx_enc.image_size, onnx_enc.image_size, 3), np.float32))
    with pytest.raises(DGLError, match="uint8"):
        onnx_enc.encode_videos(np.zeros((1, 2, 8, 8, 3), np.uint8))
    with pytest.raises(DGLError, match="token ids"):
        onnx_enc.encode_ids(np.zeros((1, 3), np.int64))


def test_precision_and_device_choices(tiny_export) -> None:
    folder = tiny_export[1]
    with pytest.raises(DGLError, match="no int8 text graph"):
        OnnxEncoder(folder, device="cpu", precision="int8")
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(DGLError, match="onnxruntime-gpu"):
            OnnxEncoder(folder, device="cuda")


def test_non_clip_vocabulary_takes_ids_only(golden_export) -> None:
    model, folder, _ = golden_export("transformer")
    encoder = OnnxEncoder(folder, device="cpu")
    with pytest.raises(DGLError, match="1000-token vocabulary"):
        encoder.encode_text(["hello"])
    ids = np.array([[998, 5, 999, 0, 0, 0, 0, 0]], dtype=np.int64)
    assert encoder.encode_ids(ids).shape == (1, model.embed_dim)


def test_query_startup_does_not_import_torch(tiny_export) -> None:
    folder = tiny_export[1]
    script = textwrap.dedent(f"""
        import json, sys, time
        start = time.perf_counter()
        from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
        imported = time.perf_counter() - start
        out = OnnxEncoder({str(folder)!r}, device="cpu").encode_text(["a dog runs", "a cat"])
        print(json.dumps({{"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                          "shape": list(out.shape), "import_s": imported}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["open_clip"] is False
    assert report["shape"] == [2, tiny_export[0].embed_dim]
