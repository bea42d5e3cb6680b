"""The stacked network every stacking head (linear, mlp, distill, attentive) is made of.

A `StackedNet` holds G independent copies ("members") of one network: each parameter has shape
(G, ...) and one forward computes all G members with batched matmuls (`torch.baddbmm`). The
driver uses that to train a whole lr x weight-decay grid in one pass over the features;
`select_member(g)` cuts member g out as an ordinary G=1 network, which is what gets saved.

Conventions
-----------
* `predict_logits(ego)` takes *raw* ego features, (N, D) or (N, T, D), and returns (N, C) for
  a G=1 net. It standardises with the train statistics stored as buffers (`ego_mean`,
  `ego_std`), so a checkpoint is self-contained. Inference never needs exo.
* Randomness is passed, never global: the initial weights are drawn from the `generator` the
  net is built with (`self.init_generator` inside `_build`), and the training draws (dropout,
  view dropout) from the `gen` that `loss` and `_logits` take in training (a generator on the
  net's device; None at evaluation: no dropout).
* `loss(batch, label_smoothing, class_weight, gen)` returns per-member losses (G,). The batch holds
  *prepared* tensors (see `prepare_ego` / `prepare_exo`; the trainer standardises the whole
  set once instead of every mini-batch): `ego`, `y`, and for nets with `uses_exo`, `exo`
  (B, V, Dx) and `exo_mask` (B, V).
* Nets that are not sequence nets mean-pool a (N, T, D) input over T before standardising;
  `attentive` pools over T with learned attention (an (N, D) input is T=1).
* `cfg` is the dict of the head's model options (`HeadConfig.model_cfg()`), complete: the
  head's Config holds the defaults, never the net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kscli.errors import KscliError
from kscli.heads.common import dropout


# ----------------------------------------------------------------------------- building blocks
def stacked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
                          class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy per member. logits (G, B, C), y (B,) -> (G,): member g's value is
    `F.cross_entropy(logits[g], y, label_smoothing=..., weight=class_weight)` (reduction
    'mean'), computed by torch for all members at once.

    With class weights w, sample i's loss is w[y_i] (1-e) (-log p_{y_i}) + e/C sum_c w[c]
    (-log p_c) (torch weighs the smoothing term by each class's own weight) and the member's
    loss is the sum over the batch divided by sum_i w[y_i], as torch's 'mean' does; a batch
    whose labels all weigh 0 gives 0 (torch: NaN)."""
    G, B, C = logits.shape
    per = F.cross_entropy(logits.reshape(G * B, C), y.repeat(G), weight=class_weight,
                          label_smoothing=label_smoothing, reduction="none").view(G, B)
    if class_weight is None:
        return per.mean(1)
    return per.sum(1) / class_weight[y].sum().clamp_min(1e-12)


def trunc_normal(shape, std: float, generator: torch.Generator) -> torch.Tensor:
    """A normal(0, std) tensor truncated at +-2 std, drawn from `generator`."""
    t = torch.empty(shape)
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=generator)
    return t


def layer_norm(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with a per-member affine: weight/bias (G, 1, H)."""
    return F.layer_norm(h, h.shape[-1:]) * weight + bias


def hidden_activation(pre: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, p: float,
                      gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden layer of mlp and of distill's student and teacher, after its linear map:
    h = LayerNorm(pre) (per-member affine), then GELU and dropout `p` (one mask shared by the
    members, drawn from `gen`). Returns (h, the activation the classifier reads)."""
    h = layer_norm(pre, norm_weight, norm_bias)
    return h, dropout(F.gelu(h), p, gen, h.shape[-2:])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Stacked affine map: x (G, B, D) or, shared by every member, (B, D); weight (G, D, H),
    bias (G, 1, H) -> (G, B, H). One batched matmul for all members."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(weight.shape[0], *x.shape)
    return torch.baddbmm(bias, x, weight)


# ----------------------------------------------------------------------------- base class
class StackedNet(nn.Module):
    """G stacked copies of a network. Subclasses implement `_build` (drawing initial values from
    `self.init_generator`) and `_logits(x, gen=None) -> (G, B, C)` on prepared (standardised)
    input."""

    head_name: str = ""  # for messages: the head this net belongs to
    sequence_input: bool = False  # True: takes (B, T, D); otherwise (B, D) (T mean-pooled)
    uses_exo: bool = False  # True: loss() uses batch["exo"], batch["exo_mask"]
    input_weights: tuple[str, ...] = ()  # (G, D, *) params that act linearly on the ego input

    def __init__(self, in_dim: int, num_classes: int, cfg: dict | None = None, members: int = 1, *,
                 generator: torch.Generator):
        """`generator` draws the initial weights (a CPU generator; a net whose state is loaded
        next may take any, e.g. `torch.Generator()`)."""
        super().__init__()
        if in_dim < 1 or num_classes < 2 or members < 1:
            raise KscliError(f"head {self.head_name!r}: need in_dim >= 1, num_classes >= 2, "
                             f"members >= 1 (got {in_dim}, {num_classes}, {members})")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.members = int(members)
        self.cfg = dict(cfg or {})
        self._no_decay: set[str] = set()
        self.register_buffer("ego_mean", torch.zeros(self.in_dim))
        self.register_buffer("ego_std", torch.ones(self.in_dim))
        if self.uses_exo:
            exo_dim = int(self.cfg.get("exo_dim") or self.in_dim)
            self.cfg["exo_dim"] = exo_dim
            self.register_buffer("exo_mean", torch.zeros(exo_dim))
            self.register_buffer("exo_std", torch.ones(exo_dim))
        self.init_generator = generator
        self._build()
        self.init_generator = None  # the module keeps no generator

    # -- construction helpers
    def _build(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _param(self, name: str, init: torch.Tensor, decay: bool = True) -> None:
        """Register a stacked parameter: `init` is one member's value, copied to all G (every
        member starts from the same point, so grid members differ only by lr / wd)."""
        p = nn.Parameter(init.unsqueeze(0).repeat(self.members, *([1] * init.dim())).contiguous())
        self.register_parameter(name, p)
        if not decay:
            self._no_decay.add(name)

    def no_decay_names(self) -> set[str]:
        """The parameters weight decay leaves alone (registered with decay=False)."""
        return set(self._no_decay)

    def _linear_params(self, prefix: str, d_in: int, d_out: int, std: float | None = 0.02) -> None:
        w = torch.zeros(d_in, d_out) if std is None else trunc_normal((d_in, d_out), std,
                                                                       self.init_generator)
        self._param(f"{prefix}_w", w)
        self._param(f"{prefix}_b", torch.zeros(1, d_out), decay=False)

    def _norm_params(self, prefix: str, dim: int) -> None:
        self._param(f"{prefix}_g", torch.ones(1, dim), decay=False)
        self._param(f"{prefix}_b", torch.zeros(1, dim), decay=False)

    # -- normalisation (train statistics live in buffers)
    def set_normalization(self, ego_mean, ego_std, exo_mean=None, exo_std=None) -> None:
        self.ego_mean.copy_(torch.as_tensor(ego_mean, dtype=torch.float32))
        self.ego_std.copy_(torch.as_tensor(ego_std, dtype=torch.float32))
        if self.uses_exo and exo_mean is not None:
            self.exo_mean.copy_(torch.as_tensor(exo_mean, dtype=torch.float32))
            self.exo_std.copy_(torch.as_tensor(exo_std, dtype=torch.float32))

    def pool_ego(self, ego: torch.Tensor) -> torch.Tensor:
        """Raw ego (B, D) / (B, T, D) -> the shape this head takes, before standardising."""
        if ego.dim() not in (2, 3):
            raise KscliError(f"ego features must be (N, D) or (N, T, D), got {tuple(ego.shape)}")
        if ego.shape[-1] != self.in_dim:
            raise KscliError(f"ego features have dimension {ego.shape[-1]} but the head "
                             f"{self.head_name!r} was trained on {self.in_dim}")
        ego = ego.float()
        if self.sequence_input:
            return ego.unsqueeze(1) if ego.dim() == 2 else ego
        return ego.mean(1) if ego.dim() == 3 else ego

    def prepare_ego(self, ego: torch.Tensor) -> torch.Tensor:
        return (self.pool_ego(ego) - self.ego_mean) / self.ego_std

    def prepare_exo(self, exo: torch.Tensor, exo_mask: torch.Tensor) -> torch.Tensor:
        """Raw exo (B, V, D) / (B, V, T, D) -> standardised (B, V, Dx), exactly 0 where absent."""
        exo = exo.float()
        if exo.dim() == 4:
            exo = exo.mean(2)
        x = (exo - self.exo_mean) / self.exo_std
        return torch.where(exo_mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))

    # -- forward
    def _logits(self, x: torch.Tensor, gen: torch.Generator | None = None
                ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def member_logits(self, x_prepared: torch.Tensor) -> torch.Tensor:
        """All members' logits (G, B, C) on prepared input, without dropout."""
        return self._logits(x_prepared)

    def predict_logits(self, ego) -> torch.Tensor:
        """Raw ego features (N, D) or (N, T, D) -> logits (N, C). Ego only; G must be 1."""
        if self.members != 1:
            raise KscliError("predict_logits needs a single head; call select_member(g) first")
        ego = torch.as_tensor(ego)
        return self._logits(self.prepare_ego(ego.to(self.ego_mean.device)))[0]

    def forward(self, ego) -> torch.Tensor:
        return self.predict_logits(ego)

    def loss(self, batch: dict, label_smoothing: float = 0.0,
             class_weight: torch.Tensor | None = None, gen: torch.Generator | None = None
             ) -> torch.Tensor:
        """Per-member training loss (G,) on a prepared batch; `gen` draws the dropout masks."""
        return stacked_cross_entropy(self._logits(batch["ego"], gen), batch["y"], label_smoothing,
                                     class_weight)

    @torch.no_grad()
    def fold_input_transform(self, P: torch.Tensor) -> None:
        """The head was trained on x @ P (x standardised ego, P (D, D)); fold P into the
        parameters that read the input so the head takes plain standardised x. Exact at eval
        because every head's first operation on ego is linear (input dropout aside)."""
        P = P.to(self.ego_mean.device, torch.float32)
        for name in self.input_weights:
            w = getattr(self, name)
            w.copy_(torch.matmul(P, w))

    # -- members
    def select_member(self, g: int) -> "StackedNet":
        """Member g as a new G=1 head of the same kind (its parameters and the buffers copied)."""
        if not 0 <= g < self.members:
            raise IndexError(f"member {g} out of range 0..{self.members - 1}")
        out = type(self)(self.in_dim, self.num_classes, self.cfg, members=1,
                         generator=torch.Generator())  # its values are replaced below
        params = dict(self.named_parameters())
        state = {k: (params[k][g:g + 1] if k in params else v).detach().clone()
                 for k, v in self.state_dict().items()}
        out.load_state_dict(state)
        return out.to(self.ego_mean.device).train(self.training)
