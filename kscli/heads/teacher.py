"""The ego + exo teacher that distill and context train beside their ego-only student, written
once: its options, how it sees the exo views, and the loss that teaches the student.

The teacher reads the ego feature and the mean of the segment's exo views (each view dropped with
`view_dropout` in training, so it learns not to lean on one camera); the student reads ego only.
The loss is the student's cross-entropy, plus `teacher_weight` x the teacher's own, plus
`alpha` x T^2 x KL(teacher || student) at temperature T (soft labels), plus `beta` x the mean
squared distance between their hidden states (a hint); the teacher is detached in both
teaching terms, so it is taught by the labels only. At test time only the student runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kscli.errors import KscliError
from kscli.heads.config import option


@dataclass
class TeacherOptions:
    """Options of a head that trains an ego + exo teacher beside its ego-only student
    (distill, context): put it before the head's base config, `class C(TeacherOptions, Base)`."""

    temperature: float = option(2.0, "softmax temperature of the teacher -> student KL term",
                                model=True)
    alpha: float = option(1.0, "weight of the teacher -> student KL term", model=True)
    beta: float = option(1.0, "weight of the hidden-state (hint) term", model=True)
    teacher_weight: float = option(1.0, "weight of the teacher's own cross-entropy", model=True)
    view_dropout: float = option(0.3, "probability of dropping each exo view in training",
                                 model=True)

    def check(self) -> None:
        super().check()
        if self.temperature <= 0:
            raise KscliError(f"temperature must be > 0, got {self.temperature}")
        if min(self.alpha, self.beta, self.teacher_weight) < 0:
            raise KscliError("alpha, beta and teacher_weight must be >= 0")


def seen_views(mask: torch.Tensor, p: float, gen: torch.Generator | None) -> torch.Tensor:
    """The exo views (..., V) the teacher sees: the present ones, each dropped with probability
    `p` in training, drawn from `gen` (a generator on mask's device; None: evaluation, every
    present view is seen)."""
    if gen is not None and p > 0:
        return mask & (torch.rand(mask.shape, device=mask.device, generator=gen) >= p)
    return mask


def mean_of_views(exo: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the seen views of exo (n, V, D) -> (n, D) (zeros where none is seen), and how
    many were seen (n, 1). One (n, 1, V) x (n, V, D) product."""
    w = seen.to(exo.dtype)
    count = w.sum(1, keepdim=True)
    return torch.bmm(w.unsqueeze(1), exo).squeeze(1) / count.clamp_min(1.0), count


def teacher_loss(ce: Callable[[torch.Tensor], torch.Tensor], student: tuple[torch.Tensor, torch.Tensor],
                 teacher: tuple[torch.Tensor, torch.Tensor], cfg, mean: Callable[[torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
    """The combined loss (module doc). `student`, `teacher`: (hidden, logits) with the segments
    on one axis; `ce(logits)`: the cross-entropy the head uses; `mean` averages a per-segment
    value over the segments (per member for a stacked grid: `lambda t: t.mean(1)`)."""
    (hs, ls), (ht, lt) = student, teacher
    total = ce(ls)
    tw, alpha, beta = (float(cfg[k]) for k in ("teacher_weight", "alpha", "beta"))
    if tw > 0:
        total = total + tw * ce(lt)
    if alpha > 0:
        T = float(cfg["temperature"])
        pt = (lt.detach() / T).log_softmax(-1)
        total = total + alpha * T * T * mean((pt.exp() * (pt - (ls / T).log_softmax(-1))).sum(-1))
    if beta > 0:
        total = total + beta * mean((hs - ht.detach()).pow(2).mean(-1))
    return total
