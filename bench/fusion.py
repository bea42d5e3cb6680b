"""What fusing two backbones buys (a script, not a test): python bench/fusion.py [--quick|--full]

`kscli train-head --store a,b` trains one head on the concatenation of two stores' features.
This bench measures, through the real pipeline, what that gives over each backbone alone when
the second backbone adds information (complementary), adds none (null) or repeats it (redundant).

What it runs (the library calls `kscli train-head` makes)
    1. Annotations in the download's layout, 278 keysteps, about 7,700 train and 2,200 val
       segments (1,400 / 400 takes of 4-7 segments; long-tailed classes, 5-260 train segments
       each): those of the sample benchmark (`kscli sample`, kscli.data.sample_plan), drawn
       again for every seed, without clips -- the features are simulated, not extracted.
    2. Two real feature stores, `a` and `b`, written with StoreWriter (store.json, parts) for
       every train and val ego clip.
    3. `train_run` (what `kscli train-head` calls) with each head's default config on
       `--store a`, `b` and `a,b`; the head selects its grid member on a part of train;
       the score is val top-1 (every val segment), as the run's metrics.json reports it.
    Per (generator, seed) store `a` is the same in every scenario (trained once); only `b`
    changes.

Scenarios (what `b` holds; `a` is always the generator's view A)
    complementary  B sees class structure A does not: each backbone alone confuses classes the
                   other separates (see the generators). Expected: A+B above both.
    null           B carries no class information: B's generator run on the labels permuted
                   over the split's segments, so B has exactly the marginal distribution (dims,
                   scale, nuisance) it has in the complementary scenario and is independent of
                   the label. Expected: A+B about A; the difference is what the useless
                   dimensions cost the head.
    redundant      B is another view of A's own latent (the same segment's latent, incl. its
                   within-class spread), through B's own map, noise and nuisance. Whatever A+B
                   gains is averaging of the two views' independent noise, not new information.

Generators (two families, so a conclusion that holds in both does not hang on one set of
assumptions)
    gauss   A and B 256-d each. A class code (32-d, Gaussian) per class and view; the segment's
            latent is its class code plus within-class spread (sd 0.5); the feature is a random
            linear map of it plus isotropic noise and a rank-16 nuisance, with mild per-dim
            scales and offsets (the same for A and B). In `complementary` A and B have
            independent class codes: each sees the class in its own random subspace.
    factor  Every class is a (verb, noun) pair, 278 distinct cells of a 20 x 20 grid ("cut
            onion", "wash onion"...). A (512-d, motion-like) sees the verb strongly and the
            class itself weakly; in `complementary` B (384-d, appearance-like) sees the noun
            strongly and the class weakly, so A alone confuses the ~14 classes of a verb and B
            those of a noun. Non-Gaussian and nonlinear: every class has 2 modes (e.g. two ways
            of doing the step), the within-class spread is Student-t (3 degrees of freedom),
            the feature is random ReLU units of the latent, plus a strong rank-32 nuisance, a
            per-take offset and noise. B's features are 10x larger than A's (and offset), which
            tests whether the heads' per-dimension standardisation makes fusion fair; a
            control trains `linear` on A+B again with B unscaled (1x) and prints the per-seed
            difference.
    The separations put A alone near 40 % top-1 (linear) so there is room above and below.

Printed: one row per scenario, generator and head: val top-1 of A, B and A+B (mean +- sample
sd over seeds) and fused minus the best single backbone (the one with the higher mean over
seeds; mean +- sd of the per-seed difference: paired, so variation that moves both with the
seed cancels). The scale control and seconds per run follow.
Cost: `mlp` takes ~8-10 s a run on 2 idle CPU cores (set by its ~210 steps x 4 grid members,
not by the data), `linear` ~2 s (a third of it reading annotations and stores). So by default
`linear` runs on 5 seeds in all three scenarios and `mlp` on the first 3 seeds in
complementary and null, without B alone in null (that store has no class information; linear's
B column shows it): about 5-6 minutes. --full runs every head everywhere (~15 min); --quick
2 seeds, mlp on one (~2 min).

Reading the numbers: what a real second backbone adds depends on how much of the class
structure it sees that the first does not, which no simulation knows; the bench tells what the
heads do with the information given (do they use a complementary backbone, what do useless
dimensions cost), not how complementary real backbones are. Val has ~2,200 segments, so one
run's top-1 has a sampling sd of about 1 point.

Result of the default run (2 CPU cores, 5:34 wall; A+B minus the best single backbone, mean
+- sd of the per-seed difference): complementary +14.5 to +25.6 points (both heads, both
generators, about 1 point sd); null -6.7 +- 1.1 (gauss, linear), -5.1 (gauss, mlp), -2.3 / -3.1
(factor): a backbone that carries nothing costs a few points, most where it adds as many
dimensions as A and its noise looks like A's; redundant +8.9 (gauss: the views' independent
noise averages out) and +0.5 +- 0.8 (factor: the within-class spread is shared, nothing to
average); B 10x larger: the same top-1 to 0.01 on every seed (per-dimension standardisation).

The machine may be shared: the load average is printed with the timings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kscli.data.layout import Benchmark, Layout  # noqa: E402
from kscli.data.sample import write_annotations  # noqa: E402
from kscli.data.sample_plan import plan_sample  # noqa: E402
from kscli.extract.store import StoreRows, StoreWriter  # noqa: E402
from kscli.heads.base import config_for  # noqa: E402
from kscli.heads.run import train_run  # noqa: E402

C = 278
SCENARIOS = ("complementary", "null", "redundant")
GENERATORS = ("gauss", "factor")


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


# ----------------------------------------------------------------------------- annotations
def write_download(root: Path, seed: int, train_takes: int, val_takes: int) -> Layout:
    """The sample benchmark's annotations (278 keysteps, seed `seed`) without clips."""
    ann = root / "annotations" / "keystep_benchmark"
    if not (ann / "label_mapping.csv").is_file():
        ann.mkdir(parents=True, exist_ok=True)
        rows, _, docs, _ = plan_sample(seed=seed, num_classes=C,
                                 takes_per_split={"train": train_takes, "val": val_takes, "test": 1},
                                 segments_per_take=(4, 7), clip_seconds=(1.0, 3.0), short_clip_prob=0.06,
                                 integer_time_prob=0.12, aria_nonumber_prob=0.2, fps=30)
        write_annotations(ann, rows, docs)
    return Layout.resolve(data_root=root, work_dir=root / "work")


# ----------------------------------------------------------------------------- generators
class Gauss:
    """Class code + within-class spread -> random linear map + noise + low-rank nuisance."""

    name = "gauss"

    def __init__(self, seed: int, D=(256, 256), k=32, sep=0.08, within=0.5, nuisance=1.0):
        rng = np.random.default_rng([seed, 11])
        self.D, self.k, self.sep, self.within = D, k, sep, within
        self.code = {v: rng.normal(size=(C, k)) for v in "AB"}
        self.U = {v: rng.normal(size=(k, d)) / np.sqrt(k) * np.sqrt(d / 32) for v, d in zip("AB", D)}
        self.M = {v: rng.normal(size=(16, d)) / 4 * nuisance for v, d in zip("AB", D)}
        self.scale = {v: np.exp(rng.normal(0, 0.3, size=d)) for v, d in zip("AB", D)}
        self.offset = {v: rng.normal(0, 1, size=d) for v, d in zip("AB", D)}

    def latent(self, view: str, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.code[view][y] + self.within * rng.normal(size=(len(y), self.k))

    def observe(self, view: str, z: np.ndarray, take: np.ndarray, rng: np.random.Generator,
                b_scale: float = 1.0) -> np.ndarray:
        d = self.D["AB".index(view)]
        x = (self.sep * z @ self.U[view] + rng.normal(size=(len(z), d))
             + rng.normal(size=(len(z), 16)) @ self.M[view])
        return ((x * self.scale[view] + self.offset[view]) * (b_scale if view == "B" else 1.0)
                ).astype(np.float32)


class Factor:
    """(verb, noun) classes, 2 modes per class, Student-t spread, ReLU units, strong nuisance,
    per-take offsets; A 768-d sees the verb, B 512-d (10x larger) the noun, both the class weakly."""

    name = "factor"

    def __init__(self, seed: int, D=(512, 384), grid=20, kf=16, kr=8, factor=1.0, resid=0.55,
                 within=0.45, nuisance=1.5, take_offset=0.5, noise=1.0, b_scale=10.0):
        rng = np.random.default_rng([seed, 12])
        self.D, self.within, self.take_offset, self.noise = D, within, take_offset, noise
        self.b_scale = b_scale
        cells = rng.choice(grid * grid, size=C, replace=False)
        self.verb, self.noun = cells // grid, cells % grid
        self.f_code = {v: rng.normal(size=(grid, kf)) * factor for v in "AB"}  # verb / noun codes
        self.r_code = {v: rng.normal(size=(C, 2, kr)) * resid for v in "AB"}  # class, 2 modes
        k = kf + kr
        self.k = k
        self.W = {v: rng.normal(size=(k, d)) / np.sqrt(k) * 1.5 for v, d in zip("AB", D)}
        self.b = {v: rng.normal(0, 0.5, size=d) for v, d in zip("AB", D)}
        self.M = {v: rng.normal(size=(32, d)) / np.sqrt(32) * nuisance for v, d in zip("AB", D)}
        self.scale = {v: np.exp(rng.normal(0, 0.5, size=d)) for v, d in zip("AB", D)}
        self.offset = {v: rng.normal(0, 2, size=d) for v, d in zip("AB", D)}

    def latent(self, view: str, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        f = self.verb[y] if view == "A" else self.noun[y]
        mode = rng.integers(0, 2, size=len(y))
        z = np.concatenate([self.f_code[view][f], self.r_code[view][y, mode]], 1)
        return z + self.within * rng.standard_t(3, size=z.shape)

    def observe(self, view: str, z: np.ndarray, take: np.ndarray, rng: np.random.Generator,
                b_scale: float | None = None) -> np.ndarray:
        d = self.D["AB".index(view)]
        n = len(z)
        takes, inv = np.unique(take, return_inverse=True)
        x = (np.maximum(z @ self.W[view] + self.b[view], 0.0)
             + rng.normal(size=(n, 32)) @ self.M[view]
             + (rng.normal(size=(len(takes), d)) * self.take_offset)[inv]
             + self.noise * rng.normal(size=(n, d)))
        x = x * self.scale[view] + self.offset[view]
        if view == "B":
            x = x * (self.b_scale if b_scale is None else b_scale)
        return x.astype(np.float32)


def draw_views(gen, scenario: str, y: np.ndarray, take: np.ndarray, rng_a: np.random.Generator,
               rng_b: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) for one split's segments in `scenario`; A's draws come from rng_a alone."""
    zA = gen.latent("A", y, rng_a)
    A = gen.observe("A", zA, take, rng_a)
    if scenario == "complementary":
        zB = gen.latent("B", y, rng_b)
    elif scenario == "null":
        zB = gen.latent("B", rng_b.permutation(y), rng_b)  # B's own structure, labels unrelated to y
    elif scenario == "redundant":
        if zA.shape[1] != gen.k:
            raise AssertionError("redundant needs one latent size")
        zB = zA  # the same segment latent, seen through B's map / noise / nuisance
    else:
        raise ValueError(scenario)
    return A, gen.observe("B", zB, take, rng_b)


# ----------------------------------------------------------------------------- stores, runs
def write_store(layout: Layout, tag: str, split: str, names: list[str], x: np.ndarray,
                about: dict) -> None:
    n = len(names)
    cfg = {"backbone": {"name": f"simulated-{tag}", "kind": "simulated", "feature_dim": int(x.shape[1]),
                        **about},
           "sampling": {"num_frames": 1, "windows": 1}, "dtype": "float32"}
    with StoreWriter(layout.features_dir(tag, split), 0, cfg) as w:
        w.write(StoreRows(names, ["ego"] * n, x, np.zeros((n, 1), np.float32), np.ones(n, np.int64),
                          np.full(n, 30.0)))


def run(layout: Layout, tags: list[str], head: str, seed: int, threads: int | None,
        secs: dict) -> float:
    over = {} if threads is None else {"num_threads": threads}
    t = time.perf_counter()
    res = train_run(layout, tags, config_for(head, seed=seed, **over), progress=False)
    secs.setdefault(head, []).append(time.perf_counter() - t)
    return float(res.metrics["val"]["top1"])


def fmt(v) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():5.1f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:4.1f}" if len(v) else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4", help="seeds (annotations, generator, head)")
    ap.add_argument("--mlp-seeds", type=int, default=3, help="mlp runs on the first N seeds only")
    ap.add_argument("--mlp-scenarios", default="complementary,null",
                    help="the scenarios mlp runs in (linear runs in all)")
    ap.add_argument("--full", action="store_true", help="every head on every seed, scenario and "
                    "store (about 3x the default's time)")
    ap.add_argument("--heads", default="linear,mlp")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="the scenarios linear runs in")
    ap.add_argument("--generators", default=",".join(GENERATORS))
    ap.add_argument("--train-takes", type=int, default=1400)
    ap.add_argument("--val-takes", type=int, default=400)
    ap.add_argument("--threads", type=int, default=None, help="heads' num_threads (default: theirs)")
    ap.add_argument("--root", type=Path, default=None, help="keep annotations, stores and runs here")
    ap.add_argument("--quick", action="store_true", help="seeds 0,1 (mlp on seed 0), "
                    "complementary and null only")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.mlp_seeds = "0,1", 1
        args.scenarios = "complementary,null"
    if args.full:
        args.mlp_seeds, args.mlp_scenarios = 10**6, args.scenarios
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = args.heads.split(",")
    scenarios = args.scenarios.split(",")
    gens = {"gauss": Gauss, "factor": Factor}
    generators = args.generators.split(",")
    keep = args.root is not None
    root = args.root or Path(tempfile.mkdtemp(prefix="kscli-bench-fusion-"))
    t_start = time.perf_counter()
    print(f"heads {heads} on seeds {seeds} (mlp: first {min(args.mlp_seeds, len(seeds))}, in "
          f"{args.mlp_scenarios}); scenarios {scenarios}; "
          f"generators {generators}; torch threads: {args.threads or 'the heads default'} of "
          f"{os.cpu_count()} cores; {load()}; under {root}", flush=True)

    # top1[(scenario, generator, head, which)] -> {seed: top-1}, which in A, B, A+B, A+B(1x)
    top1: dict[tuple, dict[int, float]] = {}
    secs: dict[str, list[float]] = {}
    sizes = {}
    for gname in generators:
        for seed in seeds:
            download = root / f"download-s{seed}"
            layout0 = write_download(download, seed, args.train_takes, args.val_takes)
            bench = Benchmark(layout0)
            segs = {s: bench.segments(s) for s in ("train", "val")}
            sizes[seed] = {s: len(v) for s, v in segs.items()}
            gen = gens[gname](seed)
            rng_b = np.random.default_rng([seed, 13])
            ran_a, a_digest = set(), {}  # the heads trained on `a` (the same in every scenario)
            for scen in scenarios:
                rng_a = np.random.default_rng([seed, 14])  # A's draws: the same in every scenario
                work = root / f"work-{gname}-s{seed}-{scen}"
                layout = Layout.resolve(data_root=download, work_dir=work)
                unscaled = {}
                for split, ss in segs.items():
                    y = np.array([s.label for s in ss])
                    take = np.array([s.take_name for s in ss])
                    names = [s.ego.name for s in ss]
                    A, B = draw_views(gen, scen, y, take, rng_a, rng_b)
                    if a_digest.setdefault(split, hash(A.tobytes())) != hash(A.tobytes()):
                        raise AssertionError("store a differs between scenarios")
                    about = {"generator": gname, "seed": seed}
                    write_store(layout, "a", split, names, A, about)
                    write_store(layout, "b", split, names, B, {**about, "scenario": scen})
                    if gname == "factor" and scen == "complementary":
                        unscaled[split] = (names, B / gen.b_scale)
                for split, (names, B1) in unscaled.items():
                    write_store(layout, "b1x", split, names, B1.astype(np.float32),
                                {"generator": gname, "seed": seed, "scenario": scen, "b_scale": 1.0})
                for head in heads:
                    if head == "mlp" and (seed not in seeds[:args.mlp_seeds]
                                          or scen not in args.mlp_scenarios.split(",")):
                        continue
                    line = []
                    todo = [("B", ["b"]), ("A+B", ["a", "b"])]
                    if scen == "null" and head != "linear" and not args.full:
                        todo.pop(0)  # B has no class information: linear's B column shows it
                    if head not in ran_a:
                        todo.insert(0, ("A", ["a"]))
                        ran_a.add(head)
                    if unscaled and head == "linear":
                        todo.append(("A+B(1x)", ["a", "b1x"]))
                    for which, tags in todo:
                        acc = run(layout, tags, head, seed, args.threads, secs)
                        keys = [scen] if which != "A" else scenarios  # A is shared by the scenarios
                        for sc in keys:
                            top1.setdefault((sc, gname, head, which), {})[seed] = acc
                        line.append(f"{which} {acc:.1f}")
                    print(f"  {gname:<7}{scen:<14}seed {seed} {head:<7}{', '.join(line)}   "
                          f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
                if not keep:
                    shutil.rmtree(work, ignore_errors=True)

    print()
    n_tr = np.mean([v["train"] for v in sizes.values()])
    n_va = np.mean([v["val"] for v in sizes.values()])
    print(f"val top-1 % (mean +- sample sd over seeds), {C} classes, ~{n_tr:.0f} train / ~{n_va:.0f} val "
          f"segments; 'fused - best' is per seed, against the single backbone with the higher mean")
    hdr = (f"{'scenario':<14}{'generator':<10}{'head':<8}{'seeds':>5}  {'A':>13}  {'B':>13}  "
           f"{'A+B':>13}  {'fused - best':>13}")
    print(hdr)
    print("-" * len(hdr))
    for scen in scenarios:
        for gname in generators:
            for head in heads:
                a = top1.get((scen, gname, head, "A"), {})
                b = top1.get((scen, gname, head, "B"), {})
                ab = top1.get((scen, gname, head, "A+B"), {})
                if not ab:
                    continue
                ss = sorted(ab)
                av, bv, abv = (np.array([d[s] for s in ss if s in d]) for d in (a, b, ab))
                # B not run (mlp in null): A is the best single backbone there
                best = av if not len(bv) or av.mean() >= bv.mean() else bv
                tag = "A" if best is av else "B"
                print(f"{scen:<14}{gname:<10}{head:<8}{len(ss):>5}  {fmt(av):>13}  {fmt(bv):>13}  "
                      f"{fmt(abv):>13}  {fmt(abv - best):>13} (vs {tag})")
    if ("complementary", "factor", "linear", "A+B(1x)") in top1:
        s10 = top1["complementary", "factor", "linear", "A+B"]
        s1 = top1["complementary", "factor", "linear", "A+B(1x)"]
        ss = sorted(s1)
        d = np.array([s10[s] - s1[s] for s in ss])
        print(f"\nscale control (factor, complementary, linear): A+B with B 10x larger "
              f"{fmt([s10[s] for s in ss])}, with B unscaled {fmt([s1[s] for s in ss])}; "
              f"per-seed difference {fmt(d)} (per seed {' '.join(f'{v:+.2f}' for v in d)})")
    print("\nseconds per training run: " + ", ".join(
        f"{h} {np.mean(v):.1f} (x{len(v)})" for h, v in secs.items()))
    print(f"total wall {time.perf_counter() - t_start:.0f} s; {load()}")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
