"""Small pieces the heads share: checkpoint-safe values, seeded generators and dropout, and
features as tensors (exo views, float32). (The training driver's checks are in `train.py`, the
optimisers, the schedule and the training loop in `optim.py`, feature statistics and the
preconditioner in `stats.py`.)

Nothing here knows about a particular head.
"""

from __future__ import annotations

import numpy as np
import torch


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


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: every random draw of training comes
    from one passed as an argument, never from torch's global generators (which stay the
    caller's)."""
    return torch.Generator(device=device).manual_seed(int(seed))


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


def mean_over_windows(a: np.ndarray, seq_ndim: int) -> torch.Tensor:
    """float32 tensor, mean over the window axis when a has seq_ndim dims (no copy when it
    is already a contiguous float32 array without windows)."""
    a = np.asarray(a)
    if a.ndim == seq_ndim:
        return torch.from_numpy(a.astype(np.float32, copy=False).mean(-2, dtype=np.float32))
    return as_f32(a)


def exo_tensors(fs) -> tuple[torch.Tensor, torch.Tensor]:
    """A FeatureSet's raw exo views as tensors: (N, V, Dx) float32, windows averaged, and the
    mask (N, V) of the views that exist. The one place exo becomes a tensor."""
    return mean_over_windows(fs.exo, 4), torch.from_numpy(np.asarray(fs.exo_mask, dtype=bool))


def as_f32(a) -> torch.Tensor:
    """A float32 tensor sharing memory with `a` when it already is a contiguous float32 array."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
