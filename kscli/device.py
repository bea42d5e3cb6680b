"""What this machine gives a process, one rule each, used by every command: the torch device
(`--device auto|cpu|cuda|cuda:N`) and the cores it may use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kscli.errors import KscliError

if TYPE_CHECKING:
    import torch


def local_rank_from_env() -> int:
    """This process's rank on its node under torchrun (LOCAL_RANK) or srun (SLURM_LOCALID)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def resolve_device(name: str = "auto", local_rank: int | None = None) -> "torch.device":
    """`auto`: a GPU when there is one, else the CPU. `auto` and `cuda` take GPU
    ``local_rank % visible GPUs`` (local_rank: LOCAL_RANK / SLURM_LOCALID unless given), so the
    ranks of a node spread over its GPUs, and more ranks than GPUs share them. `cuda:N` is taken
    as given."""
    import torch  # here: kscli.device is imported by kscli.data, which needs no torch

    name = (name or "auto").strip().lower()
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise KscliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        rank = local_rank_from_env() if local_rank is None else local_rank
        return torch.device("cuda", rank % torch.cuda.device_count())
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise KscliError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise KscliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise KscliError(f"--device {name}: this process sees {torch.cuda.device_count()} GPU(s) "
                             "(check CUDA_VISIBLE_DEVICES)")
    return dev


def usable_cores(env=None) -> tuple[int, str]:
    """Cores this process may run on (its CPU affinity, capped by SLURM_CPUS_PER_TASK), and
    where that number came from, in words. Decoders, encoders, probes and torch threads are all
    sized from it."""
    env = os.environ if env is None else env
    try:
        cores, what = len(os.sched_getaffinity(0)), "cores this process may use"
    except AttributeError:  # not Linux
        cores, what = os.cpu_count() or 1, "cores"
    raw = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if raw and not raw.isdigit():
        raise KscliError(f"environment variable SLURM_CPUS_PER_TASK={raw!r} is not a whole number; unset it")
    per_task = int(raw) if raw else None
    if per_task and per_task < cores:
        cores, what = per_task, "cores (SLURM_CPUS_PER_TASK)"
    return max(1, cores), what
