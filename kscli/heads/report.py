"""`kscli report RUN`: the pictures people look at, as PNG files, plus a Markdown page linking them.

    per_scenario.png     top-1 per scenario (val)
    confusions.png       the most-confused keystep pairs (true -> predicted)
    by_length.png        top-1 by clip length
    training_curve.png   training loss and selection top-1 per epoch
    report.md            the numbers and the pictures
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from kscli.data.segments import CLIP_NAME_RE
from kscli.errors import KscliError
from kscli.heads.run import load_checkpoint

LENGTH_BINS = (0, 1, 2, 5, 10, 20, 60, float("inf"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def _duration(name: str) -> float:
    m = CLIP_NAME_RE.match(name.rsplit("/", 1)[-1])
    return float(m.group("end")) - float(m.group("start")) if m else float("nan")


def write_report(run_dir: str | Path) -> Path:
    """Draw the run's pictures and write report.md next to them; returns the Markdown path."""
    run_dir = Path(run_dir)
    metrics_path, preds_path = run_dir / "metrics.json", run_dir / "predictions_val.json"
    if not metrics_path.is_file():
        raise KscliError(f"{run_dir}: no metrics.json; pass a run folder made by `kscli train-head`")
    if not preds_path.is_file():
        raise KscliError(f"{run_dir}: no predictions_val.json (the run had no val features); extract val and retrain")
    metrics = json.loads(metrics_path.read_text())
    preds = json.loads(preds_path.read_text())["results"]
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    names = [k["step_name"] for k in load_checkpoint(run_dir)["labels"]]
    plt = _plt()
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    val = metrics["val"]

    scen = val.get("per_scenario", {})
    fig, ax = plt.subplots(figsize=(6, 3))
    keys = sorted(scen)
    ax.bar(keys, [scen[k]["top1"] if isinstance(scen[k], dict) else scen[k] for k in keys], color="#4a7ab5")
    ax.axhline(val["top1"], color="k", ls="--", lw=1, label=f"all: {val['top1']:.1f}%")
    ax.set_ylabel("top-1 (%)"), ax.set_title("Val top-1 per scenario"), ax.legend()
    _save(fig, out / "per_scenario.png")

    y = np.array([p["true_label_id"] for p in preds])
    yhat = np.array([p["label_id"] for p in preds])
    pairs = Counter((int(a), int(b)) for a, b in zip(y, yhat) if a != b).most_common(15)
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(pairs), 1) + 1))
    labels = [f"{names[a][:32]} -> {names[b][:32]}" for (a, b), _ in pairs]
    ax.barh(range(len(pairs)), [c for _, c in pairs], color="#c0504d")
    ax.set_yticks(range(len(pairs)), labels, fontsize=7)
    ax.invert_yaxis(), ax.set_xlabel("val segments"), ax.set_title("Most-confused keystep pairs (true -> predicted)")
    _save(fig, out / "confusions.png")

    dur = np.array([_duration(p["ego_segment_name"]) for p in preds])
    rows = []
    for lo, hi in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        m = (dur >= lo) & (dur < hi)
        if m.any():
            rows.append((f"{lo:g}-{hi:g}s" if hi != float("inf") else f">{lo:g}s", 100 * float((y[m] == yhat[m]).mean()),
                         int(m.sum())))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color="#9bbb59")
    for i, r in enumerate(rows):
        ax.text(i, r[1], f"n={r[2]}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("top-1 (%)"), ax.set_title("Val top-1 by clip length")
    _save(fig, out / "by_length.png")

    hist = history.get("history", [])
    fig, ax = plt.subplots(figsize=(6, 3))
    if hist:
        member = metrics.get("selection", {}).get("member", 0)
        ep = [h["epoch"] for h in hist]
        loss = [h["train_loss"][member] if isinstance(h["train_loss"], list) else h["train_loss"] for h in hist]
        ax.plot(ep, loss, "-o", ms=3, label="train loss")
        ax.set_xlabel("epoch"), ax.set_ylabel("loss")
        if "select_top1" in hist[0]:
            ax2 = ax.twinx()
            acc = [h["select_top1"][member] if isinstance(h["select_top1"], list) else h["select_top1"] for h in hist]
            ax2.plot(ep, acc, "-s", ms=3, color="#c0504d", label="selection top-1")
            ax2.set_ylabel("selection top-1 (%)")
    ax.set_title("Training curve (selected grid member)")
    _save(fig, out / "training_curve.png")

    md = [f"# Run {run_dir.name}", "",
          f"Head `{metrics['head']}` on `{'+'.join(metrics['backbones'])}`, selected on {metrics['selection']['on']} "
          f"(lr {metrics['selection'].get('lr')}, wd {metrics['selection'].get('wd')}).", "",
          "| metric | value |", "|---|---|",
          f"| val top-1 (benchmark metric) | {val['top1']:.2f}% |", f"| val top-5 | {val['top5']:.2f}% |",
          f"| val mean per-class accuracy | {val['mean_class_acc']:.2f}% |", f"| val segments | {val['n']} |", "",
          "![per scenario](report/per_scenario.png)", "", "![confusions](report/confusions.png)", "",
          "![by length](report/by_length.png)", "", "![training curve](report/training_curve.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(md))
    return path
