"""Train a light head on cached features: a whole lr x weight-decay grid in one pass.

How the grid trains together
----------------------------
The head is built with G = len(lrs) * len(weight_decays) *members*: every parameter has shape
(G, ...) and a forward computes all G members at once with batched matmuls (`torch.baddbmm`),
so one mini-batch costs one forward and one backward for the whole grid, and the features are
read once per step instead of G times. The summed loss gives each member exactly its own
gradient (members share no parameters). `StackedAdamW` is AdamW written over the stacked
tensors with lr and weight decay held as (G, 1, ...) tensors, so every member gets its own lr /
wd under the same cosine schedule. (torch.func.vmap over a functional model was the other way;
plain stacked tensors are simpler, have no functorch restrictions on dropout/RNG, and the
result of selection is an ordinary module.) All members start from the same initial weights,
see the same mini-batches and share dropout masks, so they differ only by lr / wd: a member of
a grid ends where training its (lr, wd) alone would (tested).

Preconditioning (`precondition`, on by default): the standardised ego features are multiplied
by P = c (S + lambda I)^-1/2 (S their covariance on the fit rows, lambda = precondition x the
mean eigenvalue, c so the mean variance stays 1) before training, and P is folded into the
head's input weights afterwards, so the saved head reads plain standardised features and its
shape is unchanged. Backbone features are strongly correlated; AdamW on the raw standardised
features needs many more epochs (see bench/heads.py).

Epochs: `epochs=None` (default) trains max(min_epochs, ceil(min_steps / steps per epoch))
epochs (at most max_epochs): few passes on a big set, enough steps on a small one.

Selection: after the last epoch, the member with the best top-1 (ties: lower NLL) on a
stratified holdout cut from train (`holdout_fraction`) is kept -- never the reported split --
unless `select_on="val"`, which selects on the given `val` set. The kept member is the one
trained on train minus holdout (no refit). `TrainResult.selected["select_on"]` records which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.heads.common import (GridConfigMixin, apply_right, as_f32, check_selection_val,
                                check_train_labels, cosine_scale, feature_stats, log,
                                preconditioner, seeded, torch_threads)
from kscli.heads.featureset import FeatureSet
from kscli.heads.models import (StackedHead, checkpoint_state,
                                build_head_from_checkpoint, create_head, head_class, list_heads)


__all__ = ["FeatureSet", "TrainConfig", "TrainResult", "HEAD_DEFAULTS", "train_head",
           "predict_proba", "head_state", "build_head_from_checkpoint", "list_heads",
           "StackedAdamW", "stratified_holdout", "class_balance_weights"]

# Per-head defaults that TrainConfig.for_head(head) fills in (tuned with bench/heads.py on
# 20,000 x 1,024 x 278 synthetic features, 2 CPU cores; see that script).
HEAD_DEFAULTS: dict[str, dict] = {
    "linear": dict(min_epochs=2, min_steps=64, batch_size=512, lrs=(5e-3, 1e-2),
                   weight_decays=(1e-4,)),
    "mlp": dict(min_epochs=4, min_steps=200, batch_size=512, lrs=(1e-3, 3e-3),
                weight_decays=(0.05, 0.5), hidden=512, dropout=0.5),
    "distill": dict(min_epochs=4, min_steps=200, batch_size=512, lrs=(1e-3, 3e-3),
                    weight_decays=(0.1,), hidden=512, dropout=0.5),
    "attentive": dict(min_epochs=4, min_steps=200, batch_size=512, lrs=(1e-3, 3e-3),
                      weight_decays=(0.05, 0.5)),
}


@dataclass
class TrainConfig(GridConfigMixin):
    """Everything that decides a training run. `TrainConfig.for_head(name, **overrides)` gives
    the tuned defaults for a head; the plain constructor's defaults are the linear head's."""

    head: str = "linear"
    # None: max(min_epochs, enough epochs for min_steps optimizer steps), at most max_epochs --
    # few epochs on big sets, more on small ones. An int is used as given.
    epochs: int | None = None
    batch_size: int = 512
    lrs: tuple[float, ...] = (5e-3, 1e-2)
    weight_decays: tuple[float, ...] = (1e-4,)
    label_smoothing: float = 0.1
    class_balance: bool = False
    seed: int = 0
    holdout_fraction: float = 0.1
    select_on: str = "holdout"  # "holdout" (stratified part of train) or "val"
    min_epochs: int = 2
    min_steps: int = 64
    max_epochs: int = 200
    warmup_fraction: float = 0.05  # of all steps, linear warmup before the cosine decay
    # Train on partially whitened ego features x @ P, P = (S + precondition * mean(eig S) I)^-1/2
    # (S: covariance of the standardised fit features), then fold P into the head's input
    # weights: the saved head reads plain standardised features. A preconditioner: correlated
    # features (real backbones) make AdamW slow otherwise. Weight decay then acts in the
    # preconditioned coordinates. 0 turns it off.
    precondition: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    # head-specific (ignored by heads that do not use them)
    hidden: int = 1024  # mlp, distill
    dropout: float = 0.5  # mlp, distill (attentive uses attn_dropout)
    input_dropout: float = 0.0  # mlp, distill
    temperature: float = 2.0  # distill: soft-target temperature
    alpha: float = 1.0  # distill: weight of the teacher -> student KL term
    beta: float = 1.0  # distill: weight of the hidden-feature (hint) term
    teacher_weight: float = 1.0  # distill: weight of the teacher's own CE
    view_dropout: float = 0.3  # distill: probability of dropping each exo view in training
    num_heads: int = 4  # attentive
    attn_dim: int = 512  # attentive: total value dim over heads
    attn_dropout: float = 0.1  # attentive
    device: str = "auto"  # auto: a GPU when there is one (kscli.device.resolve_device)
    num_threads: int | None = None  # None: all cores this process may use (1 if tiny)
    eval_batch_size: int = 4096

    @classmethod
    def for_head(cls, head: str, **overrides) -> "TrainConfig":
        head_class(head)  # unknown head -> KscliError
        return cls.from_dict({"head": head, **HEAD_DEFAULTS.get(head, {}), **overrides})

    def head_cfg(self) -> dict:
        """The keys the head constructors read (each head keeps only its own)."""
        return {"hidden": self.hidden, "dropout": self.dropout, "input_dropout": self.input_dropout,
                "temperature": self.temperature, "alpha": self.alpha, "beta": self.beta,
                "teacher_weight": self.teacher_weight, "view_dropout": self.view_dropout,
                "num_heads": self.num_heads, "attn_dim": self.attn_dim,
                **({"dropout": self.attn_dropout} if self.head == "attentive" else {})}

    def check(self) -> None:
        head_class(self.head)
        self.check_common()
        if self.batch_size < 1:
            raise KscliError(f"batch_size must be >= 1 (got {self.batch_size})")
        if not 0 <= self.view_dropout < 1 or not 0 <= self.dropout < 1:
            raise KscliError("dropout and view_dropout must be in [0, 1)")


@dataclass
class TrainResult:
    model: StackedHead  # the selected member: G=1, eval mode, on CPU
    cfg: TrainConfig
    # member, lr, wd, select_on ("holdout" | "val"), select_top1 (%), select_nll, n_fit,
    # n_select, epochs, steps, grid_size
    selected: dict
    # per member, lr-major: member, lr, wd, select_top1, select_nll, train_loss (last epoch)
    grid: list[dict]
    # per epoch: epoch, train_loss [G], select_top1 [G], select_nll [G], best_member,
    # best_select_top1, seconds   (index [selected["member"]] for the kept member's curve)
    history: list[dict]
    # ego_mean / ego_std (numpy, also in model buffers); exo_* for distill; precondition_rho
    # (Ledoit-Wolf shrinkage used by the preconditioner, None when off)
    norm: dict
    timings: dict  # prepare_s, precondition_s, train_s, select_s, total_s, step_ms
    fit_index: np.ndarray | None = None  # train rows the members were fit on
    holdout_index: np.ndarray | None = None  # train rows used for selection (None for 'val')
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers
def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (fit, holdout): about `fraction` of the rows, spread over the
    classes in proportion (largest remainders get the leftover places, so small data still
    gets a holdout), never a class's last example. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    want = fraction * counts
    k = np.minimum(np.floor(want).astype(np.int64), counts - 1)
    target = min(max(1, int(round(fraction * len(labels)))), int((counts - 1).sum()))
    # leftover places: largest fractional remainder first, ties in a seeded random order
    order = np.lexsort((rng.random(len(classes)), -(want - k)))
    for i in order:
        if k.sum() >= target:
            break
        if k[i] < counts[i] - 1:
            k[i] += 1
    hold = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, k) if n > 0]
    hold = np.sort(np.concatenate(hold)) if hold else np.zeros(0, dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), hold)
    return fit.astype(np.int64), hold.astype(np.int64)


def class_balance_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights (C,), mean 1 over the samples (0 for absent classes)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w.astype(np.float32)


class StackedAdamW:
    """AdamW over stacked parameters (G, ...) with a learning rate and a decoupled weight decay
    per member (G values each). Weight decay applies to names not in `no_decay` (biases and
    LayerNorm affines are exempt). Same update as torch.optim.AdamW, member by member."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], lrs, wds,
                 no_decay: set[str] = frozenset(), betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [(n, p) for n, p in named_params if p.requires_grad]
        dev = self.params[0][1].device
        self.lrs = torch.as_tensor(lrs, dtype=torch.float32, device=dev)
        self.wds = torch.as_tensor(wds, dtype=torch.float32, device=dev)
        self.no_decay = set(no_decay)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in self.params}

    def _per_member(self, v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        self.t += 1
        bc1 = 1.0 - self.b1 ** self.t
        bc2 = 1.0 - self.b2 ** self.t
        for name, p in self.params:
            if p.grad is None:
                continue
            g = p.grad
            m, v = self.state[name]
            lr = self._per_member(self.lrs * lr_scale, p)
            if name not in self.no_decay:
                p.mul_(1.0 - lr * self._per_member(self.wds, p))
            m.lerp_(g, 1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            denom = (v / bc2).sqrt_().add_(self.eps)
            p.addcdiv_(m * (lr / bc1), denom, value=-1.0)

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.grad = None


@torch.no_grad()
def _member_scores(model: StackedHead, x: torch.Tensor, y: torch.Tensor, bs: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 (%) and NLL of every member on prepared x -> two (G,) arrays."""
    was = model.training
    model.eval()
    correct = torch.zeros(model.members, dtype=torch.float64)
    nll = torch.zeros(model.members, dtype=torch.float64)
    for i in range(0, len(y), bs):
        logits = model.member_logits(x[i:i + bs])  # (G, b, C)
        yy = y[i:i + bs]
        correct += (logits.argmax(-1) == yy).sum(1).double().cpu()
        logp = logits.log_softmax(-1)
        picked = logp.gather(-1, yy.view(1, -1, 1).expand(logits.shape[0], -1, 1))
        nll -= picked.sum((1, 2)).double().cpu()
    model.train(was)
    n = max(1, len(y))
    return (100.0 * correct / n).numpy(), (nll / n).numpy()


# ----------------------------------------------------------------------------- training
def train_head(cfg: TrainConfig, train: FeatureSet, num_classes: int,
               val: FeatureSet | None = None, progress: bool = True) -> TrainResult:
    """Train cfg.head on `train` for every (lr, wd) in the grid at once; keep the best member
    on the selection split (stratified train holdout, or `val` if cfg.select_on == 'val')."""
    t_start = time.perf_counter()
    cfg.check()
    notes: list[str] = []
    labels = check_train_labels(train, num_classes)
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) < len(labels):
        notes.append(f"{len(labels) - len(labelled)} train segments without a label were skipped")

    if cfg.select_on == "val":
        check_selection_val(val, train, num_classes)
        fit_idx, hold_idx = labelled, None
    else:
        f, h = stratified_holdout(labels[labelled], cfg.holdout_fraction, cfg.seed)
        if len(h) == 0:  # every class has a single example (tiny data): a plain random holdout
            k = max(1, int(round(cfg.holdout_fraction * len(labelled))))
            h = np.sort(np.random.default_rng(cfg.seed).permutation(len(labelled))[:k])
            f = np.setdiff1d(np.arange(len(labelled)), h)
            notes.append(f"no class has 2 examples, so the holdout ({k} segments) is not "
                         f"stratified and its classes are missing from training")
        fit_idx, hold_idx = labelled[f], labelled[h]

    cls = head_class(cfg.head)
    if cls.uses_exo:
        if (train.exo is None or train.exo_mask is None
                or not np.asarray(train.exo_mask)[fit_idx].any()):
            raise KscliError(f"head {cfg.head!r} trains with exo views, but the train features "
                             f"have none")
    grid = cfg.grid()
    G = len(grid)
    dev = resolve_device(cfg.device)

    threads = cfg.num_threads
    if threads is None and G * min(cfg.batch_size, len(fit_idx)) * train.dim * num_classes < 2e7:
        threads = 1  # tiny matmuls: a second thread only adds sync cost (and hurts when shared)
    with torch_threads(threads), seeded(cfg.seed, dev):
        head_cfg = cfg.head_cfg()
        if cls.uses_exo:
            head_cfg["exo_dim"] = int(train.exo.shape[-1])
        model = create_head(cfg.head, train.dim, num_classes, head_cfg, members=G)

        # --- features: pool, standardise once with fit-row statistics, keep as one tensor
        pooled = model.pool_ego(as_f32(train.ego))  # no copy for float32 (N, D) input
        fit_t = torch.from_numpy(fit_idx)
        x_fit = pooled[fit_t]  # a copy: ours to standardise in place
        mean_t, std_t = feature_stats(x_fit)
        ego_mean, ego_std = mean_t.numpy(), std_t.numpy()
        x_fit.sub_(mean_t).div_(std_t)
        exo_mean = exo_std = None
        if cls.uses_exo:  # raw exo stays where it is (no copy); batches are standardised
            exo_np = np.asarray(train.exo, dtype=np.float32)
            if exo_np.ndim == 4:
                exo_np = exo_np.mean(2)
            exo_all = torch.from_numpy(np.ascontiguousarray(exo_np))
            mask_all = torch.from_numpy(np.asarray(train.exo_mask, dtype=bool))
            in_fit = torch.zeros(len(mask_all), dtype=torch.bool)
            in_fit[fit_t] = True
            exo_mean, exo_std = (t.numpy() for t in feature_stats(exo_all, mask_all & in_fit[:, None]))
        model.set_normalization(ego_mean, ego_std, exo_mean, exo_std)
        model.to(dev)
        x_fit = x_fit.to(dev)
        y_fit = torch.from_numpy(labels[fit_idx]).to(dev)
        if hold_idx is not None:
            x_sel = ((pooled[torch.from_numpy(hold_idx)] - mean_t) / std_t).to(dev)
            y_sel = torch.from_numpy(labels[hold_idx]).to(dev)
        else:
            keep = np.flatnonzero(np.asarray(val.labels) >= 0)
            with torch.no_grad():
                x_sel = model.prepare_ego(as_f32(np.asarray(val.ego)[keep]).to(dev))
            y_sel = torch.from_numpy(np.asarray(val.labels, dtype=np.int64)[keep]).to(dev)
        del pooled
        P, rho = None, None
        t_cond0 = time.perf_counter()
        if cfg.precondition > 0:
            P, rho = preconditioner(x_fit, cfg.precondition,
                                     torch.Generator().manual_seed(cfg.seed))
            x_fit = apply_right(x_fit, P)
            x_sel = apply_right(x_sel, P)
        t_cond = time.perf_counter()
        cw = None
        if cfg.class_balance:
            cw = torch.from_numpy(class_balance_weights(labels[fit_idx], num_classes)).to(dev)

        opt = StackedAdamW(list(model.named_parameters()), [lr for lr, _ in grid],
                           [wd for _, wd in grid], model.no_decay, betas=cfg.betas)
        n_fit = len(fit_idx)
        bs, steps_per_epoch, epochs, total, warmup = cfg.schedule(n_fit, cfg.batch_size)
        gen = torch.Generator().manual_seed(cfg.seed)
        t_prep = time.perf_counter()
        log(progress, f"[{cfg.head}] {n_fit} fit / {len(y_sel)} select ({cfg.select_on}) "
                       f"segments, {train.dim}-d, {num_classes} classes, grid of {G} "
                       f"(lr x wd), {epochs} epochs x {steps_per_epoch} steps")

        history: list[dict] = []
        step = 0
        model.train()
        for epoch in range(epochs):
            t_ep = time.perf_counter()
            perm = torch.randperm(n_fit, generator=gen)
            loss_sum = torch.zeros(G, dtype=torch.float64)
            for i in range(0, n_fit, bs):
                idx = perm[i:i + bs]
                batch = {"ego": x_fit[idx.to(dev)], "y": y_fit[idx.to(dev)]}
                if cls.uses_exo:
                    rows = fit_t[idx]
                    m = mask_all[rows].to(dev)
                    batch["exo"] = model.prepare_exo(exo_all[rows].to(dev), m)
                    batch["exo_mask"] = m
                losses = model.loss(batch, cfg.label_smoothing, cw)
                opt.zero_grad()
                losses.sum().backward()
                opt.step(cosine_scale(step, total, warmup))
                step += 1
                loss_sum += losses.detach().double().cpu() * len(idx)
            train_loss = (loss_sum / n_fit).numpy()
            acc, nll = _member_scores(model, x_sel, y_sel, cfg.eval_batch_size)
            b = int(np.lexsort((nll, -acc))[0])
            history.append({"epoch": epoch + 1, "train_loss": train_loss.tolist(),
                            "select_top1": acc.tolist(), "select_nll": nll.tolist(),
                            "best_member": b, "best_select_top1": float(acc[b]),
                            "seconds": time.perf_counter() - t_ep})
            log(progress, f"[{cfg.head}] epoch {epoch + 1}/{epochs}  loss "
                           f"{train_loss[b]:.3f}  {cfg.select_on} top-1 {acc[b]:.2f}% (lr "
                           f"{grid[b][0]:g}, wd {grid[b][1]:g})  {time.perf_counter() - t_ep:.1f}s")
        t_train = time.perf_counter()

        best = history[-1]["best_member"]
        acc, nll = np.asarray(history[-1]["select_top1"]), np.asarray(history[-1]["select_nll"])
        final = model.select_member(best).cpu().eval()
        if P is not None:
            final.fold_input_transform(P.cpu())
    t_end = time.perf_counter()

    grid_rows = [{"member": g, "lr": lr, "wd": wd, "select_top1": float(acc[g]),
                  "select_nll": float(nll[g]), "train_loss": history[-1]["train_loss"][g]}
                 for g, (lr, wd) in enumerate(grid)]
    selected = {"member": best, "lr": grid[best][0], "wd": grid[best][1],
                "select_on": cfg.select_on, "select_top1": float(acc[best]),
                "select_nll": float(nll[best]), "n_fit": int(n_fit), "n_select": int(len(y_sel)),
                "epochs": int(epochs), "steps": int(total), "grid_size": G}
    norm = {"ego_mean": ego_mean, "ego_std": ego_std, "precondition_rho": rho}
    if exo_mean is not None:
        norm.update(exo_mean=exo_mean, exo_std=exo_std)
    timings = {"prepare_s": t_prep - t_start, "precondition_s": t_cond - t_cond0,
               "train_s": t_train - t_prep,
               "select_s": t_end - t_train, "total_s": t_end - t_start,
               "step_ms": 1000.0 * (t_train - t_prep) / max(1, total)}
    log(progress, f"[{cfg.head}] selected lr {selected['lr']:g} wd {selected['wd']:g}: "
                   f"{cfg.select_on} top-1 {selected['select_top1']:.2f}%  "
                   f"({timings['total_s']:.1f}s)")
    return TrainResult(model=final, cfg=cfg, selected=selected, grid=grid_rows, history=history,
                       norm=norm, timings=timings, fit_index=fit_idx, holdout_index=hold_idx,
                       notes=notes)


@torch.no_grad()
def predict_proba(model: StackedHead, ego: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities (N, C) float32 from raw ego features (N, D) or (N, T, D)."""
    model.eval()
    dev = model.ego_mean.device
    ego = np.asarray(ego)
    out = np.empty((len(ego), model.num_classes), dtype=np.float32)
    for i in range(0, len(ego), batch_size):
        logits = model.predict_logits(as_f32(ego[i:i + batch_size]).to(dev))
        out[i:i + batch_size] = logits.softmax(-1).cpu().numpy()
    return out


def head_state(result: TrainResult | StackedHead) -> dict:
    """A self-contained checkpoint dict of plain tensors and JSON-able values (safe for
    torch.save / torch.load(weights_only=True)); `build_head_from_checkpoint` rebuilds it."""
    model = result.model if isinstance(result, TrainResult) else result
    if model.members != 1:
        raise KscliError("head_state needs a single head; call select_member(g) first")
    return checkpoint_state(model, model.head_name,
                            result if isinstance(result, TrainResult) else None)

