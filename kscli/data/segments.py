"""Segments of the keystep benchmark, read from `keystep_segment_<split>.json` as the download gives them."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from kscli.data.labels import LabelMap
from kscli.errors import KscliError
from kscli.fileio import read_json

SPLITS = ("train", "val", "test")
ANNOTATION_FILES = {
    "train": "keystep_segment_train.json",
    "val": "keystep_segment_val.json",
    "test": "keystep_segment_test_unannotated.json",
}
# `start<t0>_end<t1>_<camera>.mp4`; times may be integers (`start0_end43.5086`).
CLIP_NAME_RE = re.compile(
    r"^start(?P<start>\d+(?:\.\d*)?)_end(?P<end>\d+(?:\.\d*)?)_(?P<camera>[A-Za-z0-9_.-]+?)\.mp4$")
# Aria glasses are the ego camera: `aria01_214-1` ... `aria09_214-1`, and `aria_214-1`.
EGO_CAMERA_RE = re.compile(r"^aria\d*(?:_[A-Za-z0-9-]+)?$", re.IGNORECASE)
LABEL_FIELDS = ("label_id", "step_unique_id", "step_name")


@dataclass(frozen=True)
class Clip:
    """One trimmed clip: its name relative to the clips root, its camera and view role."""

    name: str
    camera: str
    role: str  # "ego" | "exo"


@dataclass(frozen=True)
class Segment:
    """One keystep instance: one ego clip, the exo clips of the same moment, and its label."""

    split: str
    take_name: str
    take_uid: str
    start: float
    end: float
    ego: Clip
    exo: tuple[Clip, ...] = ()
    label: int | None = None
    step_unique_id: int | None = None
    step_name: str | None = None

    @property
    def name(self) -> str:
        """The segment's identity: its ego clip name (what a submission is keyed by)."""
        return self.ego.name

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def clips(self) -> tuple[Clip, ...]:
        return (self.ego, *self.exo)


def camera_role(camera: str) -> str:
    return "ego" if EGO_CAMERA_RE.match(camera) else "exo"


def parse_clip_name(name: str, where: str = "") -> Clip:
    """`train/<take>/start0.8_end33.2_aria02_214-1.mp4` -> Clip(camera='aria02_214-1', role='ego').

    Rejects names that would leave the clips root (absolute, `..`, backslashes).
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str) or not name:
        raise KscliError(f"{prefix}clip name {name!r} is not a non-empty string")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise KscliError(f"{prefix}clip name {name!r} is an absolute or Windows path; "
                         "names must be relative to the clips root")
    parts = name.split("/")
    if ".." in parts or posixpath.normpath(name) != name:
        raise KscliError(f"{prefix}clip name {name!r} would escape the clips root ('..' or "
                         "non-normal path); names must be plain relative paths")
    m = CLIP_NAME_RE.match(parts[-1])
    if not m:
        raise KscliError(f"{prefix}clip name {name!r} is not of the form "
                         "start<t0>_end<t1>_<camera>.mp4")
    camera = m.group("camera")
    return Clip(name=name, camera=camera, role=camera_role(camera))


@dataclass
class SplitAnnotations:
    split: str
    path: str
    segments: list[Segment] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _require(seg: dict, key: str, kinds, where: str, path: Path):
    if key not in seg:
        raise KscliError(f"{path}: {where}: missing field '{key}'")
    value = seg[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        want = "/".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise KscliError(f"{path}: {where}: field '{key}' is {value!r}, expected {want}")
    return value


def read_segments(path: str | Path, split: str, labels: LabelMap | None = None) -> SplitAnnotations:
    """Read one split's annotation file; every bad record raises one error naming file, segment, field.

    Train/val segments must carry `label_id` (in the mapping) with a matching `step_unique_id`;
    test segments carry none. Exo names are optional everywhere (the test file may omit them).
    """
    if split not in SPLITS:
        raise KscliError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    path = Path(path)
    if not path.is_file():
        raise KscliError(f"{path}: annotation file for split '{split}' not found; download it with "
                         "`egoexo -o OUT --parts annotations --benchmarks keystep` and pass "
                         "--data-root OUT (or --annotations-dir)")
    doc = read_json(path)  # strict; a BOM (Windows editors) is not an error
    if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list):
        raise KscliError(f"{path}: expected a JSON object with a 'segments' list")
    labelled = split != "test"
    out = SplitAnnotations(split=split, path=str(path),
                           meta={k: v for k, v in doc.items() if k != "segments"})
    seen: dict[str, int] = {}
    for i, seg in enumerate(doc["segments"]):
        where = f"segment {i}"
        if not isinstance(seg, dict):
            raise KscliError(f"{path}: {where}: expected an object, got {type(seg).__name__}")
        ego_name = _require(seg, "ego_segment_name", str, where, path)
        where = f"segment {i} ({ego_name})"
        ego = parse_clip_name(ego_name, f"{path}: {where}: field 'ego_segment_name'")
        if ego.role != "ego":
            raise KscliError(f"{path}: {where}: field 'ego_segment_name' names camera "
                             f"'{ego.camera}', which is not an Aria (ego) camera")
        take_name = _require(seg, "take_name", str, where, path)
        take_uid = str(seg.get("take_uid", ""))
        start = float(_require(seg, "start_time", (int, float), where, path))
        end = float(_require(seg, "end_time", (int, float), where, path))
        if end < start:
            raise KscliError(f"{path}: {where}: field 'end_time' ({end}) is before 'start_time' ({start})")
        names = seg.get("segment_name_list", [ego_name])
        if not isinstance(names, list):
            raise KscliError(f"{path}: {where}: field 'segment_name_list' is not a list")
        exo = []
        for name in names:
            clip = parse_clip_name(name, f"{path}: {where}: field 'segment_name_list'")
            if clip.role == "exo":
                exo.append(clip)
        label = step_id = step_name = None
        if labelled:
            label = _require(seg, "label_id", int, where, path)
            step_id = _require(seg, "step_unique_id", int, where, path)
            step_name = seg.get("step_name")
            if labels is not None:
                if label not in labels:
                    raise KscliError(f"{path}: {where}: field 'label_id' is {label}, not in the label "
                                     f"mapping {labels.path} (ids 0..{labels.num_classes - 1})")
                if labels[label].step_unique_id != step_id:
                    raise KscliError(
                        f"{path}: {where}: field 'step_unique_id' is {step_id} but label_id {label} "
                        f"is step {labels[label].step_unique_id} in {labels.path}; the annotation "
                        "and the mapping disagree (mixed download versions?)")
        if ego_name in seen:
            raise KscliError(f"{path}: {where}: duplicate segment name (also segment {seen[ego_name]})")
        seen[ego_name] = i
        out.segments.append(Segment(split, take_name, take_uid, start, end, ego, tuple(exo),
                                    label, step_id, step_name))
    return out
