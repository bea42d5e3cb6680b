"""The stacking heads (linear, mlp, distill, attentive): their shared config and training.

A stacking head is a `StackedHead` subclass naming its network (`Net`, a
`kscli.heads.layers.StackedNet`) and its `Config`. The driver (`kscli.heads.train.train_grid`) calls
the methods below once for the whole lr x wd grid: the net is built with G members and every
mini-batch is one forward and one backward for all of them. The summed loss gives each
member exactly its own gradient (members share no parameters); `StackedAdamW` gives each its
own lr and weight decay under one schedule (torch's schedulers drive its lr factor).

Preconditioning (`precondition`, on by default): the standardised ego features are multiplied
by P = c (S_lw + lambda I)^-1/2 (`kscli.heads.stats.preconditioner`) for training, and P is
folded into the net's input weights afterwards, so the saved head reads plain standardised
features. Backbone features are strongly correlated; AdamW on the raw standardised features
needs many more epochs (see bench/heads.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import torch

from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.heads.base import Head, HeadConfig, option
from kscli.heads.config import new_default
from kscli.heads.common import as_f32, exo_tensors, seeded_generator
from kscli.heads.optim import StackedAdamW, optimise
from kscli.heads.stats import feature_stats, precondition_in_place
from kscli.heads.layers import StackedNet


@dataclass
class StackedConfig(HeadConfig):
    """Options of every stacking head, on top of HeadConfig's."""

    batch_size: int = option(512, "segments per optimizer step")
    class_balance: bool = option(False, "weigh the loss by inverse class frequency")
    eval_batch_size: int = option(4096, "segments per batch when scoring and predicting")

    def check(self) -> None:
        super().check()
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise KscliError(f"batch_size and eval_batch_size must be >= 1 (got "
                             f"{self.batch_size}, {self.eval_batch_size})")


@dataclass
class NetworkConfig(StackedConfig):
    """What the heads with a hidden network share (mlp, distill, attentive): their grid and how
    long they train (tuned with bench/heads.py: 20,000 x 1,024 x 278 features, 2 CPU cores)."""

    lrs: tuple[float, ...] = new_default("lrs", (1e-3, 3e-3))
    weight_decays: tuple[float, ...] = new_default("weight_decays", (0.05, 0.5))
    min_epochs: int = new_default("min_epochs", 4)
    min_steps: int = new_default("min_steps", 200)


@dataclass
class HiddenLayerConfig(NetworkConfig):
    """A hidden layer on the standardised ego feature (mlp; distill's student and teacher)."""

    hidden: int = option(512, "width of the hidden layer(s)", model=True)
    dropout: float = option(0.5, "dropout on the hidden layer(s)", model=True)
    input_dropout: float = option(0.0, "dropout on the standardised input features", model=True)

    def check(self) -> None:
        super().check()
        if self.hidden < 1:
            raise KscliError(f"hidden must be >= 1 (got {self.hidden})")


def class_balance_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights (C,), mean 1 over the samples (0 for absent classes)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w.astype(np.float32)


class StackedHead(Head):
    """A head whose grid trains as one stacked net. Subclasses set `name`, `description`,
    `Config` (a StackedConfig) and `Net`; nothing else is needed."""

    Net: ClassVar[type[StackedNet]]
    stacks = True

    def build_model(self, model_cfg: dict, generator: torch.Generator, members: int = 1) -> StackedNet:
        return self.Net(self.in_dim, self.num_classes, model_cfg, members=members, generator=generator)

    def small_steps(self, train, fit_rows, members: int) -> bool:
        return members * min(self.cfg.batch_size, len(fit_rows)) * train.dim \
            * self.num_classes < 2e7

    # -- training
    def prepare(self, train, fit_rows, select, members: int, notes: list[str]) -> dict:
        cfg, uses_exo = self.cfg, self.Net.uses_exo
        if uses_exo and not train.has_exo(fit_rows):
            raise KscliError(f"head {self.name!r} trains with exo views, but the train "
                             f"features have none")
        model_cfg = cfg.model_cfg()
        if uses_exo:
            model_cfg["exo_dim"] = int(train.exo.shape[-1])
        net = self.build_model(model_cfg, seeded_generator(cfg.seed), members)
        # the fit rows: pooled, standardised once with their own statistics, one tensor
        pooled = net.pool_ego(as_f32(train.ego))  # no copy for float32 (N, D) input
        fit_t = torch.from_numpy(np.asarray(fit_rows, dtype=np.int64))
        x_fit = pooled[fit_t]  # a copy: ours to standardise in place
        del pooled
        mean, std = feature_stats(x_fit)
        x_fit.sub_(mean).div_(std)
        exo_stats = (None, None)
        if uses_exo:  # raw exo stays where it is (no copy); batches are standardised
            exo_all, mask_all = exo_tensors(train)
            in_fit = torch.zeros(len(mask_all), dtype=torch.bool)
            in_fit[fit_t] = True
            exo_stats = feature_stats(exo_all, mask_all & in_fit[:, None])
            self._exo = (exo_all, mask_all, fit_t)
        net.set_normalization(mean, std, *exo_stats)
        dev = resolve_device(cfg.device)
        net.to(dev)
        labels = np.asarray(train.labels, dtype=np.int64)
        self._fit = (x_fit.to(dev), torch.from_numpy(labels[fit_rows]).to(dev))
        self._sel = self._selection(net, select, dev)
        rho, self._P = None, None
        if cfg.precondition > 0:
            self._P, rho = precondition_in_place(self._fit[0], [self._fit[0], self._sel["x"]],
                                                 cfg.precondition, seeded_generator(cfg.seed))
        self._cw = None
        if cfg.class_balance:
            self._cw = torch.from_numpy(class_balance_weights(labels[fit_rows],
                                                              self.num_classes)).to(dev)
        self._net = net
        self._plan = cfg.schedule(len(fit_rows), cfg.batch_size)
        return {"n_fit": int(len(fit_rows)), "n_select": int(len(self._sel["y"])),
                "epochs": self._plan[2], "steps_per_epoch": self._plan[1],
                "precondition_rho": rho}

    def _selection(self, net: StackedNet, select, dev) -> dict:
        """The selection rows (labelled, with an ego feature), prepared as the fit rows are."""
        rows = np.flatnonzero((np.asarray(select.labels) >= 0) & select.with_ego())
        with torch.no_grad():
            sel = {"x": net.prepare_ego(as_f32(np.asarray(select.ego)[rows]).to(dev)),
                   "y": torch.from_numpy(np.asarray(select.labels, dtype=np.int64)[rows]).to(dev)}
            if self.has_teacher and select.has_exo():
                exo, mask = exo_tensors(select)
                m = mask[rows].to(dev)
                sel["exo"], sel["exo_mask"] = net.prepare_exo(exo[rows].to(dev), m), m
        return sel

    def train_members(self, grid, gen: torch.Generator) -> Iterator[np.ndarray]:
        cfg, net = self.cfg, self._net
        x_fit, y_fit = self._fit
        dev = x_fit.device
        bs, _, epochs, total, warmup = self._plan
        opt = StackedAdamW(list(net.named_parameters()), [lr for lr, _ in grid],
                           [wd for _, wd in grid], net.no_decay_names(), betas=cfg.betas)
        order = seeded_generator(cfg.seed)  # the batches: the same for every chunk of a grid
        n_fit = len(y_fit)
        net.train()

        def epoch_batches():  # every member's losses (G,) on one batch, weighted by its segments
            perm = torch.randperm(n_fit, generator=order)
            for i in range(0, n_fit, bs):
                idx = perm[i:i + bs]
                batch = {"ego": x_fit[idx.to(dev)], "y": y_fit[idx.to(dev)]}
                if self.Net.uses_exo:
                    exo_all, mask_all, fit_t = self._exo
                    rows = fit_t[idx]
                    m = mask_all[rows].to(dev)
                    batch["exo"], batch["exo_mask"] = net.prepare_exo(exo_all[rows].to(dev), m), m
                yield net.loss(batch, cfg.label_smoothing, self._cw, gen), len(idx)

        yield from optimise(opt, total, warmup, epochs, epoch_batches)

    def selection_batches(self):
        net, sel, bs = self._net, self._sel, self.cfg.eval_batch_size
        was = net.training
        net.eval()
        try:
            for i in range(0, len(sel["y"]), bs):
                x = sel["x"][i:i + bs]
                teacher = None
                if "exo" in sel:
                    teacher = net.teacher_member_logits(x, sel["exo"][i:i + bs],
                                                        sel["exo_mask"][i:i + bs])
                yield net.member_logits(x), teacher, sel["y"][i:i + bs]
        finally:
            net.train(was)

    def snapshot(self, member: int) -> StackedNet:
        return self._net.select_member(member)

    def finish(self, snapshot: StackedNet) -> None:
        model = snapshot.cpu().eval()
        if self._P is not None:
            model.fold_input_transform(self._P.cpu())
        self.model = model
        for attr in ("_net", "_fit", "_sel", "_exo", "_P", "_cw"):
            self.__dict__.pop(attr, None)

    # -- use
    @torch.no_grad()
    def predict_proba(self, fs) -> np.ndarray:
        """(N, C) float32 from ego alone; a row without an ego feature gets the train prior."""
        return self._proba(fs, lambda ego, rows: self.model.predict_logits(ego))

    @torch.no_grad()
    def _proba(self, fs, logits_fn) -> np.ndarray:
        model = self.model.eval()
        dev = model.ego_mean.device
        ego = np.asarray(fs.ego)
        out = np.tile(self.prior, (len(ego), 1))
        rows = np.flatnonzero(fs.with_ego())
        bs = self.cfg.eval_batch_size
        for i in range(0, len(rows), bs):
            r = rows[i:i + bs]
            out[r] = logits_fn(as_f32(ego[r]).to(dev), r).softmax(-1).float().cpu().numpy()
        return out
