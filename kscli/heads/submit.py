"""`kscli submit`: one prediction for every segment of a split, from ego features alone.

The best run by default (highest val top-1), or the runs given (an ensemble averages their
probabilities; heads on different backbones mix freely). A segment whose ego clip has no
feature still gets a prediction, the training prior, and is listed: a submission is never
silently incomplete. The file is validated before it is written and never overwrites one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path


from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.fileio import write_json_atomic
from kscli.heads.predictions import predictions_doc, validate_doc, write_csv
from kscli.heads.run import evaluate_file, load_checkpoint, predict_split

FORMATS = ("json", "csv")


@dataclass
class Submission:
    path: Path
    split: str
    runs: list[str]
    segments: int
    without_ego_feature: list[str] = field(default_factory=list)
    metrics: dict | None = None  # for val: the file scored against the annotations


def rank_runs(run_dirs) -> list[tuple[float, Path]]:
    """(score, run folder), best first: the one rule for "the best run" (submit, the demo).

    Score: val top-1, else the selection top-1. A tie goes to the run whose folder name sorts
    first, so the same runs always give the same answer. Folders without a finished run
    (metrics.json and checkpoint.pt) are skipped."""
    found = []
    for run in map(Path, run_dirs):
        if not ((run / "metrics.json").is_file() and (run / "checkpoint.pt").is_file()):
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        score = metrics.get("val", {}).get("top1", metrics.get("selection", {}).get("select_top1", 0.0))
        found.append((float(score), run))
    return sorted(found, key=lambda x: (-x[0], x[1].name))


def find_runs(layout: Layout) -> list[tuple[float, Path]]:
    """Every finished run of the work folder, best first (see :func:`rank_runs`)."""
    return rank_runs(m.parent for m in layout.runs_dir.glob("*/metrics.json"))


def resolve_run(layout: Layout, run: str) -> Path:
    p = Path(run)
    if (p / "checkpoint.pt").is_file():
        return p
    if (layout.runs_dir / run / "checkpoint.pt").is_file():
        return layout.runs_dir / run
    raise KscliError(f"run {run!r}: no checkpoint.pt there or under {layout.runs_dir}; "
                     "see the run folders `kscli train-head` printed")


def submit(layout: Layout, runs: list[str] | None = None, split: str = "test", fmt: str = "json",
           out: Path | None = None) -> Submission:
    if fmt not in FORMATS:
        raise KscliError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    bench = Benchmark(layout)
    if runs:
        run_dirs = [resolve_run(layout, r) for r in runs]
    else:
        found = find_runs(layout)
        if not found:
            raise KscliError(f"{layout.runs_dir}: no trained run; run `kscli train-head` first or pass --run")
        run_dirs = [found[0][1]]
    probs_sum, names, missing = None, None, set()
    for run_dir in run_dirs:
        ckpt = load_checkpoint(run_dir)
        if [tuple(sorted(r.items())) for r in ckpt["labels"]] != \
                [tuple(sorted(r.items())) for r in bench.labels.to_rows()]:
            raise KscliError(f"{run_dir}: trained with another label mapping than "
                             f"{bench.labels.path}; retrain on this download's labels")
        run_names, probs, run_missing = predict_split(ckpt, bench, split)
        if names is not None and run_names != names:
            raise KscliError(f"{run_dir}: predicts other segments than the first run")  # cannot happen
        names = run_names
        probs_sum = probs if probs_sum is None else probs_sum + probs
        missing.update(run_missing)
    probs = probs_sum / len(run_dirs)
    missing_list = [n for n in names if n in missing]
    doc = predictions_doc(names, probs, split, extra={
        "runs": [d.name for d in run_dirs], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "without_ego_feature": missing_list})
    validate_doc(doc, bench.segments(split), bench.labels, f"{split} submission")
    if out is None:
        tag = run_dirs[0].name if len(run_dirs) == 1 else f"ensemble{len(run_dirs)}"
        out = layout.submissions_dir / f"{split}_{tag}.{fmt}"
        if out.exists():  # an earlier submission of the same runs stays as it is
            out = out.with_name(f"{split}_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.{fmt}")
    out = Path(out)
    if out.exists():
        raise KscliError(f"{out}: exists; a finished submission is never overwritten (pass another --out)")
    if fmt == "json":
        write_json_atomic(out, doc)
    else:
        write_csv(out, doc)
    result = Submission(out, split, [str(d) for d in run_dirs], len(names), missing_list)
    if split != "test":
        result.metrics = evaluate_file(layout, out, split)
    return result
