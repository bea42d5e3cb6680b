"""Training plumbing shared by the single-segment trainer (`kscli.heads.train`) and the
take-context trainer (`kscli.heads.context`): config behaviour common to both, feature
statistics, the Ledoit-Wolf preconditioner, the learning-rate schedule, thread handling.

Nothing here knows about a particular head; each trainer keeps its own model and loop.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, fields

import numpy as np
import torch

from kscli.errors import KscliError
from kscli.heads.featureset import FeatureSet


# ----------------------------------------------------------------------------- config
class GridConfigMixin:
    """Methods shared by TrainConfig and ContextConfig (dataclasses with the fields `lrs`,
    `weight_decays`, `betas`, `epochs`, `min_epochs`, `min_steps`, `max_epochs`, `select_on`,
    `holdout_fraction`, `precondition`, `label_smoothing`)."""

    options_name = "training option"  # how unknown keys are reported

    def __post_init__(self):
        self.lrs = tuple(float(v) for v in self.lrs)
        self.weight_decays = tuple(float(v) for v in self.weight_decays)
        self.betas = tuple(float(v) for v in self.betas)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KscliError(f"unknown {cls.options_name}(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return plain(asdict(self))

    def grid(self) -> list[tuple[float, float]]:
        """The (lr, wd) members in training order: lr-major."""
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]

    def resolve_epochs(self, steps_per_epoch: int) -> int:
        """`epochs` if set, else max(min_epochs, enough epochs for min_steps optimizer steps),
        at most max_epochs: few passes over a big set, enough steps on a small one."""
        if self.epochs is not None:
            return int(self.epochs)
        need = math.ceil(self.min_steps / max(1, steps_per_epoch))
        return int(min(self.max_epochs, max(self.min_epochs, need)))

    def schedule(self, n_items: int, batch: int) -> tuple[int, int, int, int, int]:
        """(batch size, steps per epoch, epochs, total steps, warmup steps) for n_items
        mini-batch units (segments, or takes for the context head) in batches of `batch`."""
        bs = min(batch, n_items)
        steps_per_epoch = math.ceil(n_items / bs)
        epochs = self.resolve_epochs(steps_per_epoch)
        total = epochs * steps_per_epoch
        return bs, steps_per_epoch, epochs, total, max(1, int(round(self.warmup_fraction * total)))

    def check_common(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise KscliError(f"epochs must be >= 1 (got {self.epochs})")
        if self.min_epochs < 1 or self.max_epochs < self.min_epochs:
            raise KscliError(f"need 1 <= min_epochs <= max_epochs (got {self.min_epochs}, "
                             f"{self.max_epochs})")
        if not self.lrs or not self.weight_decays:
            raise KscliError("lrs and weight_decays must each hold at least one value")
        if any(v <= 0 for v in self.lrs) or any(v < 0 for v in self.weight_decays):
            raise KscliError("learning rates must be > 0 and weight decays >= 0")
        if self.select_on not in ("holdout", "val"):
            raise KscliError(f"select_on must be 'holdout' or 'val', not {self.select_on!r}")
        if self.select_on == "holdout" and not 0 < self.holdout_fraction < 1:
            raise KscliError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.precondition < 0:
            raise KscliError(f"precondition must be >= 0 (0 turns it off), got {self.precondition}")
        if not 0 <= self.label_smoothing < 1:
            raise KscliError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def check_train_labels(train: FeatureSet, num_classes: int) -> np.ndarray:
    """Validate the train set; its labels as int64 (-1: unlabelled)."""
    train.validate("train features")
    labels = np.asarray(train.labels, dtype=np.int64)
    if labels.size and labels.max() >= num_classes:
        raise KscliError(f"train labels go up to {labels.max()} but num_classes is {num_classes}")
    if (labels >= 0).sum() < 2:
        raise KscliError("train features have fewer than 2 labelled segments: nothing to train")
    return labels


def check_selection_val(val: FeatureSet | None, train: FeatureSet, num_classes: int) -> None:
    """The checks select_on='val' needs: a labelled val set that matches train."""
    if val is None:
        raise KscliError("select_on='val' needs a val feature set")
    val.validate("val features")
    vlab = np.asarray(val.labels, dtype=np.int64)
    if (vlab < 0).all():
        raise KscliError("select_on='val' but the val features have no labels")
    if vlab.max() >= num_classes:
        raise KscliError(f"val labels go up to {vlab.max()} but num_classes is {num_classes}")
    if val.dim != train.dim:
        raise KscliError(f"val features are {val.dim}-d but train features are {train.dim}-d")


# ----------------------------------------------------------------------------- small helpers
def plain(obj):
    """JSON-able / torch.load(weights_only=True)-safe: tuples->lists, numpy->python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    return obj


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n (None: every core this process may use), restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def seeded(seed: int, device: torch.device):
    """A deterministic stretch of training: torch's CPU generator (and the training GPU's) seeded
    with `seed`, and the caller's RNG states given back afterwards, CPU and CUDA alike."""
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        reseed(seed, device)
        yield


def reseed(seed: int, device: torch.device) -> None:
    """Seed the generators `seeded` forked, and no other (torch.manual_seed would reseed every GPU)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def cosine_scale(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup over `warmup` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def as_f32(a) -> torch.Tensor:
    """A float32 tensor sharing memory with `a` when it already is a contiguous float32 array."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# ----------------------------------------------------------------------------- statistics
@torch.no_grad()
def feature_stats(x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dim mean / std (float32) over every feature vector of x (N, ..., D), or with mask
    (N, V) over the entries x[i, v] where mask[i, v] (x (N, V, ..., D)). Near-constant dims get
    std 1 (they standardise to 0, not to noise). Chunked float64 sums shifted by the first
    vector (accurate for features far from 0); no copy of x is made."""
    d = x.shape[-1]
    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = torch.zeros(d, dtype=torch.float64)
    n = 0
    shift = None
    for i in range(0, len(x), chunk):
        blk = x[i:i + chunk]
        if mask is not None:
            blk = blk[mask[i:i + chunk]]
        blk = blk.reshape(-1, d).double()
        if len(blk) == 0:
            continue
        if shift is None:
            shift = blk[0].clone()
        blk = blk - shift
        s1 += blk.sum(0)
        s2 += (blk * blk).sum(0)
        n += len(blk)
    if n == 0:
        return torch.zeros(d), torch.ones(d)
    m = s1 / n
    std = (s2 / n - m * m).clamp_min(0).sqrt()
    std[std <= 1e-6 * max(float(std.median()), 1e-12)] = 1.0
    return (m + shift).float(), std.float()


@torch.no_grad()
def preconditioner(x: torch.Tensor, shrink: float, gen: torch.Generator,
                   max_rows: int = 8192) -> tuple[torch.Tensor, float]:
    """(P, rho): P = c (S_lw + shrink * mu * I)^-1/2 for standardised vectors x (N, ..., D), at
    most max_rows of them (drawn with gen).

    S_lw = (1 - rho) S + rho mu I is the Ledoit-Wolf shrunk covariance (mu = mean eigenvalue,
    rho estimated from the data): with many rows per dimension rho is small and P whitens
    almost fully; with few rows (N << D) the sample covariance is noise, rho -> 1 and P -> c I,
    plain standardisation. c makes the mean variance of x @ P 1, so learning rates mean the
    same with or without preconditioning. Training on x @ P and folding P into the first
    linear layer afterwards gives a head that reads plain standardised x; without it AdamW
    needs many more steps on correlated backbone features (see bench/heads.py)."""
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) > max_rows:
        rows = rows[torch.randperm(len(rows), generator=gen)[:max_rows].to(rows.device)]
    rows = rows - rows.mean(0)
    n, p = rows.shape
    cov = (rows.T @ rows) / max(1, n)
    e, V = torch.linalg.eigh(cov)  # float32 is plenty for a preconditioner
    e = e.clamp_min(0)
    e64 = e.double()
    mu = float(e64.mean())
    if mu <= 1e-12:  # no variance to whiten (one row, or identical rows): plain standardisation
        return torch.eye(p, dtype=torch.float32, device=rows.device), 1.0
    fro2 = float((e64 * e64).sum())  # ||S||_F^2
    sq = (rows * rows).sum(1).double()
    beta = (float((sq * sq).sum()) / max(1, n) - fro2) / (p * max(1, n))
    delta = (fro2 - p * mu * mu) / p
    rho = 1.0 if delta <= 0 else min(1.0, max(0.0, beta / delta))
    shrunk = (1.0 - rho) * e + rho * mu
    d = (shrunk + max(shrink * mu, 1e-12)).rsqrt()
    d = d * (len(e) / max(float((e * d * d).sum()), 1e-12)) ** 0.5  # mean variance 1 after
    return ((V * d) @ V.T).float(), rho


@torch.no_grad()
def apply_right(x: torch.Tensor, P: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """x @ P over the last dim, in place on x (a contiguous tensor we own), chunked."""
    flat = x.view(-1, x.shape[-1])
    for i in range(0, len(flat), chunk):
        flat[i:i + chunk] = flat[i:i + chunk] @ P
    return x
