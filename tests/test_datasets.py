"""Dataset adapters on small fixtures in each public format (tests/fixtures/datasets/<kind>/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgl_deploy.data.datasets import DATASETS, load_dataset
from dgl_deploy.errors import DGLError
from tests.conftest import REFERENCE as SHARED_REFERENCE
from tests.conftest import require_shared

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
    import csv

    ids = [row["video_id"] for row in csv.DictReader(require_shared(MSRVTT_1KA).open())]
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
    assert [item.segment for item in ds.items] == [(0.0, 83.0), (0.0, 62.0)]  # the reference's [0, ceil(duration)]
    assert ds.items[1].moments == (("A man is standing outside.", 0.0, 12.04), ("He throws a ball.", 12.04, 61.72))


def test_charades_sta_moments(tmp_path: Path) -> None:
    videos = touch(tmp_path, "3MSZA.mp4", "AO8RW.mp4")
    ds = load_dataset("charades", FIXTURES / "charades", videos)  # directory: default split "test"
    assert (ds.split, [item.video_id for item in ds.items], ds.num_captions) == ("test", ["3MSZA", "AO8RW"], 3)
    assert ds.items[0].path == videos / "3MSZA.mp4" and ds.items[0].segment is None
    assert ds.items[0].moments == (("person turn a light on.", 24.3, 30.4),
                                   ("a person is putting a book on a shelf.", 0.0, 6.9))
    assert ds.items[0].captions == [caption for caption, _, _ in ds.items[0].moments]


@pytest.mark.parametrize(("text", "error"), [
    ("3MSZA 24.3 30.4 person turn a light on.\n", r"a\.txt line 1: expected 'VIDEOID START END##sentence'"),
    ("3MSZA 1 2##ok\n3MSZA 30 24##backwards\n", r"a\.txt line 2: 'start' \(30\) must be before 'end' \(24\)"),
    ("3MSZA x 2##what\n", r"a\.txt line 1: 'start' must be a number of seconds"),
    ("3MSZA 1 2##  \n", r"a\.txt line 1: 'sentence' is empty"),
])
def test_charades_sta_errors_name_the_line(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "a.txt").write_text(text)
    with pytest.raises(DGLError, match=error):
        load_dataset("charades", tmp_path / "a.txt", touch(tmp_path, "3MSZA.mp4"))


@pytest.mark.parametrize(("split", "ids"), [("test", ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208"]),
                                            ("val", ["-8y1Q0rA3n8_108_115"]), ("train", ["04Gt01vatkk_248_265", "0lh_UWF9ZP4_62_69"])])
def test_msvd_lists_and_json_captions(tmp_path: Path, split: str, ids: list[str]) -> None:
    videos = touch(tmp_path, "-4wsuPCjDBc_5_15.avi", "-7KMZQEsJW4_205_208.mp4", "-8y1Q0rA3n8_108_115.avi",
                   "04Gt01vatkk_248_265.avi", "0lh_UWF9ZP4_62_69.avi")
    ds = load_dataset("msvd", FIXTURES / "msvd", videos, split=split)
    assert [item.video_id for item in ds.items] == ids and all(item.segment is None for item in ds.items)
    if split == "test":  # default split; word lists joined with spaces, several captions per video, .mp4 fallback
        assert load_dataset("msvd", FIXTURES / "msvd", videos).split == "test" and ds.num_captions == 5
        assert ds.items[0].captions[0] == "a squirrel is eating a peanut in it's shell"
        assert ds.items[1].path.name == "-7KMZQEsJW4_205_208.mp4"
    if split == "train":
        assert ds.items[1].captions == ["a man is cooking", "a person cooks food"]  # plain strings also accepted


def test_didemo_paragraphs_of_listed_videos(tmp_path: Path) -> None:
    videos = touch(tmp_path, "10015567@N08_3655084291_d8b58466fa.mov", "10034767@N04_4431467474_d3f4a8bc40.mp4.mp4")
    ds = load_dataset("didemo", FIXTURES / "didemo", videos)  # default split: test
    assert ds.split == "test" and [item.video_id for item in ds.items] == [
        "10015567@N08_3655084291_d8b58466fa.mov", "10034767@N04_4431467474_d3f4a8bc40.mp4"]  # dropped: reference's missing
    assert ds.items[0].captions == ["the cat jumps off the table cat lands on the floor"]  # json order, one paragraph
    assert ds.items[1].path.name.endswith(".mp4.mp4")  # converted copies: <name>.mp4
    assert {item.segment for item in ds.items} == {(0.0, 31.0)}
    assert [len(load_dataset("didemo", FIXTURES / "didemo", touch(tmp_path, name), split=split).items) for split, name in
            (("val", "10087362@N08_4584429566_8dc62d1ff4.avi"), ("train", "10106231@N07_3214431394_9f5b8a8b41.mov"))] == [1, 1]


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
    with pytest.raises(DGLError, match=r"MSRVTT_JSFUSION_test\.csv: 2 of 3 videos not found under .* \(video9001\.mp4, video9003\.mp4\)"):
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
    splits = {name: spec.validation_split for name, spec in DATASETS.items()}
    assert splits == {"msrvtt": None, "vatex": "val", "lsmdc": "val", "activitynet": "val_1", "msvd": "val",
                      "didemo": "val", "generic": None, "charades": None}


GENERIC_BAD = [
    ("x.jsonl", '{"video": "a.mp4", "caption": "x"}\n[1, 2]\n', r"x\.jsonl line 2: expected an object, got an array"),
    ("x.jsonl", '"a.mp4 a dog"\n', r"x\.jsonl line 1: expected an object, got a string"),
    ("x.jsonl", '{"video": "a.mp4", "caption": "x"}\n\n{"video": "a.mp4"}\n', r"x\.jsonl line 3: no 'caption' \(fields: video\)"),
    ("x.jsonl", '{"video": "a.mp4", "caption": null}\n', r"line 1: 'caption' must be a string, got null"),
    ("x.jsonl", '{"video": "a.mp4", "caption": 7}\n', r"line 1: 'caption' must be a string, got a number"),
    ("x.jsonl", '{"video": "a.mp4", "caption": ["ok", 7]}\n', r"line 1: 'caption' must be a string or a non-empty list"),
    ("x.jsonl", '{"video": "a.mp4", "caption": "x", "start": "abc", "end": 2}\n', r"line 1: 'start' must be a number of seconds >= 0, got 'abc'"),
    ("x.jsonl", '{"video": "a.mp4", "caption": "x", "start": 1}\n', r"line 1: give both 'start' and 'end'"),
    ("x.jsonl", '{"video": "a.mp4", "caption": "x", "start": 3, "end": 2}\n', r"line 1: 'start' \(3\) must be before 'end' \(2\)"),
    ("x.csv", "video,caption\na.mp4,x\na.mp4\n", r"x\.csv line 3: 1 field\(s\) where the header has 2 \(video, caption\)"),
    ("x.csv", "video,caption\na.mp4,x,y\n", r"x\.csv line 2: 3 field\(s\) where the header has 2"),
    ("x.csv", "video,caption\na.mp4,\n", r"x\.csv line 2: 'caption' is empty"),
    ("x.csv", 'video,caption\na.mp4,"a dog\na.mp4,a cat\na.mp4,a cow\n', r"x\.csv line 2: a quote opened here is still open at line 4"),
    ("x.csv", 'video,caption\na.mp4,"a dog\na.mp4,a cat"\na.mp4,a cow\n', r"x\.csv line 2: a quoted field runs over lines 2-3"),
    ("x.csv", 'video,caption\na.mp4,"a dog\na.mp4,"a cat"\n', r"x\.csv line 2: a quote opened here is still open at line 3"),
]


@pytest.mark.parametrize(("name", "text", "message"), GENERIC_BAD)
def test_bad_generic_rows_name_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DGLError, match=message) as info:
        load_dataset("generic", tmp_path / name, touch(tmp_path, "a.mp4"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kind", "name", "text", "message"),
    [
        ("vatex", "v.json", '[{"videoID": "a", "enCap": ["x"]}, {"videoID": "b"}]', r"v\.json \[1\]: no 'enCap'"),
        ("vatex", "v.json", '{"videoID": "a"}', r"v\.json: expected an array of \{videoID, enCap\}, got an object"),
        ("activitynet", "a.json", '{"v_a": {"sentences": [" x"]}, "v_b": []}', r"a\.json \['v_b'\]: expected an object, got an array"),
        ("lsmdc", "l.csv", "a_1\t0\t1\t0\t1\tx\nb_1\tonly\n", r"l\.csv line 2: expected tab-separated clip_id"),
        ("msrvtt", "m.csv", "key,vid_key,video_id,sentence\nr,m,video1,x\nr,m,video2\n", r"m\.csv line 3: 3 field\(s\)"),
        ("activitynet", "a.json", '{"v_a": {"sentences": ["x"], "duration": "long"}}', r"\['v_a'\]: 'duration' must be a number"),
        ("msvd", "test_list.txt", "a\nb\n", r"raw-captions\.json: cannot read annotations"),
        ("didemo", "test_list.txt", "a.mov\n", r"test_data\.json: cannot read annotations"),
        ("didemo", "ids.txt", "a.mov\n", r"ids\.txt: a DiDeMo split list is named <split>_list\.txt"),
    ],
)
def test_bad_rows_of_public_formats(tmp_path: Path, kind: str, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DGLError, match=message):
        load_dataset(kind, tmp_path / name, tmp_path)


def test_utf8_bom_is_skipped(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("\ufeffvideo,caption\na.mp4,x\n", encoding="utf-8")
    bad.write_text("\ufefffile,caption\na.mp4,x\n", encoding="utf-8")
    assert load_dataset("generic", good, touch(tmp_path, "a.mp4")).items[0].captions == ["x"]
    with pytest.raises(DGLError, match=r"missing column\(s\) video \(found file, caption\)$"):
        load_dataset("generic", bad, tmp_path)


def test_same_video_and_duplicate_captions_count_once(tmp_path: Path) -> None:
    annotations = tmp_path / "x.csv"
    annotations.write_text("video,caption\n./a.mp4,a dog\na.mp4,a dog\nsub//b.mp4,a cat\na.mp4,a dog runs\nsub/b.mp4,a cat\n")
    with pytest.warns(UserWarning, match=r"x\.csv: dropped 2 duplicate \(video, caption\) pair\(s\)"):
        ds = load_dataset("generic", annotations, touch(tmp_path, "a.mp4", "sub/b.mp4"))
    assert [(i.video_id, i.captions) for i in ds.items] == [("a", ["a dog", "a dog runs"]), ("sub/b", ["a cat"])]
    assert ds.items[0].path == tmp_path / "a.mp4" and ds.num_captions == 3


@pytest.mark.parametrize(
    ("captions", "message"),
    [
        ('{"a": [["x"]]}', r"test_list\.txt: video 'b' has no captions in .*raw-captions\.json"),
        ('{"a": [["x"]], "b": [["y", 3]]}', r"raw-captions\.json \['b'\]: 'captions' must be a string or a non-empty list"),
        ('{"a": [["x"]], "b": []}', r"raw-captions\.json \['b'\]: 'captions' must be a string or a non-empty list"),
        ('[["x"]]', r"raw-captions\.json: expected an object of \{video_id: \[captions\]\}, got an array"),
    ],
)
def test_bad_msvd_captions(tmp_path: Path, captions: str, message: str) -> None:
    (tmp_path / "test_list.txt").write_text("a\nb\n")
    (tmp_path / "raw-captions.json").write_text(captions)
    with pytest.raises(DGLError, match=message):
        load_dataset("msvd", tmp_path, tmp_path)


def test_bad_didemo_rows(tmp_path: Path) -> None:
    (tmp_path / "val_list.txt").write_text("a.mov\n")
    (tmp_path / "val_data.json").write_text('[{"video": "a.mov", "description": "x"}, {"video": "a.mov"}]')
    with pytest.raises(DGLError, match=r"val_data\.json \[1\]: no 'description'"):
        load_dataset("didemo", tmp_path, tmp_path, split="val")
