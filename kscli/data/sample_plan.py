"""The plan of the synthetic sample benchmark: keysteps, takes, segments and clip names, no pixels.

:func:`plan_sample` draws, from ``numpy.random.default_rng`` seeded from the sample seed, the label
mapping (keystep names grouped into scenarios), each keystep's look (colour, stripes, blob: see
:mod:`kscli.data.sample_video`), and for every split its takes and their segments: which keystep,
when, and which clips (ego and exo cameras) show it.  Within a take the keysteps follow the take's
scenario procedure, mostly in order with occasional skips and repeats.  It returns the label rows,
the looks, the split JSON documents and the list of clips to render.  Pure Python and numpy.
"""

from __future__ import annotations

import colorsys
import math
import uuid
from dataclasses import dataclass

import numpy as np

from kscli.data.segments import SPLITS

SCENARIOS = ("cooking", "bike", "health")
EXO_CAMERAS = ("cam01", "cam02", "cam03", "cam04")

# Canonical procedure of each scenario: steps in the order a take runs through them.
# Some names hold commas, an apostrophe or double quotes, as real names do.
_STEP_NAMES: dict[str, list[str]] = {
    "cooking": [
        "Wash the vegetables",
        "Chop the onion, then set aside",
        "Add salt",
        "Crack eggs into the bowl",
        "Whisk the eggs",
        "Heat oil in the pan",
        "Stir the mixture, then cover",
        "Add chopped tomatoes",
        "Season with pepper",
        "Flip the omelette",
        "Plate the food",
        "Garnish with herbs",
        "Boil water in the kettle",
        "Pour water into the cup",
        "Steep the tea bag, stir, and remove",
        "Add milk",
        "Measure the flour",
        "Knead the dough",
        "Roll out the dough",
        "Clean the countertop",
    ],
    "bike": [
        "Inspect the wheel",
        "Check tyre pressure",
        "Release the brake caliper",
        "Remove the wheel from the frame",
        "Remove the tyre with tyre levers",
        "Pull out the inner tube",
        "Locate the puncture, mark it",
        "Apply the patch",
        "Insert the inner tube",
        "Seat the tyre bead",
        "Inflate the tyre",
        "Reinstall the wheel, tighten the quick release",
        "Reconnect the brake",
        "Lubricate the chain",
        "Spin the wheel to check alignment",
    ],
    "health": [
        "Unbox package",
        "Read the instructions",
        "Wash hands",
        "Open the test kit, lay out the parts",
        "Swab the nostril",
        "Insert swab into the tube",
        "Add drops to the test strip",
        "Wait for the result",
        "Read the test result",
        "Dispose of the kit",
        "Check the dummy's responsiveness",
        'Shout "help" and call for assistance',
        "Position hands on the chest",
        "Give chest compressions",
        "Tilt the head, lift the chin",
        "Give rescue breaths",
    ],
}
_TAKE_TOKEN = {"cooking": "cooking", "bike": "bike", "health": "covid"}
_INSTITUTIONS = (
    "georgiatech", "iiith", "indiana", "minnesota", "sfu", "uniandes",
    "upenn", "cmu", "fair", "unc", "nus", "utokyo",
)

_DATE = "04/02/2024"
_DESCRIPTION = "EgoExo4D Fine-grained Keystep Recognition"


# --------------------------------------------------------------------------------------------
# clip names and lengths
# --------------------------------------------------------------------------------------------


def format_time(t: float) -> str:
    """Time as the real clip names write it: shortest float repr, integers without a point.

    >>> format_time(0.85598), format_time(0.0), format_time(43.0), format_time(43.5086)
    ('0.85598', '0', '43', '43.5086')
    """
    t = float(t)
    if t == int(t):
        return str(int(t))
    s = repr(t)
    if "e" in s or "E" in s:  # never produced here (times are >= 0.1 or 0), but stay safe
        s = f"{t:.6f}".rstrip("0").rstrip(".")
    return s


def clip_num_frames(start: float, end: float, fps: int) -> int:
    """Frames in the clip of segment [start, end]: duration * fps rounded half up, at least 1."""
    return max(1, int(math.floor((float(end) - float(start)) * fps + 0.5 + 1e-6)))


# --------------------------------------------------------------------------------------------
# classes: label mapping, procedures, looks
# --------------------------------------------------------------------------------------------


@dataclass
class ClassLook:
    """How one keystep shows in its clips (see :mod:`kscli.data.sample_video`)."""

    rgb: np.ndarray  # (3,) float32 0..255
    blob_rgb: np.ndarray  # (3,)
    theta: float  # stripe orientation
    freq: float  # stripe cycles per short side
    drift: float  # stripe phase speed, rad/s
    blob_c: tuple[float, float]  # blob centre (x, y) in short-side units (y in 0..1)
    blob_amp: tuple[float, float]
    blob_omega: float
    blob_r: float


@dataclass
class PlannedClip:
    """One mp4 file to render: a segment seen from one camera."""

    rel: str  # relative to clips_448p/
    camera: str
    ego: bool
    label: int
    start: float
    end: float
    take_key: tuple  # for per-take variation seeding
    clip_seed: tuple
    exo_index: int  # which exo camera (0..3), -1 for ego


def _class_looks(num_classes: int, rng: np.random.Generator) -> list[ClassLook]:
    n_h = min(num_classes, 12)
    levels = [(0.80, 0.90), (0.50, 0.70), (0.95, 0.55), (0.35, 0.95)]
    hue_perm = rng.permutation(n_h)
    looks = []
    for c in range(num_classes):
        level = c // n_h
        s, v = levels[level % len(levels)]
        hue = ((hue_perm[c % n_h] + 0.5 * (level % 2)) / n_h) % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(hue, s, v), dtype=np.float32) * 255.0
        bhue = (hue + 0.5) % 1.0
        blob = np.array(colorsys.hsv_to_rgb(bhue, 0.3 + 0.6 * rng.random(), 0.3 + 0.7 * rng.random()),
                        dtype=np.float32) * 255.0
        looks.append(
            ClassLook(
                rgb=rgb,
                blob_rgb=blob,
                theta=float(rng.uniform(0, math.pi)),
                freq=float(rng.uniform(2.0, 9.0)),
                drift=float(rng.uniform(-6.0, 6.0)),
                blob_c=(float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75))),
                blob_amp=(float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.05, 0.2))),
                blob_omega=float(rng.uniform(1.0, 6.0)),
                blob_r=float(rng.uniform(0.08, 0.18)),
            )
        )
    return looks


def _label_mapping(num_classes: int, rng: np.random.Generator):
    """Rows (label_id, step_unique_id, step_name, scenario) and each scenario's canonical order."""
    n_scen = min(len(SCENARIOS), num_classes)
    sizes = [num_classes // n_scen + (i < num_classes % n_scen) for i in range(n_scen)]
    steps: list[tuple[str, str]] = []  # (scenario, name) grouped by scenario in canonical order
    for scen, k in zip(SCENARIOS[:n_scen], sizes):
        pool = _STEP_NAMES[scen]
        for j in range(k):
            name = pool[j % len(pool)]
            if j >= len(pool):
                name = f"{name} (pass {j // len(pool) + 1})"
            steps.append((scen, name))
    label_of = rng.permutation(num_classes)  # label ids do not reveal the scenario blocks
    uids = np.sort(rng.choice(np.arange(1, 4 * num_classes + 2000), size=num_classes, replace=False))
    uids = rng.permutation(uids)
    rows = [None] * num_classes
    order: dict[str, list[int]] = {s: [] for s in SCENARIOS[:n_scen]}
    for i, (scen, name) in enumerate(steps):
        lab = int(label_of[i])
        rows[lab] = (lab, int(uids[lab]), name, scen)
        order[scen].append(lab)
    return rows, order


def _procedure(order: list[int], n_seg: int, rng: np.random.Generator, *, full: bool) -> list[int]:
    """Walk a scenario's canonical order mostly in order, with some skips and repeats.

    A take that reaches the end of the procedure starts it again (a second dish, the other wheel),
    so short procedures still give takes of ``n_seg`` segments.  ``full``: start at the first step
    and skip nothing (used once per scenario in train, so every step is seen in training).
    """
    pos = 0 if (full or rng.random() < 0.5) else int(rng.integers(0, len(order)))
    seq: list[int] = []
    while len(seq) < n_seg:
        step = order[pos % len(order)]
        pos += 1
        if not full and len(order) > 2 and rng.random() < 0.15:
            continue  # skip
        seq.append(step)
        if rng.random() < 0.12 and len(seq) < n_seg:
            seq.append(step)  # the step again (e.g. "Add salt" twice)
    return seq


# --------------------------------------------------------------------------------------------
# takes and segments
# --------------------------------------------------------------------------------------------


@dataclass
class _Take:
    """One take as drawn: its name, cameras and keysteps (times are drawn per segment)."""

    split: str
    index: int  # take number within the split
    name: str
    uid: str
    ego_cam: str
    exo: list[int]  # the take's exo cameras, indices into EXO_CAMERAS
    labels: list[int]  # the keystep of each segment, in time order

    @property
    def key(self) -> tuple[int, int]:
        """(split index, take index): seeds the take's variation and its clips."""
        return (SPLITS.index(self.split), self.index)


def _round_time(t: float) -> float:
    return round(float(t), 5)


def _json_time(t: float) -> int | float:
    """A time as the JSON files write it: whole seconds as integers."""
    return int(t) if t == int(t) else t


def _take_name(scen: str, trng: np.random.Generator, used_names: set[str]) -> str:
    """A take name like ``upenn_cooking_07_2`` not used before (added to ``used_names``)."""
    while True:
        inst = _INSTITUTIONS[int(trng.integers(len(_INSTITUTIONS)))]
        take_name = f"{inst}_{_TAKE_TOKEN[scen]}_{int(trng.integers(1, 40)):02d}_{int(trng.integers(1, 9))}"
        if take_name not in used_names:
            used_names.add(take_name)
            return take_name


def _take_cameras(split: str, ti: int, trng: np.random.Generator, aria_nonumber_prob: float):
    """The take's ego camera name and its sorted exo camera indices."""
    # ego camera: mostly ariaNN_214-1, some takes plain aria_214-1 (forced once in train and test)
    force_plain = (split == "train" and ti == 1) or (split == "test" and ti == 0)
    if force_plain or trng.random() < aria_nonumber_prob:
        ego_cam = "aria_214-1"
    else:
        ego_cam = f"aria{int(trng.integers(1, 10)):02d}_214-1"
    # exo cameras: usually all 4, some takes 2-3 (forced once in train)
    if (split == "train" and ti == 2) or trng.random() < 0.3:
        n_exo = int(trng.integers(2, 4))
    else:
        n_exo = 4
    take_exo = sorted(trng.choice(len(EXO_CAMERAS), size=n_exo, replace=False).tolist())
    return ego_cam, take_exo


def _draw_take(
    split: str, ti: int, order: dict[str, list[int]], trng: np.random.Generator, used_names: set[str],
    *, segments_per_take: tuple[int, int], aria_nonumber_prob: float,
) -> _Take:
    """Take ``ti`` of ``split``: its scenario, name, uid, cameras and keystep sequence."""
    scen_list = list(order)
    scen = scen_list[(ti + SPLITS.index(split)) % len(scen_list)]
    take_name = _take_name(scen, trng, used_names)
    take_uid = str(uuid.UUID(bytes=trng.bytes(16), version=4))
    ego_cam, take_exo = _take_cameras(split, ti, trng, aria_nonumber_prob)
    n_seg = int(trng.integers(segments_per_take[0], segments_per_take[1] + 1))
    first_of_scen = split == "train" and ti < len(scen_list)  # covers every step once in train
    labels = _procedure(order[scen], n_seg, trng, full=first_of_scen)
    return _Take(split, ti, take_name, take_uid, ego_cam, take_exo, labels)


def _segment_span(
    t: float, si: int, forced_short: bool, trng: np.random.Generator,
    *, clip_seconds: tuple[float, float], short_clip_prob: float, integer_time_prob: float, fps: int,
) -> tuple[float, float]:
    """(start, end) of segment ``si`` of a take, the previous segment ending at ``t``."""
    if si > 0:
        t += float(trng.uniform(0.2, 3.0))
    if forced_short:
        dur = 0.16
    elif trng.random() < short_clip_prob:
        dur = float(trng.uniform(0.16, 0.5))
    else:
        dur = float(trng.uniform(*clip_seconds))
    start = _round_time(t)
    if si > 0 and dur > 0.6 and trng.random() < integer_time_prob:
        start = float(math.ceil(start))
    end = _round_time(start + dur)
    if dur > 0.6 and trng.random() < integer_time_prob:
        end = float(math.ceil(end))
    if clip_num_frames(start, end, fps) < 1 or end <= start:
        end = _round_time(start + 1.0 / fps)
    return start, end


def _segment_clips(
    take: _Take, si: int, lab: int, start: float, end: float, seg_exo: list[int], seed: int,
) -> tuple[str, list[str], list[PlannedClip]]:
    """Segment ``si``'s ego clip name, exo clip names and the clips to write (no exo in test)."""
    stem = f"start{format_time(start)}_end{format_time(end)}"
    ego_rel = f"{take.split}/{take.name}/{stem}_{take.ego_cam}.mp4"
    exo_rels = [f"{take.split}/{take.name}/{stem}_{EXO_CAMERAS[k]}.mp4" for k in seg_exo]
    key = take.key
    clips = [PlannedClip(ego_rel, take.ego_cam, True, lab, start, end, key, (seed, 3, *key, si, 0), -1)]
    if take.split != "test":
        for k, rel in zip(seg_exo, exo_rels):
            clips.append(PlannedClip(rel, EXO_CAMERAS[k], False, lab, start, end, key,
                               (seed, 3, *key, si, k + 1), k))
    return ego_rel, exo_rels, clips


def _segment_json(take: _Take, ego_rel: str, exo_rels: list[str], start: float, end: float,
                  lab: int, row: tuple) -> dict:
    """One entry of the split JSON's ``segments`` (test entries have no labels and no exo views)."""
    seg = {
        "segment_name_list": [ego_rel] if take.split == "test" else [ego_rel] + exo_rels,
        "ego_segment_name": ego_rel,
        "take_uid": take.uid,
        "take_name": take.name,
        "start_time": _json_time(start),
        "end_time": _json_time(end),
    }
    if take.split != "test":
        _, uid, name, _scen = row
        seg.update({"step_unique_id": uid, "label_id": lab, "step_name": name})
    return seg


def _take_segments(
    take: _Take, trng: np.random.Generator, rows: list, *, seed: int, clip_seconds: tuple[float, float],
    short_clip_prob: float, integer_time_prob: float, fps: int,
) -> tuple[list[dict], list[PlannedClip]]:
    """The take's segment JSON entries and its clips, segments one after another in time."""
    forced_short = -1
    if take.index == 0 and take.split in ("train", "test"):
        forced_short = min(1, len(take.labels) - 1)
    t = 0.0 if (take.index == 0 or trng.random() < 0.25) else float(trng.uniform(0.1, 5.0))
    segs: list[dict] = []
    clips: list[PlannedClip] = []
    for si, lab in enumerate(take.labels):
        start, end = _segment_span(
            t, si, si == forced_short, trng, clip_seconds=clip_seconds, short_clip_prob=short_clip_prob,
            integer_time_prob=integer_time_prob, fps=fps,
        )
        t = end
        # a few segments lose one more exo view than the take has
        seg_exo = list(take.exo)
        if len(seg_exo) > 2 and trng.random() < 0.1:
            seg_exo.pop(int(trng.integers(len(seg_exo))))
        ego_rel, exo_rels, seg_clips = _segment_clips(take, si, lab, start, end, seg_exo, seed)
        clips.extend(seg_clips)
        segs.append(_segment_json(take, ego_rel, exo_rels, start, end, lab, rows[lab]))
    return segs, clips


def plan_sample(
    *, seed: int, num_classes: int, takes_per_split: dict[str, int], segments_per_take: tuple[int, int],
    clip_seconds: tuple[float, float], short_clip_prob: float, integer_time_prob: float,
    aria_nonumber_prob: float, fps: int,
):
    """Label rows, class looks, the JSON document of each split and the clips to render."""
    rng = np.random.default_rng([seed, 1])
    rows, order = _label_mapping(num_classes, rng)
    looks = _class_looks(num_classes, rng)

    used_names: set[str] = set()
    docs: dict[str, dict] = {}
    clips: list[PlannedClip] = []
    for split in SPLITS:
        n_takes = int(takes_per_split.get(split, 0))
        segs_json = []
        for ti in range(n_takes):
            trng = np.random.default_rng([seed, 2, SPLITS.index(split), ti])
            take = _draw_take(split, ti, order, trng, used_names, segments_per_take=segments_per_take,
                              aria_nonumber_prob=aria_nonumber_prob)
            segs, take_clips = _take_segments(
                take, trng, rows, seed=seed, clip_seconds=clip_seconds, short_clip_prob=short_clip_prob,
                integer_time_prob=integer_time_prob, fps=fps,
            )
            segs_json.extend(segs)
            clips.extend(take_clips)
        docs[split] = {"date": _DATE, "description": _DESCRIPTION, "splits": split, "segments": segs_json}
    return rows, looks, docs, clips
