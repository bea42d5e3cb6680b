"""Write a small synthetic keystep benchmark in exactly the layout of the real Ego-Exo4D download.

The real ``egoexo`` downloader (``--benchmarks keystep``) produces::

    <out>/annotations/keystep_benchmark/label_mapping.csv
    <out>/annotations/keystep_benchmark/keystep_segment_train.json
    <out>/annotations/keystep_benchmark/keystep_segment_val.json
    <out>/annotations/keystep_benchmark/keystep_segment_test_unannotated.json
    <out>/keystep_benchmark/clips_448p/<split>/<take_name>/start<t0>_end<t1>_<camera>.mp4

:func:`write_sample_benchmark` writes the same files, with invented takes and keysteps and real
H.264 clips whose pixels depend on the keystep, so the whole pipeline (extract -> train -> predict)
can be run end to end in seconds without the real data.  This module holds the public entry points
and writes the output folder; :mod:`kscli.data.sample_plan` draws the keysteps, takes and segments,
and :mod:`kscli.data.sample_video` renders and encodes the clips.

How the class signal is built (see :func:`kscli.data.sample_video._render_clip`): every keystep
has its own colour, a stripe pattern (orientation, spatial frequency, drift speed) and a moving
blob (position, path, size, colour).  Exo cameras show the pattern cleanly, each from its own fixed
viewpoint (rotation, zoom, shift) with a class-independent floor band at the bottom.  The ego
(Aria) view carries less of the signal on purpose: the colours are pulled toward a random grey, the
pattern has lower contrast, there is more noise, a fisheye-like vignette, camera shake, a random
brightness per clip and a large random-coloured distractor box ("hands/object") covering 20-40 %
of the frame (the knobs are in ``sample_video._EXO_LOOK`` / ``_EGO_LOOK``).  With features of a
small random conv net and a logistic-regression head, exo clips are classified almost perfectly and
ego clips well above chance but clearly worse, so a head that learns from exo views in training has
something to gain.  Every take also gets its own brightness, offset and tint.

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

import csv
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kscli.data.labels import LABEL_MAPPING_FILE
from kscli.data.layout import download_annotations, download_clips
from kscli.data.sample_plan import (
    EXO_CAMERAS as EXO_CAMERAS,  # re-exported: part of this module's names
    SCENARIOS,
    PlannedClip,
    plan_sample,
    clip_num_frames,
    format_time,
)
from kscli.data.sample_video import ENCODINGS, write_clip
from kscli.data.segments import ANNOTATION_FILES, SPLITS
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
# the steps of write_sample_benchmark
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


def _check_settings(
    num_classes: int, takes_per_split: dict[str, int], fps: int,
    segments_per_take: tuple[int, int], clip_seconds: tuple[float, float],
) -> None:
    """Raise :class:`KscliError` for settings the sample cannot be written with."""
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


def _frame_sizes(short_side: int, long_side: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(ego, exo) clip sizes as (height, width): ego square, exo ``long_side`` (default 16:9) wide."""
    short_side = _check_even("short_side", short_side)
    if long_side is None:
        long_side = int(round(short_side * 16 / 9))
        long_side += long_side % 2
    long_side = _check_even("long_side", long_side)
    if long_side < short_side:
        raise KscliError(f"long_side={long_side} is shorter than short_side={short_side}")
    return (short_side, short_side), (short_side, long_side)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty folder, unless ``overwrite``: then remove the previous sample."""
    if out.exists() and not out.is_dir():
        raise KscliError(f"{out} is a file, not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise KscliError(
                f"{out} is not empty: choose an empty or new folder, or pass --overwrite (overwrite=True in Python) "
                "to replace the sample there"
            )
        for sub in (download_annotations(out), download_clips(out)):
            if sub.is_dir():
                shutil.rmtree(sub)


def _write_clips(
    clips: list[PlannedClip], looks: list, clips_dir: Path, *, seed: int, ego_size: tuple[int, int],
    exo_size: tuple[int, int], fps: int, crf: int | None, encoding: str, div: int, workers: int,
    progress: bool = False,
) -> list[tuple[int, int]]:
    """Render and encode every clip (in ``workers`` processes if > 1); (frames, bytes) of each."""
    from tqdm import tqdm

    for d in sorted({str(Path(c.rel).parent) for c in clips}):
        (clips_dir / d).mkdir(parents=True, exist_ok=True)
    jobs = [(c, looks[c.label], seed, ego_size if c.ego else exo_size, int(fps), crf, encoding, div,
             str(clips_dir)) for c in clips]
    if workers and workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn")) as ex:
            done = ex.map(write_clip, jobs, chunksize=4)
            return list(tqdm(done, total=len(jobs), desc="sample clips", disable=not progress))
    return [write_clip(j) for j in tqdm(jobs, desc="sample clips", disable=not progress)]


def write_annotations(ann_dir: Path, rows: list, docs: dict[str, dict]) -> tuple[Path, dict[str, Path]]:
    """Write label_mapping.csv and the split JSON files; return their paths."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label_id", "step_unique_id", "step_name", "scenario_name"])
    for r in rows:
        w.writerow(r)
    label_path = ann_dir / LABEL_MAPPING_FILE
    _write_text_atomic(label_path, buf.getvalue())
    split_json = {}
    for split in SPLITS:
        p = ann_dir / ANNOTATION_FILES[split]
        _write_text_atomic(p, json.dumps(docs[split]))
        split_json[split] = p
    return label_path, split_json


# --------------------------------------------------------------------------------------------
# the public entry point
# --------------------------------------------------------------------------------------------


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
    crf: int | None = None,
    encoding: str = "default",
    workers: int = 1,
    progress: bool = False,
) -> SampleSummary:
    """Write a synthetic keystep benchmark under ``out`` in the real download's layout.

    ``takes_per_split`` defaults to ``{"train": 8, "val": 3, "test": 3}``.  Exo clips are
    ``short_side`` x ``long_side`` (default 16:9, rounded to even); ego (Aria) clips are square
    ``short_side`` x ``short_side``.  ``segments_per_take`` and ``clip_seconds`` are inclusive
    ranges; a few segments (``short_clip_prob``, plus one forced 0.16 s segment in train and in
    test) are 0.16-0.5 s long.  Test segments list the ego clip only and only ego clips are written
    for test.  ``workers`` > 1 encodes clips in that many processes (output is identical);
    ``progress`` shows a bar.  Frames are drawn at ``1 / max(1, short_side // 224)`` resolution
    and scaled up (bilinear) by the encoder. ``encoding`` "default" encodes as Ego-Exo4D's clips
    were (x264's defaults: B-frames, long GOP), "fast" quicker to write and decode but unlike them;
    ``crf`` is x264's quality (lower = bigger files; None: 23, x264's default).

    A non-empty ``out`` is refused unless ``overwrite``: then the previous sample's annotations
    and clips are removed first (other files in ``out`` are left alone).
    """
    t_start = time.perf_counter()
    out = Path(out)
    if takes_per_split is None:
        takes_per_split = {"train": 8, "val": 3, "test": 3}
    _check_settings(num_classes, takes_per_split, fps, segments_per_take, clip_seconds)
    if encoding not in ENCODINGS:
        raise KscliError(f"--encoding {encoding!r}: choose from {', '.join(ENCODINGS)}")
    if crf is not None and not 0 <= int(crf) <= 51:
        raise KscliError(f"crf={crf}: x264 takes 0..51")
    ego_size, exo_size = _frame_sizes(short_side, long_side)
    _prepare_out(out, overwrite)

    rows, looks, docs, clips = plan_sample(
        seed=seed, num_classes=int(num_classes), takes_per_split=takes_per_split,
        segments_per_take=(int(segments_per_take[0]), int(segments_per_take[1])),
        clip_seconds=(float(clip_seconds[0]), float(clip_seconds[1])),
        short_clip_prob=float(short_clip_prob), integer_time_prob=float(integer_time_prob),
        aria_nonumber_prob=float(aria_nonumber_prob), fps=int(fps),
    )

    ann_dir, clips_dir = download_annotations(out), download_clips(out)
    ann_dir.mkdir(parents=True, exist_ok=True)
    clips_dir.mkdir(parents=True, exist_ok=True)
    results = _write_clips(
        clips, looks, clips_dir, seed=seed, ego_size=ego_size, exo_size=exo_size, fps=fps, crf=crf,
        encoding=encoding, div=max(1, ego_size[0] // 224), workers=workers, progress=progress,  # [0]: short side
    )
    # annotations last, so a folder with annotations has its clips
    label_path, split_json = write_annotations(ann_dir, rows, docs)

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
