"""Dataset adapters on small fixtures in each public format (tests/fixtures/datasets/<kind>/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgl_deploy.data.datasets import VALIDATION_SPLITS, load_dataset
from dgl_deploy.errors import DGLError
from tests.conftest import REFERENCE as SHARED_REFERENCE

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
MSRVTT_1KA = SHARED_REFERENCE / "MSRVTT_JSFUSION_test.csv"


def touch(root: Path, *names: str) -> Path:
    """Empty stand-ins for video files (adapters only check existence)."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


def test_msrvtt_test_csv(tmp_path: Path) -> None:
    videos = touch(tmp_path, "video9001.mp4", "video9002.mp4", "video9003.mp4")
    ds = load_dataset("msrvtt", FIXTURES / "msrvtt", videos)  # directory: default split "test"
    assert (ds.split, len(ds.items), ds.num_captions) == ("test", 3, 3)
    assert ds.items[1].captions == ["kids play football, then cheer"]
    assert ds.items[1].path == videos / "video9002.mp4" and ds.items[1].segment is None


@pytest.mark.parametrize(("split", "count"), [("train9k", 2), ("train7k", 1)])
def test_msrvtt_train_with_data_json(tmp_path: Path, split: str, count: int) -> None:
    videos = touch(tmp_path, "video0.mp4", "video1.mp4")
    ds = load_dataset("msrvtt", FIXTURES / "msrvtt", videos, split=split)
    assert len(ds.items) == count and all(len(item.captions) == 20 for item in ds.items)
    assert ds.items[0].captions[3] == "caption 3 of video0"


def test_msrvtt_real_1ka_test_split(tmp_path: Path) -> None:
    if not MSRVTT_1KA.exists():
        pytest.skip(f"{MSRVTT_1KA} not available")
    import csv

    ids = [row["video_id"] for row in csv.DictReader(MSRVTT_1KA.open())]
    videos = touch(tmp_path, *(f"{vid}.mp4" for vid in ids))
    ds = load_dataset("msrvtt", MSRVTT_1KA, videos)
    assert len(ds.items) == 1000 and ds.num_captions == 1000 and len({i.video_id for i in ds.items}) == 1000


def test_vatex(tmp_path: Path) -> None:
    videos = touch(tmp_path, "Ptf_2VRj-V0_000122_000132.mp4", "wq9VWcqqzZw_000022_000032.mp4")
    ds = load_dataset("vatex", FIXTURES / "vatex", videos, split="val")
    assert len(ds.items) == 2 and ds.num_captions == 20
    assert ds.items[0].video_id == "Ptf_2VRj-V0_000122_000132"


def test_lsmdc(tmp_path: Path) -> None:
    videos = touch(
        tmp_path,
        "1001_Flight/1001_Flight_00.00.56.017-00.00.58.929.avi",
        "1001_Flight/1001_Flight_00.01.01.066-00.01.06.001.avi",
        "0001_American_Beauty_00.00.51.926-00.00.54.701.avi",  # flat layout also accepted
    )
    ds = load_dataset("lsmdc", FIXTURES / "lsmdc", videos, split="val")
    assert len(ds.items) == 3 and ds.num_captions == 3
    assert ds.items[1].captions == ['The "plane" jolts, and SOMEONE looks up.']
    assert ds.items[0].path.parent.name == "1001_Flight" and ds.items[2].path.parent == videos


def test_activitynet_paragraphs(tmp_path: Path) -> None:
    videos = touch(tmp_path, "v_QOlSCBRmfWY.mp4", "ehGHCYKzyZ8.mkv")
    ds = load_dataset("activitynet", FIXTURES / "activitynet", videos)
    assert ds.split == "val_1" and len(ds.items) == 2 and ds.num_captions == 2
    assert ds.items[0].captions[0].startswith("A young woman") and "room while the camera" in ds.items[0].captions[0]
    assert "  " not in ds.items[0].captions[0]
    assert ds.items[1].path.name == "ehGHCYKzyZ8.mkv"


@pytest.mark.parametrize("name", ["annotations.csv", "annotations.jsonl"])
def test_generic_groups_captions_and_segments(tmp_path: Path, name: str) -> None:
    videos = touch(tmp_path, "a.mp4", "sub/b.mp4")
    ds = load_dataset("generic", FIXTURES / "generic" / name, videos)
    jsonl = name.endswith(".jsonl")  # jsonl: a third caption for a.mp4; csv: a second segment of b.mp4
    assert ds.items[0].video_id == "a" and len(ds.items[0].captions) == (3 if jsonl else 2)
    assert ds.items[1].segment == (1.5, 4.0) and ds.items[1].video_id == "sub/b@1.5-4"
    assert len(ds.items) == (2 if jsonl else 3)


def test_missing_videos_one_summary(tmp_path: Path) -> None:
    videos = touch(tmp_path, "video9002.mp4")
    with pytest.raises(DGLError, match=r"2 of 3 videos .* not found \(video9001\.mp4, video9003\.mp4\)"):
        load_dataset("msrvtt", FIXTURES / "msrvtt" / "MSRVTT_JSFUSION_test.csv", videos)
    with pytest.warns(UserWarning, match="2 of 3 videos"):
        ds = load_dataset("msrvtt", FIXTURES / "msrvtt" / "MSRVTT_JSFUSION_test.csv", videos, skip_missing=True)
    assert [i.video_id for i in ds.items] == ["video9002"] and ds.missing == ["video9001", "video9003"]


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DGLError, match="unknown dataset kind"):
        load_dataset("kinetics", tmp_path, tmp_path)
    with pytest.raises(DGLError, match="unknown split"):
        load_dataset("vatex", FIXTURES / "vatex", tmp_path, split="val_1")
    with pytest.raises(DGLError, match="annotation file not found"):
        load_dataset("vatex", FIXTURES / "vatex", tmp_path, split="train")
    bad = tmp_path / "x.csv"
    bad.write_text("file,text\na.mp4,hello\n")
    with pytest.raises(DGLError, match="missing column"):
        load_dataset("generic", bad, tmp_path)


def test_validation_splits_documented() -> None:
    assert VALIDATION_SPLITS == {"msrvtt": None, "vatex": "val", "lsmdc": "val", "activitynet": "val_1", "generic": None}
