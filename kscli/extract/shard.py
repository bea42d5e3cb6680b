"""Which clips this process extracts, and how many decoders it may start: scale-out by launcher.

A *shard* is one process's part of the clip list. The shard comes, in this order, from
`--shard/--num-shards`, else from the launcher's environment:

* **ranks of one job**: torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`), or
  `srun --ntasks N` without torchrun (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`).
  Only an srun *step* sets `SLURM_STEP_NUM_TASKS`; the batch script of a job that asked for
  `--ntasks 4` is one process, and reading `SLURM_NTASKS` there would do a quarter of the work.
* **a SLURM job array** (`SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT`): task `(id - min) / step` of
  `count`, so `--array=0-15:2` is 8 shards. An array whose ids are not one evenly stepped range
  (`--array=1,3,7`) is refused: its task numbers cannot be told from the environment.
* **both** (an array of multi-GPU jobs): shard = array task x ranks per job + rank, so every
  (array task, rank) pair gets its own shard and every clip is done exactly once.

Decoder workers default to the cores this process may use (`sched_getaffinity`, capped by
`SLURM_CPUS_PER_TASK`) divided by the ranks that share them on this node, at least one.
"""

from __future__ import annotations

import heapq
import os
import re
from dataclasses import dataclass

from kscli.device import usable_cores
from kscli.errors import KscliError


@dataclass(frozen=True)
class ShardPlan:
    shard: int
    num_shards: int
    source: str  # where shard and num_shards came from, for the summary
    local_rank: int = 0  # which GPU of the node (modulo the GPUs it has)
    local_ranks: int = 1  # processes of this job that share this node's cores


def _int(env, var: str) -> int | None:
    v = env.get(var, "").strip()
    if not v:
        return None
    if not v.lstrip("-").isdigit():
        raise KscliError(f"environment variable {var}={v!r} is not an integer; unset it or pass "
                         "--shard and --num-shards")
    return int(v)


def _tasks_per_node(spec: str) -> int:
    """Most tasks on one node from SLURM's compressed form, e.g. '4(x2),3' -> 4."""
    counts = [int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", spec or "")]
    return max(counts, default=1)


def _job_ranks(env) -> tuple[int, int, int, int, str] | None:
    """(rank, ranks, local rank, local ranks, source) of a multi-process launcher, or None."""
    if "RANK" in env and "WORLD_SIZE" in env:
        local = _int(env, "LOCAL_WORLD_SIZE") or 1
        return (_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") or 0, local,
                "torchrun RANK/WORLD_SIZE")
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        # srun gives each task SLURM_CPUS_PER_TASK cores of its own when that is set
        local = 1 if env.get("SLURM_CPUS_PER_TASK") else _tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""))
        return (_int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_LOCALID") or 0,
                local, "srun SLURM_PROCID/SLURM_STEP_NUM_TASKS")
    return None


def _array_task(env) -> tuple[int, int] | None:
    """(index, count) of this SLURM array task, or None outside an array."""
    tid = _int(env, "SLURM_ARRAY_TASK_ID")
    if tid is None:
        return None
    lo = _int(env, "SLURM_ARRAY_TASK_MIN")
    hi = _int(env, "SLURM_ARRAY_TASK_MAX")
    step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
    count = _int(env, "SLURM_ARRAY_TASK_COUNT")
    if lo is None or (count is None and hi is None):
        raise KscliError(f"SLURM_ARRAY_TASK_ID={tid} without SLURM_ARRAY_TASK_MIN and _COUNT (or _MAX): "
                         "this task's shard cannot be worked out; pass --shard and --num-shards")
    if count is None:
        count = (hi - lo) // step + 1
    regular = (tid - lo) % step == 0 and (hi is None or (hi - lo) // step + 1 == count
                                          and (hi - lo) % step == 0)
    if not regular:
        raise KscliError(f"SLURM array task {tid}: the array's ids (min {lo}, max {hi}, step {step}, "
                         f"{count} tasks) are not one evenly stepped range, so this task's shard "
                         "cannot be worked out; submit --array=0-N (or A-B:S), or pass "
                         "--shard and --num-shards yourself")
    return (tid - lo) // step, count


def resolve_shard(shard: int | None = None, num_shards: int | None = None, env=None) -> ShardPlan:
    """Explicit --shard/--num-shards, else the launcher's ranks x the SLURM array (see module doc)."""
    env = os.environ if env is None else env
    ranks = _job_ranks(env)
    rank, world, local_rank, local_ranks, source = ranks or (0, 1, 0, 1, "")
    if shard is not None or num_shards is not None:
        if shard is None or num_shards is None:
            raise KscliError("--shard and --num-shards go together (e.g. --shard 0 --num-shards 4)")
        source = "--shard/--num-shards"
    else:
        array = _array_task(env)
        if array is not None:
            a, count = array
            shard, num_shards = a * world + rank, count * world
            source = f"SLURM array task {a} of {count}" + (f" x {source} {rank} of {world}" if ranks else "")
        else:
            shard, num_shards = rank, world
            source = source or "one process"
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise KscliError(f"shard {shard} of {num_shards} ({source}): need 0 <= shard < num-shards")
    return ShardPlan(shard, num_shards, source, local_rank, max(1, local_ranks))


def cores_share(plan: ShardPlan, env=None) -> int:
    """This rank's share of the node's usable cores (the ranks on a node split them), at least 1."""
    return max(1, usable_cores(env)[0] // plan.local_ranks)


def default_workers(plan: ShardPlan, env=None) -> tuple[int, str]:
    """Decoder processes for this rank: its share of the node's usable cores, at least 1, and
    the reason in words for the run summary."""
    cores, what = usable_cores(env)
    share = cores_share(plan, env)
    what = f"{cores} {what}" if cores > 1 else f"1 {what.replace('cores', 'core', 1)}"
    if plan.local_ranks > 1:
        return share, f"{what} / {plan.local_ranks} ranks on this node"
    return share, what


def assign_shards(jobs: list, num_shards: int) -> list[list]:
    """Deterministic, duration-balanced split of jobs (with `.name`, `.duration`): longest first
    to the least-loaded shard; each shard in name order."""
    order = sorted(jobs, key=lambda j: (-j.duration, j.name))
    heap = [(0.0, s) for s in range(num_shards)]
    out: list[list] = [[] for _ in range(num_shards)]
    for job in order:
        load, s = heapq.heappop(heap)
        out[s].append(job)
        heapq.heappush(heap, (load + max(job.duration, 0.1), s))
    return [sorted(o, key=lambda j: j.name) for o in out]
