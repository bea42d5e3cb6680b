"""Benchmarks for kscli.heads (a script, not a test): python bench/heads.py [--part 1|2] [--quick]

Part 1 -- speed and accuracy at benchmark scale (20,000 x 1,024 features, 278 classes).
    Synthetic features: a Gaussian mixture, one mean per class (means in a random 256-d
    subspace, long-tailed class prior), isotropic noise plus a rank-32 correlated nuisance
    (real backbone features are strongly correlated), then per-dimension scales and offsets
    (the raw features are not standardised). The class separation (--sep 0.15) puts top-1 in
    the 55-65 % range. Our `linear` head (default config: the whole lr x wd grid -- 2 lrs x 1
    wd, 2 epochs, features preconditioned by partial whitening -- selected on a 10 % holdout
    of train, so it fits on 18,000) is timed against scikit-learn's
    LogisticRegression (lbfgs, max_iter 1000, fit on all 20,000 standardised rows) at
    --C 3.0, the best of C in {0.1, 0.3, 1, 3, 10} on the test set in a sweep with this
    data (test top-1 56.8 / 59.2 / 61.2 / 62.9 / 61.2 %): sklearn gets its best C for free.
    Target: ours >= 5x faster, top-1 at most 0.5 points lower. A caveat on accuracy: in a
    Gaussian mixture with shared covariance the best classifier is LDA, i.e. linear on
    whitened features, and our preconditioning (early-stopped training in whitened
    coordinates) leans that way, so beating sklearn's top-1 here may overstate what it does
    on real features; the variants table shows each choice's effect. Then every head's default
    config is timed on the same data (distill with synthetic exo views, attentive on (N, D)
    and on (N, T, D) windows).

Part 2 -- learning with privileged information (exo at train time only).
    A latent z (32-d) per segment: class mean + within-class spread. Exo views are clean
    linear views of z (each camera its own map, 30 % of views missing at random). Ego is a
    weak linear view of z buried under a strong 64-d nuisance and noise. The test set has no
    exo at all (zeros, mask all False; asserted) and every head predicts from ego only.
    A. small training set (20 segments per class, 100 classes), 3 seeds: linear, mlp,
       distill, attentive, and `distill (no KL, no hint)` -- the same student and teacher
       trained side by side with alpha = beta = 0, which shows the gain comes from the
       distillation terms and not from the architecture or the extra teacher.
    B. 100 segments per class: with more data the labels alone suffice and the gap closes.
    C. negative control: the exo views show an unrelated latent, so there is nothing
       privileged to learn from. Whatever distill still gains here is the regularisation of
       two networks teaching each other (self-distillation), not information from exo; the
       difference between A and C is what the privileged information adds.
    What the teacher passes on is supervision: its hidden features (built from the clean exo
    views) give the student a dense per-segment regression target (the hint term) and soft
    labels (the KL term) -- more signal per training segment than a label, which matters most
    when segments per class are few.

The machine this runs on may be shared: the load average is printed with the timings, and
both sides of every comparison run back to back in the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kscli.heads.featureset import FeatureSet  # noqa: E402
from kscli.heads.base import config_for  # noqa: E402
from kscli.heads.train import train_head  # noqa: E402


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def proba(res, ego) -> np.ndarray:
    """The trained head's class probabilities for raw ego features (every row present)."""
    return res.head.predict_proba(fs_of(ego, np.full(len(ego), -1)))


def fs_of(ego, y, exo=None, mask=None) -> FeatureSet:
    n = len(y)
    return FeatureSet(names=[f"s{i}" for i in range(n)], ego=ego, exo=exo, exo_mask=mask,
                      labels=y.astype(np.int64), take=["t"] * n, start=np.zeros(n),
                      end=np.ones(n), scenario=None)


def top1(probs: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((probs.argmax(1) == y).mean())


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


# ----------------------------------------------------------------------------- part 1
def make_gmm(n_train=20000, n_test=5000, D=1024, C=278, rank=256, sep=0.15, seed=0):
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, C + 1) ** 0.5
    prior = rng.permutation(prior / prior.sum())
    U = rng.normal(size=(rank, D)) / np.sqrt(rank)
    mu = (rng.normal(size=(C, rank)) @ U) * sep
    scale = np.exp(rng.normal(0, 0.5, size=D))
    offset = rng.normal(0, 2, size=D)
    A = rng.normal(size=(32, D)) * 0.5

    def draw(n):
        y = rng.choice(C, size=n, p=prior)
        x = mu[y] + rng.normal(size=(n, D)) + rng.normal(size=(n, 32)) @ A
        return (x * scale + offset).astype(np.float32), y.astype(np.int64)

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return xtr, ytr, xte, yte


def part1(args) -> None:
    print("=" * 78)
    print("Part 1: linear head vs scikit-learn LogisticRegression, 20,000 x 1,024, 278 classes")
    print("=" * 78)
    n_train = 5000 if args.quick else 20000
    xtr, ytr, xte, yte = make_gmm(n_train=n_train, sep=args.sep, seed=args.seed)
    C = 278
    print(f"train {xtr.shape}, test {xte.shape}, {len(np.unique(ytr))} classes present; "
          f"torch threads: all cores ({os.cpu_count()}); {load()}")

    # One-time costs stay outside both timings, as sklearn's import does: torch's optimizers
    # import torch._dynamo on first use (about 1 s here), once per process (kscli train-head
    # pays it once per run).
    _, w_import, _ = timed(lambda: __import__("torch._dynamo"))
    print(f"one-time import of torch._dynamo (torch's optimizers need it): {w_import:.1f} s")
    cfg = config_for("linear", seed=args.seed)
    res, w_ours, c_ours = timed(lambda: train_head(cfg, fs_of(xtr, ytr), C, progress=False))
    acc_ours = top1(proba(res, xte), yte)
    print(f"ours  linear: grid {len(cfg.lrs)} lr x {len(cfg.weight_decays)} wd = "
          f"{len(res.grid)} members, {res.selected['epochs']} epochs x batch {cfg.batch_size}, "
          f"selected lr {res.selected['lr']:g} wd {res.selected['wd']:g} on the holdout "
          f"({res.selected['select_top1']:.2f} %)")
    print(f"      wall {w_ours:6.1f} s  cpu {c_ours:6.1f} s  test top-1 {acc_ours:6.2f} %   "
          f"[prepare + precondition {res.timings['prepare_s']:.1f} s, "
          f"{res.timings['step_ms']:.0f} ms/step]")

    from sklearn.linear_model import LogisticRegression

    mean, std = xtr.mean(0), xtr.std(0)
    a, b = (xtr - mean) / std, (xte - mean) / std
    print(f"      ({load()})")
    lr, w_sk, c_sk = timed(lambda: LogisticRegression(C=args.C, max_iter=1000).fit(a, ytr))
    acc_sk = top1(lr.predict_proba(b), yte)
    print(f"sklearn LogisticRegression(lbfgs, C={args.C:g}): {int(np.max(lr.n_iter_))} "
          f"iterations")
    print(f"      wall {w_sk:6.1f} s  cpu {c_sk:6.1f} s  test top-1 {acc_sk:6.2f} %")
    ratio, diff = w_sk / w_ours, acc_ours - acc_sk
    ok = ratio >= 5 and diff >= -0.5
    print(f"speed-up {ratio:.1f}x wall ({c_sk / c_ours:.1f}x cpu), top-1 difference "
          f"{diff:+.2f} points -> {'MEETS' if ok else 'MISSES'} the target "
          f"(>= 5x, >= -0.5 points)")

    print()
    print("linear head variants (same data; what the default trades away)")
    print(f"{'variant':<44}{'wall s':>8}{'top-1 %':>9}")
    for name, over in [("default (preconditioned, 2 epochs)", {}),
                       ("preconditioned, 5 epochs", {"epochs": 5}),
                       ("no preconditioning, 2 epochs", {"precondition": 0.0}),
                       ("no preconditioning, 10 epochs", {"precondition": 0.0, "epochs": 10}),
                       ("default + wd grid (1e-4, 0.1, 1.0)", {"weight_decays": (1e-4, 0.1, 1.0)})]:
        cfg = config_for("linear", seed=args.seed, **over)
        res, w, _ = timed(lambda: train_head(cfg, fs_of(xtr, ytr), C, progress=False))
        print(f"{name:<44}{w:>8.1f}{top1(proba(res, xte), yte):>9.2f}")

    if args.skip_heads:
        return
    print()
    print("every head, default config, same data (exo for distill: 4 noisy copies of ego, "
          "30 % missing -- timing only)")
    rng = np.random.default_rng(args.seed + 1)
    V = 4
    mask = rng.random((len(ytr), V)) < 0.7
    sd = xtr.std(0)
    exo = np.zeros((len(ytr), V, xtr.shape[1]), np.float32)
    for j in range(V):
        exo[:, j] = np.where(mask[:, j, None],
                             xtr + rng.normal(size=xtr.shape).astype(np.float32) * sd, 0)
    T = 4
    seq_tr = (xtr[:, None] + rng.normal(size=(len(ytr), T, xtr.shape[1])).astype(np.float32)
              * (0.25 * sd))
    seq_te = (xte[:, None] + rng.normal(size=(len(yte), T, xte.shape[1])).astype(np.float32)
              * (0.25 * sd))
    rows = [("linear", fs_of(xtr, ytr), xte),
            ("mlp", fs_of(xtr, ytr), xte),
            ("distill", fs_of(xtr, ytr, exo, mask), xte),
            ("attentive", fs_of(xtr, ytr), xte),
            ("attentive", fs_of(seq_tr, ytr), seq_te)]
    print(f"{'head':<22}{'members':>8}{'epochs':>8}{'wall s':>9}{'ms/step':>9}{'top-1 %':>9}")
    for head, fs, xt in rows:
        cfg = config_for(head, seed=args.seed)
        res, w, _ = timed(lambda: train_head(cfg, fs, C, progress=False))
        acc = top1(proba(res, xt), yte)
        name = head + (f" (N,{T},D)" if fs.ego.ndim == 3 else "")
        print(f"{name:<22}{len(res.grid):>8}{res.selected['epochs']:>8}{w:>9.1f}"
              f"{res.timings['step_ms']:>9.0f}{acc:>9.2f}")
    print(f"({load()})")


# ----------------------------------------------------------------------------- part 2
def make_pli(n_per_class=20, n_test=5000, C=100, D=512, k=32, V=4, m=64, seed=0,
             within=1.0, ego_signal=0.5, nuisance=2.0, ego_noise=1.0, exo_noise=0.3,
             p_view=0.7, exo_informative=True):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(C, k))
    A = rng.normal(size=(k, D)) / np.sqrt(k)
    views = [A + 0.3 * rng.normal(size=(k, D)) / np.sqrt(k) for _ in range(V)]
    B = rng.normal(size=(k, D)) / np.sqrt(k) * ego_signal
    M = rng.normal(size=(m, D)) / np.sqrt(m) * nuisance
    scale, offset = np.exp(rng.normal(0, 0.3, size=D)), rng.normal(0, 1, size=D)

    def draw(y, with_exo):
        n = len(y)
        z = mu[y] + within * rng.normal(size=(n, k))
        ego = z @ B + rng.normal(size=(n, m)) @ M + ego_noise * rng.normal(size=(n, D))
        ego = (ego * scale + offset).astype(np.float32)
        exo = np.zeros((n, V, D), np.float32)
        mask = np.zeros((n, V), bool)
        if with_exo:
            mask = rng.random((n, V)) < p_view
            # negative control: exo views of a latent unrelated to the segment
            zx = z if exo_informative else rng.normal(size=z.shape) * np.sqrt(1 + within ** 2)
            for j in range(V):
                e = zx @ views[j] + exo_noise * rng.normal(size=(n, D))
                exo[:, j] = np.where(mask[:, j, None], e, 0)
        return fs_of(ego, y, exo, mask)

    ytr = np.repeat(np.arange(C), n_per_class)
    yte = rng.integers(0, C, n_test)
    return draw(ytr, True), draw(yte, False), C


def run_setting(title, variants, seeds, **sim) -> dict[str, np.ndarray]:
    scores = {name: [] for name, _ in variants}
    secs = {name: [] for name, _ in variants}
    for seed in seeds:
        train, test, C = make_pli(seed=seed, **sim)
        assert not test.exo_mask.any() and not test.exo.any()  # no exo reaches the test set
        for name, over in variants:
            cfg = config_for(name.split()[0], seed=seed, **over)
            res, w, _ = timed(lambda: train_head(cfg, train, C, progress=False))
            scores[name].append(top1(proba(res, test.ego), test.labels))
            secs[name].append(w)
    print(f"{title}; seeds {seeds}; test top-1 % from ego only")
    for name, _ in variants:
        v = np.asarray(scores[name])
        spread = f" +- {v.std():5.2f}" if len(v) > 1 else " " * 9
        print(f"  {name:<28}{v.mean():7.2f}{spread}   [{' '.join(f'{x:.1f}' for x in v)}]"
              f"  {np.mean(secs[name]):5.1f} s/run")
    gain = np.asarray(scores["distill"]) - np.asarray(scores["mlp"])
    print(f"  distill gain over mlp: {gain.mean():+.2f} points "
          f"(per seed {' '.join(f'{g:+.1f}' for g in gain)})")
    return {k: np.asarray(v) for k, v in scores.items()}


def part2(args) -> None:
    print("=" * 78)
    print("Part 2: privileged information -- exo at train time only, ego-only test")
    print("=" * 78)
    print(f"({load()})")
    full = [("linear", {}), ("mlp", {}), ("distill", {}),
            ("distill (no KL, no hint)", {"alpha": 0.0, "beta": 0.0}), ("attentive", {})]
    pair = [("mlp", {}), ("distill", {})]
    run_setting("A. 20 train segments per class (100 classes, 2000 train, 5000 test)", full,
                [0] if args.quick else [0, 1, 2], n_per_class=20)
    if args.quick:
        return
    run_setting("B. 100 train segments per class (10000 train): more data, smaller gap", pair,
                [0], n_per_class=100)
    run_setting("C. negative control: exo views of an unrelated latent (no privileged "
                "information), 20 per class", pair, [0], n_per_class=20, exo_informative=False)
    print(f"({load()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", type=int, choices=[1, 2], default=None)
    ap.add_argument("--quick", action="store_true", help="smaller data, one seed")
    ap.add_argument("--sep", type=float, default=0.15)
    ap.add_argument("--C", type=float, default=3.0, help="sklearn's inverse regularisation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-heads", action="store_true", help="part 1: only linear vs sklearn")
    args = ap.parse_args()
    if args.part in (None, 1):
        part1(args)
    if args.part in (None, 2):
        part2(args)


if __name__ == "__main__":
    main()
