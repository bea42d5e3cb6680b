"""Runs that overlap, merges that are killed or read, and the launchers that start many ranks.

Everything goes through the real CLI in real processes: two `kscli extract` on one store, a
`kill -9` at each step of a merge, readers while a merge is paused half-way, and `torchrun`.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, run_kscli, torchrun_cmd
from kscli.data.layout import Benchmark, Layout
from kscli.extract.lock import RankLock
from kscli.extract.run import list_clip_jobs
from kscli.extract.shard import assign_shards
from kscli.extract.store import FeatureStore

TRAIN = ["--split", "train", "--no-progress"]


def clip_names(root, split="train"):
    return sorted(j.name for j in list_clip_jobs(Benchmark(Layout.resolve(data_root=root)), split, "all"))


def store_dir(work, split="train", tag="tiny-random"):
    return work / "features" / tag / split


def rows_on_disk(folder) -> list[str]:
    """Every clip name of every part file, duplicates included (what a careless reader sees)."""
    names = []
    for part in sorted(folder.glob("part-*.h5")):
        with h5py.File(part) as f:
            names += [n.decode() for n in f["names"][()]]
    return names


def assert_complete(work, root, split="train"):
    store = FeatureStore(store_dir(work, split))
    assert sorted(store.names) == clip_names(root, split)
    feats = store.get(sorted(store.names))
    assert np.isfinite(feats).all()
    return store


@pytest.mark.slow
def test_two_runs_started_together_never_lose_clips(sample_root, tmp_path):
    """The repro: the same command twice, one second apart. Before: both merges removed each
    other's parts and the store ended empty. Now the second is refused (or finds nothing left)."""
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "kscli", "extract", "--backbone", "tiny-random", "--data-root", str(sample_root), "--work-dir", str(work),
           "--workers", "1", "--batch-size", "2", *TRAIN]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert set(codes) <= {0, 2} and 0 in codes, outs  # one refused at most (whichever started second)
    for code, (_, err) in zip(codes, outs):
        if code == 2:
            assert err.count("\n") == 1 and "rank 0 of this store is being written by pid" in err
    assert_complete(work, sample_root)
    info = run_kscli("features", "info", "--store", "tiny-random", "--work-dir", work, "--split", "train", "--json")
    assert json.loads(info.stdout)[0]["clips"] == len(clip_names(sample_root))


@pytest.mark.slow
def test_a_second_writer_of_a_rank_is_refused_with_the_holder(sample_root, tmp_path):
    work = tmp_path / "work"
    with RankLock(store_dir(work), 0):
        p = run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, *TRAIN, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert f"being written by pid {os.getpid()} on host " in p.stderr and " since " in p.stderr
    assert not list(store_dir(work).glob("part-*"))
    # the lock goes with its holder: the same command now runs
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--workers", "1", *TRAIN)
    assert_complete(work, sample_root)


@pytest.mark.slow
def test_overwrite_waits_for_no_writer_and_a_moved_lock_file_is_not_trusted(sample_root, tmp_path, monkeypatch):
    from kscli.extract import lock as lock_mod

    work = tmp_path / "work"
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--workers", "1", *TRAIN)
    with RankLock(store_dir(work), 0):  # a run is writing rank 0: the store is not moved under it
        p = run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--overwrite", *TRAIN, check=False)
    assert p.returncode == 2 and "--overwrite refused: " in p.stderr and f"by pid {os.getpid()} " in p.stderr
    assert not list(store_dir(work).parent.glob("train.replaced-*"))
    # a writer that opened the lock file just before --overwrite moved the folder aside must not
    # keep a lock on the moved file (it would write beside the new store's writer): it relocks
    real_open, opened = lock_mod.open_lock_file, []

    def open_then_folder_moves(path, rank):
        fd = real_open(path, rank)
        if not opened:
            os.rename(path.parent, tmp_path / "aside")
        opened.append(path)
        return fd

    monkeypatch.setattr(lock_mod, "open_lock_file", open_then_folder_moves)
    with RankLock(store_dir(work), 0) as held:
        assert len(opened) == 2
        assert os.fstat(held.fd).st_ino == os.stat(store_dir(work) / "writer-r000.lock").st_ino


# A `kscli extract` whose final merge is interrupted at a chosen step: killed (-9) before the
# merged part is renamed into place, right after it, or half-way through removing the old
# parts; or paused (for readers) before or after the rename until the test says go on.
MERGE_HOOK = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from kscli.extract import store
    at, signals = os.environ["MERGE_AT"], Path(os.environ["MERGE_SIGNALS"])
    state = {"merging": False, "removed": 0}

    def stop():
        if at.startswith("kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        (signals / "paused").touch()
        while not (signals / "go").exists():
            time.sleep(0.02)

    merge, commit, unlink = store.StoreWriter.merge_parts, store.commit, Path.unlink
    def merge_parts(self):
        state["merging"] = True
        return merge(self)
    def commit_hook(tmp, path):
        if state["merging"] and at.endswith("before-rename"):
            stop()
        return commit(tmp, path)
    def unlink_hook(self, missing_ok=False):
        if state["merging"] and self.name.startswith("part-"):
            state["removed"] += 1
            if (at.endswith("after-rename") and state["removed"] == 1) or (at == "kill-mid-cleanup" and state["removed"] == 3):
                stop()
        return unlink(self, missing_ok=missing_ok)
    store.StoreWriter.merge_parts, store.commit, Path.unlink = merge_parts, commit_hook, unlink_hook
    from kscli.cli import app
    app(sys.argv[1:], prog_name="kscli")
""")


def extract_with_merge_hook(root, work, at, signals, **popen):
    signals.mkdir(exist_ok=True)
    cmd = [sys.executable, "-c", MERGE_HOOK, "extract", "--backbone", "tiny-random", "--data-root", str(root), "--work-dir", str(work),
           "--workers", "1", "--batch-size", "8", *TRAIN]
    env = {**os.environ, "MERGE_AT": at, "MERGE_SIGNALS": str(signals)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)


@pytest.fixture(scope="module")
def reference(sample_root, tmp_path_factory):
    """One uninterrupted run's names and features, to compare interrupted ones with."""
    work = tmp_path_factory.mktemp("ref")
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--workers", "1", "--batch-size", "8", *TRAIN)
    store = FeatureStore(store_dir(work))
    names = sorted(store.names)
    return names, store.get(names)


@pytest.mark.slow
@pytest.mark.parametrize("at", ["kill-before-rename", "kill-after-rename", "kill-mid-cleanup"])
def test_kill_9_during_the_merge_loses_nothing(sample_root, reference, tmp_path, at):
    work = tmp_path / "work"
    proc = extract_with_merge_hook(sample_root, work, at, tmp_path / "signals",
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    folder = store_dir(work)
    on_disk = rows_on_disk(folder)
    assert len(on_disk) > len(set(on_disk)) or at == "kill-before-rename"  # merged copy + not yet removed parts
    store = assert_complete(work, sample_root)  # every clip, each read once
    names, feats = reference
    np.testing.assert_array_equal(store.get(names), feats)
    p = run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--workers", "1", *TRAIN)
    assert f"extracted 0, skipped {len(names)}" in p.stdout  # the rerun finds all done and
    assert sorted(rows_on_disk(folder)) == names  # finishes the merge: one copy of each clip
    assert len(list(folder.glob("part-*.h5"))) == 1 and not list(folder.glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("at", ["pause-before-rename", "pause-after-rename"])
def test_readers_during_a_merge_see_every_clip_once(sample_root, reference, tmp_path, at):
    work, signals = tmp_path / "work", tmp_path / "signals"
    proc = extract_with_merge_hook(sample_root, work, at, signals, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
    deadline = time.time() + 300
    while not (signals / "paused").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    names, feats = reference
    before = FeatureStore(store_dir(work))  # indexed now, read after the merge has removed parts
    info = run_kscli("features", "info", "--store", "tiny-random", "--work-dir", work, "--split", "train")
    assert f": {len(names)} clips " in info.stdout
    assert "being written now: rank r000 by pid" in info.stdout
    (signals / "go").touch()
    assert proc.wait(timeout=300) == 0, proc.communicate()
    assert len(list(store_dir(work).glob("part-*.h5"))) == 1
    np.testing.assert_array_equal(before.get(names), feats)


@pytest.mark.slow
def test_torchrun_two_ranks_build_the_store_of_one_process(sample_copy, reference, tmp_path):
    """The real launcher: each rank takes its shard and its share of the cores, prints its own
    summary, records its own failures; the store equals a one-process run."""
    work = tmp_path / "work"
    jobs = list_clip_jobs(Benchmark(Layout.resolve(data_root=sample_copy)), "train", "all")
    broken = [sorted(s, key=lambda j: j.name)[0] for s in assign_shards(jobs, 2)]  # one clip of each rank
    for job in broken:
        os.unlink(job.path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_STEP_NUM_TASKS", "SLURM_CPUS_PER_TASK"):
        env.pop(var, None)
    p = subprocess.run([*torchrun_cmd(), "--standalone", "--nproc-per-node", "2", "-m", "kscli", "extract", "--backbone", "tiny-random",
                        "--data-root", str(sample_copy), "--work-dir", str(work), "--batch-size", "8", *TRAIN],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    cores = len(os.sched_getaffinity(0))
    for rank in (1, 2):
        assert f"[shard {rank}/2] torchrun RANK/WORLD_SIZE: cpu float32, " \
               f"{max(1, cores // 2)} decoder worker(s)" in p.stdout
        assert f"[shard {rank}/2] train: extracted" in p.stdout and "failed 1 of" in p.stdout
    store = FeatureStore(store_dir(work))
    assert sorted({part.name.split("-s")[0] for part in store.parts}) == ["part-r000", "part-r001"]
    names, feats = reference
    kept = [n for n in names if n not in {j.name for j in broken}]
    assert sorted(store.names) == kept
    np.testing.assert_allclose(store.get(kept), feats[[names.index(n) for n in kept]], rtol=0, atol=1e-5)
    info = json.loads(run_kscli("features", "info", "--store", "tiny-random", "--work-dir", work, "--split", "train",
                                "--json").stdout)[0]
    assert info["clips"] == len(kept) and info["failures"] == 2 and info["writing"] == {}


# ---------------------------------------------------------------------------------- launchers
# Environments as SLURM (22.05, a real one-node cluster) and torchrun set them; see
# bench/slurm_local.sh. `array(...)` is one task of `sbatch --array=...`.
def array(ids, tid):
    step = 2 if ids == "0-15:2" else 1
    full = {"0-15:2": list(range(0, 15, 2)), "1-4": [1, 2, 3, 4], "0-2": [0, 1, 2], "1,3,7": [1, 3, 7]}[ids]
    return {"SLURM_ARRAY_TASK_ID": str(tid), "SLURM_ARRAY_TASK_MIN": str(min(full)),
            "SLURM_ARRAY_TASK_MAX": str(max(full)), "SLURM_ARRAY_TASK_STEP": str(step),
            "SLURM_ARRAY_TASK_COUNT": str(len(full))}, full


def srun(procid, ntasks, per_node=None):
    return {"SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % (per_node or ntasks)),
            "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_ID": "0",
            "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{ntasks // per_node})" if per_node else str(ntasks)}


def torchrun(rank, world, local_world):
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank % local_world),
            "LOCAL_WORLD_SIZE": str(local_world)}


def launches():
    a16, ids16 = array("0-15:2", 0)
    yield "array 0-15:2", [array("0-15:2", t)[0] for t in ids16]
    yield "array 1-4", [array("1-4", t)[0] for t in (1, 2, 3, 4)]
    yield "srun --ntasks 3", [srun(p, 3) for p in range(3)]
    yield "srun 8 tasks on 2 nodes", [srun(p, 8, per_node=4) for p in range(8)]
    yield "array 0-2 of torchrun x4", [{**array("0-2", t)[0], **torchrun(r, 4, 4)} for t in (0, 1, 2) for r in range(4)]
    yield "array 0-15:2 of srun x2", [{**array("0-15:2", t)[0], **srun(p, 2)} for t in ids16 for p in (0, 1)]
    yield "torchrun 2 nodes x 4", [torchrun(r, 8, 4) for r in range(8)]


@pytest.mark.parametrize("name,envs", list(launches()), ids=[n for n, _ in launches()])
def test_every_launcher_splits_the_clips_exactly_once(name, envs):
    from kscli.extract.run import ClipJob
    from kscli.extract.shard import resolve_shard

    jobs = [ClipJob(f"c{i:03d}", "ego", "", float(i % 7) + 0.5) for i in range(101)]
    plans = [resolve_shard(env=env) for env in envs]
    assert {p.num_shards for p in plans} == {len(envs)}
    assert sorted(p.shard for p in plans) == list(range(len(envs)))
    done = [j.name for p in plans for j in assign_shards(jobs, p.num_shards)[p.shard]]
    assert sorted(done) == [j.name for j in jobs]  # each clip once


def test_launcher_traps_are_avoided_or_refused():
    from kscli.errors import KscliError
    from kscli.extract.shard import resolve_shard

    # the batch script of a `--ntasks 4` job is one process: not a quarter of the work
    batch_script = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "4"}
    plan = resolve_shard(env=batch_script)
    assert (plan.shard, plan.num_shards) == (0, 1)
    with pytest.raises(KscliError, match="not one evenly stepped range.*--shard and --num-shards"):
        resolve_shard(env=array("1,3,7", 3)[0])
    with pytest.raises(KscliError, match="without SLURM_ARRAY_TASK_MIN"):
        resolve_shard(env={"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(KscliError, match="RANK='x' is not an integer"):
        resolve_shard(env={"RANK": "x", "WORLD_SIZE": "2"})
    torchrun_env = torchrun(3, 8, 4)
    assert resolve_shard(env=torchrun_env).local_rank == 3
    assert resolve_shard(0, 4, env=torchrun_env).source == "--shard/--num-shards"


@pytest.mark.parametrize("env,cores,expect", [
    ({}, 96, (96, "96 cores this process may use")),
    (torchrun(0, 8, 8), 96, (12, "96 cores this process may use / 8 ranks on this node")),
    ({**torchrun(0, 8, 8), "SLURM_CPUS_PER_TASK": "32"}, 96, (4, "32 cores (SLURM_CPUS_PER_TASK) / 8 ranks on this node")),
    ({**srun(1, 4), "SLURM_CPUS_PER_TASK": "6"}, 96, (6, "6 cores (SLURM_CPUS_PER_TASK)")),
    ({**srun(1, 4), "SLURM_CPUS_PER_TASK": "1"}, 96, (1, "1 core (SLURM_CPUS_PER_TASK)")),
    (srun(1, 4), 96, (24, "96 cores this process may use / 4 ranks on this node")),
    (torchrun(0, 16, 16), 2, (1, "2 cores this process may use / 16 ranks on this node")),
])
def test_decoder_workers_are_this_ranks_share_of_the_cores(monkeypatch, env, cores, expect):
    from kscli.extract.shard import default_workers, resolve_shard

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_workers(resolve_shard(env=env), env=env) == expect


def test_cuda_and_auto_take_the_local_rank(monkeypatch):
    import torch

    from kscli.device import resolve_device
    from kscli.errors import KscliError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 1)  # 4 ranks on 2 GPUs share them
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(KscliError, match="sees 2 GPU"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(KscliError, match="CUDA is not available"):
        resolve_device("cuda")


def test_a_failed_part_write_stops_with_one_line_and_keeps_finished_parts(sample_root, tmp_path, monkeypatch):
    """The writer thread's error reaches the user as one line; what was written stays; a rerun resumes."""
    import errno

    from conftest import cli
    from kscli.extract import store as store_mod

    work = tmp_path / "work"
    real, calls = store_mod.write_part, []

    def disk_fills(path, rows, config):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, rows, config)

    monkeypatch.setattr(store_mod, "write_part", disk_fills)
    p = cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--workers", "0", "--batch-size", "4",
            *TRAIN, check=False)
    assert p.exit_code == 2 and p.stderr.count("\n") == 1
    assert "No space left on device; the disk is full: free some space, then rerun the same command (finished " \
           "work is kept)" in p.stderr
    assert len(FeatureStore(store_dir(work))) == 8
    monkeypatch.setattr(store_mod, "write_part", real)
    again = cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--workers", "0", *TRAIN)
    assert "skipped 8 (already done)" in again.stdout
    assert_complete(work, sample_root)


def test_on_the_cpu_the_slower_stage_gets_the_cores():
    import torch

    from kscli.extract.run import RunPlan, CpuThreads
    from kscli.extract.shard import resolve_shard

    plan = RunPlan(resolve_shard(env={}), "cpu", "float32", "worker", workers=2, workers_why="", model_threads=1,
                   cores=2)
    batch = [{"decode_s": 0.2}] * 8  # 0.8 s of decoding per batch on 2 workers
    threads = torch.get_num_threads()
    try:
        decode_bound = CpuThreads(plan, torch.device("cpu"))
        for _ in range(5):
            decode_bound.observe(batch, model_s=0.05)
        assert decode_bound.note is None and torch.get_num_threads() == threads
        model_bound = CpuThreads(plan, torch.device("cpu"))
        for _ in range(5):
            model_bound.observe(batch, model_s=3.0)
        assert "the model is the slower stage" in model_bound.note and torch.get_num_threads() == 2
        assert CpuThreads(plan, torch.device("cuda")).deciding is False
    finally:
        torch.set_num_threads(threads)
