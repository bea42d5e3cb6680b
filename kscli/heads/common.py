"""Small pieces every head shares: data checks, checkpoint-safe values, threads, random
generators and dropout, logging, and exo views as tensors. (The optimisers, the schedule and
the training loop are in `optim.py`; feature statistics and the preconditioner in `stats.py`.)

Nothing here knows about a particular head.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np
import torch

from kscli.device import usable_cores
from kscli.errors import KscliError
from kscli.heads.featureset import FeatureSet


# ----------------------------------------------------------------------------- checks
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


# ----------------------------------------------------------------------------- small helpers
def plain(obj):
    """JSON-able / torch.load(weights_only=True)-safe: tuples->lists, numpy->python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    return obj


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n (None: every core this process may use), restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else usable_cores()[0])
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: every random draw of training comes
    from one passed as an argument, never from torch's global generators (which stay the
    caller's)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def global_rng_states(device: torch.device) -> list[torch.Tensor]:
    """The states of torch's global generators a head could draw from on `device`: the CPU's,
    and the GPU's when training on one (to check that training left them alone)."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def dropout(x: torch.Tensor, p: float, gen: torch.Generator | None, mask_shape=None) -> torch.Tensor:
    """Inverted dropout in training, drawing its mask from `gen` (a generator on x's device);
    `gen` None is evaluation: x unchanged. The mask comes from random bytes (8 per int64 draw;
    keep if byte >= round(256 p)): about 10x faster than torch's bernoulli on CPU, so p is
    rounded to a multiple of 1/256. `mask_shape` (the trailing dims of x) shares one mask over
    the leading dims: the stacked heads share it over their grid members, which then see the
    same noise."""
    if gen is None or p <= 0:
        return x
    k = min(256, max(1, int(round(p * 256))))
    if k >= 256:
        return x * 0.0
    shape = tuple(x.shape if mask_shape is None else mask_shape)
    n = int(np.prod(shape))
    words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device,
                          generator=gen)
    keep = words.view(torch.uint8)[:n].view(shape) >= k
    return x * keep.to(x.dtype).mul_(256.0 / (256 - k))


def log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def mean_over_windows(a: np.ndarray, seq_ndim: int) -> torch.Tensor:
    """float32 tensor, mean over the window axis when a has seq_ndim dims (no copy when it
    is already a contiguous float32 array without windows)."""
    a = np.asarray(a)
    if a.ndim == seq_ndim:
        return torch.from_numpy(a.astype(np.float32, copy=False).mean(-2, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def exo_tensors(fs) -> tuple[torch.Tensor, torch.Tensor]:
    """A FeatureSet's raw exo views as tensors: (N, V, Dx) float32, windows averaged, and the
    mask (N, V) of the views that exist. The one place exo becomes a tensor."""
    return mean_over_windows(fs.exo, 4), torch.from_numpy(np.asarray(fs.exo_mask, dtype=bool))


def as_f32(a) -> torch.Tensor:
    """A float32 tensor sharing memory with `a` when it already is a contiguous float32 array."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
