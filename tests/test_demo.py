"""The offline demo at a small size: every step runs through the real library functions."""

from __future__ import annotations

import json

import pytest


@pytest.mark.timeout(300)
def test_quick_demo_runs_end_to_end(demo_dir) -> None:
    results = json.loads((demo_dir / "demo_results.json").read_text())
    for key in ("clip_meanpool", "dgl_untuned"):
        assert 0 <= results["before"][key]["t2v"] <= 100
    after = results["after"]
    assert after["dgl_tuned_onnx"] == after["dgl_tuned_torch"]  # the export reproduces the torch model
    assert len(results["queries"]) == 3 and all(len(q["results"]) == 3 for q in results["queries"])
    for artifact in ("clip.safetensors", "run/model.safetensors", "export/manifest.json", "emb.npy"):
        assert (demo_dir / artifact).exists(), artifact
