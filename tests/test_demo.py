"""The offline demo at a small size (`dgl demo --quick`): every step runs through the real library functions."""

from __future__ import annotations

import json

import pytest


@pytest.mark.timeout(300)
def test_quick_demo_runs_end_to_end(demo_dir) -> None:
    results = json.loads((demo_dir / "demo_results.json").read_text())
    test_videos = 16  # DemoConfig.quick()
    chance = 100.0 / test_videos
    before, after = results["before"], results["after"]
    # the tiny CLIP pre-trained on single frames tells colour and shape apart: well above chance
    assert before["clip_meanpool"]["t2v"] >= 2 * chance and before["clip_meanpool"]["v2t"] >= 2 * chance, before
    assert after["dgl_tuned_torch"]["t2v"] >= chance, after
    assert after["dgl_tuned_onnx_fp32"] == after["dgl_tuned_torch"]  # the fp32 export reproduces the torch model
    assert abs(after["dgl_tuned_onnx_int8"]["t2v"] - after["dgl_tuned_torch"]["t2v"]) <= 2 * chance  # int8 is close
    assert len(results["queries"]) == 3 and all(len(q["results"]) == 3 for q in results["queries"])
    long = results["long"]  # quick: 2 long videos x 2 events, 2 s windows at stride 1 s
    assert (long["videos"], long["events"], long["window"], long["stride"]) == (2, 2, 2.0, 1.0)
    for name in ("dgl_tuned", "clip_meanpool"):
        assert long[name]["queries"] == 4 and 0 <= long[name]["R@1,IoU=0.5"] <= 100, long
    example = long["example"]
    assert example["true"]["id"].startswith("long_") and 1 <= len(example["found"]) <= 3
    assert all(hit["start"] < hit["end"] for hit in example["found"])
    for artifact in ("clip.safetensors", "run/model.safetensors", "export/manifest.json", "emb.npy",
                     "data/long/charades_sta_test.txt"):
        assert (demo_dir / artifact).exists(), artifact
