"""Light heads on cached features, with a registry like timm's.

Every head is a *stacked* module: it holds G independent copies ("members") of itself, each
parameter has shape (G, ...), and one forward computes all G members with batched matmuls
(`torch.baddbmm`). The trainer uses that to train a whole lr x weight-decay grid in one pass
over the features; `select_member(g)` then cuts member g out as an ordinary G=1 head, which is
what gets saved and used for prediction.

Conventions
-----------
* `predict_logits(ego)` takes *raw* ego features, (N, D) or (N, T, D), and returns (N, C) for
  a G=1 head. It standardises with the train statistics stored as buffers (`ego_mean`,
  `ego_std`), so a checkpoint is self-contained. Inference never needs exo.
* `loss(batch, label_smoothing, class_weight)` returns per-member losses (G,). The batch holds
  *prepared* tensors (see `prepare_ego` / `prepare_exo`; the trainer standardises the whole
  set once instead of every mini-batch): `ego`, `y`, and for heads with `uses_exo`, `exo`
  (B, V, Dx) and `exo_mask` (B, V).
* Heads that are not sequence heads mean-pool a (N, T, D) input over T before standardising;
  `attentive` pools over T with learned attention (an (N, D) input is T=1).
* Rebuild: `create_head(name, in_dim, num_classes, cfg)` then `load_state_dict`, or
  `build_head_from_checkpoint(ckpt)` for the dict `kscli.heads.train.head_state` makes.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kscli.errors import KscliError
from kscli.heads.common import plain

CHECKPOINT_FORMAT = "kscli-head"
CHECKPOINT_VERSION = 1

_HEADS: dict[str, type["StackedHead"]] = {}


def register_head(name: str) -> Callable[[type["StackedHead"]], type["StackedHead"]]:
    """Class decorator: make a StackedHead subclass available as `create_head(name, ...)`."""

    def deco(cls: type["StackedHead"]) -> type["StackedHead"]:
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"head {name!r} is already registered")
        cls.head_name = name
        _HEADS[name] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    return sorted(_HEADS)


def head_class(name: str) -> type["StackedHead"]:
    if name not in _HEADS:
        raise KscliError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[name]


def create_head(name: str, in_dim: int, num_classes: int, cfg: dict | None = None,
                members: int = 1) -> "StackedHead":
    """Build head `name`. `cfg` may hold more keys than the head uses (e.g. a whole TrainConfig
    dict); the head keeps only its own keys (`model.cfg`), filled in from its defaults."""
    return head_class(name)(in_dim, num_classes, cfg or {}, members=members)


def checkpoint_state(model: nn.Module, head: str, result=None) -> dict:
    """The checkpoint dict every kscli head saves: format tag, head name, sizes, the head's own
    config and weights as plain tensors (safe for torch.load(weights_only=True)), plus the
    training record of `result` (a TrainResult / ContextResult) when given."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "head": head,
        "in_dim": int(model.in_dim),
        "num_classes": int(model.num_classes),
        "cfg": plain(model.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if result is not None:
        state.update(plain({"train_cfg": result.cfg.to_dict(), "selected": result.selected,
                            "grid": result.grid, "history": result.history,
                            "timings": result.timings, "notes": result.notes}))
    return state


def check_checkpoint(ckpt: dict) -> None:
    """One clear error for a dict that is not a kscli head checkpoint this version can read."""
    for key in ("head", "in_dim", "num_classes", "cfg", "state_dict"):
        if key not in ckpt:
            raise KscliError(f"head checkpoint has no {key!r}: not a kscli head checkpoint")
    fmt = ckpt.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise KscliError(f"checkpoint format is {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
    if int(ckpt.get("version", CHECKPOINT_VERSION)) > CHECKPOINT_VERSION:
        raise KscliError(f"head checkpoint version {ckpt['version']} is newer than this kscli "
                         f"understands ({CHECKPOINT_VERSION}); upgrade kscli")


def load_checkpoint_weights(build: Callable[[], nn.Module], ckpt: dict) -> nn.Module:
    """build() the head (without moving the caller's RNG), load ckpt's weights strictly;
    eval mode, CPU."""
    with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the caller's RNG
        model = build()
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise KscliError(f"head checkpoint does not fit head {ckpt['head']!r}: "
                         f"{first[0] if first else e}") from None
    return model.eval()


def build_head_from_checkpoint(ckpt: dict) -> "StackedHead":
    """Rebuild a G=1 head, eval mode, on CPU, from the dict `head_state` makes (or any dict with
    keys head, in_dim, num_classes, cfg, state_dict). Works on `torch.load(weights_only=True)`."""
    check_checkpoint(ckpt)
    return load_checkpoint_weights(
        lambda: create_head(ckpt["head"], int(ckpt["in_dim"]), int(ckpt["num_classes"]),
                            dict(ckpt["cfg"]), members=1), ckpt)


# ----------------------------------------------------------------------------- building blocks
def stacked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
                          class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy per member. logits (G, B, C), y (B,) -> (G,).

    Label smoothing as torch's: (1-e) * NLL + e * mean over classes of -log p. With class
    weights each sample counts w[y] and the loss is normalised by the sum of weights."""
    G, B, _ = logits.shape
    logp = logits.log_softmax(-1)
    loss = -logp.gather(-1, y.view(1, B, 1).expand(G, B, 1)).squeeze(-1)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * logp.mean(-1)
    if class_weight is not None:
        w = class_weight[y]
        return (loss * w).sum(1) / w.sum().clamp_min(1e-12)
    return loss.mean(1)


def _trunc_normal(shape, std: float) -> torch.Tensor:
    t = torch.empty(shape)
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)
    return t


def dropout_shared(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with one mask shared by all members (broadcast over the leading G dim
    of a (G, B, H) tensor; a (B, D) tensor gets its own mask). Sharing the mask means grid
    members see the same noise (they differ only by lr / wd) and costs 1/G of the random
    numbers; the mask comes from random bytes (8 per int64 draw, keep if byte >= round(256 p)),
    about 10x faster than torch's bernoulli on CPU. p is thus rounded to a multiple of 1/256."""
    if not training or p <= 0:
        return h
    k = min(256, max(1, int(round(p * 256))))
    if k >= 256:
        return h * 0.0
    shape = h.shape[-2:]
    n = shape[0] * shape[1]
    words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=h.device)
    keep = words.view(torch.uint8)[:n].view(shape) >= k
    return h * keep.to(h.dtype).mul_(256.0 / (256 - k))


def _layer_norm(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with a per-member affine: weight/bias (G, 1, H)."""
    return F.layer_norm(h, h.shape[-1:]) * weight + bias


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Stacked affine map: x (G, B, D) or, shared by every member, (B, D); weight (G, D, H),
    bias (G, 1, H) -> (G, B, H). One batched matmul for all members."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(weight.shape[0], *x.shape)
    return torch.baddbmm(bias, x, weight)


# ----------------------------------------------------------------------------- base class
class StackedHead(nn.Module):
    """G stacked copies of a head. Subclasses set `default_cfg` and implement `_build` and
    `_logits(x) -> (G, B, C)` on prepared (standardised) input."""

    head_name: str = ""
    sequence_input: bool = False  # True: takes (B, T, D); otherwise (B, D) (T mean-pooled)
    uses_exo: bool = False  # True: loss() uses batch["exo"], batch["exo_mask"]
    input_weights: tuple[str, ...] = ()  # (G, D, *) params that act linearly on the ego input
    default_cfg: dict = {}

    def __init__(self, in_dim: int, num_classes: int, cfg: dict | None = None, members: int = 1):
        super().__init__()
        if in_dim < 1 or num_classes < 2 or members < 1:
            raise KscliError(f"head {self.head_name!r}: need in_dim >= 1, num_classes >= 2, "
                             f"members >= 1 (got {in_dim}, {num_classes}, {members})")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.members = int(members)
        cfg = dict(cfg or {})
        self.cfg = {k: type(v)(cfg[k]) if (k in cfg and cfg[k] is not None and v is not None)
                    else cfg.get(k, v) for k, v in self.default_cfg.items()}
        self.no_decay: set[str] = set()
        self.register_buffer("ego_mean", torch.zeros(self.in_dim))
        self.register_buffer("ego_std", torch.ones(self.in_dim))
        if self.uses_exo:
            exo_dim = int(self.cfg.get("exo_dim") or self.in_dim)
            self.cfg["exo_dim"] = exo_dim
            self.register_buffer("exo_mean", torch.zeros(exo_dim))
            self.register_buffer("exo_std", torch.ones(exo_dim))
        self._build()

    # -- construction helpers
    def _build(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _param(self, name: str, init: torch.Tensor, decay: bool = True) -> None:
        """Register a stacked parameter: `init` is one member's value, copied to all G (every
        member starts from the same point, so grid members differ only by lr / wd)."""
        p = nn.Parameter(init.unsqueeze(0).repeat(self.members, *([1] * init.dim())).contiguous())
        self.register_parameter(name, p)
        if not decay:
            self.no_decay.add(name)

    def _linear_params(self, prefix: str, d_in: int, d_out: int, std: float | None = 0.02) -> None:
        w = torch.zeros(d_in, d_out) if std is None else _trunc_normal((d_in, d_out), std)
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
    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def member_logits(self, x_prepared: torch.Tensor) -> torch.Tensor:
        """All members' logits (G, B, C) on prepared input."""
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
             class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-member training loss (G,) on a prepared batch."""
        return stacked_cross_entropy(self._logits(batch["ego"]), batch["y"], label_smoothing,
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
    def select_member(self, g: int) -> "StackedHead":
        """Member g as a new G=1 head of the same kind (its parameters and the buffers copied)."""
        if not 0 <= g < self.members:
            raise IndexError(f"member {g} out of range 0..{self.members - 1}")
        with torch.random.fork_rng(devices=[]):
            out = type(self)(self.in_dim, self.num_classes, self.cfg, members=1)
        params = dict(self.named_parameters())
        state = {k: (params[k][g:g + 1] if k in params else v).detach().clone()
                 for k, v in self.state_dict().items()}
        out.load_state_dict(state)
        return out.to(self.ego_mean.device).train(self.training)


# ----------------------------------------------------------------------------- heads
@register_head("linear")
class LinearHead(StackedHead):
    """Linear probe on the (T-mean-pooled) standardised ego feature."""

    default_cfg: dict = {}
    input_weights = ("fc_w",)

    def _build(self) -> None:
        self._linear_params("fc", self.in_dim, self.num_classes, std=None)  # zero init

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.fc_w, self.fc_b)


@register_head("mlp")
class MLPHead(StackedHead):
    """Linear -> LayerNorm -> GELU -> Dropout -> Linear on the standardised ego feature."""

    default_cfg: dict = {"hidden": 1024, "dropout": 0.5, "input_dropout": 0.0}
    input_weights = ("fc1_w",)

    def _build(self) -> None:
        h = int(self.cfg["hidden"])
        self._linear_params("fc1", self.in_dim, h, std=1.0 / math.sqrt(self.in_dim))
        self._norm_params("ln1", h)
        self._linear_params("fc2", h, self.num_classes, std=0.02)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.cfg["input_dropout"] > 0:
            x = dropout_shared(x, self.cfg["input_dropout"], True)
        return _layer_norm(_linear(x, self.fc1_w, self.fc1_b), self.ln1_g, self.ln1_b)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = dropout_shared(F.gelu(self._hidden(x)), self.cfg["dropout"], self.training)
        return _linear(h, self.fc2_w, self.fc2_b)


@register_head("distill")
class DistillHead(StackedHead):
    """Privileged-information distillation: a teacher sees ego + exo, a student sees ego only.

    student: h_s = LN(W_s ego)            -> GELU -> dropout -> classifier_s
    teacher: h_t = LN(W_te ego + W_tx exo) -> GELU -> dropout -> classifier_t, where exo is the
             masked mean of the segment's real exo views, each view dropped with probability
             `view_dropout` in training (a segment with no views left gets exo = 0, i.e. the
             train mean, and the teacher falls back on ego).
    loss = CE(student) + teacher_weight * CE(teacher)
           + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))   (teacher detached)
           + beta * mean((h_s - h_t.detach())^2)                            (hint on hidden)
    Only the student predicts: `predict_logits(ego)` never touches the teacher.
    """

    uses_exo = True
    input_weights = ("s_fc1_w", "t_fc1_w")
    default_cfg: dict = {"hidden": 1024, "dropout": 0.5, "input_dropout": 0.0,
                         "temperature": 2.0, "alpha": 1.0, "beta": 1.0, "teacher_weight": 1.0,
                         "view_dropout": 0.3, "exo_dim": 0}

    def _build(self) -> None:
        h, d, dx = int(self.cfg["hidden"]), self.in_dim, int(self.cfg["exo_dim"])
        self._linear_params("s_fc1", d, h, std=1.0 / math.sqrt(d))
        self._norm_params("s_ln1", h)
        self._linear_params("s_fc2", h, self.num_classes, std=0.02)
        self._linear_params("t_fc1", d, h, std=1.0 / math.sqrt(d + dx))
        self._param("t_exo_w", _trunc_normal((dx, h), 1.0 / math.sqrt(d + dx)))
        self._norm_params("t_ln1", h)
        self._linear_params("t_fc2", h, self.num_classes, std=0.02)

    def _drop_in(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg["input_dropout"]
        return dropout_shared(x, p, self.training)

    def _student(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _layer_norm(_linear(self._drop_in(x), self.s_fc1_w, self.s_fc1_b),
                        self.s_ln1_g, self.s_ln1_b)
        a = dropout_shared(F.gelu(h), self.cfg["dropout"], self.training)
        return h, _linear(a, self.s_fc2_w, self.s_fc2_b)

    def pool_exo(self, exo: torch.Tensor, exo_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over views of prepared exo (B, V, Dx) -> (B, Dx); view dropout in train."""
        keep = exo_mask
        p = float(self.cfg["view_dropout"])
        if self.training and p > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= p)
        w = keep.to(exo.dtype)
        return (exo * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)

    def _teacher(self, x: torch.Tensor, exo_pooled: torch.Tensor):
        G = self.members
        pre = _linear(self._drop_in(x), self.t_fc1_w, self.t_fc1_b)
        pre = pre + torch.bmm(exo_pooled.unsqueeze(0).expand(G, *exo_pooled.shape), self.t_exo_w)
        h = _layer_norm(pre, self.t_ln1_g, self.t_ln1_b)
        a = dropout_shared(F.gelu(h), self.cfg["dropout"], self.training)
        return h, _linear(a, self.t_fc2_w, self.t_fc2_b)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._student(x)[1]

    def teacher_logits(self, ego, exo, exo_mask) -> torch.Tensor:
        """Teacher logits (G, N, C) from raw ego / exo / mask (diagnostics only)."""
        dev = self.ego_mean.device
        x = self.prepare_ego(torch.as_tensor(ego).to(dev))
        m = torch.as_tensor(exo_mask, dtype=torch.bool).to(dev)
        e = self.prepare_exo(torch.as_tensor(exo).to(dev), m)
        return self._teacher(x, self.pool_exo(e, m))[1]

    def loss(self, batch: dict, label_smoothing: float = 0.0,
             class_weight: torch.Tensor | None = None) -> torch.Tensor:
        x, y = batch["ego"], batch["y"]
        hs, ls = self._student(x)
        ht, lt = self._teacher(x, self.pool_exo(batch["exo"], batch["exo_mask"]))
        total = stacked_cross_entropy(ls, y, label_smoothing, class_weight)
        tw, alpha, beta = (float(self.cfg[k]) for k in ("teacher_weight", "alpha", "beta"))
        if tw > 0:
            total = total + tw * stacked_cross_entropy(lt, y, label_smoothing, class_weight)
        if alpha > 0:
            T = float(self.cfg["temperature"])
            pt = (lt.detach() / T).log_softmax(-1)
            kl = (pt.exp() * (pt - (ls / T).log_softmax(-1))).sum(-1).mean(1)
            total = total + alpha * T * T * kl
        if beta > 0:
            total = total + beta * (hs - ht.detach()).pow(2).mean(-1).mean(1)
        return total


@register_head("attentive")
class AttentiveHead(StackedHead):
    """Multi-head attention pooling with a learned query over a (T, D) sequence, then a linear
    classifier. An (N, D) input is a sequence of length 1.

    Per attention head h: score_t = q_h . (W_k^h x_t) / sqrt(d_k) = x_t . a_h, with the learned
    query folded into the key projection (a_h = W_k^h^T q_h / sqrt(d_k), the same function with
    fewer parameters, and one (B*T, D) x (D, G*H) matmul for all members and heads);
    p = softmax_t(score); out_h = W_v^h (sum_t p_t x_t) (values projected after pooling, which
    is the same as projecting each token, T times cheaper); concat heads -> LayerNorm ->
    dropout -> linear classifier.
    """

    sequence_input = True
    input_weights = ("attn_w", "value_w")
    default_cfg: dict = {"num_heads": 4, "attn_dim": 512, "dropout": 0.1}

    def _build(self) -> None:
        nh, da = int(self.cfg["num_heads"]), int(self.cfg["attn_dim"])
        if da % nh:
            raise KscliError(f"attentive head: attn_dim {da} is not a multiple of num_heads {nh}")
        d = self.in_dim
        self._param("attn_w", _trunc_normal((d, nh), 0.02))  # folded query x key projection
        # value projection, heads side by side: columns h*dv:(h+1)*dv belong to head h
        self._param("value_w", _trunc_normal((d, da), 1.0 / math.sqrt(d)))
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

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
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
        h = dropout_shared(_layer_norm(v, self.ln_g, self.ln_b), self.cfg["dropout"], self.training)
        return _linear(h, self.fc_w, self.fc_b)
