"""The `linear` head: a linear probe on the (window-mean-pooled) standardised ego feature."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kscli.heads.base import register_head
from kscli.heads.config import new_default
from kscli.heads.layers import StackedNet, linear
from kscli.heads.stacked import StackedConfig, StackedHead


@dataclass
class LinearConfig(StackedConfig):
    # tuned with bench/heads.py (20,000 x 1,024 x 278 synthetic features, 2 CPU cores)
    lrs: tuple[float, ...] = new_default("lrs", (5e-3, 1e-2))
    weight_decays: tuple[float, ...] = new_default("weight_decays", (1e-4,))


class LinearNet(StackedNet):
    head_name = "linear"
    input_weights = ("fc_w",)

    def _build(self) -> None:
        self._linear_params("fc", self.in_dim, self.num_classes, std=None)  # zero init

    def _logits(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return linear(x, self.fc_w, self.fc_b)  # no dropout: gen is not needed


@register_head
class LinearHead(StackedHead):
    name = "linear"
    description = "linear probe on the ego feature (the windows averaged)"
    Config = LinearConfig
    Net = LinearNet
