"""Prediction files: one format for a run's val predictions and for a challenge submission.

    {"version": "1.0", "challenge": "egoexo4d_fine_grained_keystep_recognition", "split": "test",
     "results": [{"ego_segment_name": "test/<take>/start1.5_end9_aria01_214-1.mp4",
                  "label_id": 12,
                  "top5": [{"label_id": 12, "score": 0.41}, {"label_id": 3, "score": 0.2}, ...]}]}

A run's val predictions add `true_label_id` to each result. `ego_segment_name` is the
annotation file's own key for a segment. Every file is validated before it is written, and
`evaluate_file` scores any such file against the annotations the same way.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from kscli.data.labels import LabelMap
from kscli.data.segments import Segment
from kscli.errors import KscliError
from kscli.fileio import atomic_write, read_json

VERSION = "1.0"
CHALLENGE = "egoexo4d_fine_grained_keystep_recognition"
TOP_K = 5


def predictions_doc(names: list[str], probs: np.ndarray, split: str, labels: np.ndarray | None = None,
                    extra: dict | None = None) -> dict:
    """The prediction document for `names` from class probabilities (N, C), which must be finite
    (a NaN would rank its class first and be written as invalid JSON)."""
    bad = ~np.isfinite(probs).all(1)
    if bad.any():
        raise KscliError(f"{split} predictions: {int(bad.sum())} of {len(probs)} segments got NaN or infinite "
                         f"scores (e.g. {names[int(np.flatnonzero(bad)[0])]}); nothing was written: the head or "
                         "its features are broken (retrain; `kscli features verify` checks the stores)")
    k = min(TOP_K, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = []
    for i, name in enumerate(names):
        r = {"ego_segment_name": name, "label_id": int(top[i, 0]),
             "top5": [{"label_id": int(c), "score": round(float(probs[i, c]), 6)} for c in top[i]]}
        if labels is not None and labels[i] >= 0:
            r["true_label_id"] = int(labels[i])
        results.append(r)
    return {"version": VERSION, "challenge": CHALLENGE, "split": split, **(extra or {}), "results": results}


def validate_doc(doc: dict, segments: list[Segment], label_map: LabelMap, where: str) -> None:
    """Every segment of the split exactly once, nothing else, every label id in the mapping."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise KscliError(f"{where}: expected a JSON object with a 'results' list")
    expected = {s.name for s in segments}
    seen: set[str] = set()
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict):
            raise KscliError(f"{where}: results[{i}] is not an object")
        name = r.get("ego_segment_name")
        if not isinstance(name, str):
            raise KscliError(f"{where}: results[{i}]: missing field 'ego_segment_name'")
        if name not in expected:
            raise KscliError(f"{where}: results[{i}]: segment {name!r} is not in the annotations of this "
                             "split (wrong split, or a name changed?)")
        if name in seen:
            raise KscliError(f"{where}: results[{i}]: segment {name!r} is predicted twice")
        seen.add(name)
        top = r.get("top5", [])
        if not isinstance(top, list):
            raise KscliError(f"{where}: results[{i}] ({name}): 'top5' is not a list")
        ids = [r.get("label_id")] + [t.get("label_id") if isinstance(t, dict) else None for t in top]
        for lid in ids:
            if not isinstance(lid, int) or isinstance(lid, bool) or lid not in label_map:
                raise KscliError(f"{where}: results[{i}] ({name}): label_id {lid!r} is not in the label "
                                 f"mapping (0..{label_map.num_classes - 1})")
        listed = [t.get("label_id") for t in top]
        if len(set(listed)) != len(listed):
            raise KscliError(f"{where}: results[{i}] ({name}): 'top5' names a label_id twice")
        for t in top:
            score = t.get("score")
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
                raise KscliError(f"{where}: results[{i}] ({name}): score {score!r} is not a finite number")
    missing = expected - seen
    if missing:
        raise KscliError(f"{where}: {len(missing)} segment(s) of the split have no prediction, "
                         f"e.g. {sorted(missing)[0]}")


def write_csv(path: Path, doc: dict) -> Path:
    """Flat CSV: ego_segment_name,label_id,top5_ids,top5_scores (space-separated lists)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ego_segment_name", "label_id", "top5_ids", "top5_scores"])
            for r in doc["results"]:
                w.writerow([r["ego_segment_name"], r["label_id"], " ".join(str(t["label_id"]) for t in r["top5"]),
                            " ".join(f"{t['score']:.6f}" for t in r["top5"])])
    return atomic_write(path, write)


def read_doc(path: str | Path) -> dict:
    """Read a prediction file (the JSON above, or the CSV `write_csv` makes)."""
    path = Path(path)
    if not path.is_file():
        raise KscliError(f"{path}: prediction file not found")
    if path.suffix == ".csv":
        results, lineno = [], 1
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                for lineno, row in enumerate(csv.DictReader(f), start=2):
                    ids = [int(x) for x in (row.get("top5_ids") or "").split()]
                    scores = [float(x) for x in (row.get("top5_scores") or "").split()]
                    if len(ids) != len(scores):
                        raise ValueError(f"{len(ids)} top5_ids but {len(scores)} top5_scores")
                    results.append({"ego_segment_name": row["ego_segment_name"], "label_id": int(row["label_id"]),
                                    "top5": [{"label_id": a, "score": b} for a, b in zip(ids, scores)]})
        except (KeyError, TypeError, ValueError, AttributeError, csv.Error) as e:
            raise KscliError(f"{path}: line {lineno}: not a row of ego_segment_name,label_id,top5_ids,top5_scores "
                             f"({type(e).__name__}: {str(e)[:120]})") from None
        return {"results": results}
    return read_json(path)


def listed_hits(doc: dict, names: list[str], labels, k: int = TOP_K) -> np.ndarray:
    """(N,) bool: whether each segment's true label is among the first `k` classes the file
    lists for it (its label_id, then its top5): a file gets no credit for classes it never
    named, however the rest would be ranked."""
    by_name = {r["ego_segment_name"]: r for r in doc["results"]}
    out = np.zeros(len(names), dtype=bool)
    for i, (n, y) in enumerate(zip(names, labels)):
        r = by_name[n]
        listed = list(dict.fromkeys([r["label_id"]] + [t["label_id"] for t in r.get("top5") or []]))
        out[i] = y in listed[:k]
    return out


def doc_scores(doc: dict, names: list[str], num_classes: int) -> np.ndarray:
    """A score matrix (N, C) in `names` order that ranks like the file: top-5 scores, rest below."""
    by_name = {r["ego_segment_name"]: r for r in doc["results"]}
    scores = np.full((len(names), num_classes), -1.0, dtype=np.float32)
    for i, n in enumerate(names):
        r = by_name[n]
        top = r.get("top5") or [{"label_id": r["label_id"], "score": 1.0}]
        for rank, t in enumerate(top):
            scores[i, t["label_id"]] = 2.0 + len(top) - rank  # rank order, whatever the scores are
        scores[i, r["label_id"]] = 100.0  # the predicted label is top-1
    return scores
