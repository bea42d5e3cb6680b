"""The `mlp` head: Linear -> LayerNorm -> GELU -> Dropout -> Linear on the standardised ego
feature (windows averaged)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kscli.errors import KscliError
from kscli.heads.base import option, register_head
from kscli.heads.common import dropout
from kscli.heads.layers import StackedNet, layer_norm, linear
from kscli.heads.stacked import StackedConfig, StackedHead


@dataclass
class MLPConfig(StackedConfig):
    # tuned with bench/heads.py (20,000 x 1,024 x 278 synthetic features, 2 CPU cores)
    lrs: tuple[float, ...] = option((1e-3, 3e-3), "learning rates of the grid")
    weight_decays: tuple[float, ...] = option((0.05, 0.5), "decoupled (AdamW) weight decays of the grid")
    min_epochs: int = option(4, "fewest epochs when epochs is none")
    min_steps: int = option(200, "optimizer steps to reach when epochs is none")
    hidden: int = option(512, "width of the hidden layer", model=True)
    dropout: float = option(0.5, "dropout on the hidden layer", model=True)
    input_dropout: float = option(0.0, "dropout on the standardised input features", model=True)

    def check(self) -> None:
        super().check()
        if self.hidden < 1:
            raise KscliError(f"hidden must be >= 1 (got {self.hidden})")


class MLPNet(StackedNet):
    head_name = "mlp"
    input_weights = ("fc1_w",)

    def _build(self) -> None:
        h = int(self.cfg["hidden"])
        self._linear_params("fc1", self.in_dim, h, std=1.0 / math.sqrt(self.in_dim))
        self._norm_params("ln1", h)
        self._linear_params("fc2", h, self.num_classes, std=0.02)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = dropout(x, self.cfg["input_dropout"], self.training, x.shape[-2:])
        h = layer_norm(linear(x, self.fc1_w, self.fc1_b), self.ln1_g, self.ln1_b)
        h = dropout(F.gelu(h), self.cfg["dropout"], self.training, h.shape[-2:])
        return linear(h, self.fc2_w, self.fc2_b)


@register_head
class MLPHead(StackedHead):
    name = "mlp"
    description = "one hidden layer (LayerNorm, GELU, dropout) on the ego feature"
    Config = MLPConfig
    Net = MLPNet
