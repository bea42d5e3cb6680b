"""Keystep recognition metrics (numpy only): top-1 / top-5, mean per-class accuracy, per scenario.

Ranking ties are broken towards the lower class index (a stable sort), the same rule as
`argmax`, so top-1 is exactly "argmax == label" and top-k is consistent with it.
"""

from __future__ import annotations

import numpy as np

from kscli.errors import KscliError


def _ranks_of_true(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of the true class per row: the number of classes ranked before it (higher
    score, or equal score and lower index)."""
    p_true = probs[np.arange(len(labels)), labels][:, None]
    cls = np.arange(probs.shape[1])[None, :]
    before = (probs > p_true) | ((probs == p_true) & (cls < labels[:, None]))
    return before.sum(1)


def compute_metrics(probs: np.ndarray, labels: np.ndarray, scenario: list[str] | None,
                    num_classes: int) -> dict:
    """Scores for (N, C) class scores against (N,) labels; rows labelled -1 are left out.

    Returns plain Python values: n (scored rows), top1 and top5 (%), mean_class_acc (% mean
    over the classes present among the labels of per-class top-1), num_classes_present,
    per_scenario {scenario: {"top1": %, "n": rows}} (empty when scenario is None)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise KscliError(f"scores must be (N, {num_classes}), got {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise KscliError(f"{probs.shape[0]} score rows but labels have shape {labels.shape}")
    if scenario is not None and len(scenario) != len(labels):
        raise KscliError(f"{len(scenario)} scenario entries for {len(labels)} segments")
    labels = labels.astype(np.int64)
    if labels.size and labels.max() >= num_classes:
        raise KscliError(f"label {labels.max()} is out of range for {num_classes} classes")
    keep = labels >= 0
    if not keep.any():
        raise KscliError("no labelled segments to score (all labels are -1)")
    bad = ~np.isfinite(probs[keep]).all(1)
    if bad.any():  # a NaN would rank its true class first and count as a hit
        raise KscliError(f"{int(bad.sum())} of {int(keep.sum())} score rows hold NaN or infinite "
                         "values; scores must be finite")
    p, y = probs[keep], labels[keep]
    rank = _ranks_of_true(p, y)
    hit1 = rank < 1
    hit5 = rank < min(5, num_classes)
    present = np.unique(y)
    per_class = np.array([hit1[y == c].mean() for c in present])
    out = {
        "n": int(len(y)),
        "top1": 100.0 * float(hit1.mean()),
        "top5": 100.0 * float(hit5.mean()),
        "mean_class_acc": 100.0 * float(per_class.mean()),
        "num_classes_present": int(len(present)),
        "per_scenario": {},
    }
    if scenario is not None:
        sc = np.asarray([str(s) for s in scenario], dtype=object)[keep]
        for name in sorted(set(sc)):
            m = sc == name
            out["per_scenario"][name] = {"top1": 100.0 * float(hit1[m].mean()), "n": int(m.sum())}
    return out


def format_summary(metrics: dict, title: str | None = None) -> str:
    """A one-screen terminal summary of `compute_metrics` output."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{metrics['n']} segments, {metrics['num_classes_present']} classes present")
    lines.append(f"top-1 {metrics['top1']:6.2f} %   top-5 {metrics['top5']:6.2f} %   "
                 f"mean class acc {metrics['mean_class_acc']:6.2f} %")
    per = metrics.get("per_scenario") or {}
    if per:
        width = max(len(s) for s in per)
        lines.append("top-1 per scenario:")
        for name, v in sorted(per.items(), key=lambda kv: (-kv[1]["n"], kv[0])):
            lines.append(f"  {name:<{width}}  {v['top1']:6.2f} %  (n={v['n']})")
    return "\n".join(lines)
