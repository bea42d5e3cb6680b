"""Feature statistics of the fit rows: per-dimension mean and std (standardisation) and the
Ledoit-Wolf preconditioner the heads train with (folded into the head afterwards)."""

from __future__ import annotations

import torch


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


def precondition_in_place(sample: torch.Tensor, tensors: list[torch.Tensor], shrink: float,
                          gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """How a head trains on partially whitened features: P from the fit rows `sample`
    (:func:`preconditioner`), then every tensor of `tensors` (the fit and the selection
    features, tensors the head owns) multiplied by P in place. Returns (P, rho); P is folded
    into the head's input weights when training ends."""
    P, rho = preconditioner(sample, shrink, gen)
    for t in tensors:
        apply_right(t, P)
    return P, rho
