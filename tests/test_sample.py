"""The synthetic benchmark writer: real layout, real clips, deterministic, and a learnable class signal."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from kscli.data.sample import (
    SampleSummary,
    clip_num_frames,
    format_time,
    tiny_sample_kwargs,
    write_sample_benchmark,
)
from kscli.data.video import read_frames
from kscli.errors import KscliError

JSON_NAMES = {
    "train": "keystep_segment_train.json",
    "val": "keystep_segment_val.json",
    "test": "keystep_segment_test_unannotated.json",
}
LABEL_KEYS = {"label_id", "step_unique_id", "step_name"}
COMMON_KEYS = {"segment_name_list", "ego_segment_name", "take_uid", "take_name", "start_time", "end_time"}
NAME_RE = re.compile(
    r"^(train|val|test)/([A-Za-z0-9]+_[a-z]+_\d\d_\d)/start([0-9.]+)_end([0-9.]+)_(aria\d\d_214-1|aria_214-1|cam0[1-4])\.mp4$"
)
EGO_RE = re.compile(r"^aria(\d\d)?_214-1$")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> SampleSummary:
    return write_sample_benchmark(tmp_path_factory.mktemp("sample") / "egoexo", **tiny_sample_kwargs())


def _docs(s: SampleSummary) -> dict[str, dict]:
    return {k: json.loads(p.read_text()) for k, p in s.split_json.items()}


def _labels(s: SampleSummary) -> list[dict]:
    with open(s.label_mapping, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _all_frames(path: Path):
    return read_frames(path, lambda n: range(n), "all")


def _mean_rgb(path: Path) -> np.ndarray:
    return _all_frames(path).frames.astype(np.float32).mean(axis=(0, 1, 2))


# ---------------------------------------------------------------------------------------------


def test_layout_and_every_name_exists(sample: SampleSummary):
    out = sample.out
    ann = out / "annotations" / "keystep_benchmark"
    clips = out / "keystep_benchmark" / "clips_448p"  # the real folder name, even at 64 px
    assert sample.annotations_dir == ann and sample.clips_dir == clips
    assert sorted(p.name for p in ann.iterdir()) == sorted(["label_mapping.csv", *JSON_NAMES.values()])
    assert sorted(p.name for p in clips.iterdir()) == ["test", "train", "val"]
    on_disk = {p.relative_to(clips).as_posix() for p in clips.rglob("*") if p.is_file()}
    assert all(n.endswith(".mp4") and not n.split("/")[-1].startswith(".") for n in on_disk), "no temp files left"
    listed = set()
    for split, doc in _docs(sample).items():
        for seg in doc["segments"]:
            for name in seg["segment_name_list"]:
                m = NAME_RE.match(name)
                assert m, name
                assert m.group(1) == split and m.group(2) == seg["take_name"]
                # time strings: as the real names write them, and equal to the JSON numbers
                assert m.group(3) == format_time(seg["start_time"]) and m.group(4) == format_time(seg["end_time"])
                assert float(m.group(3)) == seg["start_time"] and float(m.group(4)) == seg["end_time"]
                assert (clips / name).is_file(), name
                listed.add(name)
    assert listed == on_disk  # nothing on disk that the annotations do not name
    assert sample.clips == {s: sum(1 for n in on_disk if n.startswith(s + "/")) for s in ("train", "val", "test")}
    assert str(out) in sample.text() and sample.frames > 0 and sample.short_clips > 0


def test_json_format(sample: SampleSummary):
    docs = _docs(sample)
    labels = {int(r["label_id"]): r for r in _labels(sample)}
    for split, doc in docs.items():
        assert set(doc) == {"date", "description", "splits", "segments"}
        assert doc["splits"] == split and doc["description"] == "EgoExo4D Fine-grained Keystep Recognition"
        assert len(doc["segments"]) == sample.segments[split] > 0
        uid_of: dict[str, str] = {}
        for seg in doc["segments"]:
            assert uuid.UUID(seg["take_uid"]).version == 4
            assert uid_of.setdefault(seg["take_name"], seg["take_uid"]) == seg["take_uid"]
            assert seg["end_time"] > seg["start_time"] >= 0
            names = seg["segment_name_list"]
            assert names[0] == seg["ego_segment_name"]
            assert EGO_RE.match(NAME_RE.match(seg["ego_segment_name"]).group(5))
            if split == "test":
                assert set(seg) == COMMON_KEYS  # unannotated: no label fields at all
                assert names == [seg["ego_segment_name"]]
            else:
                assert set(seg) == COMMON_KEYS | LABEL_KEYS
                cams = [NAME_RE.match(n).group(5) for n in names[1:]]
                assert 2 <= len(cams) <= 4 and all(c.startswith("cam") for c in cams)
                assert cams == sorted(set(cams))
                row = labels[seg["label_id"]]
                assert int(row["step_unique_id"]) == seg["step_unique_id"]
                assert row["step_name"] == seg["step_name"]


def test_takes_are_time_ordered_procedures_of_one_scenario(sample: SampleSummary):
    scen = {int(r["label_id"]): r["scenario_name"] for r in _labels(sample)}
    for split in ("train", "val"):
        by_take = defaultdict(list)
        for seg in _docs(sample)[split]["segments"]:
            by_take[seg["take_name"]].append(seg)
        assert len(by_take) == sample.takes[split]
        for segs in by_take.values():
            assert len(segs) >= 2
            for a, b in zip(segs, segs[1:]):
                assert a["end_time"] <= b["start_time"]  # in take-time order, not overlapping
            assert len({scen[s["label_id"]] for s in segs}) == 1
    # every keystep is seen in training
    assert {s["label_id"] for s in _docs(sample)["train"]["segments"]} == set(range(sample.num_classes))


def test_label_mapping_csv(sample: SampleSummary):
    raw = sample.label_mapping.read_text(encoding="utf-8")
    assert raw.splitlines()[0] == "label_id,step_unique_id,step_name,scenario_name"
    rows = _labels(sample)
    assert [int(r["label_id"]) for r in rows] == list(range(sample.num_classes))
    assert len({r["step_unique_id"] for r in rows}) == len(rows)
    assert {r["scenario_name"] for r in rows} <= {"cooking", "bike", "health"}
    comma = [r["step_name"] for r in rows if "," in r["step_name"]]
    assert comma and f'"{comma[0]}"' in raw  # quoted in the file, read back whole


@pytest.mark.slow
def test_clips_decode_at_size_fps_and_length(sample: SampleSummary):
    for doc in _docs(sample).values():
        for seg in doc["segments"]:
            want = clip_num_frames(seg["start_time"], seg["end_time"], sample.fps)
            assert want == max(1, round((seg["end_time"] - seg["start_time"]) * sample.fps))
            for name in seg["segment_name_list"]:
                clip = _all_frames(sample.clips_dir / name)
                ego = name == seg["ego_segment_name"]
                assert clip.frames.shape[1:] == ((64, 64, 3) if ego else (64, 114, 3)), name
                assert clip.frame_count == want, name
                assert clip.fps == pytest.approx(sample.fps)
    assert sample.ego_size == (64, 64) and sample.exo_size == (64, 114)


def test_real_data_quirks_present(sample: SampleSummary):
    docs = _docs(sample)
    for split in ("train", "test"):
        durs = [s["end_time"] - s["start_time"] for s in docs[split]["segments"]]
        assert min(durs) < 0.6
        assert any(abs(d - 0.16) < 1e-6 for d in durs), split  # ~5 frames
    names = [n for d in docs.values() for s in d["segments"] for n in s["segment_name_list"]]
    assert any(n.endswith("_aria_214-1.mp4") for n in names)
    assert any(re.search(r"_aria0\d_214-1\.mp4$", n) for n in names)
    assert any("/start0_end" in n for n in names)  # integer times written without a point
    assert any(len(s["segment_name_list"]) < 5 for s in docs["train"]["segments"])  # fewer exo views
    assert any(len(s["segment_name_list"]) == 5 for s in docs["train"]["segments"])


def test_deterministic_for_a_seed(tmp_path: Path):
    kw = {**tiny_sample_kwargs(), "takes_per_split": {"train": 1, "val": 0, "test": 1}}
    a = write_sample_benchmark(tmp_path / "a", seed=3, **kw)
    b = write_sample_benchmark(tmp_path / "b", seed=3, **kw)
    c = write_sample_benchmark(tmp_path / "c", seed=4, **kw)
    for split in a.split_json:
        assert a.split_json[split].read_bytes() == b.split_json[split].read_bytes()
    assert a.label_mapping.read_bytes() == b.label_mapping.read_bytes()
    clips = sorted(p.relative_to(a.clips_dir) for p in a.clips_dir.rglob("*.mp4"))
    assert clips == sorted(p.relative_to(b.clips_dir) for p in b.clips_dir.rglob("*.mp4"))
    for name in clips:  # byte for byte (x264's MB-tree broke this once: see sample_video.ENCODINGS)
        assert (a.clips_dir / name).read_bytes() == (b.clips_dir / name).read_bytes(), name
    assert a.split_json["train"].read_bytes() != c.split_json["train"].read_bytes()


def test_refuses_non_empty_folder(tmp_path: Path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    kw = {**tiny_sample_kwargs(), "takes_per_split": {"train": 1, "val": 0, "test": 1}}
    with pytest.raises(KscliError) as e:
        write_sample_benchmark(out, **kw)
    msg = str(e.value)
    assert str(out) in msg and "overwrite" in msg and "\n" not in msg
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
    s = write_sample_benchmark(out, overwrite=True, **kw)
    assert (out / "notes.txt").read_text() == "mine" and s.segments["val"] == 0
    assert json.loads(s.split_json["val"].read_text())["segments"] == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(KscliError):
        write_sample_benchmark(tmp_path / "a_file", **kw)


def test_class_signal_stronger_in_exo_than_ego(sample: SampleSummary):
    """Mean clip colour alone: nearest-centroid far above chance on exo; ego has signal, but less."""
    docs = _docs(sample)

    def feats(split: str, ego: bool):
        x, y = [], []
        for seg in docs[split]["segments"]:
            names = seg["segment_name_list"][:1] if ego else seg["segment_name_list"][1:]
            for n in names:
                x.append(_mean_rgb(sample.clips_dir / n))
                y.append(seg["label_id"])
        return np.stack(x), np.array(y)

    def nearest_centroid(xt, yt, xv, yv) -> float:
        classes = np.unique(yt)
        cent = np.stack([xt[yt == c].mean(0) for c in classes])
        pred = classes[np.argmin(((xv[:, None] - cent[None]) ** 2).sum(-1), axis=1)]
        return float((pred == yv).mean())

    def explained(x, y) -> float:  # share of the feature variance explained by the keystep
        within = sum(((x[y == c] - x[y == c].mean(0)) ** 2).sum() for c in np.unique(y))
        return 1.0 - within / ((x - x.mean(0)) ** 2).sum()

    chance = 1.0 / sample.num_classes
    res = {}
    for view, ego in (("exo", False), ("ego", True)):
        (xt, yt), (xv, yv) = feats("train", ego), feats("val", ego)
        res[view] = (nearest_centroid(xt, yt, xv, yv), explained(np.concatenate([xt, xv]), np.concatenate([yt, yv])))
    (acc_exo, r2_exo), (acc_ego, r2_ego) = res["exo"], res["ego"]
    assert acc_exo >= max(0.8, 3 * chance), res
    assert acc_ego >= 2 * chance, res  # the ego view still carries the keystep
    assert acc_ego <= acc_exo and r2_ego < r2_exo - 0.1, res


def test_data_package_does_not_import_torch():
    code = "import sys, kscli.data.sample; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
