"""`kscli train-head` and `kscli evaluate`: train a head on cached features, write a run folder.

A run folder (`<work>/runs/<name>/`) holds everything a result needs to be traced and reused:

    config.json            the training config, the stores used and their backbone specs
    metrics.json           val top-1 (the benchmark's metric), top-5, mean per-class, per scenario
    predictions_val.json   val predictions in the submission format, with true labels
    history.json           per epoch and grid member: training loss, selection top-1 (and the
                           teacher's, for heads with one), the grid
    checkpoint.pt          weights + head config + label map + backbone specs (weights_only=True)

Val metrics count every val segment, as the leaderboard does: a segment whose ego clip has no
feature is predicted with the training prior (and counted as such), never dropped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kscli.data.layout import Benchmark, Layout
from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.fileio import atomic_write, write_json_atomic
from kscli.heads.base import Head, head_class, load_head
from kscli.heads.common import plain
from kscli.heads.features import load_feature_set
from kscli.heads.metrics import compute_metrics, format_summary
from kscli.heads.predictions import doc_scores, predictions_doc, read_doc, validate_doc


@dataclass
class RunResult:
    path: Path
    metrics: dict
    summary: str


def parse_tags(backbone: str) -> list[str]:
    tags = [t.strip() for t in backbone.split(",") if t.strip()]
    if not tags:
        raise KscliError("--backbone: give a store name, or several joined with commas (a,b)")
    return tags


def _new_run_dir(layout: Layout, name: str | None, head: str, tags: list[str]) -> Path:
    name = name or f"{head}_{'+'.join(tags)}_{time.strftime('%Y%m%d-%H%M%S')}"
    path = layout.runs_dir / name
    if path.exists():
        raise KscliError(f"{path}: a run of that name exists; finished runs are never overwritten "
                         "(pass another --name)")
    path.mkdir(parents=True)
    return path


def predict_split(checkpoint: dict, bench: Benchmark, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Probabilities for every segment of `split` from ego features alone, by the head rebuilt
    from `checkpoint` (so val scores come from exactly what a submission uses). Segments
    without an ego feature (names in the third value) are predicted as the head does it: the
    training prior for single-segment heads, from their take for the context head."""
    head = load_head(checkpoint)
    fs, asm = load_feature_set(bench, split, checkpoint["tags"], with_exo=False, keep_missing=True)
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


def train_run(layout: Layout, tags: list[str], cfg, name: str | None = None,
              progress: bool = True) -> RunResult:
    """Train the head `cfg` configures (a head's Config, see kscli.heads.base.config_for) on
    the train stores of `tags`, score it on val, write the run folder."""
    bench = Benchmark(layout)
    num_classes = bench.labels.num_classes
    cls = head_class(cfg.head)
    train_fs, train_asm = load_feature_set(bench, "train", tags, with_exo=True,
                                           keep_missing=cls.keeps_missing)
    val_available = all(layout.features_dir(t, "val").is_dir() for t in tags) and \
        layout.annotation_path("val").is_file()
    if cfg.select_on == "val" and not val_available:
        raise KscliError("--select-on val needs val features: run `kscli extract --split val` first")
    val_fs = val_asm = None
    if val_available:  # exo only for a teacher's score; the student never reads it
        val_fs, val_asm = load_feature_set(bench, "val", tags, with_exo=cls.has_teacher,
                                           keep_missing=True)
    if progress:
        for asm in (train_asm, val_asm):
            if asm is not None:
                print(asm.line())
    head = cls(cfg, train_fs.dim, num_classes)
    result = head.fit(train_fs, val_fs if cfg.select_on == "val" else None, progress)
    run_dir = _new_run_dir(layout, name, cfg.head, tags)
    try:
        return _write_run(layout, bench, tags, cfg, cls, head, result, run_dir, train_asm,
                          val_fs, val_asm)
    except BaseException:  # an unfinished run folder would block its --name
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _write_run(layout, bench, tags, cfg, cls, head, result, run_dir, train_asm, val_fs,
               val_asm) -> RunResult:
    """Score the trained head on val and write the run folder's files."""
    num_classes = bench.labels.num_classes
    ckpt = {**head.state(), **plain(result.record()), "tags": list(tags),
            "labels": bench.labels.to_rows(), "backbones": dict(train_asm.store_configs)}
    metrics = {"head": cfg.head, "backbones": list(tags), "run": run_dir.name,
               "device": str(resolve_device(cfg.device)),
               "selection": {"on": cfg.select_on, **plain(result.selected)},
               "train_segments_used": train_asm.used,
               "train_segments_without_ego_feature": len(train_asm.missing_ego),
               # a head that reads takes keeps those as context; the others cannot use them
               "train_segments_left_out": 0 if cls.keeps_missing else len(train_asm.missing_ego),
               "train_exo_views": train_asm.exo_views}
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
        write_json_atomic(run_dir / "predictions_val.json", doc)
    ckpt["metrics"] = json.loads(json.dumps(metrics))
    atomic_write(run_dir / "checkpoint.pt", lambda tmp: torch.save(ckpt, tmp))
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_json_atomic(run_dir / "history.json", {"history": result.history, "grid": result.grid})
    write_json_atomic(run_dir / "config.json", {"train": cfg.to_dict(), "tags": list(tags),
                                                "backbones": ckpt["backbones"], "data": {
                                                    "annotations_dir": str(layout.annotations_dir),
                                                    "train": train_asm.line(),
                                                    "val": val_asm.line() if val_asm else None}})
    return RunResult(run_dir, metrics, format_run_summary(metrics, run_dir))


def format_run_summary(metrics: dict, run_dir: Path) -> str:
    sel = metrics["selection"]
    lines = [f"run {run_dir}",
             f"head {metrics['head']} on {'+'.join(metrics['backbones'])} ({metrics.get('device', 'cpu')}): "
             f"selected lr={sel.get('lr')} "
             f"wd={sel.get('wd')} on {sel['on']} (top-1 {sel.get('select_top1', float('nan')):.2f}%)"]
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
    return "\n".join(lines)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise KscliError(f"{path}: no checkpoint; pass a run folder made by `kscli train-head`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise KscliError(f"{path}: not a readable kscli checkpoint ({type(e).__name__}: {e})") from None


def evaluate_file(layout: Layout, path: str | Path, split: str = "val") -> dict:
    """Metrics of any prediction file against the annotations of `split` (validated first)."""
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
    return compute_metrics(scores, labels, scen, bench.labels.num_classes)
