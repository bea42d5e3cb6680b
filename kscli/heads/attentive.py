"""The `attentive` head: multi-head attention pooling with a learned query over a store's
windows (N, T, D), then a linear classifier. An (N, D) store is a sequence of length 1.

Per attention head h: score_t = q_h . (W_k^h x_t) / sqrt(d_k) = x_t . a_h, with the learned
query folded into the key projection (a_h = W_k^h^T q_h / sqrt(d_k): the same function with
fewer parameters, and one (B*T, D) x (D, G*H) matmul for all members and heads);
p = softmax_t(score); out_h = W_v^h (sum_t p_t x_t) (values projected after pooling, which is
the same as projecting each token, T times cheaper); concat heads -> LayerNorm -> dropout ->
linear classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kscli.errors import KscliError
from kscli.heads.base import option, register_head
from kscli.heads.common import dropout
from kscli.heads.layers import StackedNet, layer_norm, linear, trunc_normal
from kscli.heads.stacked import NetworkConfig, StackedHead


@dataclass
class AttentiveConfig(NetworkConfig):
    num_heads: int = option(4, "attention heads (each its own learned query)", model=True)
    attn_dim: int = option(512, "value width over all heads (a multiple of num_heads)", model=True)
    dropout: float = option(0.1, "dropout on the pooled, normalised values", model=True)

    def check(self) -> None:
        super().check()
        if self.num_heads < 1 or self.attn_dim < 1 or self.attn_dim % self.num_heads:
            raise KscliError(f"attn_dim ({self.attn_dim}) must be a positive multiple of "
                             f"num_heads ({self.num_heads})")


class AttentiveNet(StackedNet):
    head_name = "attentive"
    sequence_input = True
    input_weights = ("attn_w", "value_w")

    def _build(self) -> None:
        nh, da = int(self.cfg["num_heads"]), int(self.cfg["attn_dim"])
        if da % nh:
            raise KscliError(f"attentive head: attn_dim {da} is not a multiple of num_heads {nh}")
        d = self.in_dim
        self._param("attn_w", trunc_normal((d, nh), 0.02, self.init_generator))  # folded query x key projection
        # value projection, heads side by side: columns h*dv:(h+1)*dv belong to head h
        self._param("value_w", trunc_normal((d, da), 1.0 / math.sqrt(d), self.init_generator))
        self._norm_params("ln", da)
        self._linear_params("fc", da, self.num_classes, std=0.02)

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> pooled per member and head (G, H, B, D), attention (B, T, G, H)."""
        B, T, D = x.shape
        G, nh = self.members, int(self.cfg["num_heads"])
        if T == 1:
            return x[:, 0].unsqueeze(0).unsqueeze(0).expand(G, nh, B, D), None
        a = self.attn_w.permute(1, 0, 2).reshape(D, G * nh)
        attn = (x.reshape(B * T, D) @ a).view(B, T, G * nh).softmax(1)  # over T
        pooled = torch.bmm(attn.transpose(1, 2), x)  # (B, G*nh, D)
        return pooled.view(B, G, nh, D).permute(1, 2, 0, 3), attn.view(B, T, G, nh)

    def _logits(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        G, nh = self.members, int(self.cfg["num_heads"])
        B, T, D = x.shape
        da = self.value_w.shape[-1]
        if T == 1:  # attention over one token is the identity: every head pools x itself
            v = torch.bmm(x[:, 0].unsqueeze(0).expand(G, B, D), self.value_w)
        else:
            pooled, _ = self.pool(x)  # (G, nh, B, D)
            dv = da // nh
            wv = self.value_w.view(G, D, nh, dv).permute(0, 2, 1, 3).reshape(G * nh, D, dv)
            v = torch.bmm(pooled.reshape(G * nh, B, D), wv)
            v = v.view(G, nh, B, dv).permute(0, 2, 1, 3).reshape(G, B, da)
        h = layer_norm(v, self.ln_g, self.ln_b)
        h = dropout(h, self.cfg["dropout"], gen, h.shape[-2:])
        return linear(h, self.fc_w, self.fc_b)


@register_head
class AttentiveHead(StackedHead):
    name = "attentive"
    description = "attention pooling over a store's windows, then linear (--windows stores)"
    Config = AttentiveConfig
    Net = AttentiveNet
