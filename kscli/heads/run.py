"""`kscli train-head` and `kscli evaluate`: train a head on cached features, write a run folder.

A run folder (`<work>/runs/<name>/`) holds everything a result needs to be traced, reused and
rerun (`kscli train-head --from RUN`):

    config.json            the training config, the stores used (their configs and digests), the
                           annotation files' digests, the kscli version
    metrics.json           val top-1 (the benchmark's metric), top-5, mean per-class, per scenario
    predictions_val.json   val predictions in the submission format, with true labels
    history.json           per epoch and grid member: training loss, selection top-1 (and the
                           teacher's, for heads with one), the grid
    checkpoint.pt          weights + head config + label map + backbone specs (weights_only=True)

The folder is reserved before training (a marker file, `.unfinished`, says by whom) and the
marker goes last, so two runs started together never take one name, a name already used fails
before training, and a run killed half-way is never read as finished. Val metrics count every
val segment, as the leaderboard does: a segment whose ego clip has no feature is predicted with
the training prior (and counted as such), never dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import kscli
from kscli.data.layout import Benchmark, Layout, RunFiles, check_name, parse_splits
from kscli.data.segments import SPLITS
from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.extract.backbone_base import RANDOM_FEATURES_WARNING
from kscli.fileio import read_json, write_bytes_atomic, write_json_atomic
from kscli.heads.base import Head, check_checkpoint, config_for, head_class, load_head
from kscli.heads.common import plain
from kscli.heads.features import load_feature_set, store_digest
from kscli.heads.metrics import compute_metrics, format_summary
from kscli.heads.predictions import doc_scores, listed_hits, predictions_doc, read_doc, validate_doc
from kscli.heads.train import check_memory



@dataclass
class RunResult:
    path: Path
    metrics: dict
    summary: str


def parse_store_names(stores: str) -> list[str]:
    """`a,b` -> ["a", "b"]: the stores a head reads (joined along the feature axis)."""
    store_names = [t.strip() for t in stores.split(",") if t.strip()]
    if not store_names:
        raise KscliError("--store: give a store name, or several joined with commas (a,b)")
    for t in store_names:
        check_name(t, "--store (a store name)")
    return store_names


# ----------------------------------------------------------------------------- the run folder
def reserve_run_dir(layout: Layout, name: str | None, head: str, store_names: list[str]) -> Path:
    """Create the run's folder now, before training, with the `.unfinished` marker in it.

    A name given with --name that is taken fails at once (a finished run is never overwritten;
    an unfinished one names who started it). A default name (`head_stores_time`) that is taken
    (two runs started in the same second) gets `-2`, `-3`, ...: both runs finish. Creating the
    folder is also the check that the work folder is writable."""
    explicit = name is not None
    base = name if explicit else f"{head}_{'+'.join(store_names)}_{time.strftime('%Y%m%d-%H%M%S')}"
    layout.runs_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = layout.run_dir(base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            if explicit:
                raise KscliError(_taken(path)) from None
            continue
        try:
            write_json_atomic(RunFiles(path).unfinished, {"pid": os.getpid(), "host": socket.gethostname(),
                                                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return path
    raise KscliError(f"{layout.runs_dir}: too many runs named {base}-N; pass --name")


def _taken(path: Path) -> str:
    if RunFiles(path).unfinished.is_file():
        try:
            who = read_json(RunFiles(path).unfinished)
            by = f" (started by pid {who.get('pid')} on {who.get('host')} at {who.get('since')})"
        except KscliError:
            by = ""
        return (f"{path}: a run of that name is unfinished{by}: still training, or killed; if killed, remove "
                "that folder, or pass another --name")
    return f"{path}: a run of that name exists; finished runs are never overwritten (pass another --name)"


def is_finished_run(path: Path) -> bool:
    files = RunFiles(path)
    return files.checkpoint.is_file() and files.metrics.is_file() and not files.unfinished.exists()


def check_room(run_dir: Path, head: Head, train, val_segments: int) -> None:
    """Refuse to train when the run folder's disk could not hold what the run will write
    (checkpoint, predictions, history; twice over for the atomic writes): training is not
    wasted on a full disk."""
    need = 8 * head.parameter_count(train) + 600 * val_segments + 2**20
    free = shutil.disk_usage(run_dir).free
    if free < 2 * need:
        raise KscliError(f"{run_dir}: the run will write about {need / 2**20:.0f} MB and the disk has "
                         f"{free / 2**20:.0f} MB free; free some space (or pass another --work-dir), then rerun")


# ----------------------------------------------------------------------------- predicting
def predict_split(checkpoint: dict, bench: Benchmark, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Probabilities for every segment of `split` from ego features alone, by the head rebuilt
    from `checkpoint` (so val scores come from exactly what a submission uses). The split's
    stores must hold features made the way the run's training features were. Segments
    without an ego feature (names in the third value) are predicted as the head does it: the
    training prior for single-segment heads, from their take for the context head."""
    head = load_head(checkpoint)
    fs, asm = load_feature_set(bench, split, checkpoint["tags"], with_exo=False, keep_missing=True,
                               made_like=checkpoint.get("backbones"))
    return fs.names, head.predict_proba(fs), asm.missing_ego


def teacher_metrics(head: Head, fs, student: np.ndarray, num_classes: int) -> dict | None:
    """The teacher's own val top-1 (ego + exo) beside the student's (`student`: its
    probabilities for every row of fs), on the val segments that have an ego feature and at
    least one exo view; None for a head without a teacher."""
    if not head.teacher_trained:  # no teacher, or trained without one (no exo in train)
        return None
    if not fs.has_exo():
        return {"note": "no exo features in val: extract val with --view all to score the teacher"}
    teacher = head.teacher_proba(fs)
    rows = (np.asarray(fs.labels) >= 0) & np.asarray(fs.exo_mask).any(1) & fs.with_ego()
    if not rows.any():
        return {"note": "no labelled val segment has both ego and exo features"}
    score = lambda p: compute_metrics(p, np.asarray(fs.labels)[rows], None, num_classes)["top1"]  # noqa: E731
    return {"val_top1": score(teacher[rows]), "student_val_top1": score(student[rows]),
            "n": int(rows.sum()), "on": "val segments with an ego feature and an exo view"}


# ----------------------------------------------------------------------------- training
def train_run(layout: Layout, store_names: list[str], cfg, name: str | None = None,
              progress: bool = True) -> RunResult:
    """Train the head `cfg` configures (a head's Config, see kscli.heads.base.config_for) on
    the train stores of `store_names`, score it on val, write the run folder."""
    bench = Benchmark(layout)
    num_classes = bench.labels.num_classes
    cls = head_class(cfg.head)
    store_names = parse_store_names(",".join(store_names))
    if name is not None:
        layout.run_dir(name)  # a bad name fails before anything is read
    train_fs, train_asm = load_feature_set(bench, "train", store_names, with_exo=True,
                                           keep_missing=cls.keeps_missing)
    val_available = all(layout.features_dir(t, "val").is_dir() for t in store_names) and \
        layout.annotation_path("val").is_file()
    if cfg.select_on == "val" and not val_available:
        raise KscliError("--select-on val needs val features: run `kscli extract --split val` first")
    val_fs = val_asm = None
    if val_available:  # exo only for a teacher's score; the student never reads it
        val_fs, val_asm = load_feature_set(bench, "val", store_names, with_exo=cls.has_teacher,
                                           keep_missing=True, made_like=train_asm.store_configs)
    if progress:
        for asm in (train_asm, val_asm):
            if asm is not None:
                print(asm.line())
    head = cls(cfg, train_fs.dim, num_classes)
    run_dir = reserve_run_dir(layout, name, cfg.head, store_names)
    try:
        check_memory(head, train_fs, len(cfg.grid()) if cls.stacks else 1, resolve_device(cfg.device))
        check_room(run_dir, head, train_fs, len(val_fs) if val_fs is not None else 0)
        result = head.fit(train_fs, val_fs if cfg.select_on == "val" else None, progress)
        out = _write_run(layout, bench, store_names, cfg, cls, head, result, run_dir, train_asm,
                         val_fs, val_asm)
        RunFiles(run_dir).unfinished.unlink()  # last: from now on the run is finished
        if not progress:  # what was left out of the data is part of the result, not of the progress
            left_out = [asm.line() for asm in (train_asm, val_asm)
                        if asm is not None and (asm.missing_ego or asm.nonfinite or asm.exo_missing)]
            out.summary = "\n".join([*left_out, out.summary])
        return out
    except KscliError as e:  # an unfinished run folder would block its --name
        shutil.rmtree(run_dir, ignore_errors=True)
        raise KscliError(str(e).replace("rerun the same command (finished work is kept)",
                                        "train again (this run was not saved)")) from None
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _write_run(layout, bench, store_names, cfg, cls, head, result, run_dir, train_asm, val_fs,
               val_asm) -> RunResult:
    """Score the trained head on val and write the run folder's files."""
    num_classes = bench.labels.num_classes
    ckpt = {**head.state(), **plain(result.record()), "tags": list(store_names),
            "labels": bench.labels.to_rows(), "backbones": dict(train_asm.store_configs)}
    metrics = {"head": cfg.head, "backbones": list(store_names), "run": run_dir.name, "kscli": kscli.__version__,
               "device": str(resolve_device(cfg.device)),
               "selection": {"on": cfg.select_on, **plain(result.selected)},
               "train_segments_used": train_asm.used,
               "train_segments_without_ego_feature": len(train_asm.missing_ego),
               # a head that reads takes keeps those as context; the others cannot use them
               "train_segments_left_out": 0 if cls.keeps_missing else len(train_asm.missing_ego),
               "train_exo_views": train_asm.exo_views,
               "random_features": train_asm.random_features, "notes": list(result.notes)}
    if val_fs is not None:  # scored by the head rebuilt from its checkpoint, as submit does
        names, probs, missing = val_fs.names, load_head(ckpt).predict_proba(val_fs), val_asm.missing_ego
        metrics["val"] = compute_metrics(probs, val_fs.labels, val_fs.scenario, num_classes)
        metrics["val"]["segments_without_ego_feature"] = len(missing)
        teacher = teacher_metrics(head, val_fs, probs, num_classes)
        if teacher is not None:
            metrics["teacher"] = {**teacher, "select_top1": result.selected.get("teacher_select_top1")}
        doc = predictions_doc(names, probs, "val", labels=val_fs.labels,
                              extra={"run": run_dir.name, "without_ego_feature": missing})
        validate_doc(doc, bench.segments("val"), bench.labels, "val predictions")
        write_json_atomic(RunFiles(run_dir).predictions_val, doc)
    ckpt["metrics"] = plain(metrics)
    buf = io.BytesIO()  # serialised in memory: a full disk fails one plain write, cleanly
    torch.save(ckpt, buf)
    write_bytes_atomic(RunFiles(run_dir).checkpoint, buf.getvalue())
    write_json_atomic(RunFiles(run_dir).metrics, metrics)
    write_json_atomic(RunFiles(run_dir).history, {"history": result.history, "grid": result.grid})
    stores = {t: {s: d for s, d in (("train", train_asm.store_digests.get(t)),
                                    ("val", val_asm.store_digests.get(t) if val_asm else None)) if d}
              for t in store_names}
    write_json_atomic(RunFiles(run_dir).config, {
        "kscli": kscli.__version__, "train": cfg.to_dict(), "tags": list(store_names),
        "stores": stores, "backbones": ckpt["backbones"],
        "annotations": annotation_digests(layout, ("train", "val") if val_fs is not None else ("train",)),
        "data": {"annotations_dir": str(layout.annotations_dir), "train": train_asm.line(),
                 "val": val_asm.line() if val_asm else None}})
    return RunResult(run_dir, metrics, format_run_summary(metrics, run_dir))


def annotation_digests(layout: Layout, splits) -> dict:
    """sha256 (16 hex digits) of the label mapping and of each split's annotation file."""
    files = {"label_mapping": layout.label_mapping_path,
             **{s: layout.annotation_path(s) for s in splits}}
    return {k: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for k, p in files.items()}


def format_run_summary(metrics: dict, run_dir: Path) -> str:
    sel = metrics["selection"]
    lines = [f"run {run_dir}",
             f"head {metrics['head']} on {'+'.join(metrics['backbones'])} ({metrics.get('device', 'cpu')}): "
             f"selected lr={sel.get('lr')} wd={sel.get('wd')} on {sel['on']} (top-1 {sel['select_top1']:.2f}%)"]
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    if "val" in metrics:
        lines.append(format_summary(metrics["val"]))
        t = metrics.get("teacher") or {}
        if "val_top1" in t:
            lines.append(f"teacher (ego + exo, training only): val top-1 {t['val_top1']:.2f}% vs the "
                         f"student's {t['student_val_top1']:.2f}% (ego only) on the {t['n']} {t['on']}")
        elif "note" in t:
            lines.append(f"teacher: {t['note']}")
    else:
        lines.append("no val features: run `kscli extract --split val` to score this run")
    if metrics.get("random_features"):
        lines.append(f"WARNING: {RANDOM_FEATURES_WARNING}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rerunning a run
def rerun_config(layout: Layout, run: str | Path):
    """(head config, store names) to retrain run `run` exactly as it was trained: its saved
    options, on the same stores. Refused in one line when what it trained on has changed since
    (a store's digest, the annotations), since the rerun would then not reproduce it."""
    from kscli.heads.submit import resolve_run

    run_dir = resolve_run(layout, str(run))
    saved = read_json(RunFiles(run_dir).config, "the run's config")
    where = f"{run_dir / 'config.json'}"
    train = saved.get("train") if isinstance(saved, dict) else None
    store_names, stores = (saved.get("tags"), saved.get("stores")) if isinstance(saved, dict) else (None, None)
    annotations = saved.get("annotations") if isinstance(saved, dict) else None
    ok = (isinstance(train, dict) and isinstance(train.get("head"), str)
          and isinstance(store_names, list) and store_names and all(isinstance(t, str) for t in store_names)
          and isinstance(stores, dict) and all(isinstance(v, dict) and all(isinstance(d, dict) for d in v.values())
                                               for v in stores.values())
          and isinstance(annotations, dict) and all(isinstance(k, str) for k in annotations))
    if not ok:
        raise KscliError(f"{where}: not as train-head wrote it (its train options, store names, store digests or "
                         "annotation digests are missing or malformed); it cannot be rerun exactly: train a "
                         "new run instead")
    train = dict(train)
    cfg = config_for(train.pop("head"), **train)
    store_names = parse_store_names(",".join(store_names))
    for tag, splits in stores.items():
        for split, digest in splits.items():
            now = store_digest(layout, tag, split)
            if now != digest:
                what = "other clips" if now and now.get("config") == digest.get("config") else "other settings"
                raise KscliError(f"{layout.features_dir(tag, split)}: the store is not what {run_dir.name} trained "
                                 f"on ({what}: {digest}, now {now}); the rerun would not reproduce it")
    splits = [s for s in annotations if s != "label_mapping"]
    if not set(splits) <= set(SPLITS):
        raise KscliError(f"{where}: annotation digests for unknown splits {sorted(splits)}; train a new run instead")
    now = annotation_digests(layout, splits)
    changed = [k for k, d in annotations.items() if now.get(k) != d]
    if changed:
        raise KscliError(f"{layout.annotations_dir}: the annotations ({', '.join(changed)}) are not those "
                         f"{run_dir.name} was trained with; pass --data-root of that download")
    return cfg, store_names


# ----------------------------------------------------------------------------- checkpoints, files
def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = RunFiles(path).checkpoint
    if not path.is_file():
        raise KscliError(f"{path}: no checkpoint; pass a run folder made by `kscli train-head`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise KscliError(f"{path}: not a readable kscli checkpoint ({type(e).__name__}: {e})") from None
    check_checkpoint(ckpt, str(path))
    return ckpt


def evaluate_file(layout: Layout, path: str | Path, split: str = "val") -> dict:
    """Metrics of any prediction file against the annotations of `split` (validated first)."""
    splits = parse_splits(split)
    if len(splits) != 1:
        raise KscliError(f"--split {split!r}: name the one split the file predicts (val or train)")
    split = splits[0]
    bench = Benchmark(layout)
    if split == "test":
        raise KscliError("the test split has no labels here; submit test predictions to the challenge")
    segments = bench.segments(split)
    doc = read_doc(path)
    validate_doc(doc, segments, bench.labels, str(path))
    names = [s.name for s in segments]
    scores = doc_scores(doc, names, bench.labels.num_classes)
    labels = np.array([s.label for s in segments], dtype=np.int64)
    scen = [bench.labels.scenarios[s.label] for s in segments]
    metrics = compute_metrics(scores, labels, scen, bench.labels.num_classes)
    metrics["top5"] = 100.0 * float(listed_hits(doc, names, labels).mean())  # only what the file names
    return metrics
