"""Training-step cost of ways to train a lr x wd grid, kscli's StackedAdamW among them:
python bench/optimizer.py [--quick]

A stacking head trains its whole grid (G members, one lr and one weight decay each) as one net
whose parameters are stacked (G, ...): forward is batched matmuls (`torch.baddbmm`), the loss is
summed over members and `kscli.heads.optim.StackedAdamW` steps every member with its own lr
and decay. This script asked whether a library optimizer could do that job as fast as the
hand-written AdamW kscli had (kept here as `HandWrittenAdamW`, variant A); it could (B-view),
so kscli's StackedAdamW is now B-view's way (variant K), and the script keeps checking that.
It times a full training step (forward + backward + optimizer step, and the optimizer step on
its own) of the two head shapes, built here from plain tensors with the layout of kscli's nets:

    linear  x @ W (D, C) + b (1, C)
    mlp     gelu(layernorm(x @ W1 (D, H) + b1) * g + beta) @ W2 (H, C) + b2
            (H = 1024; no dropout, so that every variant computes the same numbers)

for C = 278 classes, a batch of B = 256 standardised features, D in {768, 1024}, G in {1, 4, 9}.
The variants, all with AdamW's betas (0.9, 0.999), eps 1e-8, decay off for biases and norm
affines, member g at lrs[g] and wds[g]:

    A       stacked leaves (G, ...), baddbmm forward, HandWrittenAdamW (kscli before: one
            Python-level update per stacked tensor, lr and wd broadcast per member)
    K       A's leaves and forward, kscli.heads.optim.StackedAdamW (kscli today: B-view's way)
    B-stk   G separate per-member leaves (a parameter group holds whole tensors, so a member's
            lr cannot be set on a slice of a stacked leaf), torch.stack'ed every step so that
            forward is A's baddbmm; torch.optim.AdamW with two groups per member (decay,
            no decay), foreach=True or fused=True
    B-loop  the same per-member leaves and AdamW, forward as G separate addmm's per layer
    B-view  A's stacked leaves and baddbmm forward; AdamW(fused=True), two groups per member,
            over per-member leaves that are detached views of the stacked storage (a detached
            view is a leaf), their .grad set to views of the stacked grad before each step:
            per-member groups with no copy of parameters or gradients
    C-vmap  torch.func.stack_module_state of G nn.Module copies, forward
            vmap(functional_call), the stacked leaves stepped by HandWrittenAdamW (torch.optim
            can give a stacked leaf only one lr): is vmap as fast a forward as baddbmm?
    ref     A's stacked leaves with ONE torch.optim.AdamW(fused=True) group: every member at
            lrs[0], wds[0], so NOT a grid -- a lower bound on what an optimizer step can cost

Before timing, each variant takes two steps from the same initial parameters on the same
batches as A: its loss and gradients are asserted equal to A's and its parameters allclose to
A's after each step (ref's to those of A run with every member at lrs[0], wds[0]; see `check`
for the tolerances and the eps it uses). Timing is in one process, one thread pool
(torch.set_num_threads, 2 by default), the variants alternated round-robin (their order
rotated every round) after warmup steps, one step per variant per round by default (--steps)
over many rounds, so that a burst of load from another process falls on every variant alike.
These machines are noisy and shared: the figures are medians over all timed steps (and the
fastest step, which contention can only slow) and ratios against A measured in the same run --
compare ratios, not absolute times. C's optimizer step is A's (HandWrittenAdamW on the same
tensors), so how far its "opt ratio" is from 1.00 shows the noise of the run.

    python bench/optimizer.py             # D 768/1024, G 1/4/9, 1 step x 24 rounds (2-4 min)
    python bench/optimizer.py --quick     # D 1024, G 1/4, 1 step x 8 rounds (< 1 min)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kscli.heads.optim import StackedAdamW, decay_groups  # noqa: E402

NUM_CLASSES, HIDDEN, BATCH = 278, 1024, 256
EPS, BETAS = 1e-8, (0.9, 0.999)


class HandWrittenAdamW(torch.optim.Optimizer):
    """The AdamW kscli stepped its stacked grids with until it measured this script: one lr and
    decoupled weight decay per member (G values, broadcast over the member axis), the same update
    as torch.optim.AdamW member by member, written as Python-level tensor operations."""

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


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


# ----------------------------------------------------------------------------- the heads
def param_specs(head: str, D: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, per-member shape, decayed) of a head's parameters, laid out as kscli's nets."""
    C, H = NUM_CLASSES, HIDDEN
    if head == "linear":
        return [("fc_w", (D, C), True), ("fc_b", (1, C), False)]
    return [("fc1_w", (D, H), True), ("fc1_b", (1, H), False), ("ln1_g", (1, H), False),
            ("ln1_b", (1, H), False), ("fc2_w", (H, C), True), ("fc2_b", (1, C), False)]


def init_params(head: str, D: int, G: int, seed: int) -> dict[str, torch.Tensor]:
    """Stacked initial values (G, ...); every variant starts from copies of these."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, decay in param_specs(head, D):
        t = torch.randn((G, *shape), generator=gen) * (0.02 if decay else 0.01)
        out[name] = t + 1.0 if name.startswith("ln") and name.endswith("_g") else t
    return out


def forward_stacked(head: str, p: dict, x: torch.Tensor) -> torch.Tensor:
    """x (B, D) shared by every member -> logits (G, B, C); p holds (G, ...) tensors."""
    w = p["fc_w" if head == "linear" else "fc1_w"]
    xs = x.unsqueeze(0).expand(w.shape[0], *x.shape)
    if head == "linear":
        return torch.baddbmm(p["fc_b"], xs, w)
    h = torch.baddbmm(p["fc1_b"], xs, w)
    h = F.gelu(F.layer_norm(h, h.shape[-1:]) * p["ln1_g"] + p["ln1_b"])
    return torch.baddbmm(p["fc2_b"], h, p["fc2_w"])


def forward_member(head: str, p: dict, x: torch.Tensor) -> torch.Tensor:
    """One member: x (B, D) -> (B, C); p holds that member's 2-d tensors."""
    if head == "linear":
        return torch.addmm(p["fc_b"], x, p["fc_w"])
    h = torch.addmm(p["fc1_b"], x, p["fc1_w"])
    h = F.gelu(F.layer_norm(h, h.shape[-1:]) * p["ln1_g"] + p["ln1_b"])
    return torch.addmm(p["fc2_b"], h, p["fc2_w"])


def stacked_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-member mean cross-entropy, summed over members (logits (G, B, C))."""
    G, B, C = logits.shape
    return F.cross_entropy(logits.reshape(G * B, C), y.repeat(G), reduction="none").view(G, B) \
        .mean(1).sum()


class Member(nn.Module):
    """One member as an nn.Module (for torch.func.stack_module_state)."""

    def __init__(self, head: str, values: dict[str, torch.Tensor]):
        super().__init__()
        self.head = head
        for name, v in values.items():
            self.register_parameter(name, nn.Parameter(v.clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_member(self.head, dict(self.named_parameters()), x)


# ----------------------------------------------------------------------------- the variants
class Variant:
    """One way to train the grid: `step(x, y)` runs forward, backward and the optimizer step
    and returns (loss, seconds of forward + backward, seconds of the optimizer step)."""

    name = ""

    def __init__(self, head: str, init: dict, lrs: list[float], wds: list[float],
                 eps: float = EPS):
        self.head, self.eps = head, eps
        self.decayed = {n for n, _, d in param_specs(head, 1) if d}
        self.build(init, lrs, wds)

    def build(self, init, lrs, wds) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, x, y) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stacked(self) -> dict[str, torch.Tensor]:
        """The current parameters as stacked (G, ...) tensors."""
        return {n: p.detach() for n, p in self.params.items()}

    def grads(self) -> dict[str, torch.Tensor]:
        """The current gradients as stacked (G, ...) tensors."""
        return {n: p.grad for n, p in self.params.items()}

    def forward_backward(self, x, y) -> float:
        loss = self.loss(x, y)
        loss.backward()
        return loss.item()

    def update(self) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def step(self, x, y) -> tuple[float, float]:
        """Seconds of forward + backward and of the optimizer step."""
        t0 = time.perf_counter()
        self.forward_backward(x, y)
        t1 = time.perf_counter()
        self.update()
        return t1 - t0, time.perf_counter() - t1


class StackedA(Variant):
    name = "A stacked+hand-written AdamW"
    optimizer = HandWrittenAdamW

    def build(self, init, lrs, wds):
        self.params = {n: v.clone().requires_grad_() for n, v in init.items()}
        no_decay = frozenset(n for n in self.params if n not in self.decayed)
        self.opt = self.optimizer(list(self.params.items()), lrs, wds, no_decay, betas=BETAS,
                                  eps=self.eps)

    def loss(self, x, y):
        return stacked_loss(forward_stacked(self.head, self.params, x), y)


class StackedKscli(StackedA):
    name = "K kscli StackedAdamW"
    optimizer = StackedAdamW


class StackedRef(StackedA):
    name = "ref stacked+AdamW fused 1lr*"

    def build(self, init, lrs, wds):
        self.params = {n: v.clone().requires_grad_() for n, v in init.items()}
        groups = [{"params": [p for n, p in self.params.items() if n in self.decayed],
                   "weight_decay": wds[0]},
                  {"params": [p for n, p in self.params.items() if n not in self.decayed],
                   "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=lrs[0], betas=BETAS, eps=self.eps, fused=True)


class PerMember(Variant):
    """G separate leaves per parameter; torch.optim.AdamW, two groups per member."""

    impl = "foreach"
    stack = True

    @property
    def name(self):
        return f"B-{'stk' if self.stack else 'loop'} AdamW {self.impl}"

    def build(self, init, lrs, wds):
        G = len(lrs)
        self.members = [{n: v[g].clone().requires_grad_() for n, v in init.items()}
                        for g in range(G)]
        groups = []
        for g, m in enumerate(self.members):
            groups.append({"params": [p for n, p in m.items() if n in self.decayed],
                           "lr": lrs[g], "weight_decay": wds[g]})
            groups.append({"params": [p for n, p in m.items() if n not in self.decayed],
                           "lr": lrs[g], "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, betas=BETAS, eps=self.eps, **{self.impl: True})

    def stacked(self):
        return {n: torch.stack([m[n].detach() for m in self.members]) for n in self.members[0]}

    def grads(self):
        return {n: torch.stack([m[n].grad for m in self.members]) for n in self.members[0]}

    def loss(self, x, y):
        if self.stack:  # one stacked copy of every parameter per step, then A's forward
            p = {n: torch.stack([m[n] for m in self.members]) for n in self.members[0]}
            return stacked_loss(forward_stacked(self.head, p, x), y)
        return sum(F.cross_entropy(forward_member(self.head, m, x), y) for m in self.members)


def per_member(stack: bool, impl: str) -> type:
    return type("PerMember", (PerMember,), {"stack": stack, "impl": impl})


class PerMemberView(Variant):
    """A's stacked leaves and forward; torch.optim.AdamW (two groups per member) over per-member
    leaves that are views of the stacked storage (detached, so they are leaves), whose grads are
    set to views of the stacked grad before each step: no copy either way."""

    impl = "fused"

    @property
    def name(self):
        return f"B-view AdamW {self.impl}"

    def build(self, init, lrs, wds):
        self.params = {n: v.clone().requires_grad_() for n, v in init.items()}
        self.views = [{n: p.detach()[g].requires_grad_() for n, p in self.params.items()}
                      for g in range(len(lrs))]
        groups = []
        for g, m in enumerate(self.views):
            groups.append({"params": [p for n, p in m.items() if n in self.decayed],
                           "lr": lrs[g], "weight_decay": wds[g]})
            groups.append({"params": [p for n, p in m.items() if n not in self.decayed],
                           "lr": lrs[g], "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, betas=BETAS, eps=self.eps, **{self.impl: True})

    def loss(self, x, y):
        return stacked_loss(forward_stacked(self.head, self.params, x), y)

    def update(self):
        for n, p in self.params.items():
            for g, m in enumerate(self.views):
                m[n].grad = p.grad[g]
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for p in self.params.values():
            p.grad = None


class FuncVmap(Variant):
    name = "C vmap+hand-written AdamW"

    def build(self, init, lrs, wds):
        modules = [Member(self.head, {n: v[g] for n, v in init.items()}) for g in range(len(lrs))]
        params, _ = stack_module_state(modules)  # stacked leaves (G, ...), requires_grad
        self.params = params
        base = copy.deepcopy(modules[0]).to("meta")

        def one(prm, x):
            return functional_call(base, prm, (x,))

        self.fwd = vmap(one, in_dims=(0, None))
        no_decay = frozenset(n for n in params if n not in self.decayed)
        self.opt = HandWrittenAdamW(list(params.items()), lrs, wds, no_decay, betas=BETAS, eps=self.eps)

    def loss(self, x, y):
        return stacked_loss(self.fwd(self.params, x), y)


VARIANTS = [StackedA, StackedKscli, per_member(True, "foreach"), per_member(True, "fused"),
            per_member(False, "foreach"), per_member(False, "fused"), PerMemberView, FuncVmap,
            StackedRef]


def grid(G: int) -> tuple[list[float], list[float]]:
    """G distinct (lr, wd) pairs, as a lr x wd grid would give."""
    lrs = [1e-3 * 3 ** ((g % 3) / 2) for g in range(G)]
    wds = [(0.05, 0.5, 0.01)[(g // 3) % 3] for g in range(G)]
    return lrs, wds


# ----------------------------------------------------------------------------- check and time
CHECK_EPS = 1e-6


def check(head: str, D: int, G: int, batches, seed: int) -> None:
    """Two steps of every variant from the same start on the same batches: the loss and the
    gradients are asserted equal to A's, and the parameters after each step (ref: equal to A's
    with every member at lrs[0], wds[0]). The check runs with eps = CHECK_EPS, the same in every
    variant: at eps 1e-8 Adam's g / (|g| + eps) amplifies the last-bit differences of a gradient
    within ~1e-8 of zero (a few entries of a million) into a sizeable share of lr."""
    init = init_params(head, D, G, seed)
    lrs, wds = grid(G)
    made = [V(head, init, lrs, wds, eps=CHECK_EPS) for V in VARIANTS]
    a_uniform = StackedA(head, init, [lrs[0]] * G, [wds[0]] * G, eps=CHECK_EPS)
    worst_g, worst_p = 0.0, 0.0
    for x, y in batches[:2]:
        losses = [v.forward_backward(x, y) for v in made]
        loss_uniform = a_uniform.forward_backward(x, y)
        for v, loss in zip(made[1:], losses[1:]):
            want_loss, want_g = ((loss_uniform, a_uniform.grads()) if isinstance(v, StackedRef)
                                 else (losses[0], made[0].grads()))
            assert abs(loss - want_loss) <= 1e-5 * abs(want_loss), (v.name, loss, want_loss)
            for n, got in v.grads().items():
                scale = float(want_g[n].abs().max())
                err = float((got - want_g[n]).abs().max()) / scale
                worst_g = max(worst_g, err)
                assert err < 1e-4, (v.name, "grad", n, err)
        for v in made + [a_uniform]:
            v.update()
        for v in made[1:]:
            want = (a_uniform if isinstance(v, StackedRef) else made[0]).stacked()
            for n, got in v.stacked().items():
                # an Adam step moves a parameter by about lr: allow 1 % of the smallest lr
                err = float((got - want[n]).abs().max()) / min(lrs)
                worst_p = max(worst_p, err)
                assert err < 0.01, (v.name, "param", n, err)
    print(f"  check {head:<6} D={D} G={G}: {len(made) - 1} variants match A over 2 steps "
          f"(loss, grads: max err {worst_g:.1e} x max|grad|; params: {worst_p:.1e} x lr); "
          f"{load()}",
          flush=True)


def time_config(made: list[Variant], batches, steps: int, rounds: int, warmup: int) -> dict:
    """Round-robin: every round runs `steps` steps of each variant in turn (order rotated)."""
    for v in made:
        for i in range(warmup):
            v.step(*batches[i % len(batches)])
    full = {v.name: [] for v in made}
    opt = {v.name: [] for v in made}
    for r in range(rounds):
        order = made[r % len(made):] + made[:r % len(made)]
        for v in order:
            for i in range(steps):
                fb, st = v.step(*batches[(r * steps + i) % len(batches)])
                full[v.name].append(fb + st)
                opt[v.name].append(st)
    return {n: (statistics.median(full[n]) * 1e3, min(full[n]) * 1e3,
                statistics.median(opt[n]) * 1e3) for n in full}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="D 1024, G 1 and 4, few steps (< 1 min)")
    ap.add_argument("--heads", nargs="+", default=["linear", "mlp"], choices=["linear", "mlp"])
    ap.add_argument("--dims", type=int, nargs="+", default=None, help="D [default: 768 1024]")
    ap.add_argument("--members", type=int, nargs="+", default=None, help="G [default: 1 4 9]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dims = args.dims or ([1024] if args.quick else [768, 1024])
    members = args.members or ([1, 4] if args.quick else [1, 4, 9])
    steps = args.steps or 1
    rounds = args.rounds or (8 if args.quick else 24)
    warmup = 1 if args.quick and args.warmup == 2 else args.warmup
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={BATCH} "
          f"C={NUM_CLASSES} H={HIDDEN}; {steps} timed step(s) x {rounds} rounds per variant "
          f"after {warmup} warmup")
    print(f"({load()})")
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    t_start = time.perf_counter()
    for head in args.heads:
        for D in dims:
            batches = [(torch.randn(BATCH, D, generator=gen),
                        torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)) for _ in range(4)]
            for G in members:
                check(head, D, G, batches, args.seed)
                lrs, wds = grid(G)
                init = init_params(head, D, G, args.seed)
                made = [V(head, init, lrs, wds) for V in VARIANTS]
                res = time_config(made, batches, steps, rounds, warmup)
                rows.append((head, D, G, res))
                del made
    print(f"({load()}; {time.perf_counter() - t_start:.0f} s)")
    print()
    print("ms per training step (forward + backward + optimizer step): median and fastest, and the "
          "median of the\noptimizer step alone; ratio = variant / A in this run (> 1: slower than "
          "the hand-written AdamW)")
    print(f"{'head':<7}{'D':>5}{'G':>3}  {'variant':<30}{'step ms':>8}{'ratio':>6}"
          f"{'min ms':>8}{'ratio':>6}{'opt ms':>8}{'ratio':>6}")
    for head, D, G, res in rows:
        base = res[StackedA.name]
        for name, (full, best, opt) in res.items():
            print(f"{head:<7}{D:>5}{G:>3}  {name:<30}{full:8.1f}{full / base[0]:6.2f}"
                  f"{best:8.1f}{best / base[1]:6.2f}{opt:8.2f}{opt / base[2]:6.2f}")
        print()
    print("* ref: one lr and wd for every member -- not a grid; a lower bound on the step's cost")


if __name__ == "__main__":
    main()
