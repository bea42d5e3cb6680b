"""`kscli demo`: the whole pipeline on the embedded sample benchmark, in about a minute on a laptop.

sample (if absent) -> check-data -> extract ego + exo with the tiny random backbone -> train
linear, mlp, distill and take-context heads -> their val top-1 side by side -> a test submission.
The tiny backbone is random: the numbers only show the pipeline working.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from kscli.data.check import check_data, format_report, write_report
from kscli.data.layout import Benchmark, Layout
from kscli.data.sample import write_sample_benchmark
from kscli.data.segments import SPLITS
from kscli.device import usable_cores
from kscli.errors import KscliError
from kscli.extract.run import ExtractConfig, extract
from kscli.heads.base import config_for
from kscli.heads.run import train_run
from kscli.heads.submit import Submission, rank_runs, submit

DEMO_HEADS = ("linear", "mlp", "distill", "context")
DEMO_BACKBONE = "tiny-random"
# small enough to generate in ~20 s on 2 cores, large enough that heads differ
DEMO_SAMPLE = dict(num_classes=12, short_side=128, clip_seconds=(0.5, 1.5),
                   takes_per_split={"train": 12, "val": 4, "test": 3})
NOTICE = ("NOTE: the tiny backbone is RANDOMLY INITIALISED and the sample is synthetic: these numbers only "
          "show the pipeline working, they say nothing about real keystep recognition.")


@dataclass
class DemoResult:
    root: Path
    results: dict = field(default_factory=dict)  # head -> metrics dict
    submission: Submission | None = None


def run_demo(root: Path, seed: int = 0, heads: tuple[str, ...] = DEMO_HEADS, workers: int | None = None,
             progress: bool = True, say=print) -> DemoResult:
    root = Path(root)
    download = root / "download"
    layout = Layout.resolve(data_root=download, work_dir=root / "work")
    say(NOTICE)
    if (download / "annotations").is_dir():
        say(f"[1/5] sample benchmark: reusing {download}")
    else:
        say(f"[1/5] sample benchmark: writing {download}")
        s = write_sample_benchmark(download, seed=seed, workers=workers or usable_cores()[0], **DEMO_SAMPLE)
        say(s.text())
    say("[2/5] check-data")
    report = check_data(layout, list(SPLITS), progress=progress, min_frames=8)
    write_report(report, layout.reports_dir / "check-data.json")
    say(format_report(report))
    if not report.ok:
        raise KscliError(f"{download}: the sample has broken clips; delete {root} and run `kscli demo` again")
    say(f"[3/5] extract ego + exo features with the tiny random backbone -> {layout.stores_dir}")
    for s in extract(layout, ExtractConfig(backbone=DEMO_BACKBONE, workers=workers), progress=progress):
        say(f"  {s.split}: extracted {s.extracted}, skipped {s.skipped}, failed {s.failed}")
    result = DemoResult(root)
    runs = {}
    for i, head in enumerate(heads):
        say(f"[4/5] train head {head} ({i + 1}/{len(heads)})")
        run = train_run(layout, [DEMO_BACKBONE], config_for(head, seed=seed), progress=False)
        result.results[head] = run.metrics["val"]
        runs[head] = run.path
    say("")
    say(results_table(result.results, runs, layout))
    ranked = [r.run for r in rank_runs(layout, runs.values()).ranked]
    head = next(h for h, r in runs.items() if r == ranked[0])
    say(f"[5/5] test submission from the best head ({head}: val top-1, ties to the run name sorting first, "
        "as in `kscli submit`)")
    result.submission = submit(layout, [str(ranked[0])], "test")
    say(f"  {result.submission.segments} test segments -> {result.submission.path}")
    say(NOTICE)
    say(next_steps(layout, ranked))
    return result


def results_table(results: dict, runs: dict, layout: Layout) -> str:
    """The heads side by side, with what the numbers mean on this small val split."""
    any_metrics = next(iter(results.values()))
    n = int(any_metrics["n"])
    classes = Benchmark(layout).labels.num_classes
    lines = [f"{'head':<10} {'val top-1':>10} {'top-5':>8} {'per-class':>10}   run"]
    for head, m in results.items():
        lines.append(f"{head:<10} {m['top1']:>9.1f}% {m['top5']:>7.1f}% {m['mean_class_acc']:>9.1f}%   {runs[head]}")
    lines += [f"val: {n} segments (one segment = {100 / max(n, 1):.1f} points), {classes} keysteps: chance is "
              f"{100 / classes:.1f}% top-1.",
              "top-1: the benchmark's metric (share of segments whose first guess is right); top-5: right among "
              "the first five; per-class: top-1 averaged over keysteps, so rare ones weigh as much as common ones."]
    return "\n".join(lines)


def q(path) -> str:
    """A path as one shell word (spaces, quotes, $ ...)."""
    return shlex.quote(str(path))


def next_steps(layout: Layout, ranked: list[Path]) -> str:
    """The commands to go on with, pointed at the demo's folders, ready to paste into a shell."""
    best, others = ranked[0], ranked[1:2]
    return "\n".join([
        "next, on the demo's files (these commands read the two variables):",
        f"  export KSCLI_DATA_ROOT={q(Path(layout.data_root).resolve())} KSCLI_WORK_DIR={q(Path(layout.work_dir).resolve())}",
        f"  kscli features info --store {DEMO_BACKBONE}   # what the store holds",
        f"  kscli report {q(best.resolve())}     # pictures of the best run",
        f"  kscli submit --split val --run {q(best.name)}" + "".join(f" --run {q(o.name)}" for o in others)
        + "   # an ensemble, scored on val",
        "then with your own download: see README.md, 'With your download'."])
