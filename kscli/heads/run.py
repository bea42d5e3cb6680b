"""`kscli train-head` and `kscli evaluate`: train a head on cached features, write a run folder.

A run folder (`<work>/runs/<name>/`) holds everything a result needs to be traced and reused:

    config.json            the training config, the stores used and their backbone specs
    metrics.json           val top-1 (the benchmark's metric), top-5, mean per-class, per scenario
    predictions_val.json   val predictions in the submission format, with true labels
    history.json           per-epoch training loss and selection accuracy, the grid
    checkpoint.pt          weights + head config + label map + backbone specs (weights_only=True)

Val metrics count every val segment, as the leaderboard does: a segment whose ego clip has no
feature is predicted with the training prior (and counted as such), never dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kscli.data.layout import Benchmark, Layout
from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.fileio import atomic_write, write_json_atomic
from kscli.heads.features import load_feature_set
from kscli.heads.metrics import compute_metrics, format_summary
from kscli.heads.models import build_head_from_checkpoint
from kscli.heads.predictions import doc_scores, predictions_doc, read_doc, validate_doc
from kscli.heads.train import head_state, predict_proba, train_head

CONTEXT_HEAD = "context"  # classifies a segment from its whole take: kscli.heads.context


def config_for(head: str, **overrides):
    """The training config of `head` with its tuned defaults: a ContextConfig for the
    take-context head, else TrainConfig.for_head (unknown heads and options: KscliError)."""
    from kscli.heads.models import list_heads

    if head not in (*list_heads(), CONTEXT_HEAD):
        raise KscliError(f"unknown head {head!r}; known heads: {', '.join([*list_heads(), CONTEXT_HEAD])}")
    if head == CONTEXT_HEAD:
        from kscli.heads.context import ContextConfig

        if overrides.pop("class_balance", False):
            raise KscliError("--class-balance is not available for the context head")
        cfg = ContextConfig.from_dict(overrides)
    else:
        from kscli.heads.train import TrainConfig

        cfg = TrainConfig.for_head(head, **overrides)
    cfg.check()
    return cfg


def _train(cfg, train_fs, num_classes: int, val_fs, progress: bool) -> tuple[object, dict]:
    """Train a single-segment head or the take-context head; returns (result, checkpoint dict)."""
    if getattr(cfg, "head", CONTEXT_HEAD) == CONTEXT_HEAD:
        from kscli.heads.context import context_state, train_context_head

        result = train_context_head(cfg, train_fs, num_classes, val=val_fs, progress=progress)
        return result, context_state(result)
    result = train_head(cfg, train_fs, num_classes, val=val_fs, progress=progress)
    return result, head_state(result)


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


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64) + 1e-3
    return (counts / counts.sum()).astype(np.float32)


def _new_run_dir(layout: Layout, name: str | None, head: str, tags: list[str]) -> Path:
    name = name or f"{head}_{'+'.join(tags)}_{time.strftime('%Y%m%d-%H%M%S')}"
    path = layout.runs_dir / name
    if path.exists():
        raise KscliError(f"{path}: a run of that name exists; finished runs are never overwritten "
                         "(pass another --name)")
    path.mkdir(parents=True)
    return path


def predict_split(checkpoint: dict, bench: Benchmark, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Probabilities for every segment of `split` from ego features alone.

    Segments without an ego feature (names in the third value) get the training prior from a
    single-segment head, and a prediction from their neighbours from the context head.
    """
    fs, asm = load_feature_set(bench, split, checkpoint["tags"], with_exo=False, keep_missing=True)
    present = fs.ego_present
    if checkpoint["head"] == CONTEXT_HEAD:
        from kscli.heads.context import build_context_from_checkpoint, predict_context_proba

        probs = predict_context_proba(build_context_from_checkpoint(checkpoint), fs)
    else:
        probs = predict_proba(build_head_from_checkpoint(checkpoint), fs.ego)
        probs[~present] = np.asarray(checkpoint["prior"], dtype=np.float32)
    return fs.names, probs, asm.missing_ego


def train_run(layout: Layout, tags: list[str], cfg, name: str | None = None,
              progress: bool = True) -> RunResult:
    """Train a head (a TrainConfig, or a ContextConfig for the take-context head) on the train
    stores of `tags`, score it on val, write the run folder."""
    bench = Benchmark(layout)
    labels = bench.labels
    head = getattr(cfg, "head", CONTEXT_HEAD)
    # the context head keeps segments without an ego feature in their take: they are context
    # for their neighbours and train its learned "missing" input on real gaps
    context = head == CONTEXT_HEAD
    train_fs, train_asm = load_feature_set(bench, "train", tags, with_exo=True, keep_missing=context)
    val_available = all(layout.features_dir(t, "val").is_dir() for t in tags) and \
        layout.annotation_path("val").is_file()
    if cfg.select_on == "val" and not val_available:
        raise KscliError("--select-on val needs val features: run `kscli extract --split val` first")
    val_fs = val_asm = None
    if val_available:
        val_fs, val_asm = load_feature_set(bench, "val", tags, with_exo=False, keep_missing=True)
    lines = [train_asm.line()] + ([val_asm.line()] if val_asm else [])
    if progress:
        for line in lines:
            print(line)
    val_for_selection = None
    if val_fs is not None and cfg.select_on == "val":
        val_for_selection = val_fs if context else val_fs.subset(val_fs.ego_present)
    result, ckpt = _train(cfg, train_fs, labels.num_classes, val_for_selection, progress)
    run_dir = _new_run_dir(layout, name, head, tags)
    ckpt.update({"tags": list(tags), "labels": labels.to_rows(),
                 "prior": class_prior(train_fs.labels, labels.num_classes).tolist(),
                 "backbones": {t: c for t, c in train_asm.store_configs.items()}})
    metrics = {"head": head, "backbones": list(tags), "run": run_dir.name, "device": str(resolve_device(cfg.device)),
               "selection": {"on": result.selected.get("select_on", cfg.select_on), **result.selected},
               "train_segments_used": train_asm.used,
               "train_segments_without_ego_feature": len(train_asm.missing_ego),
               # single-segment heads cannot use those; the context head keeps them as context
               "train_segments_left_out": 0 if context else len(train_asm.missing_ego),
               "train_exo_views": train_asm.exo_views}
    if val_fs is not None:
        names, probs, missing = predict_split(ckpt, bench, "val")
        metrics["val"] = compute_metrics(probs, val_fs.labels, val_fs.scenario, labels.num_classes)
        metrics["val"]["segments_without_ego_feature"] = len(missing)
        doc = predictions_doc(names, probs, "val", labels=val_fs.labels,
                              extra={"run": run_dir.name, "without_ego_feature": missing})
        validate_doc(doc, bench.segments("val"), labels, "val predictions")
        write_json_atomic(run_dir / "predictions_val.json", doc)
    ckpt["metrics"] = json.loads(json.dumps(metrics))
    atomic_write(run_dir / "checkpoint.pt", lambda tmp: torch.save(ckpt, tmp))
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_json_atomic(run_dir / "history.json", {"history": ckpt.get("history", []), "grid": ckpt.get("grid", [])})
    write_json_atomic(run_dir / "config.json", {"train": cfg.to_dict(), "tags": list(tags),
                                                "backbones": ckpt["backbones"], "data": {
                                                    "annotations_dir": str(layout.annotations_dir),
                                                    "train": train_asm.line(),
                                                    "val": val_asm.line() if val_asm else None}})
    summary = format_run_summary(metrics, run_dir)
    return RunResult(run_dir, metrics, summary)


def format_run_summary(metrics: dict, run_dir: Path) -> str:
    sel = metrics["selection"]
    lines = [f"run {run_dir}",
             f"head {metrics['head']} on {'+'.join(metrics['backbones'])} ({metrics.get('device', 'cpu')}): "
             f"selected lr={sel.get('lr')} "
             f"wd={sel.get('wd')} on {sel['on']} (top-1 {sel.get('select_top1', float('nan')):.2f}%)"]
    if "val" in metrics:
        lines.append(format_summary(metrics["val"]))
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
