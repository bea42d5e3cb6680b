"""Take context and multi-window features on the sample benchmark, through the real pipeline
(a script, not a test): python bench/context_sample.py [--quick] [--root DIR]

What it runs (the same library calls as `kscli sample`, `kscli extract` and `kscli train-head`)
    1. A synthetic sample benchmark in the download's layout: real H.264 clips, keysteps that
       follow per-take procedures (each scenario has a canonical order, walked mostly in order
       with skips and repeats, as real takes do). The exo views carry the class signal more
       clearly than ego. Defaults: 24 keysteps in 3 scenarios, 40 train and 16 val takes of
       5-10 segments.
    2. Ego + exo features with the tiny random backbone, twice: one window per clip (store
       `tiny-random`) and four windows per clip (`extract --windows 4`, store `tiny-random-w4`).
    3. Heads linear, mlp, distill, attentive and context on each store, for several seeds;
       every head selects its (lr, wd) on a part of train, never on val.
    Printed: val top-1 mean and standard deviation over seeds per head and store, the context
    head's gain over the best single-segment head, and what four windows add to the attentive
    and context heads.

Reading the numbers: the backbone is random and the clips are synthetic, so the absolute
numbers mean nothing for real keystep recognition. The gain of the context head measures how
much of the sample's procedure order it uses. The sample's keysteps look the same through a
clip, so windows add frames rather than new content; bench/context.py --windows simulates
segments where the keystep shows in some windows only. The val split is small: compare the
gaps with the printed spread over seeds.

Everything is kept under --root (default: a fresh temporary folder); rerunning with the same
--root reuses the sample and the stores (extraction resumes) and trains new runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kscli.data.layout import Layout  # noqa: E402
from kscli.data.sample import write_sample_benchmark  # noqa: E402
from kscli.extract.run import ExtractConfig, extract  # noqa: E402
from kscli.heads.run import train_run  # noqa: E402
from kscli.heads.base import config_for  # noqa: E402

SINGLE = ("linear", "mlp", "distill", "attentive")


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="keep the sample and stores here")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--train-takes", type=int, default=40)
    ap.add_argument("--val-takes", type=int, default=16)
    ap.add_argument("--seeds", default="0,1,2", help="head seeds (the sample is seed 0)")
    ap.add_argument("--windows", type=int, default=4, help="windows of the multi-window store")
    ap.add_argument("--heads", default=",".join(SINGLE + ("context",)))
    ap.add_argument("--quick", action="store_true", help="24 train / 8 val takes, seeds 0,1")
    args = ap.parse_args()
    if args.quick:
        args.train_takes, args.val_takes, args.seeds = 24, 8, "0,1"
    root = args.root or Path(tempfile.mkdtemp(prefix="kscli-bench-ctx-"))
    download = root / "download"
    layout = Layout.resolve(data_root=download, work_dir=root / "work")
    workers = os.cpu_count() or 1

    t0 = time.perf_counter()
    if not (download / "annotations").is_dir():
        s = write_sample_benchmark(download, seed=0, num_classes=args.classes, short_side=128,
                                   clip_seconds=(0.5, 1.5), segments_per_take=(5, 10),
                                   takes_per_split={"train": args.train_takes,
                                                    "val": args.val_takes, "test": 1},
                                   workers=workers)
        print(s.text())
    t1 = time.perf_counter()
    stores = {1: "tiny-random", args.windows: f"tiny-random-w{args.windows}"}
    for w, tag in stores.items():
        extract(layout, ExtractConfig(backbone="tiny-random", windows=w, tag=tag,
                                      splits=("train", "val"), workers=workers), progress=False)
    t2 = time.perf_counter()
    print(f"sample {root}: written in {t1 - t0:.0f} s, extracted (W=1 and W={args.windows}) in "
          f"{t2 - t1:.0f} s; {load()}")

    seeds = [int(s) for s in args.seeds.split(",")]
    heads = args.heads.split(",")
    top1: dict[tuple[str, int], list[float]] = {}
    secs: dict[tuple[str, int], list[float]] = {}
    print(f"{'head':<11}{'windows':>8}{'val top-1 % (mean +- sd)':>27}{'train s':>9}   per seed")
    for w, tag in stores.items():
        for head in heads:
            accs, times = [], []
            for seed in seeds:
                cfg = config_for(head, seed=seed)
                t = time.perf_counter()
                run = train_run(layout, [tag], cfg, name=f"{head}-w{w}-s{seed}-{time.time_ns()}",
                                progress=False)
                times.append(time.perf_counter() - t)
                accs.append(run.metrics["val"]["top1"])
            top1[head, w], secs[head, w] = accs, times
            print(f"{head:<11}{w:>8}{np.mean(accs):>19.1f} +- {np.std(accs):4.1f}"
                  f"{np.mean(times):>9.1f}   {' '.join(f'{a:.1f}' for a in accs)}", flush=True)

    n_val = run.metrics["val"]["n"]
    print(f"(val: {n_val} segments in {args.val_takes} takes; chance {100 / args.classes:.1f} %)")
    for w in stores:
        single = {h: np.mean(top1[h, w]) for h in heads if h != "context"}
        if "context" in heads and single:
            best = max(single, key=single.get)
            print(f"W={w}: context {np.mean(top1['context', w]):.1f} % vs best single-segment "
                  f"head {best} {single[best]:.1f} %: {np.mean(top1['context', w]) - single[best]:+.1f}"
                  f" points")
    for head in ("attentive", "context"):
        if head in heads:
            gain = np.mean(top1[head, args.windows]) - np.mean(top1[head, 1])
            print(f"{head}: W={args.windows} over W=1: {gain:+.1f} points")
    print(f"({load()})")


if __name__ == "__main__":
    main()
