"""Write a small synthetic keystep benchmark in exactly the layout of the real Ego-Exo4D download.

The real ``egoexo`` downloader (``--benchmarks keystep``) produces::

    <out>/annotations/keystep_benchmark/label_mapping.csv
    <out>/annotations/keystep_benchmark/keystep_segment_train.json
    <out>/annotations/keystep_benchmark/keystep_segment_val.json
    <out>/annotations/keystep_benchmark/keystep_segment_test_unannotated.json
    <out>/keystep_benchmark/clips_448p/<split>/<take_name>/start<t0>_end<t1>_<camera>.mp4

:func:`write_sample_benchmark` writes the same files, with invented takes and keysteps and real
H.264 clips whose pixels depend on the keystep, so the whole pipeline (extract -> train -> predict)
can be run end to end in seconds without the real data.

How the class signal is built (see :func:`_render_clip`): every keystep has its own colour, a
stripe pattern (orientation, spatial frequency, drift speed) and a moving blob (position, path,
size, colour).  Exo cameras show the pattern cleanly, each from its own fixed viewpoint (rotation,
zoom, shift) with a class-independent floor band at the bottom.  The ego (Aria) view carries less
of the signal on purpose: the colours are pulled toward a random grey, the pattern has lower
contrast, there is more noise, a fisheye-like vignette, camera shake, a random brightness per clip
and a large random-coloured distractor box ("hands/object") covering 20-40 % of the frame (the
knobs are in ``_EXO_LOOK`` / ``_EGO_LOOK``).  With features of a small random conv net and a
logistic-regression head, exo clips are classified almost perfectly and ego clips well above
chance but clearly worse, so a head that learns from exo views in training has something to gain.
Every take also gets its own brightness, offset and tint.

Within a take the keysteps follow the take's scenario procedure (a canonical order of that
scenario's steps), run through mostly in order with occasional skips and repeats, so a context
model over neighbouring segments has something to exploit.

Everything is drawn from ``numpy.random.default_rng`` seeded from ``seed`` (each clip from its own
child seed, so the result does not depend on ``workers``), and clips are encoded single-threaded
(x264 ``threads=1``), so the same seed gives byte-identical JSON files and, with the same PyAV /
FFmpeg build, byte-identical mp4 files.  This module does not import torch; PyAV is imported only
when clips are written.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kscli.errors import KscliError

__all__ = [
    "SampleSummary",
    "SPLITS",
    "SCENARIOS",
    "clip_num_frames",
    "format_time",
    "tiny_sample_kwargs",
    "write_sample_benchmark",
]

SPLITS = ("train", "val", "test")
SCENARIOS = ("cooking", "bike", "health")
JSON_NAMES = {
    "train": "keystep_segment_train.json",
    "val": "keystep_segment_val.json",
    "test": "keystep_segment_test_unannotated.json",
}
CLIPS_DIRNAME = "clips_448p"  # the real folder name, whatever size the clips are encoded at
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
# public helpers
# --------------------------------------------------------------------------------------------


@dataclass
class SampleSummary:
    """What :func:`write_sample_benchmark` wrote."""

    out: Path
    annotations_dir: Path  # out/annotations/keystep_benchmark
    clips_dir: Path  # out/keystep_benchmark/clips_448p
    label_mapping: Path
    split_json: dict[str, Path]
    num_classes: int
    takes: dict[str, int]
    segments: dict[str, int]
    clips: dict[str, int]  # mp4 files written per split
    frames: int  # frames encoded over all clips
    ego_size: tuple[int, int]  # (height, width)
    exo_size: tuple[int, int]  # (height, width)
    fps: int
    seed: int
    bytes_written: int = 0
    seconds: float = 0.0
    short_clips: int = 0  # segments shorter than 0.6 s

    def text(self) -> str:
        """A few human-readable lines for the CLI."""
        per = ", ".join(
            f"{s}: {self.takes[s]} takes / {self.segments[s]} segments / {self.clips[s]} clips"
            for s in self.takes
        )
        return (
            f"wrote a synthetic keystep benchmark to {self.out}\n"
            f"  {self.num_classes} keysteps; {per}\n"
            f"  ego {self.ego_size[1]}x{self.ego_size[0]}, exo {self.exo_size[1]}x{self.exo_size[0]} "
            f"@ {self.fps} fps, {self.frames} frames, {self.bytes_written / 1e6:.1f} MB "
            f"in {self.seconds:.1f} s (seed {self.seed})"
        )


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


def tiny_sample_kwargs() -> dict:
    """Settings for a tiny sample (64 px short side, ~1 s clips) that tests generate in seconds."""
    return dict(
        num_classes=6,
        takes_per_split={"train": 6, "val": 3, "test": 2},
        short_side=64,
        fps=30,
        segments_per_take=(3, 5),
        clip_seconds=(0.3, 1.2),
        short_clip_prob=0.1,
    )


# --------------------------------------------------------------------------------------------
# the plan: classes, takes, segments (pure python + numpy rng, no pixels)
# --------------------------------------------------------------------------------------------


@dataclass
class _ClassLook:
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
class _Clip:
    rel: str  # relative to clips_448p/
    camera: str
    ego: bool
    label: int
    start: float
    end: float
    take_key: tuple  # for per-take variation seeding
    clip_seed: tuple
    exo_index: int  # which exo camera (0..3), -1 for ego


def _class_looks(num_classes: int, rng: np.random.Generator) -> list[_ClassLook]:
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
            _ClassLook(
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


def _round_time(t: float) -> float:
    return round(float(t), 5)


def _plan(
    *, seed: int, num_classes: int, takes_per_split: dict[str, int], segments_per_take: tuple[int, int],
    clip_seconds: tuple[float, float], short_clip_prob: float, integer_time_prob: float,
    aria_nonumber_prob: float, fps: int,
):
    rng = np.random.default_rng([seed, 1])
    rows, order = _label_mapping(num_classes, rng)
    looks = _class_looks(num_classes, rng)
    scen_list = list(order)

    used_names: set[str] = set()
    docs: dict[str, dict] = {}
    clips: list[_Clip] = []
    for split in SPLITS:
        n_takes = int(takes_per_split.get(split, 0))
        segs_json = []
        for ti in range(n_takes):
            trng = np.random.default_rng([seed, 2, SPLITS.index(split), ti])
            scen = scen_list[(ti + SPLITS.index(split)) % len(scen_list)]
            while True:
                inst = _INSTITUTIONS[int(trng.integers(len(_INSTITUTIONS)))]
                take_name = f"{inst}_{_TAKE_TOKEN[scen]}_{int(trng.integers(1, 40)):02d}_{int(trng.integers(1, 9))}"
                if take_name not in used_names:
                    used_names.add(take_name)
                    break
            take_uid = str(uuid.UUID(bytes=trng.bytes(16), version=4))
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

            n_seg = int(trng.integers(segments_per_take[0], segments_per_take[1] + 1))
            first_of_scen = split == "train" and ti < len(scen_list)  # covers every step once in train
            labels = _procedure(order[scen], n_seg, trng, full=first_of_scen)

            forced_short = -1
            if (split == "train" and ti == 0) or (split == "test" and ti == 0):
                forced_short = min(1, len(labels) - 1)
            t = 0.0 if (ti == 0 or trng.random() < 0.25) else float(trng.uniform(0.1, 5.0))
            for si, lab in enumerate(labels):
                if si > 0:
                    t += float(trng.uniform(0.2, 3.0))
                if si == forced_short:
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
                t = end
                stem = f"start{format_time(start)}_end{format_time(end)}"
                ego_rel = f"{split}/{take_name}/{stem}_{ego_cam}.mp4"
                # a few segments lose one more exo view than the take has
                seg_exo = list(take_exo)
                if len(seg_exo) > 2 and trng.random() < 0.1:
                    seg_exo.pop(int(trng.integers(len(seg_exo))))
                exo_rels = [f"{split}/{take_name}/{stem}_{EXO_CAMERAS[k]}.mp4" for k in seg_exo]
                key = (SPLITS.index(split), ti)
                clips.append(_Clip(ego_rel, ego_cam, True, lab, start, end, key,
                                   (seed, 3, *key, si, 0), -1))
                if split != "test":
                    for k, rel in zip(seg_exo, exo_rels):
                        clips.append(_Clip(rel, EXO_CAMERAS[k], False, lab, start, end, key,
                                           (seed, 3, *key, si, k + 1), k))
                start_j = int(start) if start == int(start) else start
                end_j = int(end) if end == int(end) else end
                if split == "test":
                    seg = {
                        "segment_name_list": [ego_rel],
                        "ego_segment_name": ego_rel,
                        "take_uid": take_uid,
                        "take_name": take_name,
                        "start_time": start_j,
                        "end_time": end_j,
                    }
                else:
                    _, uid, name, _scen = rows[lab]
                    seg = {
                        "segment_name_list": [ego_rel] + exo_rels,
                        "ego_segment_name": ego_rel,
                        "take_uid": take_uid,
                        "take_name": take_name,
                        "start_time": start_j,
                        "end_time": end_j,
                        "step_unique_id": uid,
                        "label_id": lab,
                        "step_name": name,
                    }
                segs_json.append(seg)
        docs[split] = {"date": _DATE, "description": _DESCRIPTION, "splits": split, "segments": segs_json}
    return rows, looks, docs, clips


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------


def _take_variation(seed: int, take_key: tuple) -> tuple[float, float, np.ndarray]:
    r = np.random.default_rng([seed, 4, *take_key])
    gain = float(r.uniform(0.85, 1.15))
    offset = float(r.uniform(-10, 10))
    tint = r.uniform(-5, 5, size=3).astype(np.float32)
    return gain, offset, tint


def _camera_view(k: int, seed: int) -> tuple[float, float, float, float, float, float]:
    """Fixed viewpoint of exo camera k: rotation, zoom, shift x, shift y, horizon, floor level."""
    r = np.random.default_rng([seed, 5, k])
    rot = float(r.uniform(-0.3, 0.3)) + k * math.pi / 4
    zoom = float(r.uniform(0.75, 1.3))
    return (rot, zoom, float(r.uniform(-0.4, 0.4)), float(r.uniform(-0.3, 0.3)),
            float(r.uniform(0.72, 0.85)), float(r.uniform(60, 160)))


# How each view shows the keystep; the ego view is the harder one.  contrast: stripe contrast;
# blob: blob opacity; noise: noise sigma (grey levels); wash: how far the class colours are pulled
# toward a random grey; gain_jitter: random brightness per clip (+-); box_area: range of the frame
# fraction the distractor box covers; shake: camera shake step (short-side units per frame).
_EXO_LOOK = dict(contrast=0.6, blob=0.9, noise=5.0)
_EGO_LOOK = dict(contrast=0.35, blob=0.6, noise=12.0, wash=0.3, gain_jitter=0.2, box_area=(0.2, 0.4), shake=0.012)


def _render_clip(clip: _Clip, look: _ClassLook, *, seed: int, height: int, width: int, fps: int, div: int = 1):
    """Yield the clip's frames as (ceil(height/div), ceil(width/div), 3) uint8 arrays.

    Frames are computed at 1/div resolution; the encoder enlarges them to height x width
    (bilinear, while converting to yuv420p).  The patterns are smooth, and it makes 448p
    generation several times faster.
    Vectorised over pixels and over chunks of frames.  A frame is, per colour channel c::

        gain * vignette * (base_c * L * (1 - m) + blob_c * m) + offset + tint_c + noise

    with L the class stripe pattern at the class contrast and m the class blob; exo frames have a
    class-independent floor band, ego frames a random-coloured distractor box (see module doc).
    """
    f32 = np.float32
    rng = np.random.default_rng(list(clip.clip_seed))
    n = clip_num_frames(clip.start, clip.end, fps)
    H, W = height, width  # output size; below, height/width/short are the render size
    height, width = -(-H // div), -(-W // div)
    short = min(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(f32)
    # short-side units, frame centre at (0.5, 0.5), from the centres of the output pixels
    X0 = (xs * div + (div - 1) / 2.0 - (W - 1) / 2.0) / min(H, W) + 0.5
    Y0 = (ys * div + (div - 1) / 2.0 - (H - 1) / 2.0) / min(H, W) + 0.5
    gain, offset, tint = _take_variation(seed, clip.take_key)
    base = look.rgb.astype(np.float64)
    blob_rgb = look.blob_rgb.astype(np.float64)
    block = max(2, short // 32)  # noise is drawn at low resolution: cheap to make and to encode
    nh, nw = -(-height // block), -(-width // block)

    if clip.ego:
        look_e = _EGO_LOOK
        grey = float(rng.uniform(110, 150))
        wash = look_e["wash"]  # class colours pulled toward grey
        base = (1 - wash) * base + wash * grey
        blob_rgb = (1 - wash) * blob_rgb + wash * grey
        contrast, blob_alpha, noise_sigma = look_e["contrast"], look_e["blob"], look_e["noise"]
        gain *= 1.0 + float(rng.uniform(-1.0, 1.0)) * look_e["gain_jitter"]
        rr = (X0 - 0.5) ** 2 + (Y0 - 0.5) ** 2
        vig = np.clip(1.15 - 1.3 * rr, 0.35, 1.0).astype(f32)  # fisheye-like fall-off
        # distractor: a random-coloured box ("hands / object") covering part of the frame
        area = float(rng.uniform(*look_e["box_area"]))
        bw = float(rng.uniform(0.45, 0.9)) * width
        bh = min(float(height), area * width * height / bw)
        bx0 = float(rng.uniform(0, width - bw))
        by0 = float(rng.uniform(0, height - bh))
        bvx, bvy = rng.uniform(-0.15, 0.15, size=2) * short  # pixels per second
        dcol = rng.uniform(20, 235, size=3)
        shake = np.cumsum(rng.normal(0, look_e["shake"], size=(n, 2)), axis=0) + rng.uniform(-0.1, 0.1, 2)
        X, Y = X0, Y0
        floor = None
    else:
        rot, zoom, sx, sy, horizon, floor_level = _camera_view(clip.exo_index, seed)
        cr, sr = math.cos(rot), math.sin(rot)
        Xc, Yc = X0 - 0.5, Y0 - 0.5
        X = (cr * Xc - sr * Yc) * zoom + 0.5 + sx  # this camera's fixed viewpoint on the pattern
        Y = (sr * Xc + cr * Yc) * zoom + 0.5 + sy
        contrast, blob_alpha, noise_sigma = _EXO_LOOK["contrast"], _EXO_LOOK["blob"], _EXO_LOOK["noise"]
        floor = ys / max(1, height - 1) > horizon  # class-independent floor band
        floor_col = (floor_level + np.sin(xs / short * 40.0) * 8.0).astype(f32)
        vig = None
        shake = np.zeros((n, 2))
    if clip.exo_index >= 0:
        gain *= 1.0 + 0.05 * (clip.exo_index - 1.5)

    # stripes: sin(2 pi f (X cos + Y sin) - phase); shake is a phase shift, so sin/cos of the
    # spatial part are computed once per clip.  blob: exp(-|(X,Y) - c|^2 / r^2), expanded.
    two_pi_f = 2 * math.pi * look.freq
    cos_t, sin_t = math.cos(look.theta), math.sin(look.theta)
    arg = (two_pi_f * (X * cos_t + Y * sin_t)).astype(f32)
    sinA, cosA = np.sin(arg), np.cos(arg)
    inv_r2 = 1.0 / look.blob_r ** 2
    negR2 = (-(X * X + Y * Y) * inv_r2).astype(f32)
    X2 = (2 * inv_r2 * X).astype(f32)
    Y2 = (2 * inv_r2 * Y).astype(f32)
    gvig = (vig * f32(gain)) if vig is not None else None
    # noise: a per-clip field plus a smaller per-frame part (all-new noise every frame is costly to encode)
    static_noise = rng.standard_normal((nh, nw), dtype=f32) * f32(0.8 * noise_sigma)

    k = max(1, min(n, 1_000_000 // (height * width)))  # frames per chunk, ~1 M pixels a chunk
    for i0 in range(0, n, k):
        idx = np.arange(i0, min(n, i0 + k))
        kk = len(idx)
        t = clip.start + idx / fps  # take time: ego and exo clips of a segment are in sync
        dx, dy = shake[idx, 0], shake[idx, 1]
        phase = look.drift * t - two_pi_f * (dx * cos_t + dy * sin_t)
        c_p = np.cos(phase).astype(f32)[:, None, None]
        s_p = np.sin(phase).astype(f32)[:, None, None]
        stripes = sinA * c_p
        stripes -= cosA * s_p  # = sin(arg - phase)
        L = stripes
        L *= f32(0.5 * contrast)
        L += f32(1.0 - 0.5 * contrast)
        u = look.blob_c[0] + look.blob_amp[0] * np.sin(look.blob_omega * t) - dx
        v = look.blob_c[1] + look.blob_amp[1] * np.cos(look.blob_omega * t) - dy
        m = X2 * u.astype(f32)[:, None, None]
        m += Y2 * v.astype(f32)[:, None, None]
        m += negR2
        m -= ((u * u + v * v) * inv_r2).astype(f32)[:, None, None]
        np.exp(m, out=m)
        m *= f32(blob_alpha)
        A = L * (1 - m)  # weight of the class colour
        B = m  # weight of the blob colour
        if gvig is not None:
            A *= gvig
            B *= gvig
        else:
            A *= f32(gain)
            B *= f32(gain)
        noise = rng.standard_normal((kk, nh, nw), dtype=f32) * f32(0.6 * noise_sigma)
        noise += static_noise
        N = np.repeat(np.repeat(noise, block, axis=1), block, axis=2)[:, :height, :width]
        N += f32(offset)
        out = np.empty((kk, height, width, 3), dtype=np.uint8)
        if clip.ego:
            boxes = []
            for i in idx:
                x0 = int(round(bx0 + bvx * i / fps)) % max(1, width)
                y0 = int(round(by0 + bvy * i / fps)) % max(1, height)
                boxes.append((x0, y0, min(width, x0 + int(bw)), min(height, y0 + int(bh))))
        for c in range(3):
            ch = A * f32(base[c])
            ch += B * f32(blob_rgb[c])
            if clip.ego:
                for j, (x0, y0, x1, y1) in enumerate(boxes):
                    ch[j, y0:y1, x0:x1] = gvig[y0:y1, x0:x1] * f32(dcol[c])
            else:
                np.copyto(ch, floor_col * f32(gain), where=floor[None])
            ch += N
            ch += f32(tint[c])
            np.clip(ch, 0, 255, out=ch)
            out[..., c] = ch
        yield from out


def _encode_clip(path: Path, frames, *, width: int, height: int, fps: int, crf: int) -> int:
    """Encode RGB frames to H.264 mp4 at path (via a temp name renamed at the end); return frame count.

    Frames of another size are scaled (bilinear) to width x height."""
    import av  # PyAV; imported here so the rest of kscli.data does not need it
    from av.video.reformatter import VideoReformatter

    tmp = path.with_name(f".{path.stem}.partial.mp4")
    n = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(
                "libx264", rate=fps,
                options={"preset": "ultrafast", "crf": str(crf), "threads": "1"},
            )
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = fps
            scaler = VideoReformatter()  # one scaling context for the whole clip
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                frame = scaler.reformat(frame, width=width, height=height, format="yuv420p", interpolation="BILINEAR")
                frame.pts = n
                for packet in stream.encode(frame):
                    container.mux(packet)
                n += 1
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _write_one(job):
    clip, look, seed, size, fps, crf, div, root = job
    height, width = size
    path = Path(root) / clip.rel
    frames = _render_clip(clip, look, seed=seed, height=height, width=width, fps=fps, div=div)
    n = _encode_clip(path, frames, width=width, height=height, fps=fps, crf=crf)
    return n, path.stat().st_size


# --------------------------------------------------------------------------------------------
# the public entry point
# --------------------------------------------------------------------------------------------


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _check_even(name: str, v: int) -> int:
    v = int(v)
    if v < 16 or v % 2:
        raise KscliError(f"{name}={v}: must be an even number of pixels >= 16 (H.264 yuv420p needs even sizes)")
    return v


def write_sample_benchmark(
    out: Path,
    *,
    seed: int = 0,
    num_classes: int = 12,
    takes_per_split: dict[str, int] | None = None,
    short_side: int = 448,
    fps: int = 30,
    long_side: int | None = None,
    overwrite: bool = False,
    segments_per_take: tuple[int, int] = (4, 7),
    clip_seconds: tuple[float, float] = (1.0, 3.0),
    short_clip_prob: float = 0.06,
    integer_time_prob: float = 0.12,
    aria_nonumber_prob: float = 0.2,
    crf: int = 28,
    workers: int = 1,
) -> SampleSummary:
    """Write a synthetic keystep benchmark under ``out`` in the real download's layout.

    ``takes_per_split`` defaults to ``{"train": 8, "val": 3, "test": 3}``.  Exo clips are
    ``short_side`` x ``long_side`` (default 16:9, rounded to even); ego (Aria) clips are square
    ``short_side`` x ``short_side``.  ``segments_per_take`` and ``clip_seconds`` are inclusive
    ranges; a few segments (``short_clip_prob``, plus one forced 0.16 s segment in train and in
    test) are 0.16-0.5 s long.  Test segments list the ego clip only and only ego clips are written
    for test.  ``workers`` > 1 encodes clips in that many processes (output is identical).
    Frames are drawn at ``1 / max(1, short_side // 224)`` resolution and scaled up (bilinear) by
    the encoder; ``crf`` is x264's quality (lower = bigger files).

    Raises :class:`KscliError` if ``out`` is a non-empty folder and ``overwrite`` is false; with
    ``overwrite`` the previously written ``annotations/keystep_benchmark`` and
    ``keystep_benchmark/clips_448p`` are removed first (other files in ``out`` are left alone).
    """
    t_start = time.perf_counter()
    out = Path(out)
    if takes_per_split is None:
        takes_per_split = {"train": 8, "val": 3, "test": 3}
    unknown = set(takes_per_split) - set(SPLITS)
    if unknown:
        raise KscliError(f"takes_per_split: unknown split(s) {sorted(unknown)}; use train, val, test")
    if int(num_classes) < 1:
        raise KscliError(f"num_classes={num_classes}: must be at least 1")
    if int(fps) < 1:
        raise KscliError(f"fps={fps}: must be a positive integer")
    if not (1 <= segments_per_take[0] <= segments_per_take[1]):
        raise KscliError(f"segments_per_take={segments_per_take}: need 1 <= min <= max")
    if not (0 < clip_seconds[0] <= clip_seconds[1]):
        raise KscliError(f"clip_seconds={clip_seconds}: need 0 < min <= max")
    short_side = _check_even("short_side", short_side)
    if long_side is None:
        long_side = int(round(short_side * 16 / 9))
        long_side += long_side % 2
    long_side = _check_even("long_side", long_side)
    if long_side < short_side:
        raise KscliError(f"long_side={long_side} is shorter than short_side={short_side}")
    ego_size = (short_side, short_side)
    exo_size = (short_side, long_side)

    if out.exists() and not out.is_dir():
        raise KscliError(f"{out} is a file, not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise KscliError(
                f"{out} is not empty: choose an empty or new folder, or pass overwrite to replace the sample there"
            )
        for sub in (out / "annotations" / "keystep_benchmark", out / "keystep_benchmark" / CLIPS_DIRNAME):
            if sub.is_dir():
                shutil.rmtree(sub)

    rows, looks, docs, clips = _plan(
        seed=seed, num_classes=int(num_classes), takes_per_split=takes_per_split,
        segments_per_take=(int(segments_per_take[0]), int(segments_per_take[1])),
        clip_seconds=(float(clip_seconds[0]), float(clip_seconds[1])),
        short_clip_prob=float(short_clip_prob), integer_time_prob=float(integer_time_prob),
        aria_nonumber_prob=float(aria_nonumber_prob), fps=int(fps),
    )

    ann_dir = out / "annotations" / "keystep_benchmark"
    clips_dir = out / "keystep_benchmark" / CLIPS_DIRNAME
    ann_dir.mkdir(parents=True, exist_ok=True)
    clips_dir.mkdir(parents=True, exist_ok=True)
    for d in sorted({str(Path(c.rel).parent) for c in clips}):
        (clips_dir / d).mkdir(parents=True, exist_ok=True)

    div = max(1, short_side // 224)
    jobs = [(c, looks[c.label], seed, ego_size if c.ego else exo_size, int(fps), int(crf), div, str(clips_dir))
            for c in clips]
    if workers and workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_write_one, jobs, chunksize=4))
    else:
        results = [_write_one(j) for j in jobs]

    # annotations last, so a folder with annotations has its clips
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label_id", "step_unique_id", "step_name", "scenario_name"])
    for r in rows:
        w.writerow(r)
    label_path = ann_dir / "label_mapping.csv"
    _write_text_atomic(label_path, buf.getvalue())
    split_json = {}
    for split in SPLITS:
        p = ann_dir / JSON_NAMES[split]
        _write_text_atomic(p, json.dumps(docs[split]))
        split_json[split] = p

    nbytes = sum(s for _, s in results) + label_path.stat().st_size + sum(p.stat().st_size for p in split_json.values())
    return SampleSummary(
        out=out,
        annotations_dir=ann_dir,
        clips_dir=clips_dir,
        label_mapping=label_path,
        split_json=split_json,
        num_classes=int(num_classes),
        takes={s: int(takes_per_split.get(s, 0)) for s in SPLITS},
        segments={s: len(docs[s]["segments"]) for s in SPLITS},
        clips={s: sum(1 for c in clips if c.rel.startswith(s + "/")) for s in SPLITS},
        frames=sum(n for n, _ in results),
        ego_size=ego_size,
        exo_size=exo_size,
        fps=int(fps),
        seed=int(seed),
        bytes_written=nbytes,
        seconds=time.perf_counter() - t_start,
        short_clips=sum(1 for s in SPLITS for g in docs[s]["segments"] if g["end_time"] - g["start_time"] < 0.6),
    )
