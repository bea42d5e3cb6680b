"""Training plumbing every head shares: data checks, feature statistics, the Ledoit-Wolf
preconditioner, the learning-rate schedule (torch's schedulers), dropout, random generators
and threads.

Nothing here knows about a particular head.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Iterator
import numpy as np
import torch

from kscli.device import usable_cores
from kscli.errors import KscliError
from kscli.heads.featureset import FeatureSet


# ----------------------------------------------------------------------------- checks
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


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n (None: every core this process may use), restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else usable_cores()[0])
    try:
        yield
    finally:
        torch.set_num_threads(old)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: every random draw of training comes
    from one passed as an argument, never from torch's global generators (which stay the
    caller's)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def global_rng_states(device: torch.device) -> list[torch.Tensor]:
    """The states of torch's global generators a head could draw from on `device`: the CPU's,
    and the GPU's when training on one (to check that training left them alone)."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's LambdaLR with a linear warmup over `warmup` steps (factor (step + 1) / warmup),
    then a cosine decay to 0 at `total` steps; call .step() after every optimizer step.
    (LinearLR + CosineAnnealingLR in a SequentialLR give the same factors, but torch < 2.5
    warns on every milestone.)"""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimise(optimizer: torch.optim.Optimizer, total: int, warmup: int, epochs: int, epoch_batches,
             clip: tuple[list, float] | None = None) -> Iterator[np.ndarray]:
    """The one training loop of the heads: for each of `epochs` epochs, every (loss, weight) that
    `epoch_batches()` yields is one optimizer step (zero grads, backward of the loss summed over
    members, the gradients clipped to `clip` = (parameters, max norm) if given, step, then the
    warmup-cosine schedule of `total` steps); yields the epoch's mean loss, weighted by the
    batches' weights (segments or labels per batch), one value per member."""
    sched = warmup_cosine(optimizer, total, warmup)
    for _ in range(epochs):
        loss_sum, seen = None, 0
        for loss, weight in epoch_batches():
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            if clip is not None and clip[1] > 0:
                torch.nn.utils.clip_grad_norm_(clip[0], clip[1])
            optimizer.step()
            sched.step()
            part = loss.detach().double().reshape(-1) * weight  # on the device: no sync per step
            loss_sum = part if loss_sum is None else loss_sum + part
            seen += weight
        yield (loss_sum / max(1, seen)).cpu().numpy() if loss_sum is not None else np.zeros(1)


def dropout(x: torch.Tensor, p: float, gen: torch.Generator | None, mask_shape=None) -> torch.Tensor:
    """Inverted dropout in training, drawing its mask from `gen` (a generator on x's device);
    `gen` None is evaluation: x unchanged. The mask comes from random bytes (8 per int64 draw;
    keep if byte >= round(256 p)): about 10x faster than torch's bernoulli on CPU, so p is
    rounded to a multiple of 1/256. `mask_shape` (the trailing dims of x) shares one mask over
    the leading dims: the stacked heads share it over their grid members, which then see the
    same noise."""
    if gen is None or p <= 0:
        return x
    k = min(256, max(1, int(round(p * 256))))
    if k >= 256:
        return x * 0.0
    shape = tuple(x.shape if mask_shape is None else mask_shape)
    n = int(np.prod(shape))
    words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device,
                          generator=gen)
    keep = words.view(torch.uint8)[:n].view(shape) >= k
    return x * keep.to(x.dtype).mul_(256.0 / (256 - k))


def log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def mean_over_windows(a: np.ndarray, seq_ndim: int) -> torch.Tensor:
    """float32 tensor, mean over the window axis when a has seq_ndim dims (no copy when it
    is already a contiguous float32 array without windows)."""
    a = np.asarray(a)
    if a.ndim == seq_ndim:
        return torch.from_numpy(a.astype(np.float32, copy=False).mean(-2, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


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
