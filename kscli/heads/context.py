"""The take-context head: classify every segment of a take from its own ego feature *and* the
other segments of the same take.

Why
---
A take is one recording of one procedure; its keystep segments, ordered by start time, follow
that procedure's order. A single-segment head sees one clip; this head sees the whole take, so a
weak or ambiguous clip is read together with what comes before and after it (which scenario the
take is, where in the procedure we are, which steps were already done).

Model (`ContextHead`)
---------------------
Per segment (a token), in a take sorted by start time:

    token = LayerNorm(embed(ego_std))    (or a learned "missing" vector when the ego feature is
          + time_mlp(time features)       absent: such a segment is still predicted, from its
                                          neighbours and its timing)

`ego_std` is the ego feature standardised with train statistics (buffers `ego_mean`,
`ego_std`). `embed` is the input projection W_in for a one-window store. For a store with T
windows per clip (`kscli extract --windows T`, (N, T, D)) it is multi-head attention pooling
over the windows: head k weighs window t by softmax_t(ego_t . a_k) (a_k learned, zero at
start, so training starts from the mean over windows) and reads its d_model / heads slice of
W_in applied to its weighted mean. A keystep that shows in one window of several is then not
diluted by the others (tests/test_context.py; bench/context.py --windows).

The time features (10 scalars, standardised with train statistics in `time_mean`/`time_std`)
are computed on the full take: log duration,
signed log1p of the start relative to the take's first segment, of the gap to the previous and
to the next segment, first/last flags, rank / (n - 1), start / take span, log1p(segments in
take), log(1 + take span).

Tokens go through `layers` pre-LayerNorm transformer blocks (multi-head self-attention +
GELU MLP, dropout; default 1 block of d_model 256, 4 heads: 2 blocks were ~30 % slower and
2-3 points worse in bench/context.py on two seeds) with a learned *relative position* bias
per attention head: bias[h, j - i] for segment i attending to segment j, the index difference
clipped to +-`max_rel` (so takes of any length work, and a model trained on crops reads a
whole take at test). Padded slots are masked out of the keys. A final LayerNorm gives the
hidden state h and a linear layer the logits, for every segment. Everything but attention
runs on the packed valid tokens only (padding costs nothing outside the attention).

Exo as privileged information (train only): a *teacher* encoder of the same shape whose token
input is LayerNorm(W_in ego_std + W_exo exo_pooled) (exo_pooled: the masked mean of the
segment's standardised exo views, each view dropped with probability `view_dropout` in
training; a segment with no view left adds a learned "no exo" vector instead). Both train
jointly:

    loss = CE(student) + teacher_weight * CE(teacher)
         + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))    (teacher detached)
         + beta * mean((h_student - h_teacher.detach())^2)

Only the student predicts; inference needs ego only. Without any exo in train the teacher is
not built and the loss is CE(student) (a note says so).

Training (`train_context_head`)
-------------------------------
Batches of `batch_takes` whole takes, padded, with a key-padding mask. Augmentation per take:
segment dropout (each segment removed from the sequence with probability `segment_dropout`,
at least one kept), then a random contiguous crop of `max_len` segments when longer, and
`missing_dropout` (a kept segment's ego input replaced by the missing token, its label still
trained: this is what teaches the missing token). Positions and time features stay those of
the full take, which is what the model sees at test. AdamW (biases, norms, the learned
vectors and the position bias not decayed), linear warmup then cosine decay, label smoothing,
gradient clipping. Deterministic for a seed: every grid member starts from the same weights
and sees the same batches and dropout masks (they differ only by lr / wd).

Preconditioning (`precondition`, as in kscli.heads.train): the standardised ego features are
multiplied by P = c (S + lambda I)^-1/2 (S their Ledoit-Wolf shrunk covariance on the fit rows)
for training, and P is folded into the ego input projections afterwards, so the saved head
reads plain standardised features. Without it, a weak-ego simulation reached 7 % top-1 after
4 epochs instead of 35 % (correlated nuisance directions make AdamW slow).

Epochs: `epochs=None` trains max(min_epochs, ceil(min_steps / steps per epoch)) epochs, at most
`max_epochs` (40), so the number of optimizer steps (~ the cost) stays about the same as the
data grows, and a small set is not passed over hundreds of times: on the 40-take sample of
bench/context_sample.py, 40 epochs (200 steps) scored as well as 100 (500 steps) at 2.5x less
time; on the demo sample (12 takes) 40 epochs took 4 s instead of 24 s for 250.

Grid and selection: the (lr, wd) members train one after another. Selection is on a held-out
set of whole *takes* of train (`holdout_fraction` of the takes holding labels; holding out
random segments would leak through the context), or on `val` only when `select_on="val"`.
The member with the best selection top-1 after its last epoch is kept (ties: lower NLL); it is
the one fit on train minus the holdout (no refit).

Checkpoint: `context_state(result)` -> a dict of plain tensors and JSON-able values (safe for
`torch.load(weights_only=True)`), `build_context_from_checkpoint(ckpt)` rebuilds the model.
Predict with `predict_context_proba(model, fs, present)`: rows are grouped by `fs.take`, sorted
by start inside each take, and the probabilities come back in `fs` row order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.heads.common import (GridConfigMixin, apply_right, check_selection_val,
                                check_train_labels, cosine_scale, feature_stats, log,
                                preconditioner, reseed, seeded, torch_threads)
from kscli.heads.featureset import FeatureSet
from kscli.heads.models import check_checkpoint, checkpoint_state, load_checkpoint_weights

__all__ = ["ContextConfig", "ContextResult", "ContextHead", "train_context_head",
           "predict_context_proba", "context_state", "build_context_from_checkpoint",
           "take_holdout", "group_takes", "time_features", "HEAD_NAME", "NUM_TIME_FEATURES"]

HEAD_NAME = "context"
NUM_TIME_FEATURES = 10


# ----------------------------------------------------------------------------- config
@dataclass
class ContextConfig(GridConfigMixin):
    """Everything that decides a context-head training run (defaults tuned with
    bench/context.py: ~20,000 segments x 1,024-d x 278 classes, 2 CPU cores)."""

    options_name = "context-head option"

    # None: max(min_epochs, enough epochs for min_steps steps), at most max_epochs
    epochs: int | None = None
    min_epochs: int = 4
    min_steps: int = 500
    max_epochs: int = 40  # small sets: see the module docstring
    batch_takes: int = 8
    lrs: tuple[float, ...] = (2e-3, 4e-3)
    weight_decays: tuple[float, ...] = (0.05,)
    label_smoothing: float = 0.1
    seed: int = 0
    holdout_fraction: float = 0.1  # of the takes holding labels
    select_on: str = "holdout"  # "holdout" (whole train takes) or "val"
    warmup_fraction: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    # Train on partially whitened standardised ego, x @ P with P = (S + precondition * mean
    # eig(S) I)^-1/2 (Ledoit-Wolf shrunk covariance S of the fit rows), folded into the input
    # projections afterwards, as kscli.heads.train does: the saved head reads plain
    # standardised ego. Correlated backbone features otherwise need many more steps. 0: off.
    precondition: float = 0.1
    # model
    d_model: int = 256
    layers: int = 1  # 2 was slower and 2-3 points worse in bench/context.py (2 seeds)
    heads: int = 4
    ffn_mult: int = 2  # MLP width = ffn_mult * d_model
    dropout: float = 0.1
    attn_dropout: float = 0.0
    input_dropout: float = 0.2  # on the standardised ego (and exo) input features
    max_rel: int = 32  # relative-position bias covers index differences up to +- max_rel
    time_hidden: int = 64
    # augmentation
    segment_dropout: float = 0.15
    missing_dropout: float = 0.1
    max_len: int = 64  # longer takes are cropped (contiguously, at random) in training
    # exo distillation (teacher)
    temperature: float = 2.0
    alpha: float = 1.0
    beta: float = 1.0
    teacher_weight: float = 1.0
    view_dropout: float = 0.3
    use_exo: bool = True  # False: no teacher even if train has exo
    # execution
    device: str = "auto"  # auto: a GPU when there is one (kscli.device.resolve_device)
    num_threads: int | None = None  # None: all cores this process may use (1 for tiny batches)
    eval_tokens: int = 8192  # padded tokens per inference batch

    def model_cfg(self, exo_dim: int) -> dict:
        """The keys ContextHead reads (what the checkpoint stores as `cfg`)."""
        keys = ("d_model", "layers", "heads", "ffn_mult", "dropout", "attn_dropout",
                "input_dropout", "max_rel", "time_hidden", "temperature", "alpha", "beta",
                "teacher_weight", "view_dropout")
        return {**{k: getattr(self, k) for k in keys}, "exo_dim": int(exo_dim)}

    def check(self) -> None:
        self.check_common()
        if self.batch_takes < 1:
            raise KscliError(f"batch_takes must be >= 1 (got {self.batch_takes})")
        if self.d_model < 1 or self.layers < 0 or self.heads < 1 or self.d_model % self.heads:
            raise KscliError(f"d_model ({self.d_model}) must be a positive multiple of heads "
                             f"({self.heads}); layers >= 0")
        for name in ("dropout", "attn_dropout", "input_dropout", "segment_dropout",
                     "missing_dropout", "view_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise KscliError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_len < 1 or self.max_rel < 1 or self.ffn_mult < 1 or self.time_hidden < 1:
            raise KscliError("max_len, max_rel, ffn_mult and time_hidden must be >= 1")
        if self.temperature <= 0:
            raise KscliError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class ContextResult:
    model: "ContextHead"  # the selected member, eval mode, on CPU
    cfg: ContextConfig
    # member, lr, wd, select_on, select_top1 (%), select_nll, n_fit (labelled fit segments),
    # n_fit_segments (all the fit takes hold), n_fit_takes, n_select,
    # n_select_takes, epochs, steps, grid_size, teacher (bool)
    selected: dict
    # per member (lr-major): member, lr, wd, select_top1, select_nll, train_loss, seconds
    grid: list[dict]
    # per epoch: epoch, train_loss [G], select_top1 [G], select_nll [G], best_member,
    # best_select_top1, seconds (all members' time for that epoch)
    history: list[dict]
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # prepare_s, train_s, total_s, step_ms
    fit_takes: list[str] = field(default_factory=list)
    holdout_takes: list[str] = field(default_factory=list)  # [] when selected on val


# ----------------------------------------------------------------------------- helpers
def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the mask drawn from random bytes (keep if byte >= round(256 p)):
    several times faster than torch's bernoulli on CPU; p is rounded to a multiple of 1/256.
    Deterministic under torch.manual_seed like F.dropout."""
    if not training or p <= 0:
        return x
    k = min(256, max(1, int(round(p * 256))))
    if k >= 256:
        return x * 0.0
    n = x.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
    keep = words.view(torch.uint8)[:n].view(x.shape) >= k
    return x * keep.to(x.dtype).mul_(256.0 / (256 - k))


def _pool_t(a: np.ndarray, seq_ndim: int) -> torch.Tensor:
    """float32 tensor, mean over the window axis when a has seq_ndim dims (no copy when it
    is already a contiguous float32 array without windows)."""
    a = np.asarray(a)
    if a.ndim == seq_ndim:
        return torch.from_numpy(a.astype(np.float32, copy=False).mean(-2, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _windows(a: np.ndarray) -> torch.Tensor:
    """Ego features as a float32 (N, T, D) tensor: an (N, D) store is T = 1 (a view, no copy
    for contiguous float32 input)."""
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise KscliError(f"ego features must be (N, D) or (N, T, D), got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
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


# ----------------------------------------------------------------------------- model
class _Block(nn.Module):
    """Pre-LayerNorm transformer block with an additive attention bias."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.heads, self.dropout, self.attn_dropout = heads, dropout, attn_dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, shape: tuple[int, int],
                bias: torch.Tensor) -> torch.Tensor:
        """x (n, d): the valid tokens, packed; idx (n,) their flat slots in the padded (B, L)
        layout. Only attention runs on the padded layout (every other op on the n tokens)."""
        d = x.shape[-1]
        B, L = shape
        H = self.heads
        qkv = self.qkv(self.ln1(x))
        pad = qkv.new_zeros(B * L, 3 * d).index_copy(0, idx, qkv)
        q, k, v = pad.view(B, L, 3, H, d // H).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(B * L, d).index_select(0, idx)
        x = x + _dropout(self.proj(a), self.dropout, self.training)
        h = _dropout(F.gelu(self.fc1(self.ln2(x))), self.dropout, self.training)
        return x + _dropout(self.fc2(h), self.dropout, self.training)


class _Encoder(nn.Module):
    """Tokens from features (+ exo for the teacher) and time, transformer, per-token logits."""

    def __init__(self, in_dim: int, exo_dim: int, num_classes: int, c: dict):
        super().__init__()
        d = int(c["d_model"])
        self.c = c
        self.in_proj = nn.Linear(in_dim, d)
        # window pooling: per attention head a learned query folded into a (D -> H) score
        # map, as in the attentive head; unused (an identity) for T = 1 stores
        self.win_attn = nn.Parameter(torch.zeros(in_dim, int(c["heads"])))
        self.missing = nn.Parameter(torch.randn(d) * 0.02)
        self.exo_proj = nn.Linear(exo_dim, d, bias=False) if exo_dim else None
        self.no_exo = nn.Parameter(torch.randn(d) * 0.02) if exo_dim else None
        self.in_norm = nn.LayerNorm(d)
        th = int(c["time_hidden"])
        self.time_mlp = nn.Sequential(nn.Linear(NUM_TIME_FEATURES, th), nn.GELU(),
                                      nn.Linear(th, d))
        self.rel_bias = nn.Parameter(torch.zeros(int(c["heads"]), 2 * int(c["max_rel"]) + 1))
        ffn = int(c["ffn_mult"]) * d
        self.blocks = nn.ModuleList(_Block(d, int(c["heads"]), ffn, float(c["dropout"]),
                                           float(c["attn_dropout"]))
                                    for _ in range(int(c["layers"])))
        self.norm = nn.LayerNorm(d)
        self.cls = nn.Linear(d, num_classes)
        nn.init.trunc_normal_(self.cls.weight, std=0.02)
        nn.init.zeros_(self.cls.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised ego windows (n, T, D) -> token input (n, d). T = 1: in_proj(x). T > 1:
        multi-head attention pooling over the windows: head k weighs window t by
        softmax_t(x_t . a_k) and reads its own d/H slice of in_proj applied to the weighted
        mean (projecting after pooling: T times cheaper than projecting every window)."""
        n, T, D = x.shape
        if T == 1:
            return self.in_proj(x[:, 0])
        H = self.win_attn.shape[1]
        w = (x @ self.win_attn).softmax(1)  # (n, T, H)
        pooled = torch.bmm(w.transpose(1, 2), x)  # (n, H, D)
        W = self.in_proj.weight.view(H, -1, D)  # head k owns output rows k*d/H:(k+1)*d/H
        out = torch.einsum("nhD,heD->nhe", pooled, W).reshape(n, -1)
        return out + self.in_proj.bias

    def forward(self, b: dict, exo: torch.Tensor | None = None,
                has_exo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """b: x (n, D) standardised, present (n,), time (n, 10), pos (B, L), valid (B, L);
        exo (n, Dx) pooled standardised, has_exo (n,) for the teacher. -> hidden (n, d),
        logits (n, C) for the n valid tokens in row-major (take, position) order."""
        p_in = float(self.c["input_dropout"])
        x = _dropout(b["x"], p_in, self.training)
        h = torch.where(b["present"][:, None], self.embed(x), self.missing)
        if self.exo_proj is not None:
            e = self.exo_proj(_dropout(exo, p_in, self.training))
            h = h + torch.where(has_exo[:, None], e, self.no_exo)
        h = self.in_norm(h) + self.time_mlp(b["time"])
        valid, pos = b["valid"], b["pos"]
        B, L = valid.shape
        if len(self.blocks):
            K = int(self.c["max_rel"])
            rel = (pos[:, None, :] - pos[:, :, None]).clamp(-K, K) + K  # key j - query i
            bias = self.rel_bias[:, rel].permute(1, 0, 2, 3)  # (B, H, L, L)
            bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
            for blk in self.blocks:
                h = blk(h, b["idx"], (B, L), bias)
        hid = self.norm(h)
        return hid, self.cls(_dropout(hid, float(self.c["dropout"]), self.training))


class ContextHead(nn.Module):
    """Student (ego only; the one that predicts) + optional teacher (ego + exo, training only).
    Standardisation statistics live in buffers, so a checkpoint is self-contained."""

    head_name = HEAD_NAME
    default_cfg: dict = {"d_model": 256, "layers": 1, "heads": 4, "ffn_mult": 2,
                         "dropout": 0.1, "attn_dropout": 0.0, "input_dropout": 0.2,
                         "max_rel": 32, "time_hidden": 64, "temperature": 2.0, "alpha": 1.0,
                         "beta": 1.0, "teacher_weight": 1.0, "view_dropout": 0.3, "exo_dim": 0}

    def __init__(self, in_dim: int, num_classes: int, cfg: dict | None = None):
        super().__init__()
        if in_dim < 1 or num_classes < 2:
            raise KscliError(f"context head: need in_dim >= 1 and num_classes >= 2 (got "
                             f"{in_dim}, {num_classes})")
        cfg = dict(cfg or {})
        self.cfg = {k: type(v)(cfg[k]) if cfg.get(k) is not None else v
                    for k, v in self.default_cfg.items()}
        if self.cfg["d_model"] % self.cfg["heads"]:
            raise KscliError(f"context head: d_model {self.cfg['d_model']} is not a multiple "
                             f"of heads {self.cfg['heads']}")
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        exo_dim = int(self.cfg["exo_dim"])
        self.register_buffer("ego_mean", torch.zeros(self.in_dim))
        self.register_buffer("ego_std", torch.ones(self.in_dim))
        self.register_buffer("time_mean", torch.zeros(NUM_TIME_FEATURES))
        self.register_buffer("time_std", torch.ones(NUM_TIME_FEATURES))
        self.student = _Encoder(self.in_dim, 0, self.num_classes, self.cfg)
        self.teacher = None
        if exo_dim:
            self.register_buffer("exo_mean", torch.zeros(exo_dim))
            self.register_buffer("exo_std", torch.ones(exo_dim))
            self.teacher = _Encoder(self.in_dim, exo_dim, self.num_classes, self.cfg)

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def no_decay_names(self) -> set[str]:
        return {n for n, p in self.named_parameters()
                if p.dim() < 2 or n.endswith(("missing", "no_exo", "rel_bias"))}

    @torch.no_grad()
    def fold_input_transform(self, P: torch.Tensor) -> None:
        """The head was trained on x @ P (x standardised ego): fold P into the ego input
        projections so it reads plain standardised x (exact at eval: the first op is linear)."""
        P = P.to(self.ego_mean.device, torch.float32)
        for enc in (self.student, self.teacher):
            if enc is not None:  # scores (x P) a = x (P a); projection W (x P) = (W P^T) x
                enc.in_proj.weight.copy_(enc.in_proj.weight @ P.T)
                enc.win_attn.copy_(P @ enc.win_attn)

    def pool_exo(self, exo: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw exo (n, V, Dx) + mask (n, V) -> masked mean of standardised views (n, Dx) and
        whether any view is left (n,); each view dropped with view_dropout in training."""
        keep = mask
        p = float(self.cfg["view_dropout"])
        if self.training and p > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= p)
        w = keep.to(exo.dtype)
        cnt = w.sum(1, keepdim=True)
        # the mean of standardised views = the standardised mean of raw views (linear), so
        # pool the raw views first: one (n, V) x (n, V, Dx) product instead of (n, V, Dx) math
        raw = torch.bmm(w.unsqueeze(1), exo).squeeze(1) / cnt.clamp_min(1.0)
        pooled = torch.where(cnt > 0, (raw - self.exo_mean) / self.exo_std,
                             torch.zeros((), dtype=raw.dtype))
        return pooled, keep.any(1)

    def logits(self, b: dict) -> torch.Tensor:
        """Student logits (n, C) on a prepared batch (ego only)."""
        return self.student(b)[1]

    def loss(self, b: dict, label_smoothing: float = 0.0) -> torch.Tensor:
        hs, ls = self.student(b)
        y = b["y"]
        lab = y >= 0
        zero = ls.sum() * 0.0

        def ce(logits):
            if not bool(lab.any()):
                return zero
            return F.cross_entropy(logits[lab], y[lab], label_smoothing=label_smoothing)

        total = ce(ls)
        if self.teacher is not None and "exo" in b:
            exo, has = self.pool_exo(b["exo"], b["exo_mask"])
            ht, lt = self.teacher(b, exo, has)
            c = self.cfg
            if c["teacher_weight"] > 0:
                total = total + c["teacher_weight"] * ce(lt)
            if c["alpha"] > 0:
                T = float(c["temperature"])
                pt = (lt.detach() / T).log_softmax(-1)
                kl = (pt.exp() * (pt - (ls / T).log_softmax(-1))).sum(-1).mean()
                total = total + c["alpha"] * T * T * kl
            if c["beta"] > 0:
                total = total + c["beta"] * (hs - ht.detach()).pow(2).mean()
        return total


# ----------------------------------------------------------------------------- data
def ego_present(fs: FeatureSet, ego: torch.Tensor | None = None) -> np.ndarray:
    """(N,) bool: which rows have a usable ego feature. `fs.ego_present` when the loader says
    (`load_feature_set(keep_missing=True)`), else rows that are not all exact zeros (how a
    missing clip is filled); either way only rows whose values are all finite."""
    if ego is None:
        ego = _windows(fs.ego)
    flat = ego.reshape(len(ego), -1)
    finite = np.asarray(torch.isfinite(flat).all(1)) if len(ego) else np.zeros(0, bool)
    if fs.ego_present is not None:
        return np.asarray(fs.ego_present, dtype=bool) & finite
    return np.asarray(flat.abs().amax(1) > 0) & finite if len(ego) else np.zeros(0, bool)


class _Takes:
    """One split prepared for the model: standardised ego, time features, takes sorted."""

    def __init__(self, model: ContextHead, fs: FeatureSet, present: np.ndarray | None,
                 with_exo: bool = False):
        ego = _windows(fs.ego)
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
            self.exo = _pool_t(fs.exo, 4)  # raw (N, V, Dx); pooled + standardised per batch
            self.exo_mask = torch.from_numpy(np.asarray(fs.exo_mask, dtype=bool))

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


def _augment(seq: np.ndarray, rng: np.random.Generator, cfg: ContextConfig) -> np.ndarray:
    if cfg.segment_dropout > 0 and len(seq) > 1:
        keep = rng.random(len(seq)) >= cfg.segment_dropout
        if not keep.any():
            keep[rng.integers(len(seq))] = True
        seq = seq[keep]
    if len(seq) > cfg.max_len:
        s = int(rng.integers(0, len(seq) - cfg.max_len + 1))
        seq = seq[s:s + cfg.max_len]
    return seq


@torch.no_grad()
def _logits_for(model: ContextHead, data: _Takes, groups: list[np.ndarray],
                max_tokens: int) -> tuple[np.ndarray, torch.Tensor]:
    """(rows, student logits) for the takes `groups`, eval mode."""
    was = model.training
    model.eval()
    rows, out = [], []
    for seqs in data.eval_batches(groups, max_tokens):
        b = data.batch(seqs)
        out.append(model.logits(b).float().cpu())
        rows.append(b["rows"])
    model.train(was)
    if not rows:
        return np.zeros(0, np.int64), torch.zeros(0, model.num_classes)
    return np.concatenate(rows), torch.cat(out)


def _scores(model, data: _Takes, groups, max_tokens) -> tuple[float, float]:
    rows, logits = _logits_for(model, data, groups, max_tokens)
    y = torch.from_numpy(data.y[rows])
    lab = y >= 0
    if not bool(lab.any()):
        return float("nan"), float("nan")
    lg, yy = logits[lab], y[lab]
    acc = 100.0 * float((lg.argmax(-1) == yy).double().mean())
    nll = float(F.cross_entropy(lg, yy))
    return acc, nll


# ----------------------------------------------------------------------------- training
def train_context_head(cfg: ContextConfig, train: FeatureSet, num_classes: int,
                       val: FeatureSet | None = None, progress: bool = True) -> ContextResult:
    """Train the context head for every (lr, wd) of the grid, one after another; keep the best
    on the selection split (held-out whole train takes, or `val` if cfg.select_on == 'val')."""
    t0 = time.perf_counter()
    cfg.check()
    labels = check_train_labels(train, num_classes)
    if train.take is None or train.start is None:
        raise KscliError("train features: the context head needs take names and start times")
    notes: list[str] = []
    if (labels < 0).any():
        notes.append(f"{int((labels < 0).sum())} train segments without a label serve as "
                     f"context only")

    # -- split by take
    take_str = [str(t) for t in train.take]
    if cfg.select_on == "val":
        check_selection_val(val, train, num_classes)
        fit_takes, hold_takes = sorted(set(take_str)), []
    else:
        fit_takes, hold_takes = take_holdout(take_str, labels, cfg.holdout_fraction, cfg.seed)
    hold_set = set(hold_takes)
    in_fit = np.array([t not in hold_set for t in take_str], dtype=bool)

    use_exo = bool(cfg.use_exo and train.exo is not None and train.exo_mask is not None
                   and np.asarray(train.exo_mask)[in_fit].any())
    if not use_exo:
        notes.append("no exo views in the fit takes (or use_exo=False): trained without the "
                      "exo teacher (loss = CE of the student)")
    exo_dim = int(train.exo.shape[-1]) if use_exo else 0
    grid = cfg.grid()
    G = len(grid)
    dev = resolve_device(cfg.device)

    threads = cfg.num_threads
    n_fit_takes = max(1, len(fit_takes))
    if threads is None and min(cfg.batch_takes, n_fit_takes) * in_fit.sum() / n_fit_takes < 256:
        threads = 1  # a few dozen tokens per step: a second thread only adds sync cost
    with torch_threads(threads), seeded(cfg.seed, dev):
        proto = ContextHead(train.dim, num_classes, cfg.model_cfg(exo_dim))
        # -- statistics on the fit rows (present ego only), into the buffers
        ego_all = _windows(train.ego)
        present_tr = ego_present(train, ego_all)
        if not present_tr.all():
            notes.append(f"{int((~present_tr).sum())} train rows have no ego feature: "
                         f"treated as missing (learned missing token)")
        fit_rows = torch.from_numpy(np.flatnonzero(in_fit & present_tr))
        em, es = feature_stats(ego_all, torch.from_numpy(in_fit & present_tr))
        proto.ego_mean.copy_(em)
        proto.ego_std.copy_(es)
        _, groups_all = group_takes(take_str, train.start, train.end)
        traw, _ = time_features(train.start, train.end, groups_all)
        tm, ts = feature_stats(torch.from_numpy(traw[in_fit]))
        proto.time_mean.copy_(tm)
        proto.time_std.copy_(ts)
        if use_exo:
            exo_all = _pool_t(train.exo, 4)
            emask = torch.from_numpy(np.asarray(train.exo_mask, dtype=bool))
            xm, xs = feature_stats(exo_all, emask & torch.from_numpy(in_fit)[:, None])
            proto.exo_mean.copy_(xm)
            proto.exo_std.copy_(xs)
        init_state = {k: v.clone() for k, v in proto.state_dict().items()}
        proto.to(dev)
        data = _Takes(proto, train, present_tr, with_exo=use_exo)
        names_tr = data.take_names
        fit_groups = [g for n, g in zip(names_tr, data.groups) if n not in hold_set]
        if cfg.select_on == "val":
            sel_data = _Takes(proto, val, None)
            sel_groups = sel_data.groups
        else:
            sel_data = data
            sel_groups = [g for n, g in zip(names_tr, data.groups) if n in hold_set]
        P, rho = None, None
        if cfg.precondition > 0:
            P, rho = preconditioner(data.x[fit_rows.to(dev)], cfg.precondition,
                                     torch.Generator().manual_seed(cfg.seed))
            apply_right(data.x, P)
            if sel_data is not data:
                apply_right(sel_data.x, P)
        n_sel = int(sum((sel_data.y[g] >= 0).sum() for g in sel_groups))
        n_fit = int(sum((data.y[g] >= 0).sum() for g in fit_groups))  # labelled, as train.py
        n_fit_segments = int(sum(len(g) for g in fit_groups))
        del ego_all

        nb = len(fit_groups)
        bs, steps_per_epoch, epochs, total, warmup = cfg.schedule(nb, cfg.batch_takes)
        t_prep = time.perf_counter()
        log(progress, f"[context] {n_fit} labelled fit segments ({n_fit_segments} in all) in {nb} "
                      f"takes / {n_sel} select "
                      f"({cfg.select_on}, {len(sel_groups)} takes), {train.dim}-d, "
                      f"{num_classes} classes, teacher {'on' if use_exo else 'off'}, grid of "
                      f"{G} (lr x wd) one after another, {epochs} epochs x {steps_per_epoch} "
                      f"steps")

        loss_hist = np.zeros((G, epochs))
        acc_hist = np.zeros((G, epochs))
        nll_hist = np.zeros((G, epochs))
        sec_hist = np.zeros((G, epochs))
        member_s = np.zeros(G)
        best_g, best_key, best_state = -1, None, None
        for g, (lr, wd) in enumerate(grid):
            t_m = time.perf_counter()
            reseed(cfg.seed, dev)  # same dropout / view-dropout stream for every member
            model = proto
            model.load_state_dict(init_state)
            model.train()
            nd = model.no_decay_names()
            params = list(model.named_parameters())
            opt = torch.optim.AdamW(
                [{"params": [p for n, p in params if n not in nd], "weight_decay": wd},
                 {"params": [p for n, p in params if n in nd], "weight_decay": 0.0}],
                lr=lr, betas=cfg.betas, fused=True)
            rng = np.random.default_rng(cfg.seed)  # same batches / augmentation per member
            step = 0
            for ep in range(epochs):
                t_ep = time.perf_counter()
                perm = rng.permutation(nb)
                loss_sum, n_seen = 0.0, 0
                for i in range(0, nb, bs):
                    seqs = [_augment(fit_groups[j], rng, cfg) for j in perm[i:i + bs]]
                    rows = np.concatenate(seqs)
                    pres = data.present[rows]
                    if cfg.missing_dropout > 0:
                        pres = pres & (rng.random(len(rows)) >= cfg.missing_dropout)
                    b = data.batch(seqs, present=pres, with_exo=use_exo)
                    scale = cosine_scale(step, total, warmup)
                    for grp in opt.param_groups:
                        grp["lr"] = lr * scale
                    loss = model.loss(b, cfg.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    step += 1
                    nlab = int((b["y"] >= 0).sum())
                    loss_sum += float(loss.detach()) * nlab
                    n_seen += nlab
                acc, nll = _scores(model, sel_data, sel_groups, cfg.eval_tokens)
                loss_hist[g, ep] = loss_sum / max(1, n_seen)
                acc_hist[g, ep], nll_hist[g, ep] = acc, nll
                sec_hist[g, ep] = time.perf_counter() - t_ep
                log(progress, f"[context] lr {lr:g} wd {wd:g} epoch {ep + 1}/{epochs}  loss "
                               f"{loss_hist[g, ep]:.3f}  {cfg.select_on} top-1 {acc:.2f}%  "
                               f"{sec_hist[g, ep]:.1f}s")
            key = (-acc_hist[g, -1], nll_hist[g, -1])
            if best_key is None or key < best_key:
                best_g, best_key = g, key
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            member_s[g] = time.perf_counter() - t_m
        t_train = time.perf_counter()
        final = ContextHead(train.dim, num_classes, cfg.model_cfg(exo_dim))
        final.load_state_dict({k: v.cpu() for k, v in best_state.items()})
        if P is not None:
            final.fold_input_transform(P.cpu())
        final.eval()
    t_end = time.perf_counter()

    history = []
    for ep in range(epochs):
        acc = acc_hist[:, ep]
        b = int(np.lexsort((nll_hist[:, ep], -acc))[0])
        history.append({"epoch": ep + 1, "train_loss": loss_hist[:, ep].tolist(),
                        "select_top1": acc.tolist(), "select_nll": nll_hist[:, ep].tolist(),
                        "best_member": b, "best_select_top1": float(acc[b]),
                        "seconds": float(sec_hist[:, ep].sum())})
    grid_rows = [{"member": g, "lr": lr, "wd": wd, "select_top1": float(acc_hist[g, -1]),
                  "select_nll": float(nll_hist[g, -1]), "train_loss": float(loss_hist[g, -1]),
                  "seconds": float(member_s[g])} for g, (lr, wd) in enumerate(grid)]
    selected = {"member": best_g, "lr": grid[best_g][0], "wd": grid[best_g][1],
                "select_on": cfg.select_on, "select_top1": float(acc_hist[best_g, -1]),
                "select_nll": float(nll_hist[best_g, -1]), "n_fit": n_fit,
                "n_fit_segments": n_fit_segments,
                "n_fit_takes": len(fit_groups), "n_select": n_sel,
                "n_select_takes": len(sel_groups), "epochs": int(epochs), "steps": int(total),
                "grid_size": G, "teacher": use_exo, "precondition_rho": rho}
    timings = {"prepare_s": t_prep - t0, "train_s": t_train - t_prep, "total_s": t_end - t0,
               "step_ms": 1000.0 * (t_train - t_prep) / max(1, total * G)}
    log(progress, f"[context] selected lr {selected['lr']:g} wd {selected['wd']:g}: "
                   f"{cfg.select_on} top-1 {selected['select_top1']:.2f}%  "
                   f"({timings['total_s']:.1f}s)")
    return ContextResult(model=final, cfg=cfg, selected=selected, grid=grid_rows,
                         history=history, notes=notes, timings=timings,
                         fit_takes=list(fit_takes), holdout_takes=list(hold_takes))


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_context_proba(model: ContextHead, fs: FeatureSet, present: np.ndarray | None = None,
                          max_tokens: int = 8192) -> np.ndarray:
    """Class probabilities (N, C) float32 in fs row order, from ego features only.

    Rows are grouped by fs.take and sorted by start inside each take; every take is read
    whole. `present` (N,) bool says which rows have a real ego feature; the others get the
    learned missing token and are predicted from their neighbours and timing. present=None:
    `ego_present(fs)` (fs.ego_present from the loader, or rows of exact zeros count as
    missing; rows with NaN/inf always do)."""
    model.eval()
    n = len(fs.names)
    out = np.zeros((n, model.num_classes), np.float32)
    if n == 0:
        return out
    if fs.take is None or fs.start is None:
        raise KscliError("the context head needs take names and start times for every segment")
    data = _Takes(model, fs, present)
    rows, logits = _logits_for(model, data, data.groups, max_tokens)
    out[rows] = logits.softmax(-1).numpy()
    return out


# ----------------------------------------------------------------------------- checkpoints
def context_state(result: ContextResult | ContextHead) -> dict:
    """A self-contained checkpoint dict of plain tensors and JSON-able values (safe for
    torch.save / torch.load(weights_only=True)); `build_context_from_checkpoint` rebuilds it."""
    model = result.model if isinstance(result, ContextResult) else result
    return checkpoint_state(model, HEAD_NAME,
                            result if isinstance(result, ContextResult) else None)


def build_context_from_checkpoint(ckpt: dict) -> ContextHead:
    """Rebuild the context head (eval mode, CPU) from the dict `context_state` makes; works on
    `torch.load(..., weights_only=True)`."""
    check_checkpoint(ckpt)
    if ckpt["head"] != HEAD_NAME:
        raise KscliError(f"checkpoint is a {ckpt['head']!r} head, not {HEAD_NAME!r}")
    return load_checkpoint_weights(
        lambda: ContextHead(int(ckpt["in_dim"]), int(ckpt["num_classes"]), dict(ckpt["cfg"])),
        ckpt)
