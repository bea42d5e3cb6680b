"""`kscli demo`: the whole pipeline on the embedded sample benchmark, in about a minute on a laptop.

sample (if absent) -> check-data -> extract ego + exo with the tiny random backbone -> train
linear, mlp, distill and take-context heads -> their val top-1 side by side -> a test submission.
The tiny backbone is random: the numbers only show the pipeline working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kscli.data.check import check_data, format_report, write_report
from kscli.data.layout import Layout
from kscli.data.sample import write_sample_benchmark
from kscli.errors import KscliError
from kscli.extract.run import ExtractConfig, extract
from kscli.heads.run import config_for, train_run
from kscli.heads.submit import Submission, submit

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
        s = write_sample_benchmark(download, seed=seed, workers=workers or os.cpu_count() or 1, **DEMO_SAMPLE)
        say(s.text())
    say("[2/5] check-data")
    report = check_data(layout, ["train", "val", "test"], progress=progress, min_frames=8)
    write_report(report, layout.reports_dir / "check-data.json")
    say(format_report(report))
    if not report.ok:
        raise KscliError(f"{download}: the sample has broken clips; delete {root} and run `kscli demo` again")
    say(f"[3/5] extract ego + exo features with the tiny random backbone -> {layout.work_dir / 'features'}")
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
    say(f"{'head':<10} {'val top-1':>10} {'top-5':>8} {'mean class':>11}   run")
    for head, m in result.results.items():
        say(f"{head:<10} {m['top1']:>9.1f}% {m['top5']:>7.1f}% {m['mean_class_acc']:>10.1f}%   {runs[head]}")
    best = max(result.results, key=lambda h: result.results[h]["top1"])
    say(f"[5/5] test submission from the best head ({best})")
    result.submission = submit(layout, [str(runs[best])], "test")
    say(f"  {result.submission.segments} test segments -> {result.submission.path}")
    say(NOTICE)
    return result
