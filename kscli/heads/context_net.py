"""The take-context network: a small transformer over the segments of a take (see
kscli/heads/context.py for the model, the teacher and the loss in words)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kscli.errors import KscliError
from kscli.heads.common import dropout
from kscli.heads.takes import NUM_TIME_FEATURES
from kscli.heads.teacher import mean_of_views, seen_views, teacher_loss


def linear_layer(d_in: int, d_out: int, generator: torch.Generator, bias: bool = True) -> nn.Linear:
    """An nn.Linear initialised as torch initialises one (Kaiming-uniform weight, uniform bias
    within 1/sqrt(d_in)), but drawn from `generator` instead of torch's global generator."""
    layer = nn.Linear(d_in, d_out, bias=bias, device="meta").to_empty(device=torch.get_default_device())
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if bias:
        bound = 1.0 / math.sqrt(d_in) if d_in > 0 else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


class _Block(nn.Module):
    """Pre-LayerNorm transformer block with an additive attention bias."""

    def __init__(self, d: int, heads: int, ffn: int, p_drop: float, p_attn_drop: float,
                 generator: torch.Generator):
        super().__init__()
        self.heads, self.p_drop, self.p_attn_drop = heads, p_drop, p_attn_drop
        self.ln1 = nn.LayerNorm(d)
        self.qkv = linear_layer(d, 3 * d, generator)
        self.proj = linear_layer(d, d, generator)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = linear_layer(d, ffn, generator)
        self.fc2 = linear_layer(ffn, d, generator)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, shape: tuple[int, int],
                bias: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """x (n, d): the valid tokens, packed; idx (n,) their flat slots in the padded (B, L)
        layout. Only attention runs on the padded layout (every other op on the n tokens).
        `gen` draws the dropout masks in training (None: evaluation)."""
        d = x.shape[-1]
        B, L = shape
        H = self.heads
        qkv = self.qkv(self.ln1(x))
        pad = qkv.new_zeros(B * L, 3 * d).index_copy(0, idx, qkv)
        q, k, v = pad.view(B, L, 3, H, d // H).permute(2, 0, 3, 1, 4)
        if gen is not None and self.p_attn_drop > 0:  # SDPA's own dropout would draw from torch's global generator
            w = ((q @ k.transpose(-2, -1)) / math.sqrt(d // H) + bias).softmax(-1)
            a = dropout(w, self.p_attn_drop, gen) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        a = a.transpose(1, 2).reshape(B * L, d).index_select(0, idx)
        x = x + dropout(self.proj(a), self.p_drop, gen)
        h = dropout(F.gelu(self.fc1(self.ln2(x))), self.p_drop, gen)
        return x + dropout(self.fc2(h), self.p_drop, gen)


class _Encoder(nn.Module):
    """Tokens from features (+ exo for the teacher) and time, transformer, per-token logits."""

    def __init__(self, in_dim: int, exo_dim: int, num_classes: int, c: dict, generator: torch.Generator):
        super().__init__()
        d = int(c["d_model"])
        self.c = c
        g = generator
        self.in_proj = linear_layer(in_dim, d, g)
        # window pooling: per attention head a learned query folded into a (D -> H) score
        # map, as in the attentive head; unused (an identity) for T = 1 stores
        self.win_attn = nn.Parameter(torch.zeros(in_dim, int(c["heads"])))
        self.missing = nn.Parameter(torch.randn(d, generator=g) * 0.02)
        self.exo_proj = linear_layer(exo_dim, d, g, bias=False) if exo_dim else None
        self.no_exo = nn.Parameter(torch.randn(d, generator=g) * 0.02) if exo_dim else None
        self.in_norm = nn.LayerNorm(d)
        th = int(c["time_hidden"])
        self.time_mlp = nn.Sequential(linear_layer(NUM_TIME_FEATURES, th, g), nn.GELU(),
                                      linear_layer(th, d, g))
        self.rel_bias = nn.Parameter(torch.zeros(int(c["heads"]), 2 * int(c["max_rel"]) + 1))
        ffn = int(c["ffn_mult"]) * d
        self.blocks = nn.ModuleList(_Block(d, int(c["heads"]), ffn, float(c["dropout"]),
                                           float(c["attn_dropout"]), g)
                                    for _ in range(int(c["layers"])))
        self.norm = nn.LayerNorm(d)
        self.cls = linear_layer(d, num_classes, g)
        nn.init.trunc_normal_(self.cls.weight, std=0.02, generator=g)
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

    def forward(self, b: dict, exo: torch.Tensor | None = None, has_exo: torch.Tensor | None = None,
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """b: x (n, D) standardised, present (n,), time (n, 10), pos (B, L), valid (B, L);
        exo (n, Dx) pooled standardised, has_exo (n,) for the teacher; gen: the training draws
        (None: evaluation). -> hidden (n, d), logits (n, C) for the n valid tokens in row-major
        (take, position) order."""
        p_in = float(self.c["input_dropout"])
        x = dropout(b["x"], p_in, gen)
        h = torch.where(b["present"][:, None], self.embed(x), self.missing)
        if self.exo_proj is not None:
            e = self.exo_proj(dropout(exo, p_in, gen))
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
                h = blk(h, b["idx"], (B, L), bias, gen)
        hid = self.norm(h)
        return hid, self.cls(dropout(hid, float(self.c["dropout"]), gen))


class ContextNet(nn.Module):
    """Student (ego only; the one that predicts) + optional teacher (ego + exo, training only).
    Standardisation statistics live in buffers, so a checkpoint is self-contained."""

    def __init__(self, in_dim: int, num_classes: int, cfg: dict, *, generator: torch.Generator):
        """cfg: the context head's model options (ContextConfig.model_cfg()) and exo_dim (0:
        no teacher); generator: draws the initial weights (a CPU one)."""
        super().__init__()
        if in_dim < 1 or num_classes < 2:
            raise KscliError(f"context head: need in_dim >= 1 and num_classes >= 2 (got "
                             f"{in_dim}, {num_classes})")
        self.cfg = dict(cfg)
        self.cfg["exo_dim"] = int(self.cfg.get("exo_dim") or 0)
        if self.cfg["d_model"] % self.cfg["heads"]:
            raise KscliError(f"context head: d_model {self.cfg['d_model']} is not a multiple "
                             f"of heads {self.cfg['heads']}")
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        exo_dim = int(self.cfg["exo_dim"])
        self.register_buffer("ego_mean", torch.zeros(self.in_dim))
        self.register_buffer("ego_std", torch.ones(self.in_dim))
        self.register_buffer("time_mean", torch.zeros(NUM_TIME_FEATURES))
        self.register_buffer("time_std", torch.ones(NUM_TIME_FEATURES))
        self.student = _Encoder(self.in_dim, 0, self.num_classes, self.cfg, generator)
        self.teacher = None
        if exo_dim:
            self.register_buffer("exo_mean", torch.zeros(exo_dim))
            self.register_buffer("exo_std", torch.ones(exo_dim))
            self.teacher = _Encoder(self.in_dim, exo_dim, self.num_classes, self.cfg, generator)

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

    def pool_exo(self, exo: torch.Tensor, mask: torch.Tensor, gen: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw exo (n, V, Dx) + mask (n, V) -> the standardised mean of the seen views (n, Dx)
        and whether any view was seen (n,) (kscli.heads.teacher; `gen` drops views in training).
        The mean of standardised views is the standardised mean of raw ones (linear), so the raw
        views are pooled first."""
        raw, count = mean_of_views(exo, seen_views(mask, float(self.cfg["view_dropout"]), gen))
        pooled = torch.where(count > 0, (raw - self.exo_mean) / self.exo_std, torch.zeros((), dtype=raw.dtype))
        return pooled, count.squeeze(1) > 0

    def logits(self, b: dict) -> torch.Tensor:
        """Student logits (n, C) on a prepared batch (ego only)."""
        return self.student(b)[1]

    def teacher_logits(self, b: dict) -> torch.Tensor | None:
        """Teacher logits (n, C) on a prepared batch with exo; None without a teacher or exo."""
        if self.teacher is None or "exo" not in b:
            return None
        return self.teacher(b, *self.pool_exo(b["exo"], b["exo_mask"]))[1]

    def loss(self, b: dict, label_smoothing: float = 0.0, gen: torch.Generator | None = None
             ) -> torch.Tensor:
        """The student's cross-entropy on labelled segments, with the teacher's terms
        (kscli.heads.teacher) when there is a teacher and the batch has exo; `gen` draws the
        training's dropout masks."""
        student = self.student(b, gen=gen)
        y = b["y"]
        lab = y >= 0
        zero = student[1].sum() * 0.0

        def ce(logits):
            if not bool(lab.any()):
                return zero
            return F.cross_entropy(logits[lab], y[lab], label_smoothing=label_smoothing)

        if self.teacher is None or "exo" not in b:
            return ce(student[1])
        teacher = self.teacher(b, *self.pool_exo(b["exo"], b["exo_mask"], gen), gen=gen)
        return teacher_loss(ce, student, teacher, self.cfg, mean=lambda t: t.mean())
