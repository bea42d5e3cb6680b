"""How the heads are optimised: AdamW with a learning rate and weight decay per grid member
(`StackedAdamW`), which parameters are decayed (`decay_groups`), the warmup-cosine schedule, and
the one training loop (`optimise`) every head steps through.

`StackedAdamW` is hand-written: torch's AdamW takes one learning rate per parameter group, and
a stacked parameter (G, ...) holds every member. docs/design.md gives the timings against the
library's ways (bench/optimizer.py).
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


class StackedAdamW(torch.optim.Optimizer):
    """AdamW over stacked parameters (G, ...) with a learning rate and a decoupled weight decay
    per member (G values each); the same update as torch.optim.AdamW, member by member. A param
    group's `lr` is a factor on every member's lr (1.0 at the start), which is what torch's lr
    schedulers set. Names in `no_decay` (biases, LayerNorm affines) are not decayed."""

    def __init__(self, named_params, lrs, wds, no_decay=frozenset(), betas=(0.9, 0.999),
                 eps: float = 1e-8):
        decayed, undecayed = decay_groups(named_params, no_decay)
        groups = [{"params": decayed, "decay": True}, {"params": undecayed, "decay": False}]
        super().__init__([g for g in groups if g["params"]],
                         {"lr": 1.0, "betas": tuple(betas), "eps": eps})
        dev = (decayed + undecayed)[0].device
        self.member_lrs = torch.as_tensor(lrs, dtype=torch.float32, device=dev)
        self.member_wds = torch.as_tensor(wds, dtype=torch.float32, device=dev)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                per_member = (-1,) + (1,) * (p.dim() - 1)
                lr = (self.member_lrs * group["lr"]).view(per_member)
                if group["decay"]:
                    p.mul_(1.0 - lr * self.member_wds.view(per_member))
                g, m, v = p.grad, st["m"], st["v"]
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denom = (v / (1.0 - b2 ** st["step"])).sqrt_().add_(group["eps"])
                p.addcdiv_(m * (lr / (1.0 - b1 ** st["step"])), denom, value=-1.0)


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
