"""A split read as takes: the take-context head's data side.

`group_takes` sorts each take's segments by start time; `time_features` describes where each
segment sits in its take; `take_holdout` holds out whole takes (holding out single segments
would leak through their neighbours); `Takes` is one split prepared for the context network
(standardised ego, time features, padded batches of whole takes).
"""

from __future__ import annotations

import numpy as np
import torch

from kscli.errors import KscliError
from kscli.heads.common import as_f32, exo_tensors
from kscli.heads.featureset import FeatureSet

NUM_TIME_FEATURES = 10


def as_windows(a: np.ndarray) -> torch.Tensor:
    """Ego features as a float32 (N, T, D) tensor: an (N, D) store is T = 1 (a view, no copy
    for contiguous float32 input)."""
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise KscliError(f"ego features must be (N, D) or (N, T, D), got shape {a.shape}")
    t = as_f32(a)
    return t.unsqueeze(1) if t.dim() == 2 else t


def group_takes(take, start, end=None) -> tuple[list[str], list[np.ndarray]]:
    """(take names, rows per take): the rows of each take sorted by (start, end, row)."""
    n = len(take)
    if n == 0:
        return [], []
    names, tid = np.unique(np.asarray([str(t) for t in take]), return_inverse=True)
    start = np.nan_to_num(np.asarray(start, dtype=np.float64))
    end = start if end is None else np.nan_to_num(np.asarray(end, dtype=np.float64))
    order = np.lexsort((np.arange(n), end, start, tid))
    bounds = np.flatnonzero(np.diff(tid[order])) + 1
    return [str(s) for s in names], np.split(order, bounds)


def _slog1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def time_features(start, end, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 10) float32, position of each row within its take (N,) int64), from the
    full takes `groups` (see the module docstring for the 10 features); end=None: segments are
    taken as instants at their start."""
    start = np.nan_to_num(np.asarray(start, dtype=np.float64))
    end = start if end is None else np.nan_to_num(np.asarray(end, dtype=np.float64))
    n = len(start)
    out = np.zeros((n, NUM_TIME_FEATURES), np.float64)
    pos = np.zeros(n, np.int64)
    for g in groups:
        s, e = start[g], end[g]
        k = len(g)
        t0 = s[0]
        span = max(float(e.max() - t0), 1e-3)
        gap = s[1:] - e[:-1]
        gap_prev = np.concatenate([[0.0], gap])
        gap_next = np.concatenate([gap, [0.0]])
        idx = np.arange(k)
        out[g] = np.stack([
            np.log(np.maximum(e - s, 0.0) + 0.1),
            _slog1p(s - t0),
            _slog1p(gap_prev),
            _slog1p(gap_next),
            (idx == 0).astype(np.float64),
            (idx == k - 1).astype(np.float64),
            idx / max(1, k - 1),
            (s - t0) / span,
            np.full(k, np.log1p(k)),
            np.full(k, np.log1p(span)),
        ], 1)
        pos[g] = idx
    return out.astype(np.float32), pos


def take_holdout(take, labels, fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(fit takes, holdout takes): about `fraction` of the takes that hold a labelled segment
    (at least one, never all), drawn at random for the seed. Takes without any label stay on
    the fit side (they teach nothing there, but cannot be scored either)."""
    labels = np.asarray(labels)
    names = sorted({str(t) for t in take})
    labelled = sorted({str(t) for t, y in zip(take, labels) if y >= 0})
    if len(labelled) < 2:
        raise KscliError(f"a take-level holdout needs at least 2 takes with labels, got "
                         f"{len(labelled)}; pass a val set and select_on='val'")
    k = min(len(labelled) - 1, max(1, int(round(fraction * len(labelled)))))
    rng = np.random.default_rng(seed)
    hold = sorted(labelled[i] for i in rng.permutation(len(labelled))[:k])
    hs = set(hold)
    return [t for t in names if t not in hs], hold


def ego_present(fs: FeatureSet, ego: torch.Tensor | None = None) -> np.ndarray:
    """(N,) bool: which rows have a usable ego feature. `fs.ego_present` when the loader says
    (`load_feature_set(keep_missing=True)`), else rows that are not all exact zeros (how a
    missing clip is filled); either way only rows whose values are all finite."""
    if ego is None:
        ego = as_windows(fs.ego)
    flat = ego.reshape(len(ego), -1)
    finite = np.asarray(torch.isfinite(flat).all(1)) if len(ego) else np.zeros(0, bool)
    if fs.ego_present is not None:
        return np.asarray(fs.ego_present, dtype=bool) & finite
    return np.asarray(flat.abs().amax(1) > 0) & finite if len(ego) else np.zeros(0, bool)


class Takes:
    """One split prepared for the model: standardised ego, time features, takes sorted."""

    def __init__(self, model, fs: FeatureSet, present: np.ndarray | None,
                 with_exo: bool = False):
        ego = as_windows(fs.ego)
        if ego.shape[-1] != model.in_dim:
            raise KscliError(f"ego features have dimension {ego.shape[-1]} but the context "
                             f"head was trained on {model.in_dim}")
        self.n = len(fs.names)
        present = ego_present(fs, ego) if present is None else np.asarray(present, dtype=bool)
        if present.shape != (self.n,):
            raise KscliError(f"present must be ({self.n},) bool, got shape {present.shape}")
        self.present = present
        dev = model.ego_mean.device
        self.x = ((ego.to(dev) - model.ego_mean) / model.ego_std).contiguous()
        # rows without a feature read the missing token; zero them so that no stray value (a
        # NaN times a zero gradient is NaN) reaches the input weights
        self.x[torch.from_numpy(~present).to(dev)] = 0.0
        self.take_names, self.groups = group_takes(fs.take, fs.start, fs.end)
        t, self.pos = time_features(fs.start, fs.end, self.groups)
        t = torch.from_numpy(t).to(dev)
        self.time = ((t - model.time_mean) / model.time_std).contiguous()
        self.y = np.asarray(fs.labels, dtype=np.int64)
        self.exo = self.exo_mask = None
        if with_exo and fs.exo is not None and fs.exo_mask is not None:
            self.exo, self.exo_mask = exo_tensors(fs)  # raw (N, V, Dx); pooled + standardised per batch

    def batch(self, seqs: list[np.ndarray], present: np.ndarray | None = None,
              with_exo: bool = False) -> dict:
        """Padded batch of the row sequences `seqs` (each a take's rows in order)."""
        dev = self.x.device
        lens = np.array([len(s) for s in seqs])
        L = int(lens.max())
        rows = np.concatenate(seqs)
        valid = np.arange(L)[None, :] < lens[:, None]
        pos = np.zeros(valid.shape, np.int64)
        pos[valid] = self.pos[rows]
        r = torch.from_numpy(rows)
        b = {"x": self.x[r.to(dev)], "time": self.time[r.to(dev)],
             "present": torch.from_numpy(self.present[rows] if present is None else present
                                         ).to(dev),
             "valid": torch.from_numpy(valid).to(dev), "pos": torch.from_numpy(pos).to(dev),
             "idx": torch.from_numpy(np.flatnonzero(valid)).to(dev),
             "y": torch.from_numpy(self.y[rows]).to(dev), "rows": rows}
        if with_exo and self.exo is not None:
            b["exo"] = self.exo[r].to(dev)
            b["exo_mask"] = self.exo_mask[r].to(dev)
        return b

    def eval_batches(self, groups: list[np.ndarray], max_tokens: int):
        """Whole takes, longest first, packed so B * L_max <= max_tokens (one take at least)."""
        order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), i))
        cur: list[np.ndarray] = []
        for i in order:
            g = groups[i]
            if cur and (len(cur) + 1) * len(cur[0]) > max_tokens:
                yield cur
                cur = []
            cur.append(g)
        if cur:
            yield cur


def augment(seq: np.ndarray, rng: np.random.Generator, segment_dropout: float, max_len: int
            ) -> np.ndarray:
    """Training view of a take's rows: each segment dropped with `segment_dropout` (at least one
    kept), then a random contiguous crop of `max_len` segments when longer."""
    if segment_dropout > 0 and len(seq) > 1:
        keep = rng.random(len(seq)) >= segment_dropout
        if not keep.any():
            keep[rng.integers(len(seq))] = True
        seq = seq[keep]
    if len(seq) > max_len:
        s = int(rng.integers(0, len(seq) - max_len + 1))
        seq = seq[s:s + max_len]
    return seq
