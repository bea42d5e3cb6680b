"""Benchmark of the take-context head (a script, not a test): python bench/context.py [--quick] [--windows 4]

A simulation of Ego-Exo4D keystep recognition at realistic scale, where the segments of a take
follow a procedure, and single-segment heads (linear, mlp, distill) are compared with the
context head on ego-only test takes.

Simulation
    278 keysteps over 3 scenarios (120 / 98 / 60 keysteps), each scenario's keysteps in a
    canonical order. Each scenario has several tasks (e.g. recipes): a task is a subset of its
    scenario's keysteps (8-50 of them) kept in canonical order. A take picks a task and does
    each of its keysteps with probability 0.75 (skips), with adjacent swaps (probability 0.1
    per step) and repeats (0.05); 5 % of takes go over their task 2-4 times (the long takes,
    up to ~150 segments). Durations are lognormal around a per-keystep mean, gaps between
    segments exponential (mean 4 s), sometimes overlapping.
    Features: a 64-d latent per segment (keystep mean + within-class spread); exo views (4
    cameras, 30 % missing) are clean linear maps of the latent; the ego view is a weak map of
    it plus a per-take offset (same person, kitchen, light), a 64-d nuisance and noise, in
    1,024 dims with per-dimension scales and offsets. Test takes have no exo at all.
    --ego-signal sets how weak ego is; the default puts the single-segment mlp near 40 % (the
    benchmark's single-segment MLP level).
    --windows T stores T windows per segment ((N, T, D), what `kscli extract --windows T`
    writes): the keystep shows in some windows only (each window with probability
    --action-fraction, at least one), which also stand out along a fixed "salience" direction
    (--salience; the window with the action moves more); the other windows hold the take's
    background, nuisance and noise. The heads that read windows (attentive, context) are then
    also trained on the mean over the windows (what one window over the whole segment would
    roughly give), and the bench prints what the windows add. Whether real windows differ
    this way is an assumption of the simulation.

What the numbers mean: how much of the procedure's order the context head exploits depends
on how strongly this simulator builds order in (skip/swap rates, task overlap). The gain here
is a property of the simulation, not a forecast of the gain on the real benchmark.

The machine may be shared: the load average is printed with the timings.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kscli.heads.featureset import FeatureSet  # noqa: E402
from kscli.heads.base import config_for  # noqa: E402
from kscli.heads.train import train_head  # noqa: E402

SCENARIO_SIZES = (120, 98, 60)


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def top1(probs: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((probs.argmax(1) == y).mean())


class Simulator:
    def __init__(self, seed=0, D=1024, k=64, V=4, tasks_per_scenario=12, ego_signal=0.15,
                 within=1.0, take_offset=0.3, nuisance=1.5, ego_noise=1.0, exo_noise=0.3,
                 p_view=0.7, p_do=0.7, jitter=2.0, p_extra=0.15, p_repeat=0.05, p_loop=0.05,
                 windows=1, action_fraction=0.5, salience=1.0):
        rng = self.rng = np.random.default_rng(seed)
        self.C = sum(SCENARIO_SIZES)
        self.D, self.k, self.V = D, k, V
        self.__dict__.update(within=within, take_offset=take_offset, ego_noise=ego_noise,
                             exo_noise=exo_noise, p_view=p_view, p_do=p_do, jitter=jitter,
                             p_extra=p_extra, p_repeat=p_repeat, p_loop=p_loop, windows=windows,
                             action_fraction=action_fraction, salience=salience)
        perm = rng.permutation(self.C)
        self.scenarios, self.tasks, self.task_scen = [], [], []
        i = 0
        for s, n in enumerate(SCENARIO_SIZES):
            canon = perm[i:i + n]  # the scenario's canonical order
            i += n
            self.scenarios.append(canon)
            for _ in range(tasks_per_scenario):
                m = int(rng.integers(8, min(50, n) + 1))
                keep = np.sort(rng.choice(n, size=m, replace=False))
                self.tasks.append(canon[keep])
                self.task_scen.append(s)
        self.scen_of = np.zeros(self.C, np.int64)
        for s, canon in enumerate(self.scenarios):
            self.scen_of[canon] = s
        self.mu = rng.normal(size=(self.C, k))
        self.dur_mu = rng.normal(np.log(8.0), 0.6, size=self.C)
        self.B = rng.normal(size=(k, D)) / np.sqrt(k) * ego_signal
        self.M = rng.normal(size=(64, D)) / np.sqrt(64) * nuisance
        A = rng.normal(size=(k, D)) / np.sqrt(k)
        self.views = [A + 0.3 * rng.normal(size=(k, D)) / np.sqrt(k) for _ in range(V)]
        self.scale = np.exp(rng.normal(0, 0.3, size=D))
        self.offset = rng.normal(0, 1, size=D)
        u = np.random.default_rng([seed, 7]).normal(size=D)  # own stream: W=1 data unchanged
        self.salient = u / np.linalg.norm(u) * np.sqrt(D) * 0.1

    def take_sequence(self) -> np.ndarray:
        rng = self.rng
        t = int(rng.integers(len(self.tasks)))
        task, scen = self.tasks[t], self.scenarios[self.task_scen[t]]
        passes = int(rng.integers(2, 5)) if rng.random() < self.p_loop else 1
        seq, key = [], []
        for p in range(passes):
            for i, c in enumerate(task):
                if rng.random() < self.p_do:
                    reps = 2 if rng.random() < self.p_repeat else 1
                    for _ in range(reps):
                        seq.append(int(c))
                        key.append(p * len(task) + i + self.jitter * rng.normal())
                if rng.random() < self.p_extra:  # off-script: any keystep of the scenario
                    seq.append(int(scen[rng.integers(len(scen))]))
                    key.append(p * len(task) + rng.uniform(0, len(task)))
        if not seq:
            seq, key = [int(task[rng.integers(len(task))])], [0.0]
        return np.array(seq, np.int64)[np.argsort(key, kind="stable")]

    def takes(self, n_takes: int, split: str, with_exo: bool) -> FeatureSet:
        rng = self.rng
        ys, takes, starts, ends = [], [], [], []
        for t in range(n_takes):
            y = self.take_sequence()
            dur = np.exp(self.dur_mu[y] + 0.4 * rng.normal(size=len(y)))
            gap = rng.exponential(4.0, size=len(y)) - 1.0  # sometimes overlapping
            start = np.cumsum(np.concatenate([[rng.uniform(0, 30)], (dur + gap)[:-1]]))
            ys.append(y)
            takes += [f"{split}_take{t:04d}"] * len(y)
            starts.append(start)
            ends.append(start + dur)
        y = np.concatenate(ys)
        n = len(y)
        z = self.mu[y] + self.within * rng.normal(size=(n, self.k))
        take_id = np.repeat(np.arange(n_takes), [len(v) for v in ys])
        offs = rng.normal(size=(n_takes, self.D)) * self.take_offset
        if self.windows == 1:
            ego = (z @ self.B + rng.normal(size=(n, 64)) @ self.M + offs[take_id]
                   + self.ego_noise * rng.normal(size=(n, self.D)))
        else:  # the keystep (and the salience direction) in some windows, background elsewhere
            T = self.windows
            act = rng.random((n, T)) < self.action_fraction
            act[np.arange(n), rng.integers(0, T, n)] = True
            sig = z @ self.B + self.salience * self.salient
            ego = np.empty((n, T, self.D))
            for t in range(T):
                ego[:, t] = (np.where(act[:, t, None], sig, 0.0) + offs[take_id]
                             + rng.normal(size=(n, 64)) @ self.M
                             + self.ego_noise * rng.normal(size=(n, self.D)))
        ego = (ego * self.scale + self.offset).astype(np.float32)
        exo = np.zeros((n, self.V, self.D), np.float32)
        mask = np.zeros((n, self.V), bool)
        if with_exo:
            mask = rng.random((n, self.V)) < self.p_view
            for j in range(self.V):
                e = z @ self.views[j] + self.exo_noise * rng.normal(size=(n, self.D))
                exo[:, j] = np.where(mask[:, j, None], e, 0)
        # rows in a shuffled order: heads must not rely on the file order
        order = rng.permutation(n)
        scen_names = np.array(["cooking", "bike repair", "health"])
        return FeatureSet(
            names=[f"{split}/{i}" for i in range(n)], ego=ego[order], exo=exo[order],
            exo_mask=mask[order], labels=y[order], take=[takes[i] for i in order],
            start=np.concatenate(starts)[order], end=np.concatenate(ends)[order],
            scenario=list(scen_names[self.scen_of[y[order]]]))


def timed(fn):
    w = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - w


def run_head(head: str, train: FeatureSet, test: FeatureSet, C: int, seed: int,
             over: dict) -> tuple[float, float, str]:
    """(test top-1, train seconds, what was selected) of one head's default config."""
    cfg = config_for(head, seed=seed, **(over if head == "context" else {}))
    res, w = timed(lambda: train_head(cfg, train, C, progress=False))
    p = res.head.predict_proba(test)
    sel = res.selected
    extra = f"lr {sel['lr']:g} wd {sel['wd']:g}, {sel['epochs']} epochs"
    if not res.head.stacks:
        extra += (f" x grid {sel['grid_size']}, holdout {sel['n_select_takes']} takes "
                  f"{sel['select_top1']:.1f} %, {res.timings['step_ms']:.0f} ms/step")
    return top1(p, test.labels), w, extra


def window_mean(fs: FeatureSet) -> FeatureSet:
    out = fs.subset(np.arange(len(fs)))
    out.ego = np.ascontiguousarray(fs.ego.mean(1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-takes", type=int, default=600)
    ap.add_argument("--test-takes", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ego-signal", type=float, default=0.15)
    ap.add_argument("--windows", type=int, default=1, help="windows per segment (see above)")
    ap.add_argument("--action-fraction", type=float, default=0.5)
    ap.add_argument("--salience", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="200 train / 60 test takes")
    ap.add_argument("--heads", default="linear,mlp,distill,attentive,context")
    ap.add_argument("--set", action="append", default=[],
                    help="context-head option key=value (python literal)")
    args = ap.parse_args()
    if args.quick:
        args.train_takes, args.test_takes = 200, 60
    sim = Simulator(seed=args.seed, ego_signal=args.ego_signal, windows=args.windows,
                    action_fraction=args.action_fraction, salience=args.salience)
    train = sim.takes(args.train_takes, "train", with_exo=True)
    test = sim.takes(args.test_takes, "test", with_exo=False)
    assert not test.exo_mask.any()  # ego only at test
    lens = np.unique(train.take, return_counts=True)[1]
    print(f"train {len(train)} segments in {args.train_takes} takes (segments per take: "
          f"median {int(np.median(lens))}, max {lens.max()}), test {len(test)} segments in "
          f"{args.test_takes} takes; {sim.C} classes, {sim.D}-d"
          f"{f' x {args.windows} windows' if args.windows > 1 else ''}, "
          f"{train.exo_mask.mean():.0%} exo views present in train, none in test")
    print(f"torch threads: all cores ({os.cpu_count()}); {load()}")
    over = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        over[k] = ast.literal_eval(v)
    # with windows: the window-reading heads on the windows and on their mean; the others on
    # the mean (they would mean-pool the windows themselves)
    pooled = (window_mean(train), window_mean(test)) if args.windows > 1 else (train, test)
    runs = []
    for head in args.heads.split(","):
        if args.windows > 1 and head in ("attentive", "context"):
            runs.append((head, "windows", train, test))
        runs.append((head, "mean" if args.windows > 1 else "", *pooled))
    print(f"{'head':<12}{'input':<9}{'test top-1 %':>13}{'train s':>9}   selected")
    scores = {}
    for head, kind, tr, te in runs:
        acc, w, extra = run_head(head, tr, te, sim.C, args.seed, over)
        scores[head, kind] = acc
        print(f"{head:<12}{kind:<9}{acc:>13.2f}{w:>9.1f}   {extra}", flush=True)
    for kind in ("", "mean", "windows"):
        # the best single-segment head on the same input (on windows: any input)
        single = {f"{h}{f' ({k})' if k else ''}": a for (h, k), a in scores.items()
                  if h != "context" and (k == kind or kind == "windows")}
        if ("context", kind) in scores and single:
            best = max(single, key=single.get)
            print(f"context{f' ({kind})' if kind else ''} gain over the best single-segment head "
                  f"({best}): {scores['context', kind] - single[best]:+.2f} points")
    for head in ("attentive", "context"):
        if (head, "windows") in scores:
            print(f"{head}: {args.windows} windows over their mean: "
                  f"{scores[head, 'windows'] - scores[head, 'mean']:+.2f} points")
    print(f"({load()})")


if __name__ == "__main__":
    main()
