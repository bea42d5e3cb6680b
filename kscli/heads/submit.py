"""`kscli submit`: one prediction for every segment of a split, from ego features alone.

The runs given (an ensemble averages their probabilities; heads on different backbones mix
freely), or the best run. The best run is chosen on one measure for every candidate: its val
top-1 on the same val segments, scored now by the head rebuilt from its checkpoint on the val
stores as they are (a run's stores must hold features made the way it trained on). A run that
cannot be scored so (no val features for its stores, a damaged checkpoint) is left out with a
note; ties go to the run whose name sorts first. A segment whose ego clip has no feature still
gets a prediction, the training prior, and is listed: a submission is never silently
incomplete. The file records the runs, each store's config digest and the kscli version; it is
validated before it is written and never overwrites one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import kscli
from kscli.data.layout import Benchmark, Layout, RunFiles
from kscli.errors import KscliError
from kscli.extract.backbone_base import RANDOM_FEATURES_WARNING, random_weights
from kscli.fileio import write_json_atomic
from kscli.heads.features import store_digest
from kscli.heads.metrics import compute_metrics
from kscli.heads.predictions import predictions_doc, validate_doc, write_csv
from kscli.heads.run import evaluate_file, is_finished_run, load_checkpoint, predict_split

FORMATS = ("json", "csv")


@dataclass
class Ranked:
    """A run scored for the best-run choice."""

    run: Path
    top1: float  # val top-1 (%) on all `n` val segments
    n: int


@dataclass
class Choice:
    """The candidates, best first, and why the others were left out."""

    ranked: list[Ranked]
    left_out: list[str] = field(default_factory=list)

    def text(self) -> str:
        if not self.ranked:
            return "no run could be scored on val"
        best = self.ranked[0]
        lines = [f"best run by val top-1 on the same {best.n} val segments (scored now): {best.run.name} "
                 f"{best.top1:.2f}%" + (f"; runner-up: {self.ranked[1].run.name} {self.ranked[1].top1:.2f}%"
                                        if len(self.ranked) > 1 else " (the only run that could be scored)")]
        lines += [f"  left out: {why}" for why in self.left_out]
        return "\n".join(lines)


@dataclass
class Submission:
    path: Path
    split: str
    runs: list[str]
    segments: int
    without_ego_feature: list[str] = field(default_factory=list)
    metrics: dict | None = None  # for val: the file scored against the annotations
    choice: Choice | None = None  # how the run was chosen (no --run given)
    random_features: bool = False


def rank_runs(layout: Layout, run_dirs) -> Choice:
    """Every run in `run_dirs` scored on val now, best first: the one rule for "the best run"
    (submit, the demo). See the module doc."""
    bench = Benchmark(layout)
    label_of = {s.name: s.label for s in bench.segments("val")}
    ranked, left_out = [], []
    for run in sorted(map(Path, run_dirs), key=lambda p: p.name):
        try:
            ckpt = _checkpoint_for(run, bench)
            missing = [t for t in ckpt["tags"] if not layout.features_dir(t, "val").is_dir()]
            if missing:
                left_out.append(f"{run.name}: no val features for {', '.join(missing)} to score it on")
                continue
            names, probs, _ = predict_split(ckpt, bench, "val")
            m = compute_metrics(probs, [label_of[n] for n in names], None, bench.labels.num_classes)
        except KscliError as e:
            left_out.append(f"{run.name}: {e}")
            continue
        ranked.append(Ranked(run, m["top1"], m["n"]))
    ranked.sort(key=lambda r: (-r.top1, r.run.name))
    return Choice(ranked, left_out)


def find_runs(layout: Layout) -> list[Path]:
    """Every finished run folder of the work folder (checkpoint and metrics written, no
    `.unfinished` marker), by name."""
    if not layout.runs_dir.is_dir():
        return []
    return sorted(p for p in layout.runs_dir.iterdir() if p.is_dir() and is_finished_run(p))


def resolve_run(layout: Layout, run: str) -> Path:
    """A finished run's folder (absolute: its name is the run's name) from its path or its name
    under the runs folder."""
    p = Path(run)
    if not RunFiles(p).checkpoint.is_file():
        p = layout.run_dir(run, "run (--run)") if p.name == run and run not in (".", "..") else None  # a name
        if p is None or not RunFiles(p).checkpoint.is_file():
            raise KscliError(f"run {run!r}: no checkpoint.pt there or under {layout.runs_dir}; "
                             "see the run folders `kscli train-head` printed")
    if RunFiles(p).unfinished.exists():
        raise KscliError(f"{p}: this run is unfinished (still training, or killed: it has {RunFiles(p).unfinished.name}); use a "
                         "finished run, or train it again")
    return p.resolve()


def _checkpoint_for(run_dir: Path, bench: Benchmark) -> dict:
    """A run's checkpoint, checked to name its stores and to use this download's labels."""
    ckpt = load_checkpoint(run_dir)
    if "tags" not in ckpt:
        raise KscliError(f"{run_dir}: its checkpoint does not name the stores it was trained on; retrain it")
    if [tuple(sorted(r.items())) for r in ckpt.get("labels", [])] != \
            [tuple(sorted(r.items())) for r in bench.labels.to_rows()]:
        raise KscliError(f"{run_dir}: trained with another label mapping than "
                         f"{bench.labels.path}; retrain on this download's labels")
    return ckpt


def submit(layout: Layout, runs: list[str] | None = None, split: str = "test", fmt: str = "json",
           out: Path | None = None) -> Submission:
    if fmt not in FORMATS:
        raise KscliError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if split not in ("val", "test"):
        raise KscliError(f"--split {split!r}: choose test or val")
    bench = Benchmark(layout)
    choice = None
    if runs:
        run_dirs = [resolve_run(layout, r) for r in runs]
    else:
        found = find_runs(layout)
        if not found:
            raise KscliError(f"{layout.runs_dir}: no trained run; run `kscli train-head` first or pass --run")
        choice = rank_runs(layout, found)
        if not choice.ranked:
            raise KscliError(f"{layout.runs_dir}: no run could be scored on val to choose the best ("
                             + "; ".join(choice.left_out[:3]) + "); extract val features, or pass --run")
        run_dirs = [choice.ranked[0].run]
    probs_sum, names, missing, stores, random = None, None, set(), {}, False
    for run_dir in run_dirs:
        ckpt = _checkpoint_for(run_dir, bench)
        run_names, probs, run_missing = predict_split(ckpt, bench, split)
        if names is not None and run_names != names:
            raise KscliError(f"{run_dir}: predicts other segments than the first run")  # cannot happen
        names = run_names
        probs_sum = probs if probs_sum is None else probs_sum + probs
        missing.update(run_missing)
        stores[run_dir.name] = _store_digests(layout, ckpt["tags"], split)
        random |= any(_random(cfg) for cfg in ckpt.get("backbones", {}).values())
    probs = probs_sum / len(run_dirs)
    missing_list = [n for n in names if n in missing]
    extra = {"runs": [d.name for d in run_dirs], "kscli": kscli.__version__, "stores": stores,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "without_ego_feature": missing_list}
    if random:
        extra["warning"] = RANDOM_FEATURES_WARNING
    doc = predictions_doc(names, probs, split, extra=extra)
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
    result = Submission(out, split, [str(d) for d in run_dirs], len(names), missing_list, choice=choice,
                        random_features=random)
    if split != "test":
        result.metrics = evaluate_file(layout, out, split)
    return result


def _store_digests(layout: Layout, store_names, split: str) -> dict:
    return {t: store_digest(layout, t, split) for t in store_names}


def _random(store_config: dict) -> bool:
    return random_weights(store_config.get("backbone") or {})
