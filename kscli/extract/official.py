"""`kscli import-features`: Ego-Exo4D's precomputed per-take features pooled into a kscli feature store.

Ego-Exo4D publishes features for every take, camera and stream (download parts
``features/omnivore_video`` and ``features/maws_clip_2b``), one file each::

    <features_dir>/<take_uid>_<cam_id>_<stream_id>.pt     a (num_windows, D) tensor

Window ``i`` covers take frames ``[i * stride, i * stride + window)``, i.e. seconds
``[i * stride / fps, (i * stride + window) / fps)`` of the take's timeline, which is the timeline
of the benchmark's ``start_time`` / ``end_time``. For every clip of a segment (the ego clip and
its exo clips), :func:`import_features` averages the windows whose span overlaps the segment
``[start, end]`` (a positive overlap; a window that only touches an end does not count) and
writes that vector into the same store format ``kscli extract`` writes, keyed by the clip name,
so ``kscli train-head --store omnivore_video`` reads it unchanged.

- No overlapping window (a segment past the end of the feature file): the window nearest the
  segment's middle is used, and counted in the summary (``nearest``).
- The take's file is missing (or several files match): a failure is recorded for that clip in
  the store's ``failures-r000.jsonl``, as extraction does, and the import goes on.
- A file that does not hold features (not a tensor, a dict without exactly one tensor of 2 or
  more dims, the wrong feature size, unreadable) stops the import with one line naming it: move
  it away and rerun to import the rest (its clips are then recorded as failed).

Camera -> file: the benchmark names an ego clip's camera ``aria01_214-1`` (``214-1`` is the
Aria RGB stream's id) and an exo clip's ``cam01``. The file looked for is, in order:
``<take_uid>_aria01_214-1.pt``; ``<take_uid>_aria01_rgb.pt`` (the Ego-Exo4D docs name the Aria
stream ``rgb``); the unique ``<take_uid>_aria01_*.pt``; and for a bare ``aria_214-1`` camera the
unique ``<take_uid>_aria*_rgb.pt`` / ``<take_uid>_aria*_*.pt``. Exo: ``<take_uid>_cam01_<exo_stream>.pt``
(GoPro streams are ``0``), then the unique ``<take_uid>_cam01_*.pt``.

Store rows: ``features`` (n, D) float32; ``frame_times`` (n, 2) = [start of the first pooled
window, end of the last pooled window] in seconds relative to the segment start (window
boundaries on the regular grid above); ``num_frames`` = windows pooled; ``fps`` = source fps.
With ``windows=W`` (``--windows W``, store ``<source>-w<W>``) the segment is cut into W equal
spans, each pooled the same way: ``features`` (n, W, D), ``frame_times`` (n, 2W) = the
[first, last] pair of each span, ``num_frames`` = windows pooled summed over the spans (a
published window that overlaps two spans counts in both), for the heads that read window
sequences (attentive, context).

Assumptions, stated where they matter:
- Omnivore (Swin-L trunk, 1536-d float32; the extractor saves ``(T, 1, D)``): its sampler backs
  the last window up so that it ends at the video's end when the stride does not divide the
  length, which gives the file one window more than the grid. With the take's length
  (``duration_sec`` in the download's ``takes.json``, read from the data root by default) that
  window is placed where it really is; without it, on the grid, up to ``stride - 1`` frames late.
- ``maws_clip_2b``: MAWS CLIP ViT-2B (``vit_2b14_xlmr_l``), 2048-d, one feature per frame at
  30 fps, float16 and L2-normalised by the extractor (read here as float32).
- Camera names: the Aria stream is ``rgb`` in the file names (``214-1`` in the clip names); a
  GoPro is ``camNN`` in some takes and ``gpNN`` in others, so a clip's ``cam03`` also finds a
  ``gp03`` file (and back). A file not found is recorded with every name that was looked for.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.fileio import read_json
from kscli.extract.run import (SplitSummary, software_versions, report_interrupted,
                               view_clips)
from kscli.extract.store import StoreRows, open_for_writing

__all__ = ["SourceSpec", "ImportJob", "ImportSummary", "register_source", "get_source", "list_sources",
           "import_features", "segment_window_mean", "pool_segment", "load_feature_file", "camera_file_ids", "FeatureFiles"]

BATCH_SIZE = 256  # clips per store part
ARIA_RGB_STREAM = "rgb"


@dataclass(frozen=True)
class SourceSpec:
    """One kind of published features: its size and the frame windows its vectors cover."""

    name: str
    feature_dim: int
    window_frames: int  # frames each vector sees
    stride_frames: int  # frames between the starts of consecutive vectors
    fps: float  # frame rate the windows are counted in
    download_part: str  # the `egoexo --parts` value that downloads them
    description: str = ""

    def window_bounds(self, num_windows: int, take_seconds: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Start and end of each window in seconds of the take: the regular grid, except that
        the official extractor backs the last window up to end at the video's end when the
        stride does not divide the length. That needs the take's length (`take_seconds`, from
        takes.json); the file then has one window more than the grid fits, and only then is
        the last one moved."""
        start = np.arange(num_windows, dtype=np.float64) * self.stride_frames / self.fps
        if take_seconds is not None:
            room = int(round(take_seconds * self.fps)) - self.window_frames  # frames after the first window
            # one window more than the grid fits: the back-padded one. (Not "room % stride != 0":
            # the video itself may be a frame longer than takes.json says, and the sampler
            # counts on the video.)
            if room >= 0 and num_windows == room // self.stride_frames + 2:
                start[-1] = room / self.fps
        return start, start + self.window_frames / self.fps


_SOURCES: dict[str, SourceSpec] = {}


def register_source(spec: SourceSpec) -> SourceSpec:
    _SOURCES[spec.name] = spec
    return spec


register_source(SourceSpec(
    "omnivore_video", 1536, 32, 16, 30.0, "features/omnivore_video",
    "Omnivore Swin-L video head; 32-frame windows every 16 frames at 30 fps (Ego-Exo4D docs)"))
register_source(SourceSpec(
    "maws_clip_2b", 2048, 1, 1, 30.0, "features/maws_clip_2b",
    "MAWS CLIP ViT-2B (vit_2b14_xlmr_l, embed dim 2048) image features, one per frame at 30 fps, "
    "stored as float16 and L2-normalised by the official extractor"))


def list_sources() -> list[dict]:
    """The registered sources, one dict each (name, feature_dim, window/stride frames, fps, ...)."""
    return [asdict(s) for s in _SOURCES.values()]


def get_source(name: str, window_frames: int | None = None, stride_frames: int | None = None,
               fps: float | None = None, feature_dim: int | None = None) -> SourceSpec:
    """A registered source, with any of its window, stride, fps or feature size overridden."""
    if name not in _SOURCES:
        raise KscliError(f"--source {name!r}: unknown source; choose from {', '.join(_SOURCES)}")
    base = _SOURCES[name]
    spec = SourceSpec(base.name,
                      int(feature_dim if feature_dim is not None else base.feature_dim),
                      int(window_frames if window_frames is not None else base.window_frames),
                      int(stride_frames if stride_frames is not None else base.stride_frames),
                      float(fps if fps is not None else base.fps), base.download_part, base.description)
    if spec.window_frames < 1 or spec.stride_frames < 1 or spec.feature_dim < 1:
        raise KscliError(f"{name}: window frames, stride frames and feature dim must be at least 1 "
                         f"(got {spec.window_frames}, {spec.stride_frames}, {spec.feature_dim})")
    if not spec.fps > 0:
        raise KscliError(f"{name}: fps must be positive (got {spec.fps})")
    return spec


# --------------------------------------------------------------------------------------------
# files


def camera_file_ids(camera: str, role: str, exo_stream: str = "0") -> tuple[str, str]:
    """Benchmark camera -> (cam_id, stream_id): `aria01_214-1` -> (aria01, 214-1); `cam01` -> (cam01, 0)."""
    cam_id, sep, stream = camera.partition("_")
    if not sep or not stream:
        stream = ARIA_RGB_STREAM if role == "ego" else exo_stream
    return cam_id, stream


class FeatureFiles:
    """The `.pt` files of one features folder, listed once and indexed by take uid."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._by_take: dict[str, set[str]] = {}
        self._all: list[str] = []
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".pt") and not entry.name.startswith("."):
                    self._all.append(entry.name)
                    self._by_take.setdefault(entry.name.split("_", 1)[0], set()).add(entry.name)

    def __len__(self) -> int:
        return len(self._all)

    def _names(self, take_uid: str) -> set[str]:
        if "_" in take_uid:  # not a UUID: scan
            return {n for n in self._all if n.startswith(take_uid + "_")}
        return self._by_take.get(take_uid, set())

    def resolve(self, take_uid: str, camera: str, role: str, exo_stream: str = "0") -> Path:
        """The file of one take and camera; FileNotFoundError (naming every name looked for) or
        ValueError (ambiguous) otherwise."""
        if not take_uid:
            raise ValueError("the segment has no take_uid in the annotations")
        cam_id, stream = camera_file_ids(camera, role, exo_stream)
        names = self._names(take_uid)
        ids = [cam_id] + _other_gopro_names(cam_id) if role == "exo" else [cam_id]
        exact = [f"{take_uid}_{i}_{stream}.pt" for i in ids]
        if role == "ego" and stream != ARIA_RGB_STREAM:
            exact.append(f"{take_uid}_{cam_id}_{ARIA_RGB_STREAM}.pt")
        for n in exact:
            if n in names:
                return self.folder / n
        patterns = [(f"{take_uid}_{i}_*.pt", sorted(n for n in names if n.startswith(f"{take_uid}_{i}_")))
                    for i in ids]
        if role == "ego" and re.fullmatch(r"aria", cam_id, re.IGNORECASE):
            rx = re.compile(rf"^{re.escape(take_uid)}_aria\d*_")
            aria = sorted(n for n in names if rx.match(n))
            patterns += [(f"{take_uid}_aria*_{ARIA_RGB_STREAM}.pt",
                          [n for n in aria if n.endswith(f"_{ARIA_RGB_STREAM}.pt")]),
                         (f"{take_uid}_aria*_*.pt", aria)]
        for pattern, found in patterns:
            if len(found) == 1:
                return self.folder / found[0]
            if len(found) > 1:
                raise ValueError(f"{len(found)} feature files match {pattern} in {self.folder} "
                                 f"({', '.join(found[:4])}); cannot tell which is camera {camera}")
        looked = ", ".join([n[len(take_uid) + 1:] for n in exact] + [p[len(take_uid) + 1:] for p, _ in patterns])
        have = sorted(n[len(take_uid) + 1:] for n in names)
        raise FileNotFoundError(f"no feature file for camera {camera} of take {take_uid} in {self.folder}: "
                                f"looked for <take_uid>_{{{looked}}}; this take has "
                                f"{', '.join(have[:8]) if have else 'no files'}")


def _other_gopro_names(cam_id: str) -> list[str]:
    """GoPro exo cameras are `camNN` in some takes and `gpNN` in others (Ego-Exo4D's metadata and
    tools use both); a clip named for one may have its features under the other."""
    m = re.fullmatch(r"(cam|gp)(\d+)", cam_id)
    return [f"{'gp' if m.group(1) == 'cam' else 'cam'}{m.group(2)}"] if m else []


def _as_windows(t: torch.Tensor) -> torch.Tensor | None:
    """(T, D), or (T, 1, D) and the like with size-1 middle dims -> (T, D); else None."""
    if t.ndim == 2:
        return t
    if t.ndim > 2 and all(s == 1 for s in t.shape[1:-1]):
        return t.reshape(t.shape[0], t.shape[-1])
    return None


def load_feature_file(path: Path, feature_dim: int) -> np.ndarray:
    """One published feature file as a (num_windows, D) float32 array; KscliError naming it otherwise.

    Accepts a tensor, or a dict holding exactly one tensor of 2+ dims (other entries, e.g.
    metadata, are ignored). Size-1 middle dims are dropped: (T, 1, D) -> (T, D).
    """
    fix = "re-download it, or move it away and rerun to import the rest (its clips are then recorded as failed)"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch raises, one line naming the file
        msg = str(e).strip().splitlines()
        raise KscliError(f"{path}: cannot read this feature file ({type(e).__name__}: "
                         f"{msg[0][:200] if msg else ''}); {fix}") from None
    what = f"a {type(obj).__name__}"
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and v.ndim >= 2}
        if len(tensors) != 1:
            keys = ", ".join(f"{k!r}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                             for k, v in list(obj.items())[:6])
            raise KscliError(f"{path}: expected a (windows, {feature_dim}) tensor or a dict holding exactly "
                             f"one such tensor, got a dict with {len(tensors)} tensors of 2+ dims "
                             f"({{{keys}}}); {fix}")
        (key, obj), = tensors.items()
        what = f"dict entry {key!r}"
    if not isinstance(obj, torch.Tensor):
        raise KscliError(f"{path}: expected a (windows, {feature_dim}) tensor or a dict holding one, "
                         f"got {what}; {fix}")
    windows = _as_windows(obj)
    if windows is None or windows.shape[-1] != feature_dim or windows.shape[0] < 1:
        raise KscliError(f"{path}: {what} has shape {tuple(obj.shape)}, expected (windows, {feature_dim}) "
                         f"with at least one window; wrong --source or feature dim? Otherwise {fix}")
    if not windows.is_floating_point():
        raise KscliError(f"{path}: {what} holds {windows.dtype}, expected floating-point features; {fix}")
    return windows.to(torch.float32).numpy()


# --------------------------------------------------------------------------------------------
# pooling


def segment_window_mean(feats: np.ndarray, spec: SourceSpec, start: float, end: float,
                 take_seconds: float | None = None) -> tuple[np.ndarray, float, float, int, bool]:
    """Mean of the windows overlapping [start, end] (seconds of the take).

    Returns (vector, first window start, last window end, windows pooled, used_nearest); the times
    are seconds relative to `start`. A window overlaps when it shares a positive stretch of time
    with the segment; a zero-length segment takes the window(s) containing that instant. With no
    overlapping window (a segment past the end of the file) the window whose centre is nearest the
    segment's middle is used and `used_nearest` is True.
    """
    n = feats.shape[0]
    ws, we = spec.window_bounds(n, take_seconds)
    eps = 1e-6
    if end - start > eps:
        hit = (ws < end - eps) & (we > start + eps)
    else:
        hit = (ws <= start + eps) & (we > start + eps)
    idx = np.flatnonzero(hit)
    nearest = idx.size == 0
    if nearest:
        centre = (ws + we) / 2
        idx = np.array([int(np.argmin(np.abs(centre - (start + end) / 2)))])
    vec = feats[idx].astype(np.float64).mean(axis=0).astype(np.float32)
    return vec, float(ws[idx[0]] - start), float(we[idx[-1]] - start), int(idx.size), nearest


def pool_segment(feats: np.ndarray, spec: SourceSpec, start: float, end: float, windows: int = 1,
                 take_seconds: float | None = None) -> tuple[np.ndarray, list[float], int, bool]:
    """The store row of one clip: `windows` = 1 pools [start, end] into one (D,) vector;
    `windows` = W > 1 cuts [start, end] into W equal spans and pools each (`segment_window_mean`) into
    a (W, D) sequence, the layout `kscli extract --windows W` writes. Returns (features, frame
    times [first, last] per span relative to `start`, published windows pooled in all, whether
    any span took the nearest window)."""
    if windows == 1:
        vec, t0, t1, count, nearest = segment_window_mean(feats, spec, start, end, take_seconds)
        return vec, [t0, t1], count, nearest
    edges = np.linspace(start, end, windows + 1)
    vecs, times, count, nearest = [], [], 0, False
    for a, b in zip(edges[:-1], edges[1:]):
        vec, t0, t1, k, near = segment_window_mean(feats, spec, float(a), float(b), take_seconds)
        vecs.append(vec)
        times += [t0 + float(a) - start, t1 + float(a) - start]
        count += k
        nearest |= near
    return np.stack(vecs), times, count, nearest


# --------------------------------------------------------------------------------------------
# the import


@dataclass(frozen=True)
class ImportJob:
    name: str  # clip name: the store key
    role: str  # ego | exo
    take_uid: str
    camera: str
    start: float
    end: float
    take_seconds: float | None = None  # the take's length (takes.json), for the back-padded last window


@dataclass
class ImportSummary(SplitSummary):
    """SplitSummary (`extracted` = clips imported) plus how many segments took the nearest window."""

    nearest: int = 0


def list_import_jobs(bench: Benchmark, split: str, view: str, take_seconds: dict | None = None) -> list[ImportJob]:
    """Every clip of a split in the chosen view(s), each once, in file order (take, camera, time)."""
    lengths = take_seconds or {}
    jobs = [ImportJob(clip.name, clip.role, seg.take_uid, clip.camera, seg.start, seg.end, lengths.get(seg.take_uid))
            for seg, clip in view_clips(bench, split, view)]
    return sorted(jobs, key=lambda j: (j.take_uid, j.camera, j.start, j.name))


def read_take_seconds(path: Path) -> dict[str, float]:
    """take_uid -> duration_sec from Ego-Exo4D's metadata file `takes.json` (a list of takes, or
    a dict holding one); a file that is not that is one clear error."""
    try:
        data = read_json(path, "takes.json")
    except KscliError as e:
        raise KscliError(f"{e}; pass the metadata file of the Ego-Exo4D download "
                         "(`egoexo -o OUT --parts metadata`: OUT/takes.json)") from None
    if isinstance(data, dict):  # a wrapper object holding the list
        data = next((v for v in data.values() if isinstance(v, list)), [])
    takes = data if isinstance(data, list) else []
    out = {}
    for t in takes:
        if isinstance(t, dict) and t.get("take_uid") and isinstance(t.get("duration_sec"), (int, float)):
            out[str(t["take_uid"])] = float(t["duration_sec"])
    if not out:
        raise KscliError(f"{path}: no take with take_uid and duration_sec; is this Ego-Exo4D's takes.json?")
    return out


def _has_pt(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(e.name.endswith(".pt") for e in it)


def _features_folder(features_dir: Path, spec: SourceSpec) -> Path:
    hint = (f"download the features part of the Ego-Exo4D release (`egoexo -o OUT --parts "
            f"{spec.download_part}`) and pass the folder holding its <take_uid>_<cam_id>_<stream_id>.pt files")
    features_dir = Path(features_dir).expanduser()
    if not features_dir.is_dir():
        raise KscliError(f"{features_dir}: no such folder; {hint}")
    if not _has_pt(features_dir):
        # the downloader may leave them one level down: OUT/features/<source>/
        for sub in (features_dir / spec.name, features_dir / spec.download_part):
            if sub.is_dir() and _has_pt(sub):
                return sub.resolve()
        raise KscliError(f"{features_dir}: no .pt feature files here; {hint}")
    return features_dir.resolve()


def store_config(spec: SourceSpec, folder: Path, split: str, view: str, exo_stream: str,
                 windows: int = 1, take_lengths: bool = False) -> dict:
    backbone = {"name": spec.name, "kind": "official", "num_frames": spec.window_frames, "size": 0,
                "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "feature_dim": spec.feature_dim,
                "weights": f"Ego-Exo4D precomputed {spec.name} features from {folder}", "hf_class": "",
                "pooling": "mean of the published windows overlapping the segment"
                + (f", in each of {windows} equal spans" if windows > 1 else "")}
    sampling = {"mode": "official-windows-mean", "window_frames": spec.window_frames,
                "stride_frames": spec.stride_frames, "fps": spec.fps}
    if windows > 1:  # one-window stores keep the config they always had
        sampling["windows"] = windows
    if take_lengths:  # the last window placed from takes.json: a store does not mix both placements
        sampling["last_window"] = "back-padded (takes.json)"
    return {"backbone": backbone, "sampling": sampling, "dtype": "float32", "split": split, "view": view,
            "precision": "precomputed",
            "import": {"source": spec.name, "features_dir": str(folder), "exo_stream": exo_stream},
            "versions": software_versions()}


def import_problem(summaries: list) -> str | None:
    """Why an import should exit non-zero, in one line, or None: every clip it tried failed and
    none of its clips was in the store before (the wrong features folder, most likely)."""
    failed = [(n, e) for s in summaries for n, e in s.failures]
    n_failed = sum(s.failed for s in summaries)
    if n_failed and not sum(s.extracted + s.skipped for s in summaries):
        name, err = failed[0] if failed else ("?", "?")
        return (f"no clip could be imported: all {n_failed} failed (e.g. {name}: {err}); is --features-dir the "
                "folder of the released feature files for these takes (and --source the right family)?")
    return None


def import_features(layout: Layout, source: str, features_dir: Path, splits: list[str], view: str = "all",
                    tag: str | None = None, window_frames: int | None = None, stride_frames: int | None = None,
                    fps: float | None = None, exo_stream: str = "0", progress: bool = True, *,
                    feature_dim: int | None = None, overwrite: bool = False,
                    batch_size: int = BATCH_SIZE, windows: int = 1,
                    takes_json: Path | None = None) -> list[ImportSummary]:
    """Pool Ego-Exo4D's published features over every segment's clips into `features/<tag>/<split>`.

    Resumable (clips already in the store are skipped; a store made with other source settings
    is refused, `overwrite=True` moves it aside as `kscli extract --overwrite` does). Each take
    file is read once and only one is held at a time. `windows` W > 1 stores a (W, D) sequence
    per clip (`pool_segment`) in `<source>-w<W>`. `takes_json` (default: `takes.json` in the
    data root, where the downloader puts the metadata) gives each take's length, which places
    Omnivore's back-padded last window exactly. Returns one summary per split.
    """
    spec = get_source(source, window_frames, stride_frames, fps, feature_dim)
    if batch_size < 1:
        raise KscliError("batch size must be at least 1")
    if windows < 1:
        raise KscliError(f"--windows must be at least 1, got {windows}")
    folder = _features_folder(features_dir, spec)
    bench = Benchmark(layout)
    lengths = None
    if spec.stride_frames > 1:  # windows every few frames: the last one may be back-padded
        if takes_json is not None:
            lengths = read_take_seconds(takes_json)
        elif layout.data_root is not None and (Path(layout.data_root) / "takes.json").is_file():
            try:
                lengths = read_take_seconds(Path(layout.data_root) / "takes.json")
            except KscliError as e:
                print(f"note: {e}; importing without take lengths (last windows on the grid)", file=sys.stderr)
    jobs_by_split = {s: list_import_jobs(bench, s, view, lengths) for s in splits}  # validate all first
    files = FeatureFiles(folder)
    tag = tag or (spec.name if windows == 1 else f"{spec.name}-w{windows}")
    return [_import_split(layout, spec, folder, files, split, jobs_by_split[split], view, tag, exo_stream,
                          progress, overwrite, batch_size, windows, lengths is not None) for split in splits]


def _import_split(layout, spec, folder, files, split, jobs, view, tag, exo_stream, progress, overwrite,
                  batch_size, windows, take_lengths=False) -> ImportSummary:
    path = layout.features_dir(tag, split)
    config = store_config(spec, folder, split, view, exo_stream, windows, take_lengths)
    writer, store = open_for_writing(path, config, 0, overwrite)
    with writer:
        todo = [j for j in jobs if j.name not in store]
        summary = ImportSummary(split, str(path), total=len(jobs), skipped=len(jobs) - len(todo))
        if todo:
            _import_clips(spec, files, todo, writer, summary, exo_stream, progress, batch_size, windows)
        writer.merge_parts()  # also finishes a merge that an earlier run was killed in
    return summary


def _import_clips(spec, files, todo, writer, summary, exo_stream, progress, batch_size, windows) -> None:
    buf: list[tuple[ImportJob, np.ndarray, list[float], int]] = []

    def flush():
        if buf:
            writer.write(StoreRows(
                names=[j.name for j, *_ in buf], roles=[j.role for j, *_ in buf],
                features=np.stack([v for _, v, *_ in buf]).astype(np.float32, copy=False),
                frame_times=np.array([t for _, _, t, _ in buf], np.float32),
                num_frames=np.array([k for *_, k in buf], np.int64),
                fps=np.full(len(buf), spec.fps, np.float32)))
            summary.extracted += len(buf)
            buf.clear()

    bar = tqdm(total=len(todo), desc=f"import {spec.name} {summary.split}", unit="clip", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    current: tuple[Path | None, np.ndarray | None] = (None, None)  # the one file held in memory
    try:
        for job in todo:
            try:
                file = files.resolve(job.take_uid, job.camera, job.role, exo_stream)
            except (FileNotFoundError, ValueError) as e:
                err = f"{type(e).__name__}: {str(e)[:300]}"
                writer.record_failure(job.name, err)
                summary.failures.append((job.name, err))
                summary.failed += 1
                bar.update(1)
                continue
            if current[0] != file:
                current = (None, None)  # drop the previous take's tensor before loading the next
                current = (file, load_feature_file(file, spec.feature_dim))
            vec, times, count, nearest = pool_segment(current[1], spec, job.start, job.end, windows,
                                                      job.take_seconds)
            summary.nearest += nearest
            buf.append((job, vec, times, count))
            if len(buf) >= batch_size:
                flush()
            bar.update(1)
            bar.set_postfix(failed=summary.failed, refresh=False)
        flush()
    except BaseException as e:
        try:
            flush()  # what was pooled is kept: a rerun resumes after it
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        bar.close()
        summary.seconds = time.perf_counter() - t0
        if isinstance(e, KeyboardInterrupt):
            report_interrupted(summary, writer.path)
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
