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

Training (by the one driver, kscli.heads.train.train_grid)
---------------------------------------------------
Batches of `batch_takes` whole takes, padded, with a key-padding mask. Augmentation per take:
segment dropout (each segment removed from the sequence with probability `segment_dropout`,
at least one kept), then a random contiguous crop of `max_len` segments when longer, and
`missing_dropout` (a kept segment's ego input replaced by the missing token, its label still
trained: this is what teaches the missing token). Positions and time features stay those of
the full take, which is what the model sees at test. AdamW (biases, norms, the learned
vectors and the position bias not decayed; `optim.decay_groups`) under the warmup-cosine
schedule of `optim.optimise` (torch's LambdaLR), label
smoothing, gradient clipping. The grid's members train one after another (a transformer over
padded takes does not stack as cheaply as the single-segment heads); the holdout is whole
takes of train (`holdout_fraction` of the takes holding labels).

Preconditioning (`precondition`, as the stacking heads): the standardised ego features are
multiplied by P = c (S + lambda I)^-1/2 (S their Ledoit-Wolf shrunk covariance on the fit rows)
for training, and P is folded into the ego input projections afterwards, so the saved head
reads plain standardised features. Without it, a weak-ego simulation reached 7 % top-1 after
4 epochs instead of 35 % (correlated nuisance directions make AdamW slow).

Epochs: `epochs=None` trains max(min_epochs, ceil(min_steps / steps per epoch)) epochs, at most
`max_epochs` (40), so the number of optimizer steps (~ the cost) stays about the same as the
data grows, and a small set is not passed over hundreds of times: on the 40-take sample of
bench/context_sample.py, 40 epochs (200 steps) scored as well as 100 (500 steps) at 2.5x less
time; on the demo sample (12 takes) 40 epochs took 4 s instead of 24 s for 250.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.heads.base import Head, HeadConfig, option, register_head
from kscli.heads.config import new_default
from kscli.heads.common import exo_tensors, seeded_generator
from kscli.heads.optim import decay_groups, optimise
from kscli.heads.stats import feature_stats, precondition_in_place
from kscli.heads.context_net import ContextNet
from kscli.heads.teacher import TeacherOptions
from kscli.heads.takes import (Takes, augment, ego_present, group_takes,
                               take_holdout, time_features, as_windows)


@dataclass
class ContextConfig(TeacherOptions, HeadConfig):
    """Defaults tuned with bench/context.py: ~20,000 segments x 1,024-d x 278 classes, 2 cores."""

    lrs: tuple[float, ...] = new_default("lrs", (2e-3, 4e-3))
    weight_decays: tuple[float, ...] = new_default("weight_decays", (0.05,))
    min_epochs: int = new_default("min_epochs", 4)
    min_steps: int = new_default("min_steps", 500)
    max_epochs: int = option(40, "most epochs when epochs is none (small sets: see the docs)")
    holdout_fraction: float = option(0.1, "share of the takes holding labels held out for "
                                           "selection (whole takes)")
    batch_takes: int = option(8, "whole takes per optimizer step")
    grad_clip: float = option(1.0, "largest gradient norm; 0: no clipping")
    d_model: int = option(256, "token width", model=True)
    layers: int = option(1, "transformer blocks (2 was slower and 2-3 points worse)", model=True)
    heads: int = option(4, "attention heads (d_model must be a multiple)", model=True)
    ffn_mult: int = option(2, "MLP width of a block, as a multiple of d_model", model=True)
    dropout: float = option(0.1, "dropout in the blocks and before the classifier", model=True)
    attn_dropout: float = option(0.0, "dropout on the attention weights", model=True)
    input_dropout: float = option(0.2, "dropout on the standardised ego (and exo) input",
                                  model=True)
    max_rel: int = option(32, "relative positions covered by the attention bias (+-)",
                          model=True)
    time_hidden: int = option(64, "width of the time-feature MLP", model=True)
    segment_dropout: float = option(0.15, "probability of removing a segment from a training "
                                          "take")
    missing_dropout: float = option(0.1, "probability of hiding a segment's ego feature in "
                                         "training (teaches the missing token)")
    max_len: int = option(64, "longer takes are cropped to this many segments in training")
    use_exo: bool = option(True, "train an ego + exo teacher when train has exo views")
    eval_tokens: int = option(8192, "padded tokens per batch when scoring and predicting")

    def check(self) -> None:
        super().check()
        if self.batch_takes < 1 or self.eval_tokens < 1:
            raise KscliError(f"batch_takes and eval_tokens must be >= 1 (got "
                             f"{self.batch_takes}, {self.eval_tokens})")
        if self.d_model < 1 or self.layers < 0 or self.heads < 1 or self.d_model % self.heads:
            raise KscliError(f"d_model ({self.d_model}) must be a positive multiple of heads "
                             f"({self.heads}); layers >= 0")
        if self.max_len < 1 or self.max_rel < 1 or self.ffn_mult < 1 or self.time_hidden < 1:
            raise KscliError("max_len, max_rel, ffn_mult and time_hidden must be >= 1")


@register_head
class ContextHead(Head):
    name = "context"
    description = "each segment read with the other segments of its take (a small transformer)"
    Config = ContextConfig
    stacks = False
    keeps_missing = True
    has_teacher = True

    # -- the selection split: whole takes
    def holdout_split(self, train, labels, notes):
        take = _takes_of(train, labels, notes)
        fit_takes, hold_takes = take_holdout(take, labels, self.cfg.holdout_fraction,
                                             self.cfg.seed)
        hold = np.isin(np.asarray(take), np.asarray(hold_takes))
        return np.flatnonzero(~hold), np.flatnonzero(hold)

    def fit_rows(self, train, labels, notes):
        _takes_of(train, labels, notes)
        return np.arange(len(labels))

    def small_steps(self, train, fit_rows, members: int) -> bool:
        takes = max(1, len({str(train.take[i]) for i in fit_rows}))
        return min(self.cfg.batch_takes, takes) * len(fit_rows) / takes < 256

    def build_model(self, model_cfg: dict, generator: torch.Generator) -> ContextNet:
        return ContextNet(self.in_dim, self.num_classes, model_cfg, generator=generator)

    # -- training
    def prepare(self, train, fit_rows, select, members: int, notes: list[str]) -> dict:
        cfg = self.cfg
        in_fit = np.zeros(len(train), bool)
        in_fit[fit_rows] = True
        use_exo = cfg.use_exo and train.has_exo(in_fit)
        if not use_exo:
            notes.append("no exo views in the fit takes (or use_exo=False): trained without "
                         "the exo teacher (loss = CE of the student)")
        net = self.build_model({**cfg.model_cfg(),
                                "exo_dim": int(train.exo.shape[-1]) if use_exo else 0},
                               seeded_generator(cfg.seed))
        ego = as_windows(train.ego)
        present = ego_present(train, ego)
        if not present.all():
            notes.append(f"{int((~present).sum())} train rows have no ego feature: treated as "
                         f"missing (learned missing token)")
        _set_statistics(net, train, ego, in_fit, present, use_exo)
        del ego
        self._init = {k: v.clone() for k, v in net.state_dict().items()}
        net.to(resolve_device(cfg.device))
        data = Takes(net, train, present, with_exo=use_exo)
        self._fit_groups = [g for g in data.groups if in_fit[g[0]]]
        teacher_exo = use_exo and select.has_exo()
        self._sel = Takes(net, select, None, with_exo=teacher_exo)
        rho, self._P = None, None
        if cfg.precondition > 0:
            rows = torch.from_numpy(np.flatnonzero(in_fit & present)).to(data.x.device)
            self._P, rho = precondition_in_place(data.x[rows], [data.x, self._sel.x], cfg.precondition,
                                                 seeded_generator(cfg.seed))
        self._net, self._data, self._use_exo = net, data, use_exo
        self._plan = cfg.schedule(len(self._fit_groups), cfg.batch_takes)
        labelled = data.y >= 0
        return {"n_fit": int(labelled[in_fit].sum()), "n_fit_segments": int(in_fit.sum()),
                "n_fit_takes": len(self._fit_groups),
                "n_select": int((self._sel.y >= 0).sum()),
                "n_select_takes": len(self._sel.groups), "epochs": self._plan[2],
                "steps_per_epoch": self._plan[1], "teacher": use_exo, "precondition_rho": rho}

    def train_members(self, grid, gen: torch.Generator) -> Iterator[np.ndarray]:
        (lr, wd), = grid
        cfg, net, data = self.cfg, self._net, self._data
        bs, _, epochs, total, warmup = self._plan
        net.load_state_dict(self._init)
        net.train()
        decayed, undecayed = decay_groups(net.named_parameters(), net.no_decay_names())
        opt = torch.optim.AdamW([{"params": decayed, "weight_decay": wd},
                                 {"params": undecayed, "weight_decay": 0.0}],
                                lr=lr, betas=cfg.betas, fused=True)
        rng = np.random.default_rng(cfg.seed)  # the same batches / augmentation per member
        groups = self._fit_groups

        def epoch_batches():  # the loss of a batch of takes, weighted by its labelled segments
            perm = rng.permutation(len(groups))
            for i in range(0, len(groups), bs):
                seqs = [augment(groups[j], rng, cfg.segment_dropout, cfg.max_len)
                        for j in perm[i:i + bs]]
                rows = np.concatenate(seqs)
                pres = data.present[rows]
                if cfg.missing_dropout > 0:
                    pres = pres & (rng.random(len(rows)) >= cfg.missing_dropout)
                b = data.batch(seqs, present=pres, with_exo=self._use_exo)
                yield net.loss(b, cfg.label_smoothing, gen), int((b["y"] >= 0).sum())

        yield from optimise(opt, total, warmup, epochs, epoch_batches, clip=(list(net.parameters()), cfg.grad_clip))

    def selection_batches(self):
        yield from _batches(self._net, self._sel, self._sel.groups, self.cfg.eval_tokens,
                            teacher=self._sel.exo is not None)

    def snapshot(self, member: int) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self._net.state_dict().items()}

    def finish(self, snapshot: dict) -> None:
        model = self.build_model(self._net.cfg, torch.Generator())  # values replaced below
        model.load_state_dict(snapshot)
        if self._P is not None:
            model.fold_input_transform(self._P.cpu())
        self.model = model.eval()
        for attr in ("_net", "_data", "_sel", "_init", "_P", "_fit_groups"):
            self.__dict__.pop(attr, None)

    # -- use
    @torch.no_grad()
    def predict_proba(self, fs, present: np.ndarray | None = None) -> np.ndarray:
        """(N, C) float32 in fs row order, from ego alone. Rows are grouped by fs.take and read
        a whole take at a time; rows without an ego feature (`present` False; default
        `ego_present(fs)`) get the missing token and are predicted from their take."""
        return self._proba(fs, present, teacher=False)

    @property
    def teacher_trained(self) -> bool:
        return self.model is not None and self.model.teacher is not None

    @torch.no_grad()
    def teacher_proba(self, fs) -> np.ndarray | None:
        if not self.teacher_trained or not fs.has_exo():
            return None
        return self._proba(fs, None, teacher=True)

    def _proba(self, fs, present, teacher: bool) -> np.ndarray:
        model = self.model.eval()
        out = np.zeros((len(fs.names), self.num_classes), np.float32)
        if len(fs.names) == 0:
            return out
        if fs.take is None or fs.start is None:
            raise KscliError("the context head needs take names and start times for every "
                             "segment")
        data = Takes(model, fs, present, with_exo=teacher)
        for student, t, _, rows in _batches(model, data, data.groups, self.cfg.eval_tokens,
                                            teacher, with_rows=True):
            out[rows] = (t if teacher else student)[0].softmax(-1).float().cpu().numpy()
        return out


def _takes_of(train, labels, notes) -> list[str]:
    if train.take is None or train.start is None:
        raise KscliError("train features: the context head needs take names and start times")
    if (labels < 0).any():
        notes.append(f"{int((labels < 0).sum())} train segments without a label serve as "
                     f"context only")
    return [str(t) for t in train.take]


def _set_statistics(net: ContextNet, train, ego: torch.Tensor, in_fit: np.ndarray,
                    present: np.ndarray, use_exo: bool) -> None:
    """Standardisation statistics of the fit rows (present ego only) into the net's buffers."""
    net.ego_mean[:], net.ego_std[:] = feature_stats(ego, torch.from_numpy(in_fit & present))
    _, groups = group_takes([str(t) for t in train.take], train.start, train.end)
    traw, _ = time_features(train.start, train.end, groups)
    net.time_mean[:], net.time_std[:] = feature_stats(torch.from_numpy(traw[in_fit]))
    if use_exo:
        exo, mask = exo_tensors(train)
        net.exo_mean[:], net.exo_std[:] = feature_stats(exo, mask & torch.from_numpy(in_fit)[:, None])


@torch.no_grad()
def _batches(net: ContextNet, data: Takes, groups, max_tokens: int, teacher: bool,
             with_rows: bool = False):
    """(student logits (1, n, C), teacher logits (1, n, C) or None, y (n,)[, rows]) per batch
    of whole takes, eval mode (the net's mode is restored after)."""
    was = net.training
    net.eval()
    try:
        for seqs in data.eval_batches(groups, max_tokens):
            b = data.batch(seqs, with_exo=teacher)
            t = net.teacher_logits(b) if teacher else None
            out = (net.logits(b)[None], None if t is None else t[None], b["y"])
            yield out + ((b["rows"],) if with_rows else ())
    finally:
        net.train(was)
