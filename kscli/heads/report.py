"""`kscli report RUN`: the pictures people look at, as PNG files, plus a Markdown page linking them.

    report/per_scenario.png     top-1 per scenario (val), n segments per bar
    report/confusions.png       the most-confused keystep pairs (true -> predicted), in segments
    report/by_length.png        top-1 by clip length, n segments per bar
    report/training_curve.png   training loss, and top-1 on the selection split (and the
                                teacher's, for heads with one), per epoch
    report.md            the numbers and the pictures
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

from kscli.data.layout import RunFiles
from kscli.data.segments import CLIP_NAME_RE
from kscli.errors import KscliError
from kscli.fileio import atomic_write, read_json, write_text_atomic
from kscli.heads.run import load_checkpoint

LENGTH_BINS = (0, 1, 2, 5, 10, 20, 60, float("inf"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        _plt().close(fig)


def _duration(name: str) -> float:
    m = CLIP_NAME_RE.match(name.rsplit("/", 1)[-1])
    return float(m.group("end")) - float(m.group("start")) if m else float("nan")


def plot_per_scenario(val: dict):
    """Top-1 per scenario, each bar with its segment count, and the overall top-1 as a line."""
    plt = _plt()
    scen = val.get("per_scenario", {})
    keys = sorted(scen)
    fig, ax = plt.subplots(figsize=(6, 3))
    tops = [scen[k]["top1"] for k in keys]
    # outlined, so a 0% bar is still a visible line at the axis, and each bar says its value
    ax.bar(keys, tops, color="#4a7ab5", edgecolor="#1f3d63", linewidth=1.5)
    for i, k in enumerate(keys):
        ax.text(i, tops[i], f"{tops[i]:.1f}%\nn={scen[k]['n']}", ha="center", va="bottom", fontsize=7)
    ax.axhline(val["top1"], color="k", ls="--", lw=1, label=f"all: {val['top1']:.1f}% (n={val['n']})")
    ax.set_ylabel("top-1 (%)"), ax.set_title("Val top-1 per scenario (n: val segments)"), ax.legend(fontsize=7)
    ax.set_ylim(0, max([100.0] + tops) * 1.08)
    return fig


def plot_confusions(y: np.ndarray, yhat: np.ndarray, names: list[str], top: int = 15):
    """The most frequent (true -> predicted) mistakes, counted in val segments."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    pairs = Counter((int(a), int(b)) for a, b in zip(y, yhat) if a != b).most_common(top)
    # whole names, wrapped at word boundaries: keystep names run to 80+ characters
    labels = [textwrap.fill(names[a], 64) + "\n" + textwrap.fill(f"-> {names[b]}", 64, subsequent_indent="   ")
              for (a, b), _ in pairs]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(10, 0.2 * max(lines, 1) + 0.2 * len(pairs) + 1))
    ax.barh(range(len(pairs)), [c for _, c in pairs], color="#c0504d")
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts: whole segments only
    ax.invert_yaxis(), ax.set_xlabel("val segments"), ax.set_title("Most-confused keystep pairs (true -> predicted)")
    return fig


def plot_by_length(y: np.ndarray, yhat: np.ndarray, dur: np.ndarray):
    plt = _plt()
    rows = []
    for lo, hi in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        m = (dur >= lo) & (dur < hi)
        if m.any():
            rows.append((f"{lo:g}-{hi:g}s" if hi != float("inf") else f">{lo:g}s",
                         100 * float((y[m] == yhat[m]).mean()), int(m.sum())))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color="#9bbb59", edgecolor="#4f6228", linewidth=1.5)
    for i, r in enumerate(rows):
        ax.text(i, r[1], f"n={r[2]}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("top-1 (%)"), ax.set_title("Val top-1 by clip length (n: val segments)")
    return fig


def plot_training_curve(history: list[dict], member: int, select_on: str):
    """Two panels on one epoch axis: the training loss, and top-1 on the selection split (the
    held-out part of train, or val with --select-on val) that picked the grid member shown."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
    pick = lambda v: v[member] if isinstance(v, list) else v  # noqa: E731 - per-member lists
    ep = [h["epoch"] for h in history]
    top.plot(ep, [pick(h["train_loss"]) for h in history], "-o", ms=3, label="training loss")
    top.set_ylabel("loss"), top.legend(fontsize=7)
    top.set_title("Training curve of the selected grid member")
    where = "val" if select_on == "val" else "held-out part of train"
    teacher = bool(history) and "teacher_select_top1" in history[0]
    # the student is drawn above its teacher (zorder): where the two curves meet, it stays seen
    if history and "select_top1" in history[0]:
        bottom.plot(ep, [pick(h["select_top1"]) for h in history], "-s", ms=4, lw=1.5, color="#c0504d", zorder=3,
                    label=f"{'student: ' if teacher else ''}top-1 on the selection split ({where})")
    if teacher:
        bottom.plot(ep, [pick(h["teacher_select_top1"]) for h in history], "--^", ms=6, lw=3, alpha=0.5,
                    color="#4a7ab5", zorder=2, label="its teacher (ego + exo, training only), same split")
    bottom.set_xlabel("epoch"), bottom.set_ylabel("top-1 (%)"), bottom.legend(fontsize=7)
    return fig


def _teacher_rows(t: dict) -> list[str]:
    """The teacher's val top-1 beside the student's, for heads trained with one."""
    if "val_top1" not in t:
        return []
    return [f"| teacher val top-1 (ego + exo, training only; {t['n']} {t['on']}) | "
            f"{t['val_top1']:.2f}% (student on the same segments: {t['student_val_top1']:.2f}%) |"]


def _history_rows(doc, path: Path, member: int) -> list[dict]:
    """history.json's per-epoch rows, checked to be what the training curve reads (a
    hand-edited file is one line naming it)."""
    rows = doc.get("history") if isinstance(doc, dict) else None

    def number(v):
        if isinstance(v, list):
            if not isinstance(member, int) or not 0 <= member < len(v):
                return False
            v = v[member]
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    ok = isinstance(rows, list) and all(
        isinstance(r, dict) and isinstance(r.get("epoch"), int) and "train_loss" in r
        and all(number(r[k]) for k in ("train_loss", "select_top1", "teacher_select_top1") if k in r)
        for r in rows) if rows is not None else False
    if not ok:
        raise KscliError(f"{path}: not a history train-head wrote (a list of epochs, each with its epoch and "
                         f"per-member train_loss / select_top1 for member {member}); restore it or rerun the run")
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Draw the run's pictures and write report.md next to them; returns the Markdown path."""
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    metrics_path, preds_path = files.metrics, files.predictions_val
    if not metrics_path.is_file():
        raise KscliError(f"{run_dir}: no metrics.json; pass a run folder made by `kscli train-head`")
    if not preds_path.is_file():
        raise KscliError(f"{run_dir}: no predictions_val.json (the run had no val features); extract val and retrain")
    metrics = read_json(metrics_path)
    preds = read_json(preds_path)
    history_path = files.history
    history = read_json(history_path) if history_path.is_file() else {"history": []}
    ckpt = load_checkpoint(run_dir)
    try:
        names = [k["step_name"] for k in ckpt["labels"]]
        val, sel = metrics["val"], metrics.get("selection", {})
        if not isinstance(val, dict) or not isinstance(sel, dict) or not isinstance(metrics.get("backbones"), list):
            raise TypeError("val, selection or backbones is not what train-head writes")
        float(val["top1"]), float(val["top5"]), float(val["mean_class_acc"]), int(val["n"])
        preds = preds["results"]
        y = np.array([p["true_label_id"] for p in preds], dtype=np.int64)
        yhat = np.array([p["label_id"] for p in preds], dtype=np.int64)
        dur = np.array([_duration(p["ego_segment_name"]) for p in preds])
    except (KeyError, TypeError, ValueError) as e:
        raise KscliError(f"{run_dir}: metrics.json or predictions_val.json is not as train-head wrote it "
                         f"({type(e).__name__}: {e}); rerun `kscli train-head` for a fresh run folder") from None
    steps = _history_rows(history, history_path, sel.get("member", 0))
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    try:
        return _draw(run_dir, out, metrics, val, sel, y, yhat, dur, names, steps)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise KscliError(f"{run_dir}: metrics.json or predictions_val.json is not as train-head wrote it "
                         f"({type(e).__name__}: {e}); rerun `kscli train-head` for a fresh run folder") from None


def _draw(run_dir, out, metrics, val, sel, y, yhat, dur, names, steps) -> Path:
    """The pictures and report.md of a run whose files were read."""
    _save(plot_per_scenario(val), out / "per_scenario.png")
    _save(plot_confusions(y, yhat, names), out / "confusions.png")
    _save(plot_by_length(y, yhat, dur), out / "by_length.png")
    _save(plot_training_curve(steps, sel.get("member", 0), sel.get("on", "holdout")), out / "training_curve.png")
    md = [f"# Run {run_dir.name}", "",
          f"Head `{metrics['head']}` on `{'+'.join(metrics['backbones'])}`, selected on {sel.get('on')} "
          f"(lr {sel.get('lr')}, wd {sel.get('wd')}).", "",
          "| metric | value |", "|---|---|",
          f"| val top-1 (benchmark metric) | {val['top1']:.2f}% |", f"| val top-5 | {val['top5']:.2f}% |",
          f"| val mean per-class accuracy (top-1 averaged over keysteps) | {val['mean_class_acc']:.2f}% |",
          f"| val segments | {val['n']} (one segment = {100 / max(val['n'], 1):.2f} points) |",
          *_teacher_rows(metrics.get("teacher") or {}), "",
          "![per scenario](report/per_scenario.png)", "", "![confusions](report/confusions.png)", "",
          "![by length](report/by_length.png)", "", "![training curve](report/training_curve.png)", ""]
    return write_text_atomic(run_dir / "report.md", "\n".join(md))
