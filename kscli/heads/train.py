"""The one training driver: every head's lr x weight-decay grid, and the one selection rule.

    train_grid(head, train, val)
      1. check the labels; the selection split: head.holdout_split (a stratified holdout of train's
         rows; whole takes for the context head), or every fit row and `val` with
         select_on='val'. The selection split is never the split that gets reported.
      2. head.prepare: statistics on the fit rows, tensors, the model (G grid members when
         the head stacks, else 1), its initial weights drawn from a generator seeded with the
         config's seed.
      3. the grid: a stacking head trains all (lr, wd) members in one pass (one chunk); any
         other head trains them one after another. Each chunk gets a new generator for its
         training draws (dropout, view dropout), on the training device, seeded with
         seed + TRAIN_STREAM (not the stream the initial weights came from), so every member
         starts from the same weights and sees the same batches and dropout masks: members
         differ only by lr / wd. Randomness is passed, never global: torch's global generators
         are the caller's, and a head that draws from them (a plugin's nn.Linear or
         F.dropout) is stopped with one line, since its runs would not repeat.
      4. after every epoch each member's top-1 and NLL on the selection split (and its
         teacher's top-1, for heads with an ego + exo teacher) go into the history.
      5. selection: the member with the best selection top-1 after its last epoch; ties go to
         the lower NLL, then to the earlier member. It is the member fit on train minus the
         holdout (no refit), and becomes head.model. A member whose training loss or selection
         NLL became NaN or infinite has diverged: it is never selected (a note names it), and
         when every member diverged training stops with one line suggesting smaller learning
         rates.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from kscli.device import resolve_device, usable_cores
from kscli.errors import KscliError
from kscli.heads.base import Head
from kscli.heads.common import seeded_generator
from kscli.heads.featureset import FeatureSet


TRAIN_STREAM = 1_000_003  # offset of the seed of the training draws (batches aside)


@dataclass
class TrainResult:
    head: Head  # trained: head.model is the selected member (CPU, eval mode)
    # member, lr, wd, select_on, select_top1 (%), select_nll, teacher_select_top1 (teacher
    # heads), epochs, steps, grid_size, and what the head's prepare() reported (n_fit, ...)
    selected: dict
    # per member, lr-major: member, lr, wd, select_top1, select_nll, train_loss, seconds
    grid: list[dict]
    # per epoch: epoch, train_loss [G], select_top1 [G], select_nll [G], teacher_select_top1
    # [G] (teacher heads), best_member, best_select_top1, seconds (every member's time)
    history: list[dict]
    timings: dict  # prepare_s, train_s, finish_s, total_s, step_ms
    fit_rows: np.ndarray  # train rows the members were fit on
    holdout_rows: np.ndarray | None  # train rows used for selection (None: selected on val)
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> torch.nn.Module:
        return self.head.model

    @property
    def cfg(self):
        return self.head.cfg

    def record(self) -> dict:
        """What a checkpoint keeps of the training (JSON-able)."""
        return {"train_cfg": self.head.cfg.to_dict(), "selected": self.selected,
                "grid": self.grid, "history": self.history, "timings": self.timings,
                "notes": self.notes}


def train_head(cfg, train: FeatureSet, num_classes: int, val: FeatureSet | None = None,
               progress: bool = True) -> TrainResult:
    """Train the head `cfg` configures (a head's Config, e.g. from config_for) on `train`."""
    from kscli.heads.base import head_class

    return head_class(cfg.head)(cfg, train.dim, num_classes).fit(train, val, progress)


# ----------------------------------------------------------------------------- checks and environment
def check_train_labels(train: FeatureSet, num_classes: int) -> np.ndarray:
    """Validate the train set; its labels as int64 (-1: unlabelled)."""
    train.validate("train features")
    labels = np.asarray(train.labels, dtype=np.int64)
    if labels.size and labels.max() >= num_classes:
        raise KscliError(f"train labels go up to {labels.max()} but num_classes is {num_classes}")
    if (labels >= 0).sum() < 2:
        raise KscliError("train features have fewer than 2 labelled segments: nothing to train")
    return labels


def check_selection_val(val: FeatureSet | None, train: FeatureSet, num_classes: int) -> None:
    """The checks select_on='val' needs: a labelled val set that matches train."""
    if val is None:
        raise KscliError("select_on='val' needs a val feature set")
    val.validate("val features")
    vlab = np.asarray(val.labels, dtype=np.int64)
    if (vlab < 0).all():
        raise KscliError("select_on='val' but the val features have no labels")
    if vlab.max() >= num_classes:
        raise KscliError(f"val labels go up to {vlab.max()} but num_classes is {num_classes}")
    if val.dim != train.dim:
        raise KscliError(f"val features are {val.dim}-d but train features are {train.dim}-d")


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n (None: every core this process may use), restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else usable_cores()[0])
    try:
        yield
    finally:
        torch.set_num_threads(old)


def log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- selection split
def labelled_rows(train: FeatureSet, labels: np.ndarray, notes: list[str]) -> np.ndarray:
    """Rows that have a label (the others are noted, not silently dropped)."""
    rows = np.flatnonzero(labels >= 0)
    if len(rows) < len(labels):
        notes.append(f"{len(labels) - len(rows)} train segments without a label were skipped")
    return rows


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
    kept = np.setdiff1d(np.arange(len(labels)), hold)
    return kept.astype(np.int64), hold.astype(np.int64)


# ----------------------------------------------------------------------------- scoring
def member_key(acc: float, nll: float, member: int) -> tuple:
    """The selection rule as a sort key: best top-1, then lower NLL, then the earlier member."""
    return (-acc if np.isfinite(acc) else np.inf, nll if np.isfinite(nll) else np.inf, member)


@torch.no_grad()
def score_members(head: Head) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-1 (%) and NLL of every member on the head's selection split (labelled rows), and
    its teacher's top-1 (None without a teacher): three (G,) arrays."""
    correct = nll = t_correct = None
    n = 0
    for logits, teacher, y in head.selection_batches():
        lab = y >= 0
        logits, y = logits[:, lab], y[lab]
        if correct is None:
            correct = torch.zeros(logits.shape[0], dtype=torch.float64)
            nll = torch.zeros_like(correct)
        correct += (logits.argmax(-1) == y).sum(1).double().cpu()
        picked = logits.log_softmax(-1).gather(-1, y.view(1, -1, 1).expand(len(logits), -1, 1))
        nll -= picked.sum((1, 2)).double().cpu()
        if teacher is not None:
            hits = (teacher[:, lab].argmax(-1) == y).sum(1).double().cpu()
            t_correct = hits if t_correct is None else t_correct + hits
        n += len(y)
    acc = (100.0 * correct / n).numpy()  # n > 0: train_grid() refuses a selection split without labels
    return acc, (nll / n).numpy(), None if t_correct is None else (100.0 * t_correct / n).numpy()


# ----------------------------------------------------------------------------- the driver
def train_grid(head: Head, train: FeatureSet, val: FeatureSet | None = None,
               progress: bool = True) -> TrainResult:
    """Train `head` for every (lr, wd) of its grid; keep the best member (see the module doc)."""
    t0 = time.perf_counter()
    cfg = head.cfg
    cfg.check()
    notes: list[str] = []
    labels = check_train_labels(train, head.num_classes)
    if cfg.select_on == "val":
        check_selection_val(val, train, head.num_classes)
        fit_rows, hold_rows, select = head.fit_rows(train, labels, notes), None, val
    else:
        fit_rows, hold_rows = head.holdout_split(train, labels, notes)
        select = train.subset(hold_rows)
    grid = cfg.grid()
    G = len(grid)
    chunks = [list(range(G))] if head.stacks else [[g] for g in range(G)]
    dev = resolve_device(cfg.device)
    head.prior = class_prior(labels, head.num_classes)
    threads = cfg.num_threads
    if threads is None and head.small_steps(train, fit_rows, len(chunks[0])):
        threads = 1
    check_memory(head, train, len(chunks[0]), dev)
    untouched = _GlobalRngWatch(head, dev)
    with torch_threads(threads), _one_line_when_out_of_memory(head):
        info = head.prepare(train, fit_rows, select, len(chunks[0]), notes)
        untouched.check("building its model")
        if info["n_select"] == 0:
            where = "val" if cfg.select_on == "val" else "the holdout of train"
            raise KscliError(f"{where} has no labelled segment with an ego feature to select "
                             f"the grid member on")
        t_prep = time.perf_counter()
        log(progress, f"[{head.name}] {info['n_fit']} fit / {info['n_select']} select "
                      f"({cfg.select_on}) segments, {train.dim}-d, {head.num_classes} classes, "
                      f"grid of {G} (lr x wd){' in one pass' if head.stacks else ', one by one'}, "
                      f"{info['epochs']} epochs x {info['steps_per_epoch']} steps")
        curves = Curves(G, info["epochs"])
        best = None  # (key, snapshot)
        for chunk in chunks:
            draws = seeded_generator(cfg.seed + TRAIN_STREAM, dev)  # not the stream of the initial weights
            t_m = time.perf_counter()
            for ep, loss in enumerate(head.train_members([grid[g] for g in chunk], draws)):
                untouched.check("training")
                scores = score_members(head)
                now = time.perf_counter()
                curves.add(chunk, ep, loss, *scores, now - t_m)
                t_m = now
                _log_epoch(progress, head, grid, curves, chunk, ep)
            alive = [m for m in chunk if m not in curves.diverged]
            if not alive:
                continue
            g = curves.best(alive, -1)
            key = member_key(curves.acc[g, -1], curves.nll[g, -1], g)
            if best is None or key < best[0]:
                best = (key, head.snapshot(chunk.index(g)))
        if best is None:
            raise KscliError(f"[{head.name}] training diverged: the loss of every grid member became NaN or "
                             f"infinite (learning rates {', '.join(f'{lr:g}' for lr in cfg.lrs)}); try smaller "
                             f"ones, e.g. --lrs {', '.join(f'{lr / 10:g}' for lr in cfg.lrs).replace(' ', '')}")
        for m in sorted(curves.diverged):
            notes.append(f"grid member lr {grid[m][0]:g} wd {grid[m][1]:g} diverged (its loss became NaN or "
                         "infinite) and was not considered; a smaller learning rate trains it")
        t_train = time.perf_counter()
        head.finish(best[1])
    t_end = time.perf_counter()
    g = best[0][2]
    history = curves.history()
    selected = {"member": g, "lr": grid[g][0], "wd": grid[g][1], "select_on": cfg.select_on,
                "select_top1": float(curves.acc[g, -1]), "select_nll": float(curves.nll[g, -1]),
                **({"teacher_select_top1": float(curves.teacher[g, -1])}
                   if curves.has_teacher else {}),
                "epochs": int(info["epochs"]), "steps": int(info["epochs"] * info["steps_per_epoch"]),
                "grid_size": G, **{k: v for k, v in info.items() if k not in ("epochs",)}}
    timings = {"prepare_s": t_prep - t0, "train_s": t_train - t_prep,
               "finish_s": t_end - t_train, "total_s": t_end - t0,
               "step_ms": 1000.0 * (t_train - t_prep) / max(1, selected["steps"] * len(chunks))}
    teacher = (f", teacher (ego + exo) {selected['teacher_select_top1']:.2f}%"
               if curves.has_teacher else "")
    log(progress, f"[{head.name}] selected lr {selected['lr']:g} wd {selected['wd']:g}: "
                  f"{cfg.select_on} top-1 {selected['select_top1']:.2f}%{teacher}  "
                  f"({timings['total_s']:.1f}s)")
    return TrainResult(head=head, selected=selected, grid=curves.grid_rows(grid),
                       history=history, timings=timings, fit_rows=np.asarray(fit_rows),
                       holdout_rows=hold_rows, notes=notes)


class _GlobalRngWatch:
    """Stops a head that draws from torch's global generators (the caller's): its results would
    not repeat with the same seed, and the caller's random stream would move."""

    def __init__(self, head: Head, dev: torch.device):
        self.head, self.dev = head, dev
        self.states = self.global_states()

    def global_states(self) -> list[torch.Tensor]:
        """The CPU's generator state, and the training GPU's when training on one."""
        states = [torch.random.get_rng_state()]
        if self.dev.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.dev))
        return states

    def check(self, doing: str) -> None:
        if not all(torch.equal(a, b) for a, b in zip(self.states, self.global_states())):
            raise KscliError(f"head {self.head.name!r} drew from torch's global random generator while "
                             f"{doing}, so the same seed would not give the same run: draw from the "
                             "generators kscli passes (build_model's `generator`; the `gen` of "
                             "train_members, loss and _logits), e.g. torch.randn(..., generator=gen)")


def available_memory(dev: torch.device) -> int | None:
    """Bytes free for a model on `dev` (CUDA: the GPU's free memory; CPU: MemAvailable on Linux),
    or None where it cannot be known."""
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(head: Head, train: FeatureSet, members: int, dev: torch.device) -> None:
    """Refuse, in one line, a head whose options cannot fit: its weights, gradients and two
    AdamW moments (float32) for every member trained at once, against what `dev` has free."""
    need = 16 * members * head.parameter_count(train)
    free = available_memory(dev)
    if free is not None and need > free:
        big = {k: v for k, v in head.cfg.model_cfg().items() if isinstance(v, int) and not isinstance(v, bool)}
        raise KscliError(f"[{head.name}] these options need about {need / 2**30:.1f} GB for {members} grid "
                         f"member(s) trained together ({big}), and {dev} has {free / 2**30:.1f} GB free; "
                         "choose smaller sizes (kscli heads --head " + head.name + ")")


@contextmanager
def _one_line_when_out_of_memory(head: Head):
    """Running out of memory while training is one line, not a traceback."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise KscliError(f"[{head.name}] out of memory while training ({type(e).__name__}); choose smaller "
                         "sizes or batches (kscli heads --head " + head.name + ")") from None
    except RuntimeError as e:
        if "out of memory" in str(e) or "can't allocate memory" in str(e) or "not enough memory" in str(e):
            raise KscliError(f"[{head.name}] out of memory while training ({str(e).splitlines()[0][:120]}); "
                             f"choose smaller sizes or batches (kscli heads --head {head.name})") from None
        raise


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Train label frequencies (a tiny floor for absent classes): the prediction for a segment
    a head cannot read."""
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64) + 1e-3
    return (counts / counts.sum()).astype(np.float32)


class Curves:
    """Per member and epoch: train loss, selection top-1 / NLL, teacher top-1, seconds."""

    def __init__(self, members: int, epochs: int):
        shape = (members, epochs)
        self.loss, self.acc, self.nll = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.teacher, self.seconds = np.full(shape, np.nan), np.zeros(shape)
        self.has_teacher = False
        self.diverged: set[int] = set()  # members whose loss or selection NLL became non-finite

    def add(self, chunk, ep, loss, acc, nll, teacher, seconds) -> None:
        self.loss[chunk, ep], self.acc[chunk, ep], self.nll[chunk, ep] = loss, acc, nll
        self.seconds[chunk, ep] = seconds / len(chunk)
        if teacher is not None:
            self.teacher[chunk, ep] = teacher
            self.has_teacher = True
        for m in chunk:
            if not (np.isfinite(self.loss[m, ep]) and np.isfinite(self.nll[m, ep])):
                self.diverged.add(m)

    def best(self, members, ep: int) -> int:
        """The selection rule: the best of `members` after epoch `ep`."""
        return min(members, key=lambda g: member_key(self.acc[g, ep], self.nll[g, ep], g))

    def history(self) -> list[dict]:
        """Per epoch, every member's numbers; a diverged member's non-finite ones are None (JSON
        null), so the file stays strict JSON."""
        out = []
        alive = [m for m in range(self.acc.shape[0]) if m not in self.diverged] or [0]
        for ep in range(self.acc.shape[1]):
            b = self.best(alive, ep)
            row = {"epoch": ep + 1, "train_loss": _finite(self.loss[:, ep]),
                   "select_top1": _finite(self.acc[:, ep]), "select_nll": _finite(self.nll[:, ep])}
            if self.has_teacher:
                row["teacher_select_top1"] = _finite(self.teacher[:, ep])
            out.append({**row, "best_member": b, "best_select_top1": _finite(self.acc[b, ep]),
                        "seconds": float(self.seconds[:, ep].sum())})
        return out

    def grid_rows(self, grid) -> list[dict]:
        return [{"member": g, "lr": lr, "wd": wd, "select_top1": _finite(self.acc[g, -1]),
                 "select_nll": _finite(self.nll[g, -1]), "train_loss": _finite(self.loss[g, -1]),
                 "diverged": g in self.diverged, "seconds": float(self.seconds[g].sum())}
                for g, (lr, wd) in enumerate(grid)]


def _finite(a):
    """Python floats (or a list of them) with None for NaN / infinity."""
    if np.ndim(a) == 0:
        return float(a) if np.isfinite(a) else None
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a).tolist()]


def _log_epoch(progress: bool, head: Head, grid, curves: Curves, chunk, ep: int) -> None:
    if not progress:
        return
    b = curves.best(chunk, ep)
    teacher = f", teacher {curves.teacher[b, ep]:.2f}%" if curves.has_teacher else ""
    log(True, f"[{head.name}] epoch {ep + 1}/{curves.acc.shape[1]}  loss {curves.loss[b, ep]:.3f}"
              f"  {head.cfg.select_on} top-1 {curves.acc[b, ep]:.2f}%{teacher} (lr "
              f"{grid[b][0]:g}, wd {grid[b][1]:g})  {curves.seconds[chunk, ep].sum():.1f}s")
