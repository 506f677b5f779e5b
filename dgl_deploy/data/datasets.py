"""The dataset registry: every `--dataset` kind as one `DatasetSpec` (its adapter, split files, default and
validation splits) in `DATASETS`, and `load_dataset`, which reads a kind's annotations into a `RetrievalDataset`.

`load_dataset(kind, annotations, videos, split)` returns one `VideoItem` per video (or segment) with all its
captions. `annotations` is either the annotation file itself or the directory holding the kind's standard file
names (then `split` picks the file). Each adapter's docstring says what it reads and where the videos are; the
docs' datasets table (docs/hooks.py) is generated from the registry and those docstrings. The rows are read and
checked by `data.dataset_rows`.

As the reference loaders (github knightyxp/DGL dataloaders/, from CenterCLIP and CLIP4Clip) read them:
ActivityNet and DiDeMo items are segments, [0, ceil(duration)] and [0, 31] s (DiDeMo was annotated on the
first 30 s; its per-caption `times`, in 5 s units, are not used by paragraph retrieval), which only matters
for a file longer than that. LSMDC clips are distributed pre-cut (one .avi per clip_id), so items have no
segment; the timestamps in the csv (into the movie) are ignored, and the public test file's clip ids are unique
per row (one item = one caption). MSVD's captions come as `raw-captions.pkl` in CLIP4Clip's data release; pickles
are never loaded here (convert the trusted file to `raw-captions.json` once, see the docs). DiDeMo: list entries
without a description are left out, and so are the three videos the reference drops as missing from the download
(`_DIDEMO_DROPPED`).

Merging: generic video paths are normalised (`./a.mp4`, `a//b.mp4` -> `a.mp4`, `a/b.mp4`); rows of the
same file (and segment) form one item, and exact duplicate (video, caption) pairs are dropped with one
warning that counts them, so a video is never counted twice.
"""

from __future__ import annotations

import math
import posixpath
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dgl_deploy.data.dataset_rows import (
    Row,
    captions,
    csv_lines,
    json_entries,
    json_type,
    list_ids,
    read_csv,
    read_json,
    read_jsonl,
    read_text,
)
from dgl_deploy.data.segments import Segment
from dgl_deploy.errors import DGLError

MSVD_CAPTIONS = "raw-captions.json"
DIDEMO_SEGMENT: Segment = (0.0, 31.0)  # the reference's whole-video "trick" (annotations cover the first 30 s)
_DIDEMO_DROPPED = frozenset({"37996615073@N01_3336195519_579ea4136c.3gp", "44124421772@N01_2867159874_e39e716b7e.mpg",
                             "59627558@N00_4659075184_253744838b.3gp"})
_MISSING_SHOWN = 5  # missing videos named in the error; the rest are counted


@dataclass(frozen=True)
class VideoItem:
    """One video (or segment) with all its captions."""

    path: Path
    captions: list[str]
    segment: Segment | None
    video_id: str
    moments: tuple[tuple[str, float, float], ...] = ()  # (caption, start, end) of captions with a time span


@dataclass
class RetrievalDataset:
    """Items of one split; `missing` lists the video ids skipped because their file was not found."""

    name: str
    split: str | None
    items: list[VideoItem]
    missing: list[str] = field(default_factory=list)

    @property
    def num_captions(self) -> int:
        return sum(len(item.captions) for item in self.items)


def _first_existing(candidates: list[Path]) -> Path:
    """The first candidate that exists, else the first (reported as missing later)."""
    return next((p for p in candidates if p.exists()), candidates[0])


def _msrvtt(annotations: Path, videos: Path) -> list[VideoItem]:
    """MSR-VTT. `test` is the 1k-A split (key, vid_key, video_id, sentence; one caption a video); `train9k` /
    `train7k` list video ids, whose captions (20 a video) come from `MSRVTT_data.json` beside them
    (`sentences: [{video_id, caption}]`). Annotations and the 1k-A split: CLIP4Clip's data release (`msrvtt_data.zip`);
    videos: the MSR-VTT authors.
    Videos: `<videos>/<video_id>.mp4`
    """
    rows = read_csv(annotations, ["video_id"])
    if rows and "sentence" in rows[0].data:  # 1k-A test: one caption per row/video
        pairs = [(row.text("video_id"), [row.text("sentence")]) for row in rows]
    else:  # train ids + MSRVTT_data.json captions
        data_path = annotations.parent / "MSRVTT_data.json"
        data = read_json(data_path)
        sentences = data.get("sentences") if isinstance(data, dict) else None
        by_video: dict[str, list[str]] = {}
        for _, sentence in json_entries(data_path, sentences, list, "'sentences' ({video_id, caption})"):
            by_video.setdefault(sentence.text("video_id"), []).append(sentence.text("caption"))
        pairs = [(vid, by_video.get(vid, [])) for vid in (row.text("video_id") for row in rows)]
        uncaptioned = [vid for vid, caps in pairs if not caps]
        if uncaptioned:
            raise DGLError(f"{annotations}: {len(uncaptioned)} videos have no captions in MSRVTT_data.json (e.g. {uncaptioned[0]})")
    return [VideoItem(videos / f"{vid}.mp4", caps, None, vid) for vid, caps in pairs]


def _vatex(annotations: Path, videos: Path) -> list[VideoItem]:
    """VATEX: a JSON list of `{videoID, enCap: [10 English captions]}`; from eric-xw.github.io/vatex-website.
    Videos: `<videos>/<videoID>.mp4`
    """
    items = []
    for _, row in json_entries(annotations, read_json(annotations), list, "{videoID, enCap}"):
        vid = row.text("videoID")
        items.append(VideoItem(videos / f"{vid}.mp4", row.texts("enCap"), None, vid))
    return items


def _lsmdc(annotations: Path, videos: Path) -> list[VideoItem]:
    """LSMDC: tab-separated, no header (clip_id, start, end, ..., sentence); clips come pre-cut (one file a clip, the
    times into the movie are ignored); one caption a clip. From the MPII movie description site (registration).
    Videos: `<videos>/<movie>/<clip_id>.avi` (or `<videos>/<clip_id>.avi`; movie = clip_id up to its last `_`)
    """
    items = []
    for number, fields in csv_lines(annotations, delimiter="\t"):
        row = Row(f"{annotations} line {number}", {"clip_id": fields[0], "sentence": fields[-1]})
        if len(fields) < 4:
            row.fail(f"expected tab-separated clip_id, start, end, …, sentence; got {len(fields)} field(s)")
        clip_id = row.text("clip_id")
        movie = clip_id.rsplit("_", 1)[0]
        path = _first_existing([videos / movie / f"{clip_id}.avi", videos / f"{clip_id}.avi"])
        items.append(VideoItem(path, [row.text("sentence").strip()], None, clip_id))
    return items


def _activitynet(annotations: Path, videos: Path) -> list[VideoItem]:
    """ActivityNet Captions: `{v_<id>: {duration, timestamps, sentences}}`; paragraph-to-video (the sentences joined
    into one caption, segment [0, ceil(duration)] s, as the reference reads it); for `dgl eval --moments` each sentence
    is a moment with its timestamps. From cs.stanford.edu/people/ranjaykrishna/densevid plus the ActivityNet videos.
    Videos: `<videos>/v_<id>.mp4` (or `.mkv` / `.webm`, with or without the `v_`)
    """
    items = []
    for key, row in json_entries(annotations, read_json(annotations), dict, "{v_<id>: {sentences}}"):
        bare = key.removeprefix("v_")
        names = [f"{stem}{ext}" for stem in (key, bare, f"v_{bare}") for ext in (".mp4", ".mkv", ".webm")]
        sentences = [s.strip() for s in row.texts("sentences")]
        duration = row.seconds("duration")
        segment = None if duration is None else (0.0, float(max(1, math.ceil(duration))))
        items.append(VideoItem(_first_existing([videos / n for n in names]), [" ".join(sentences)], segment, key,
                               _activitynet_moments(row, sentences)))
    return items


def _activitynet_moments(row: Row, sentences: list[str]) -> tuple[tuple[str, float, float], ...]:
    """Each sentence with its `timestamps` entry [start, end] (none when the entry has no timestamps)."""
    stamps = row.data.get("timestamps")
    if stamps is None:
        return ()
    if not isinstance(stamps, list) or len(stamps) != len(sentences):
        row.fail(f"'timestamps' must be a list of one [start, end] per sentence ({len(sentences)})")
    moments = []
    for number, (sentence, span) in enumerate(zip(sentences, stamps, strict=True)):
        if not isinstance(span, list) or len(span) != 2:
            row.fail(f"timestamp {number} must be [start, end], got {span!r}")
        start, end = Row(f"{row.where} timestamp {number}", {"start": span[0], "end": span[1]}).segment() \
            or row.fail(f"timestamp {number} has no times")
        moments.append((sentence, start, end))
    return tuple(moments)


def _charades(annotations: Path, videos: Path) -> list[VideoItem]:
    """Charades-STA: one moment a line, `VIDEOID START END##sentence` (seconds); each sentence is a caption of its
    video and a moment (`dgl eval --moments`).
    Videos: `<videos>/<id>.mp4`
    """
    items = []
    for number, line in enumerate(read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        fields = head.split()
        row = Row(f"{annotations} line {number}", {"sentence": sentence.strip(),
                                                    **dict(zip(("video", "start", "end"), fields, strict=False))})
        if not sep or len(fields) != 3:
            row.fail("expected 'VIDEOID START END##sentence'")
        video, caption, (start, end) = row.text("video"), row.text("sentence"), row.segment()
        items.append(VideoItem(videos / f"{video}.mp4", [caption], None, video, ((caption, start, end),)))
    return items


def _msvd(annotations: Path, videos: Path) -> list[VideoItem]:
    """MSVD: split lists (one video id a line) and `raw-captions.json` beside them (`{id: [captions]}`, several a
    video; a caption given as a list of words is joined). CLIP4Clip's data release ships `raw-captions.pkl`, which is
    never unpickled here: convert it once where you trust it (the command is below the table).
    Videos: `<videos>/<id>.avi` (or `.mp4`)
    """
    source = annotations.parent / MSVD_CAPTIONS
    data = read_json(source)
    if not isinstance(data, dict):
        raise DGLError(f"{source}: expected an object of {{video_id: [captions]}}, got {json_type(data)}")
    items = []
    for vid in list_ids(annotations):
        if vid not in data:
            raise DGLError(f"{annotations}: video {vid!r} has no captions in {source}")
        path = _first_existing([videos / f"{vid}.avi", videos / f"{vid}.mp4"])
        items.append(VideoItem(path, captions(f"{source} [{vid!r}]", data[vid]), None, vid))
    return items


def _didemo(annotations: Path, videos: Path) -> list[VideoItem]:
    """DiDeMo: split lists (video file names) and `<split>_data.json` beside them (`[{video, description, times}]`);
    paragraph-to-video (descriptions joined, segment [0, 31] s, as the reference reads it). Annotations and videos:
    LisaAnne/LocalizingMoments; split lists: Collaborative Experts.
    Videos: `<videos>/<video>` (or `<videos>/<video>.mp4`)
    """
    if not annotations.name.endswith("_list.txt"):
        raise DGLError(f"{annotations}: a DiDeMo split list is named <split>_list.txt (captions: <split>_data.json beside it)")
    source = annotations.with_name(annotations.name.removesuffix("_list.txt") + "_data.json")
    keep = set(list_ids(annotations)) - _DIDEMO_DROPPED
    paragraphs: dict[str, list[str]] = {}
    for _, row in json_entries(source, read_json(source), list, "{video, description, times}"):
        if (video := row.text("video")) in keep:
            paragraphs.setdefault(video, []).append(row.text("description").strip())
    return [VideoItem(_first_existing([videos / video, videos / f"{video}.mp4"]), [" ".join(descriptions)],
                      DIDEMO_SEGMENT, video) for video, descriptions in paragraphs.items()]


def _generic(annotations: Path, videos: Path) -> list[VideoItem]:
    """Your own set: a `.csv` (columns `video,caption[,start,end]`) or a `.jsonl` (`{"video", "caption": str or [str],
    "start", "end"}`); repeated rows of one video add captions, exact duplicate pairs are dropped with one warning.
    Videos: relative to `--videos` (or absolute)
    """
    csv_file = annotations.suffix.lower() == ".csv"
    items = []
    for row in read_csv(annotations, ["video", "caption"]) if csv_file else read_jsonl(annotations):
        video, segment = posixpath.normpath(row.text("video")), row.segment()
        items.append(VideoItem(videos / video, row.texts("caption"), segment, _generic_id(video, segment)))
    return items


def _generic_id(video: str, segment: Segment | None) -> str:
    """The video path without extension, plus `@start-end` for a segment (unique per item)."""
    stem = Path(video).with_suffix("").as_posix()
    return f"{stem}@{segment[0]:g}-{segment[1]:g}" if segment else stem


def _merge(items: list[VideoItem], where: Path) -> list[VideoItem]:
    """One item per (file, segment) in order of first appearance, with the captions of all its rows;
    exact duplicate (video, caption) pairs are dropped, with one warning that counts them."""
    merged: dict[tuple[Path, Segment | None], VideoItem] = {}
    dropped = 0
    for item in items:
        key = (item.path, item.segment)
        kept = merged.setdefault(key, VideoItem(item.path, [], item.segment, item.video_id))
        for caption in item.captions:
            if caption in kept.captions:
                dropped += 1
            else:
                kept.captions.append(caption)
        if item.moments:
            merged[key] = replace(kept, moments=kept.moments + item.moments)
    if dropped:
        warnings.warn(f"{where}: dropped {dropped} duplicate (video, caption) pair(s)", stacklevel=3)
    return list(merged.values())


@dataclass(frozen=True)
class DatasetSpec:
    """One `--dataset` kind: how its annotation files are read, and which splits an annotations directory has."""

    name: str  # the kind, as `--dataset` takes it
    adapter: Callable[[Path, Path], list[VideoItem]]  # (annotation file, videos) -> items; docstring: the docs' text
    files: dict[str, str] = field(default_factory=dict)  # split -> standard file name in an annotations directory
    default_split: str | None = None  # the split read from a directory when none is given (eval)
    train_split: str | None = "train"  # the split `dgl train` reads from a directory when none is given
    validation_split: str | None = None  # the split training selects models on (None: a slice of train is held out)


def _list_files(suffix: str) -> dict[str, str]:
    """train / val / test split lists named `<split><suffix>`."""
    return {split: f"{split}{suffix}" for split in ("train", "val", "test")}


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("msrvtt", _msrvtt, {"test": "MSRVTT_JSFUSION_test.csv", "train9k": "MSRVTT_train.9k.csv",
                                    "train7k": "MSRVTT_train.7k.csv"}, default_split="test",
                train_split="train9k"),  # 9k/7k: no val split
    DatasetSpec("vatex", _vatex, {"train": "vatex_training_v1.0.json", "val": "vatex_validation_v1.0.json",
                                  "test": "vatex_public_test_english_v1.1.json"}, default_split="val",
                validation_split="val"),
    DatasetSpec("lsmdc", _lsmdc, {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
                                  "test": "LSMDC16_challenge_1000_publictect.csv"}, default_split="test",
                validation_split="val"),
    DatasetSpec("activitynet", _activitynet, {"train": "train.json", "val_1": "val_1.json", "val_2": "val_2.json"},
                default_split="val_1", validation_split="val_1"),
    DatasetSpec("msvd", _msvd, _list_files("_list.txt"), default_split="test", validation_split="val"),
    DatasetSpec("didemo", _didemo, _list_files("_list.txt"), default_split="test", validation_split="val"),
    DatasetSpec("generic", _generic, train_split=None),  # any file you pass: no directory layout, no splits
    DatasetSpec("charades", _charades, {"train": "charades_sta_train.txt", "test": "charades_sta_test.txt"},
                default_split="test"),
)}
KINDS = tuple(DATASETS)


def _annotation_file(spec: DatasetSpec, annotations: Path, split: str | None) -> tuple[Path, str | None]:
    """The annotation file to read and its split: `annotations` itself, or the split's file in that directory."""
    if not annotations.is_dir():
        return annotations, split
    split = split or spec.default_split
    if split not in spec.files:
        raise DGLError(f"{spec.name}: unknown split {split!r} for an annotations directory "
                       f"(choose from {', '.join(spec.files) or 'none: pass the file'})")
    return annotations / spec.files[split], split


def _drop_missing(items: list[VideoItem], annotations: Path, videos: Path, skip_missing: bool) -> tuple[list[VideoItem], list[str]]:
    """(items whose file exists, ids of the others); DGLError when some are missing, unless `skip_missing`."""
    missing = [item for item in items if not item.path.exists()]
    if not missing:
        return items, []
    names = ", ".join(item.path.name for item in missing[:_MISSING_SHOWN]) + (", …" if len(missing) > _MISSING_SHOWN else "")
    message = f"{annotations}: {len(missing)} of {len(items)} videos not found under {videos} ({names})"
    if not skip_missing:
        raise DGLError(f"{message}; fix the videos path or skip them (skip_missing=True / --skip-missing)")
    warnings.warn(f"{message}; skipping them", stacklevel=3)
    return [item for item in items if item.path.exists()], [item.video_id for item in missing]


def load_dataset(
    kind: str,
    annotations: str | Path,
    videos: str | Path,
    split: str | None = None,
    skip_missing: bool = False,
) -> RetrievalDataset:
    """Read `kind` annotations (a file, or a directory + `split`) and pair them with files under `videos`.

    Missing videos raise one DGLError (count + first few names), or with `skip_missing` one warning
    and the items are dropped (their ids in `.missing`).
    """
    if kind not in DATASETS:
        raise DGLError(f"unknown dataset kind {kind!r} (choose from {', '.join(KINDS)})")
    spec = DATASETS[kind]
    path, split = _annotation_file(spec, Path(annotations), split)
    if not path.is_file():
        raise DGLError(f"{path}: annotation file not found")
    items = _merge(spec.adapter(path, Path(videos)), path)
    items, missing = _drop_missing(items, path, Path(videos), skip_missing)
    return RetrievalDataset(kind, split, items, missing)


__all__ = ["DATASETS", "DatasetSpec", "KINDS", "RetrievalDataset", "VideoItem", "load_dataset"]
