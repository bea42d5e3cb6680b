"""How the heads are optimised: AdamW with a learning rate and weight decay per grid member
(`StackedAdamW`), which parameters are decayed (`decay_groups`), the warmup-cosine schedule, and
the one training loop (`optimise`) every head steps through.

`StackedAdamW` is torch's fused AdamW with one pair of parameter groups per member, over views of
the stacked parameters (a parameter group holds whole tensors, and a stacked parameter (G, ...)
holds every member). docs/design.md gives the timings that chose it (bench/optimizer.py).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


def decay_groups(named_params, no_decay) -> tuple[list, list]:
    """(decayed, undecayed) parameters of `named_params` ((name, parameter) pairs; frozen ones
    left out): the names in `no_decay` (biases, LayerNorm affines, learned tokens) are not
    decayed. The one rule both optimisers use."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    return [p for n, p in named if n not in no_decay], [p for n, p in named if n in no_decay]


class StackedAdamW(torch.optim.AdamW):
    """torch's AdamW (fused) over stacked parameters (G, ...), with a learning rate and a
    decoupled weight decay per member (G values each). Each member's slice of a stacked
    parameter is a detached view of its storage (a view is a leaf of its own, so a parameter
    group can hold it): member g's two groups (decayed, and `no_decay` names at weight decay 0)
    carry lrs[g] and wds[g], torch's schedulers scale every group's lr, and before each step the
    views' gradients are pointed at the member's slice of the stacked gradient. Nothing is
    copied: torch updates the views, and so the stacked parameters, in place."""

    def __init__(self, named_params, lrs, wds, no_decay=frozenset(), betas=(0.9, 0.999),
                 eps: float = 1e-8):
        decayed, undecayed = decay_groups(named_params, no_decay)
        if not decayed + undecayed:
            raise ValueError("StackedAdamW: no trainable parameter")
        if len(lrs) != len(wds):
            raise ValueError(f"StackedAdamW: {len(lrs)} learning rates but {len(wds)} weight decays")
        self.stacked = decayed + undecayed
        self.views = [[p.detach()[g].requires_grad_() for g in range(len(lrs))] for p in self.stacked]
        k = len(decayed)
        groups = []
        for g, (lr, wd) in enumerate(zip(lrs, wds)):
            groups += [{"params": [v[g] for v in self.views[:k]], "lr": float(lr), "weight_decay": float(wd)},
                       {"params": [v[g] for v in self.views[k:]], "lr": float(lr), "weight_decay": 0.0}]
        super().__init__([grp for grp in groups if grp["params"]], betas=tuple(betas), eps=eps, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.stacked:  # backward accumulates into the stacked parameters' gradients
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for p, views in zip(self.stacked, self.views):
            for g, view in enumerate(views):
                view.grad = None if p.grad is None else p.grad[g]
        super().step()
        return loss


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
