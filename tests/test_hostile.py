"""What a real download and a real machine throw at kscli: odd videos, odd paths, odd files, full
disks, read-only folders, damaged stores. Each: a clear record or one error line, the run goes
on where it can, nothing finished is lost. Through the real CLI, decoder and store.
"""

import fractions
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import REPO, cli, run_kscli
from kscli.data.layout import Benchmark, Layout
from kscli.extract.run import list_clip_jobs
from kscli.extract.store import FeatureStore

W, H = 64, 48


def _frames(n, w, h):
    base = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        yield np.roll(base, 3 * i, axis=1)


def write_video(path, n=20, w=W, h=H, fps=30, codec="libx264", pix="yuv420p", rotate=None, vfr=False, options=None,
                container_options=None):
    with av.open(str(path), "w", format="mp4", options=container_options or {}) as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix
        if options:
            s.options = options
        if rotate is not None:
            s.metadata["rotate"] = str(rotate)  # the display-matrix rotation phones write
        if vfr:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        t = 0
        for i, img in enumerate(_frames(n, w, h)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:  # frames 20 ms and 50 ms apart, alternately
                frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
                t += 20 if i % 2 else 50
            out.mux(s.encode(frame))
        out.mux(s.encode())


def write_audio_only(path, seconds=1.0):
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=48000)
        n = int(48000 * seconds)
        samples = (np.sin(np.arange(n) / 10) * 0.1).astype(np.float32)[None]
        for i in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, i:i + 1024], format="fltp", layout="mono")
            frame.sample_rate = 48000
            out.mux(s.encode(frame))
        out.mux(s.encode())


def write_cut(path, faststart):
    """A clip cut at 60% of its bytes: with its index first (faststart, as streaming tools write)
    the index lists frames the file no longer holds; with its index last there is no index."""
    write_video(path, n=40, container_options={"movflags": "faststart"} if faststart else None)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * 0.6)])


# kind -> (writer, what kscli must do: frame count stored, or the failure's text)
HOSTILE = {
    "B-frames, x264 defaults (as Ego-Exo4D's clips)": (lambda p: write_video(p, n=60, options={
        "threads": "1", "x264-params": "mbtree=0"}), 60),
    "HEVC with 3 temporal sub-layers": (lambda p: write_video(p, codec="libx265", options={
        "x265-params": "log-level=none:temporal-layers=3"}), 20),
    "an index that over-reports frames": (lambda p: write_cut(p, faststart=True), "the file is truncated: its index "
                                                                                 "lists 40 frames"),
    "truncated": (lambda p: write_cut(p, faststart=False), "cannot open the video"),
    "audio only": (write_audio_only, "no video stream in the file"),
    "a single frame": (lambda p: write_video(p, n=1), 1),
    "variable frame rate": (lambda p: write_video(p, n=30, vfr=True), 30),
    "60 fps": (lambda p: write_video(p, n=60, fps=60), 60),
    "10-bit H.264": (lambda p: write_video(p, pix="yuv420p10le"), 20),
    "HEVC": (lambda p: write_video(p, codec="libx265", options={"x265-params": "log-level=none"}), 20),
    "MJPEG": (lambda p: write_video(p, codec="mjpeg", pix="yuvj420p"), 20),
    "odd size 447x251": (lambda p: write_video(p, w=447, h=251, pix="yuv444p"), 20),
    "rotation flag": (lambda p: write_video(p, rotate=90), 20),
    "212 s (the longest test segment)": (lambda p: write_video(p, n=212 * 30, w=32, h=32), 212 * 30),
}


@pytest.fixture(scope="module")
def hostile(sample_root, tmp_path_factory):
    """The sample under a path with spaces and non-ASCII letters, ten of its val clips replaced
    by the hostile kinds above; extracted once (workers decode them) into a work dir as odd."""
    root = tmp_path_factory.mktemp("hostile") / "Téléchargements ögon 下载"
    data, work = root / "down load", root / "wörk dir"
    shutil.copytree(sample_root, data)
    jobs = sorted(list_clip_jobs(Benchmark(Layout.resolve(data_root=data)), "val", "all"), key=lambda j: j.name)
    kinds = {}
    assert len(jobs[::4]) >= len(HOSTILE)
    for job, (kind, (write, _)) in zip(jobs[::4], HOSTILE.items()):
        write(job.path)
        kinds[kind] = job.name
    p = run_kscli("extract", "--backbone", "tiny-random", "--data-root", data, "--work-dir", work, "--split", "val", "--workers", "2",
                  "--no-progress")
    return data, work, kinds, p


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_each_hostile_video_is_extracted_or_recorded(hostile, kind):
    data, work, kinds, p = hostile
    name, expect = kinds[kind], HOSTILE[kind][1]
    store = FeatureStore(work / "features" / "tiny-random" / "val")
    if isinstance(expect, str):
        assert name not in store and expect in store.failures()[name]
        assert p.stdout.count(expect) == 1  # recorded once, in kscli's own words
    else:
        assert name in store, store.failures().get(name)
        assert store.get([name], "num_frames")[0] == expect
        assert np.isfinite(store.get([name])).all()
        times = store.get([name], "frame_times")[0]
        assert np.all(np.diff(times) >= 0) and times[-1] < expect / 25  # in time order, within the clip


def test_hostile_videos_run_goes_on_quietly(hostile):
    data, work, kinds, p = hostile
    total = len(list_clip_jobs(Benchmark(Layout.resolve(data_root=data)), "val", "all"))
    failing = sum(isinstance(expect, str) for _, expect in HOSTILE.values())
    assert f"failed {failing} of {total} clips" in p.stdout  # audio only, cut short
    assert "[mov," not in p.stderr and "moov atom" not in p.stderr and "x265" not in p.stderr, p.stderr
    store = FeatureStore(work / "features" / "tiny-random" / "val")
    assert store.get([kinds["60 fps"]], "fps")[0] == 60
    check = run_kscli("check-data", "--data-root", data, "--work-dir", work, "--split", "val", "--no-progress",
                      check=False)
    assert check.returncode == 1 and f"PROBLEMS: {failing} clips" in check.stdout and "no video stream" in check.stdout


@pytest.mark.slow
def test_decoding_only_the_sampled_frames_gives_the_same_store_as_decoding_all(hostile, tmp_path):
    """--decode sampled (the default, used by the fixture) and --decode all: the same rows, bit
    for bit, and the same failures, on every kind above."""
    data, work, kinds, _ = hostile
    ref = tmp_path / "all"
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", data, "--work-dir", ref, "--split", "val",
              "--workers", "2", "--decode", "all", "--no-progress")
    a, b = (FeatureStore(w / "features" / "tiny-random" / "val") for w in (work, ref))
    names = sorted(a.names)
    assert names == sorted(b.names) and a.failures() == b.failures()
    for field in ("features", "frame_times", "num_frames", "fps"):
        np.testing.assert_array_equal(a.get(names, field), b.get(names, field), err_msg=field)
    assert a.digest == b.digest  # the rule is recorded, but is not part of what shapes a feature
    assert (a.config["decode"], b.config["decode"]) == ("sampled", "all")


@pytest.mark.slow
def test_odd_paths_work_through_training_and_submission(hostile):
    data, work, _, _ = hostile
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", data, "--work-dir", work, "--split", "train,test", "--no-progress")
    p = run_kscli("train-head", "--store", "tiny-random", "--head", "linear", "--data-root", data, "--work-dir", work, "--name", "rün 1")
    assert "top-1" in p.stdout
    s = run_kscli("submit", "--run", "rün 1", "--data-root", data, "--work-dir", work)
    out = next((work / "submissions").glob("test_*.json"))
    assert json.loads(out.read_text(encoding="utf-8"))["results"] and str(out) in s.stdout


def test_label_mapping_and_annotations_saved_by_excel_or_notepad(sample_copy, tmp_path):
    """A UTF-8 BOM and CRLF line endings (Excel's CSV), a BOM before the JSON (Notepad)."""
    ann = sample_copy / "annotations" / "keystep_benchmark"
    before = Benchmark(Layout.resolve(data_root=sample_copy))
    labels, segments = before.labels.to_rows(), [s.name for s in before.segments("train")]
    mapping = ann / "label_mapping.csv"
    mapping.write_bytes(b"\xef\xbb\xbf" + mapping.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    train = ann / "keystep_segment_train.json"
    train.write_bytes(b"\xef\xbb\xbf" + train.read_bytes())
    after = Benchmark(Layout.resolve(data_root=sample_copy))
    assert after.labels.to_rows() == labels and [s.name for s in after.segments("train")] == segments
    assert any("," in row["step_name"] for row in labels)  # the quoted name with a comma survives
    cli("check-data", "--data-root", sample_copy, "--work-dir", tmp_path, "--no-decode", "--no-progress")


def _unwritable_dir(tmp_path) -> Path:
    """A folder nobody may write into: a chmod 555 folder, or for root (who writes anywhere)
    /sys, where creating anything is refused even to root."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        os.chmod(d, 0o555)
        return d
    try:
        os.mkdir("/sys/kscli-probe")
    except PermissionError:
        return Path("/sys")
    except OSError:
        pass
    else:
        os.rmdir("/sys/kscli-probe")
    pytest.skip("no folder here refuses writes to root")


@pytest.mark.slow
def test_a_read_only_work_dir_is_one_line(sample_root, tmp_path):
    work = _unwritable_dir(tmp_path)
    p = run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "test", "--no-progress",
                  check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "check its permissions (kscli reads the download and writes under --work-dir" in p.stderr
    assert str(work) in p.stderr
    t = run_kscli("train-head", "--store", "tiny-random", "--head", "linear", "--data-root", sample_root, "--work-dir", work, check=False)
    assert t.returncode == 2 and t.stderr.count("\n") == 1, t.stderr


def _limited(nbytes):
    """preexec_fn: files this process writes may not grow past nbytes (a disk that fills)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


@pytest.mark.slow
@pytest.mark.parametrize("limit,finished", [(40_000, "parts"), (8_000, "nothing")])
def test_a_disk_that_fills_mid_write_loses_nothing_finished(sample_root, tmp_path, limit, finished):
    """40 kB: every batch part fits, the final merge does not; 8 kB: not even the first part."""
    work = tmp_path / "work"
    args = ["extract", "--backbone", "tiny-random", "--data-root", str(sample_root), "--work-dir", str(work), "--split", "train",
            "--workers", "0", "--batch-size", "4", "--no-progress"]
    p = subprocess.run([sys.executable, "-m", "kscli", *args], cwd=REPO, capture_output=True, text=True,
                       preexec_fn=_limited(limit))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "File too large; the file grew past a size limit" in p.stderr
    folder = work / "features" / "tiny-random" / "train"
    assert not list(folder.glob("*.tmp"))  # nothing half-written under any name
    total = len(list_clip_jobs(Benchmark(Layout.resolve(data_root=sample_root)), "train", "all"))
    kept = len(FeatureStore(folder))
    assert (kept == total) if finished == "parts" else (kept == 0)
    again = run_kscli(*args)
    assert f"skipped {kept} (already done)" in again.stdout
    assert len(FeatureStore(folder)) == total and len(list(folder.glob("part-*.h5"))) == 1


@pytest.mark.slow
def test_a_damaged_part_is_named_listed_and_moved_aside_for_a_rerun(sample_root, tmp_path):
    work = tmp_path / "work"
    args = ["extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "val", "--workers", "0",
            "--no-progress"]
    run_kscli(*args)
    folder = work / "features" / "tiny-random" / "val"
    names = sorted(FeatureStore(folder).names)
    [part] = folder.glob("part-*.h5")
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # a part cut by a full disk, a copy, a sync gone wrong
    info = run_kscli("features", "info", "--store", "tiny-random", "--work-dir", work, "--split", "val", check=False)
    assert info.returncode == 2 and info.stderr.count("\n") == 1 and part.name in info.stderr
    assert "features verify --move-aside" in info.stderr
    verify = ["features", "verify", "--store", "tiny-random", "--work-dir", work, "--split", "val"]
    v = run_kscli(*verify, check=False)
    assert v.returncode == 1 and f"unreadable: {part.name}" in v.stdout and "0 good part(s), 1 unreadable" in v.stdout
    v = run_kscli(*verify, "--move-aside")
    assert f"moved aside: {part.name}" in v.stdout and not part.exists()
    assert list(folder.glob(f"{part.name}.unreadable-*"))  # kept for a look, out of the store
    again = run_kscli(*args)
    assert f"extracted {len(names)}, skipped 0" in again.stdout
    assert sorted(FeatureStore(folder).names) == names
    assert "1 good part(s)" in run_kscli(*verify).stdout


def _reasons(paths):
    from kscli.data.video import VideoError, read_frames

    out = []
    for p in paths:
        try:
            read_frames(p)
            out.append("ok")
        except VideoError as e:
            out.append(str(e))
    return out


def test_failure_reasons_stay_with_their_clip_across_forks_and_threads(tmp_path):
    """Forked decoders and threads decoding at once never swap, mix or swallow reasons."""
    import multiprocessing
    import threading

    garbage, folder = tmp_path / "garbage.mp4", tmp_path / "a folder.mp4"
    garbage.write_bytes(b"not a video")
    folder.mkdir()
    expect = {str(garbage): _reasons([garbage])[0], str(folder): _reasons([folder])[0]}  # the parent decodes first
    assert expect[str(garbage)] != expect[str(folder)]
    jobs = [[str(garbage)] * 40, [str(folder)] * 40]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for paths, got in zip(jobs, pool.map(_reasons, jobs)):
            assert set(got) == {expect[paths[0]]}
    results, threads = {}, [threading.Thread(target=lambda j=j: results.setdefault(j[0], _reasons(j))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {k: set(v) for k, v in results.items()} == {k: {v} for k, v in expect.items()}
