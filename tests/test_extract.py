"""`kscli extract` through the real decoder, the real store and the real CLI on the tiny sample."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, cli, run_kscli
from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.extract.run import ClipJob, list_clip_jobs
from kscli.extract.shard import assign_shards, resolve_shard
from kscli.extract.store import FeatureStore


def all_clip_names(root, split):
    bench = Benchmark(Layout.resolve(data_root=root))
    return sorted(j.name for j in list_clip_jobs(bench, split, "all"))


def store_arrays(work, split, tag="tiny-random"):
    store = FeatureStore(work / "features" / tag / split)
    names = sorted(store.names)
    return names, store.get(names), store.get(names, "frame_times")


@pytest.mark.slow
def test_extract_cli_all_views_then_resume_skips(sample_root, tmp_path):
    work = tmp_path / "work"
    p = cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "train,test",
                  "--workers", "1", "--no-progress")
    assert "train: extracted" in p.stdout and "failed 0" in p.stdout
    for split in ("train", "test"):
        names, feats, times = store_arrays(work, split)
        assert names == all_clip_names(sample_root, split)
        assert feats.shape == (len(names), 128) and np.isfinite(feats).all()
        assert times.shape == (len(names), 8)
    store = FeatureStore(work / "features" / "tiny-random" / "train")
    assert {store.role(n) for n in store.names} == {"ego", "exo"}
    assert store.config["backbone"]["name"] == "tiny-random" and "torch" in store.config["versions"]
    assert len(store.parts) == 1  # the run merged its batch parts
    again = cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "train",
                      "--workers", "0", "--no-progress")
    assert f"extracted 0, skipped {len(names and all_clip_names(sample_root, 'train'))}" in again.stdout
    info = cli("features", "info", "--store", "tiny-random", "--work-dir", work, "--split", "train", "--json")
    assert json.loads(info.stdout)[0]["clips"] == len(all_clip_names(sample_root, "train"))
    # other sampling settings into the same store: refused with the reason; --overwrite moves it aside
    bad = cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "train",
                    "--num-frames", "4", "--no-progress", check=False)
    assert bad.exit_code == 2 and "backbone.num_frames is 8 in the store but 4 now" in bad.stderr
    assert bad.stderr.count("\n") == 1  # one clear line, no traceback
    # one split made otherwise than the others: refused before anything moves
    one = cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "test",
              "--num-frames", "4", "--overwrite", "--workers", "0", "--no-progress", check=False)
    assert one.exit_code == 2 and "backbone.num_frames is 8 in its train split but 4 now" in one.stderr
    assert not list((work / "features" / "tiny-random").glob("*.replaced-*"))
    cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "train,test",
        "--num-frames", "4", "--overwrite", "--workers", "0", "--no-progress")
    assert len(list((work / "features" / "tiny-random").glob("*.replaced-*"))) == 2
    for split in ("train", "test"):
        assert FeatureStore(work / "features" / "tiny-random" / split).config["backbone"]["num_frames"] == 4


def test_view_ego_and_windows_store_sequences(sample_root, tmp_path):
    work = tmp_path / "work"
    cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "val", "--view", "ego",
              "--windows", "3", "--workers", "0", "--no-progress")
    store = FeatureStore(work / "features" / "tiny-random-w3" / "val")
    assert {store.role(n) for n in store.names} == {"ego"}
    assert store.feature_shape == (3, 128)
    times = store.get(store.names, "frame_times")
    assert times.shape[1] == 24 and np.all(np.diff(times, axis=1) >= 0)


def test_broken_clips_are_recorded_and_the_run_goes_on(sample_copy, tmp_path):
    work = tmp_path / "work"
    clips = sample_copy / "keystep_benchmark" / "clips_448p"
    names = all_clip_names(sample_copy, "val")
    missing, empty, truncated = names[0], names[1], names[2]
    (clips / missing).unlink()
    (clips / empty).write_bytes(b"")
    data = (clips / truncated).read_bytes()
    (clips / truncated).write_bytes(data[: len(data) // 3])
    p = cli("extract", "--backbone", "tiny-random", "--data-root", sample_copy, "--work-dir", work, "--split", "val",
                  "--workers", "2", "--no-progress")
    assert f"failed 3 of {len(names)}" in p.stdout
    store = FeatureStore(work / "features" / "tiny-random" / "val")
    assert len(store) == len(names) - 3
    fails = store.failures()
    assert set(fails) == {missing, empty, truncated}
    assert "missing" in fails[missing] and "empty" in fails[empty]
    strict = cli("extract", "--backbone", "tiny-random", "--data-root", sample_copy, "--work-dir", work, "--split", "val", "--strict",
                 "--no-progress", check=False)  # the failed clips are tried again, and fail again
    assert strict.exit_code == 1 and "--strict: 3 clip(s) failed" in strict.stderr
    check = cli("check-data", "--data-root", sample_copy, "--work-dir", work, "--split", "val",
                      "--workers", "2", check=False)
    assert check.exit_code == 1 and "PROBLEMS: 3 clips" in check.stdout
    report = json.loads((work / "reports" / "check-data.json").read_text())
    assert {p["name"]: p["status"] for p in report["problems"]} == {
        missing: "missing", empty: "empty", truncated: "corrupt"}


def test_check_data_passes_on_the_sample(sample_root, tmp_path):
    p = cli("check-data", "--data-root", sample_root, "--work-dir", tmp_path, "--no-decode", "--no-progress")
    assert "OK: every clip checked is present and not empty (not decoded: --no-decode)" in p.stdout
    p = cli("check-data", "--data-root", sample_root, "--work-dir", tmp_path, "--split", "test", "--view", "ego")
    rep = json.loads((tmp_path / "reports" / "check-data.json").read_text())
    assert rep["ok"] and rep["splits"]["test"]["ego"]["ok"] == rep["splits"]["test"]["segments"]
    assert rep["short_clips"] >= 1  # clips under 16 frames are counted, not failed


@pytest.mark.slow
def test_kill_9_loses_at_most_the_batch_in_flight(sample_root, tmp_path):
    ref, work = tmp_path / "ref", tmp_path / "work"
    args = ["--data-root", sample_root, "--split", "train", "--batch-size", "2", "--workers", "1", "--no-progress"]
    run_kscli("extract", "--backbone", "tiny-random", "--work-dir", ref, *args)
    store_dir = work / "features" / "tiny-random" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "kscli", "extract", "--backbone", "tiny-random", "--work-dir", str(work), *map(str, args)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(store_dir.glob("part-*.h5"))) < 4:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = FeatureStore(store_dir)  # readable after the kill
    total = len(all_clip_names(sample_root, "train"))
    assert 0 < len(partial) < total
    p = run_kscli("extract", "--backbone", "tiny-random", "--work-dir", work, *args)
    assert f"skipped {len(partial)}" in p.stdout
    names, feats, times = store_arrays(work, "train")
    rnames, rfeats, rtimes = store_arrays(ref, "train")
    assert names == rnames
    np.testing.assert_array_equal(feats, rfeats)
    np.testing.assert_array_equal(times, rtimes)


def test_shard_assignment_is_deterministic_and_balanced():
    jobs = [ClipJob(f"c{i}", "ego", "", d) for i, d in enumerate([212, 100, 90, 60, 50, 5, 4, 3, 1, 0.16])]
    shards = assign_shards(jobs, 3)
    assert shards == assign_shards(list(reversed(jobs)), 3)
    assert sorted(j.name for s in shards for j in s) == sorted(j.name for j in jobs)
    loads = sorted(sum(j.duration for j in s) for s in shards)
    assert loads[0] >= 100 and loads[-1] == 212


def test_explicit_shard_wins_and_is_checked():
    assert resolve_shard(1, 2, env={"RANK": "0", "WORLD_SIZE": "4"}).shard == 1
    with pytest.raises(KscliError, match="0 <= shard < num-shards"):
        resolve_shard(2, 2, env={})
    with pytest.raises(KscliError, match="go together"):
        resolve_shard(1, None, env={})


def test_check_data_workers_inherit_no_lock_held_by_a_parent_thread(sample_root, tmp_path, monkeypatch):
    """The check-data hang: a forked worker inherits a lock that another thread of the parent held
    at the fork (in the field: the dynamic loader's, held by tqdm's monitor thread) and waits on it
    forever. Here a probe that needs such a lock: with a forked pool this never finishes."""
    import threading

    from kscli.data import check

    held, real = threading.Lock(), check.probe_clip

    def probe_needing_the_lock(path, decode=True):
        with held:
            return real(path, decode)

    monkeypatch.setattr(check, "probe_clip", probe_needing_the_lock)
    layout = Layout.resolve(data_root=sample_root, work_dir=tmp_path)
    out = {}
    held.acquire()  # held by "another thread" while the pool starts
    try:
        t = threading.Thread(target=lambda: out.setdefault("rep", check.check_data(
            layout, ["train"], jobs=2, progress=False)), daemon=True)
        t.start()
        t.join(timeout=120)
    finally:
        held.release()
    assert not t.is_alive(), "check-data hung: its workers inherited a held lock"
    assert out["rep"].ok and out["rep"].splits["train"]["ego"]["ok"] > 0


@pytest.mark.slow
def test_ffmpeg_noise_stays_off_the_terminal_and_its_reason_is_recorded_once(sample_copy, tmp_path):
    work = tmp_path / "work"
    bad = all_clip_names(sample_copy, "test")[0]
    (sample_copy / "keystep_benchmark" / "clips_448p" / bad).write_bytes(b"not a video at all")
    for args in (["check-data", "--split", "test", "--no-progress"], ["extract", "--backbone", "tiny-random", "--split", "test", "--no-progress"]):
        p = run_kscli(*args, "--data-root", sample_copy, "--work-dir", work, check=False)
        assert "[mov," not in p.stderr and "moov atom" not in p.stderr, p.stderr
        assert p.stdout.count("cannot open the video: Invalid data found when processing input") == 1, p.stdout
