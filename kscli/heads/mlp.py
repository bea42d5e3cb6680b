"""The `mlp` head: Linear -> LayerNorm -> GELU -> Dropout -> Linear on the standardised ego
feature (windows averaged)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kscli.heads.base import register_head
from kscli.heads.common import dropout
from kscli.heads.layers import StackedNet, hidden_activation, linear
from kscli.heads.stacked import HiddenLayerConfig, StackedHead


@dataclass
class MLPConfig(HiddenLayerConfig):
    """mlp's options: the shared network grid and hidden layer (kscli.heads.stacked)."""


class MLPNet(StackedNet):
    head_name = "mlp"
    input_weights = ("fc1_w",)

    def _build(self) -> None:
        h = int(self.cfg["hidden"])
        self._linear_params("fc1", self.in_dim, h, std=1.0 / math.sqrt(self.in_dim))
        self._norm_params("ln1", h)
        self._linear_params("fc2", h, self.num_classes, std=0.02)

    def _logits(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = dropout(x, self.cfg["input_dropout"], gen, x.shape[-2:])
        _, a = hidden_activation(linear(x, self.fc1_w, self.fc1_b), self.ln1_g, self.ln1_b,
                                 self.cfg["dropout"], gen)
        return linear(a, self.fc2_w, self.fc2_b)


@register_head
class MLPHead(StackedHead):
    name = "mlp"
    description = "one hidden layer (LayerNorm, GELU, dropout) on the ego feature"
    Config = MLPConfig
    Net = MLPNet
