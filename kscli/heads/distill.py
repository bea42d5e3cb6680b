"""The `distill` head: learning with privileged information. A teacher sees ego + exo, a
student sees ego only; both train together and only the student predicts.

    student: h_s = LN(W_s ego)            -> GELU -> dropout -> classifier_s
    teacher: h_t = LN(W_te ego + W_tx exo) -> GELU -> dropout -> classifier_t, where exo is the
             masked mean of the segment's real exo views, each view dropped with probability
             `view_dropout` in training (a segment with no views left gets exo = 0, i.e. the
             train mean, and the teacher falls back on ego).
    loss = CE(student) + teacher_weight * CE(teacher)
           + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))   (teacher detached)
           + beta * mean((h_s - h_t.detach())^2)                            (hint on hidden)

`predict_proba` never touches the teacher; `teacher_proba` (ego + exo) shows what the exo
views add, and the driver records the teacher's selection top-1 beside the student's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kscli.heads.base import register_head
from kscli.heads.config import new_default
from kscli.heads.common import dropout, exo_tensors
from kscli.heads.layers import StackedNet, hidden_activation, linear, stacked_cross_entropy, trunc_normal
from kscli.heads.stacked import HiddenLayerConfig, StackedHead
from kscli.heads.teacher import TeacherOptions, mean_of_views, seen_views, teacher_loss


@dataclass
class DistillConfig(TeacherOptions, HiddenLayerConfig):
    # tuned with bench/heads.py (part 2: privileged information)
    weight_decays: tuple[float, ...] = new_default("weight_decays", (0.1,))


class DistillNet(StackedNet):
    head_name = "distill"
    uses_exo = True
    input_weights = ("s_fc1_w", "t_fc1_w")

    def _build(self) -> None:
        h, d, dx = int(self.cfg["hidden"]), self.in_dim, int(self.cfg["exo_dim"])
        self._linear_params("s_fc1", d, h, std=1.0 / math.sqrt(d))
        self._norm_params("s_ln1", h)
        self._linear_params("s_fc2", h, self.num_classes, std=0.02)
        self._linear_params("t_fc1", d, h, std=1.0 / math.sqrt(d + dx))
        self._param("t_exo_w", trunc_normal((dx, h), 1.0 / math.sqrt(d + dx), self.init_generator))
        self._norm_params("t_ln1", h)
        self._linear_params("t_fc2", h, self.num_classes, std=0.02)

    @staticmethod
    def _drop(x: torch.Tensor, p: float, gen: torch.Generator | None) -> torch.Tensor:
        return dropout(x, p, gen, x.shape[-2:])  # one mask for every member

    def student(self, x: torch.Tensor, gen: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's student on prepared ego (B, D): hidden (G, B, H), logits (G, B, C)."""
        x = self._drop(x, self.cfg["input_dropout"], gen)
        h, a = hidden_activation(linear(x, self.s_fc1_w, self.s_fc1_b), self.s_ln1_g, self.s_ln1_b,
                                 self.cfg["dropout"], gen)
        return h, linear(a, self.s_fc2_w, self.s_fc2_b)

    def pool_exo(self, exo: torch.Tensor, exo_mask: torch.Tensor,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        """Mean of the seen views of prepared exo (B, V, Dx) -> (B, Dx) (kscli.heads.teacher)."""
        return mean_of_views(exo, seen_views(exo_mask, float(self.cfg["view_dropout"]), gen))[0]

    def teacher(self, x: torch.Tensor, exo_pooled: torch.Tensor, gen: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's teacher on prepared ego (B, D) and pooled exo (B, Dx): hidden, logits."""
        G = self.members
        pre = linear(self._drop(x, self.cfg["input_dropout"], gen), self.t_fc1_w, self.t_fc1_b)
        pre = pre + torch.bmm(exo_pooled.unsqueeze(0).expand(G, *exo_pooled.shape), self.t_exo_w)
        h, a = hidden_activation(pre, self.t_ln1_g, self.t_ln1_b, self.cfg["dropout"], gen)
        return h, linear(a, self.t_fc2_w, self.t_fc2_b)

    def _logits(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return self.student(x, gen)[1]

    def teacher_member_logits(self, x: torch.Tensor, exo: torch.Tensor,
                              exo_mask: torch.Tensor) -> torch.Tensor:
        """Every member's teacher logits (G, B, C) on prepared ego / exo."""
        return self.teacher(x, self.pool_exo(exo, exo_mask), None)[1]

    def loss(self, batch: dict, label_smoothing: float = 0.0,
             class_weight: torch.Tensor | None = None, gen: torch.Generator | None = None
             ) -> torch.Tensor:
        """Per member (G,): the teacher's combined loss (kscli.heads.teacher), every member at once."""
        x, y = batch["ego"], batch["y"]
        teacher = self.teacher(x, self.pool_exo(batch["exo"], batch["exo_mask"], gen), gen)
        return teacher_loss(lambda logits: stacked_cross_entropy(logits, y, label_smoothing, class_weight),
                            self.student(x, gen), teacher, self.cfg, mean=lambda t: t.mean(1))


@register_head
class DistillHead(StackedHead):
    name = "distill"
    description = "student on ego taught by an ego + exo teacher (exo in training only)"
    Config = DistillConfig
    Net = DistillNet
    has_teacher = True

    @torch.no_grad()
    def teacher_proba(self, fs) -> np.ndarray | None:
        """The teacher's (N, C) from ego + exo (rows without an ego feature: the prior)."""
        if not fs.has_exo():
            return None
        exo, mask = exo_tensors(fs)
        net = self.model
        dev = net.ego_mean.device

        def logits(ego, rows):
            m = torch.from_numpy(np.asarray(rows)).long()
            e, k = exo[m].to(dev), mask[m].to(dev)
            return net.teacher_member_logits(net.prepare_ego(ego), net.prepare_exo(e, k), k)[0]

        return self._proba(fs, logits)
