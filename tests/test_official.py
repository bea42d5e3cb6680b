"""`kscli.extract.official`: Ego-Exo4D's published per-take features pooled into a kscli store.

Fake official files are written for the tiny sample's takes: row i of a file is the constant
`i + offset(camera)`, so the pooled value of a clip tells exactly which windows were averaged.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.extract.official import (FeatureFiles, camera_file_ids, get_source, import_features, list_sources,
                                    load_feature_file, segment_window_mean)
from kscli.extract.store import FeatureStore

OMNI = get_source("omnivore_video")
D = OMNI.feature_dim
# these takes' files are written in other shapes than a plain tensor
DICT_TAKE = "f026d1c8-2f70-4d3c-8902-f5ede4ae87e7"  # val: ego file is {"features": t, "fps": 30}
HALF_TAKE = "85f640ef-a988-4b03-b95c-eeecfce30a5e"  # train: every file float16 and (T, 1, D)
BRIEF_NAME_TAKE = "47c417f3-b851-44ba-aec4-3072a3cbb5ed"  # train: ego file named ..._aria04_214-1.pt
SHORT_TAKE = "0881e3bb-6cb3-4db9-bee9-5622a3b0b224"  # train: ego file ends before the last segment


def offset(camera: str) -> float:
    """Per-camera constant added to every row: ego 0, cam01 100, cam02 200, ..."""
    return 0.0 if camera.startswith("aria") else 100.0 * int(camera[3:])


def expected_windows(start, end, n, stride=16, window=32, fps=30):
    """Brute force: windows with a positive overlap with [start, end], else the nearest; clipped to n."""
    hit = [i for i in range(n) if i * stride / fps < end and (i * stride + window) / fps > start]
    if not hit:
        centres = [(i * stride + window / 2) / fps for i in range(n)]
        hit = [int(np.argmin([abs(c - (start + end) / 2) for c in centres]))]
    return hit


def file_windows(take_uid, segments):
    """Windows in a take's fake file: past its last segment, except SHORT_TAKE's ego file."""
    last = max(s.end for s in segments if s.take_uid == take_uid)
    return math.ceil(last * 30 / 16) + 2


def write_fake_features(root, folder, skip=(), short_ego=False):
    """Fake `<take_uid>_<cam_id>_<stream>.pt` files for every clip of every split of the sample.

    Returns {clip name: (file windows, camera)}. `skip`: (take_uid, camera) pairs left out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bench = Benchmark(Layout.resolve(data_root=root))
    segs = [s for split in ("train", "val", "test") for s in bench.segments(split)]
    info = {}
    written = set()
    for seg in segs:
        for clip in seg.clips:
            n = file_windows(seg.take_uid, segs)
            if short_ego and seg.take_uid == SHORT_TAKE and clip.role == "ego":
                n = 3  # 3 windows: 0 .. 64/30 s
            info[clip.name] = (n, clip.camera)
            key = (seg.take_uid, clip.camera)
            if key in written or key in skip:
                continue
            written.add(key)
            cam_id, stream = camera_file_ids(clip.camera, clip.role)
            if clip.role == "ego" and not (seg.take_uid == BRIEF_NAME_TAKE or cam_id == "aria"):
                stream = "rgb"  # the real release's Aria stream name
            t = torch.arange(n, dtype=torch.float32)[:, None].expand(n, D) + offset(clip.camera)
            obj = t.clone()
            if seg.take_uid == HALF_TAKE:
                obj = obj.half()[:, None, :]
            if seg.take_uid == DICT_TAKE and clip.role == "ego":
                obj = {"features": obj, "fps": 30}
            torch.save(obj, folder / f"{seg.take_uid}_{cam_id}_{stream}.pt")
    return info


@pytest.fixture(scope="module")
def official(sample_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("official") / "features" / "omnivore_video"
    return folder, write_fake_features(sample_root, folder, short_ego=True)


def layout_for(root, work):
    return Layout.resolve(data_root=root, work_dir=work)


# --------------------------------------------------------------------------------------------
# pooling and file names, by hand


def test_pool_windows_hand_computed():
    feats = np.repeat(np.arange(20, dtype=np.float32)[:, None], 4, axis=1)  # row i == i
    # [4.31022, 5.33562] s = frames 129.3 .. 160.07: windows 7 (112..144) to 10 (160..192)
    vec, t0, t1, k, nearest = segment_window_mean(feats, OMNI, 4.31022, 5.33562)
    assert k == 4 and not nearest and np.all(vec == (7 + 8 + 9 + 10) / 4)
    assert t0 == pytest.approx(7 * 16 / 30 - 4.31022) and t1 == pytest.approx((10 * 16 + 32) / 30 - 4.31022)
    # a window that only touches the segment does not count: [0, 16/30] is window 0 only
    assert segment_window_mean(feats, OMNI, 0.0, 16 / 30)[3] == 1
    # 0.16 s between window starts still overlaps the two windows covering it
    vec, *_, k, nearest = segment_window_mean(feats, OMNI, 2.96231, 3.12231)
    assert (k, nearest) == (2, False) and vec[0] == (4 + 5) / 2
    # a zero-length segment takes the windows containing that instant
    assert segment_window_mean(feats, OMNI, 1.0, 1.0)[3] == 2
    # past the end of the file: the nearest (last) window, flagged
    vec, t0, t1, k, nearest = segment_window_mean(feats, OMNI, 100.0, 101.0)
    assert (k, nearest, vec[0]) == (1, True, 19.0) and t1 == pytest.approx((19 * 16 + 32) / 30 - 100)
    # MAWS: one feature per frame at 30 fps; [1.0, 1.1] s is frames 30, 31, 32
    maws = get_source("maws_clip_2b")
    frames = np.repeat(np.arange(100, dtype=np.float32)[:, None], 2, axis=1)
    vec, *_, k, _ = segment_window_mean(frames, maws, 1.0, 1.1)
    assert k == 3 and vec[0] == 31.0
    # and the brute-force rule agrees on many random segments
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = float(rng.uniform(0, 14))
        e = s + float(rng.choice([0.16, rng.uniform(0, 3)]))
        vec, *_ = segment_window_mean(feats, OMNI, s, e)
        assert vec[0] == pytest.approx(np.mean(expected_windows(s, e, 20)))


def test_camera_to_file(tmp_path):
    assert camera_file_ids("aria01_214-1", "ego") == ("aria01", "214-1")
    assert camera_file_ids("aria_214-1", "ego") == ("aria", "214-1")
    assert camera_file_ids("cam01", "exo") == ("cam01", "0")
    assert camera_file_ids("cam01", "exo", exo_stream="1") == ("cam01", "1")
    uid = "c3290667-5407-403a-a416-ee99a64073e4"
    for name in (f"{uid}_aria01_214-1.pt", f"{uid}_aria02_rgb.pt", f"{uid}_cam01_0.pt", f"{uid}_cam02_7.pt",
                 f"{uid}_cam03_0.pt", f"{uid}_cam03_1.pt", "other_cam01_0.pt"):
        (tmp_path / name).write_bytes(b"")
    files = FeatureFiles(tmp_path)
    assert files.resolve(uid, "aria01_214-1", "ego").name == f"{uid}_aria01_214-1.pt"  # exact
    assert files.resolve(uid, "aria02_214-1", "ego").name == f"{uid}_aria02_rgb.pt"  # the release's name
    assert files.resolve(uid, "cam01", "exo").name == f"{uid}_cam01_0.pt"
    assert files.resolve(uid, "cam02", "exo").name == f"{uid}_cam02_7.pt"  # the unique cam02 file
    assert files.resolve(uid, "cam03", "exo", exo_stream="1").name == f"{uid}_cam03_1.pt"
    with pytest.raises(ValueError, match="cannot tell which"):
        files.resolve(uid, "cam03", "exo", exo_stream="5")  # two cam03 files, neither exact
    with pytest.raises(FileNotFoundError, match=r"no feature file for camera cam04 of take .*: looked for "
                       r"<take_uid>_\{cam04_0.pt, gp04_0.pt, cam04_\*.pt, gp04_\*.pt\}; this take has aria01_214-1.pt"):
        files.resolve(uid, "cam04", "exo")
    # GoPros are camNN in some takes and gpNN in others: a clip's camNN finds the take's gpNN file
    (tmp_path / f"{uid}_gp04_0.pt").write_bytes(b"")
    (tmp_path / f"{uid}_cam05_0.pt").write_bytes(b"")
    files = FeatureFiles(tmp_path)
    assert files.resolve(uid, "cam04", "exo").name == f"{uid}_gp04_0.pt"
    assert files.resolve(uid, "gp05", "exo").name == f"{uid}_cam05_0.pt"
    assert files.resolve(uid, "cam01", "exo").name == f"{uid}_cam01_0.pt"  # the exact name still comes first
    # a bare `aria_214-1` camera: the take's one Aria rgb file, else its one Aria file
    assert files.resolve(uid, "aria_214-1", "ego").name == f"{uid}_aria02_rgb.pt"
    (tmp_path / f"{uid}_aria03_rgb.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=f"2 feature files match {uid}_aria\\*_rgb.pt"):
        FeatureFiles(tmp_path).resolve(uid, "aria_214-1", "ego")


def test_load_feature_file_accepts_tensors_and_one_tensor_dicts(tmp_path):
    t = torch.arange(6 * D, dtype=torch.float32).reshape(6, D)
    cases = {"plain": t, "half": t[:, None].half(), "dict": {"features": t, "num_windows": 6, "note": "x"}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        got = load_feature_file(tmp_path / f"{name}.pt", D)
        assert got.shape == (6, D) and got.dtype == np.float32
        np.testing.assert_array_equal(got, t.half().float().numpy() if name == "half" else t.numpy())
    bad = {"two": ({"a": t, "b": t}, "dict with 2 tensors"), "list": ([t], "got a list"),
           "dim": (torch.zeros(6, 768), r"shape \(6, 768\), expected \(windows, 1536\)"),
           "ints": (torch.zeros(6, D, dtype=torch.int64), "holds torch.int64"),
           "empty": (torch.zeros(0, D), "at least one window")}
    for name, (obj, why) in bad.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(KscliError, match=why) as e:
            load_feature_file(tmp_path / f"{name}.pt", D)
        assert str(tmp_path / f"{name}.pt") in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(KscliError, match="cannot read this feature file") as e:
        load_feature_file(tmp_path / "junk.pt", D)
    assert str(tmp_path / "junk.pt") in str(e.value)


# --------------------------------------------------------------------------------------------
# the import on the sample


def test_import_pools_every_clip_into_the_store_and_heads_read_it(sample_root, official, tmp_path):
    folder, info = official
    layout = layout_for(sample_root, tmp_path / "work")
    bench = Benchmark(layout)
    # the download's parent folder works too: the source's subfolder is found
    out = import_features(layout, "omnivore_video", folder.parent, ["train", "test"], progress=False,
                          batch_size=7)
    names = {s: sorted({c.name for seg in bench.segments(s) for c in seg.clips}) for s in ("train", "test")}
    for summary, split in zip(out, ("train", "test")):
        assert (summary.split, summary.total, summary.extracted, summary.failed) == (
            split, len(names[split]), len(names[split]), 0)
    assert out[0].nearest == 2 and out[1].nearest == 0  # SHORT_TAKE's last 2 ego segments are past its file

    store = FeatureStore(layout.features_dir("omnivore_video", "train"))
    assert sorted(store.names) == names["train"] and len(store.parts) == 1  # batches merged
    cfg = store.config
    assert cfg["backbone"]["name"] == "omnivore_video" and cfg["backbone"]["kind"] == "official"
    assert cfg["backbone"]["feature_dim"] == D and cfg["backbone"]["num_frames"] == 32
    assert cfg["sampling"] == {"mode": "official-windows-mean", "window_frames": 32, "stride_frames": 16,
                               "fps": 30.0}
    assert (cfg["dtype"], cfg["split"], cfg["view"]) == ("float32", "train", "all") and "torch" in cfg["versions"]

    segs = {c.name: seg for seg in bench.segments("train") for c in seg.clips}
    feats = store.get(names["train"])
    times = store.get(names["train"], "frame_times")
    counts = store.get(names["train"], "num_frames")
    assert feats.shape == (len(names["train"]), D) and times.shape == (len(names["train"]), 2)
    assert np.all(store.get(names["train"], "fps") == 30)
    for row, name in enumerate(names["train"]):
        seg, (n, camera) = segs[name], info[name]
        assert store.role(name) == ("ego" if name == seg.ego.name else "exo")
        hit = expected_windows(seg.start, seg.end, n)
        np.testing.assert_array_equal(feats[row], np.full(D, np.mean(hit) + offset(camera), np.float32))
        assert counts[row] == len(hit)
        first, last = hit[0] * 16 / 30 - seg.start, (hit[-1] * 16 + 32) / 30 - seg.start
        np.testing.assert_allclose(times[row], [first, last], atol=1e-5)
    # (a hand-computed case, windows 7..10 of a segment at 4.31022 s, is in the segment_window_mean test)

    # the heads read it unchanged: ego (N, D), exo views with their mask
    from kscli.heads.features import load_feature_set

    fs, asm = load_feature_set(Benchmark(layout), "train", ["omnivore_video"])
    train = bench.segments("train")
    assert fs.ego.shape == (len(train), D) and asm.used == len(train) and not asm.missing_ego
    assert fs.exo.shape == (len(train), 4, D) and fs.exo_mask.shape == (len(train), 4)
    assert fs.exo_mask.sum(1).tolist() == [len(s.exo) for s in train] and asm.exo_missing == 0
    for i, s in enumerate(train):
        for v, clip in enumerate(sorted(s.exo, key=lambda c: c.camera)):
            hit = expected_windows(s.start, s.end, info[clip.name][0])
            assert fs.exo[i, v, 0] == np.mean(hit) + offset(clip.camera)
    fs_test, _ = load_feature_set(Benchmark(layout), "test", ["omnivore_video"])
    assert fs_test.ego.shape == (len(bench.segments("test")), D) and fs_test.exo_mask.shape[1] == 0

    # resume: everything is skipped, from the same files moved elsewhere too; other settings are
    # refused in one line
    moved = tmp_path / "elsewhere" / folder.name
    shutil.copytree(folder, moved)
    again = import_features(layout, "omnivore_video", moved, ["train"], progress=False)[0]
    assert (again.extracted, again.skipped) == (0, len(names["train"]))
    folder = moved
    with pytest.raises(KscliError, match="sampling.stride_frames is 16 in the store but 8 now") as e:
        import_features(layout, "omnivore_video", folder, ["train"], stride_frames=8, progress=False)
    assert "\n" not in str(e.value) and "--tag" in str(e.value)


def test_missing_take_file_is_a_failure_and_the_rest_imports_then_resume(sample_root, tmp_path):
    layout = layout_for(sample_root, tmp_path / "work")
    bench = Benchmark(layout)
    seg0 = bench.segments("val")[0]
    gone = (seg0.take_uid, seg0.ego.camera)
    folder = tmp_path / "features"
    write_fake_features(sample_root, folder, skip={gone})
    ego_only = [s.ego.name for s in bench.segments("val")]
    lost = sorted(s.ego.name for s in bench.segments("val") if (s.take_uid, s.ego.camera) == gone)
    s = import_features(layout, "omnivore_video", folder, ["val"], view="ego", progress=False)[0]
    assert (s.total, s.extracted, s.failed) == (len(ego_only), len(ego_only) - len(lost), len(lost))
    store = FeatureStore(layout.features_dir("omnivore_video", "val"))
    assert {store.role(n) for n in store.names} == {"ego"} and len(store) == len(ego_only) - len(lost)
    fails = store.failures()
    assert sorted(fails) == lost and all(f.startswith("FileNotFoundError: no feature file for camera ")
                                         for f in fails.values())
    assert "looked for <take_uid>_{aria02_214-1.pt, aria02_rgb.pt, aria02_*.pt}" in fails[lost[0]]
    assert (layout.features_dir("omnivore_video", "val") / "failures-r000.jsonl").is_file()
    # the file arrives (under the release's Aria name): the rerun imports just those clips
    torch.save(torch.ones(40, D), folder / f"{seg0.take_uid}_aria02_rgb.pt")
    s = import_features(layout, "omnivore_video", folder, ["val"], view="ego", progress=False)[0]
    assert (s.skipped, s.extracted, s.failed) == (len(ego_only) - len(lost), len(lost), 0)
    store = FeatureStore(layout.features_dir("omnivore_video", "val"))
    assert sorted(store.names) == sorted(ego_only) and not store.failures()
    np.testing.assert_array_equal(store.get(lost), np.ones((len(lost), D), np.float32))


def test_a_bad_file_stops_with_its_name_and_keeps_what_was_pooled(sample_root, tmp_path):
    layout = layout_for(sample_root, tmp_path / "work")
    folder = tmp_path / "features"
    write_fake_features(sample_root, folder)
    bench = Benchmark(layout)
    uid = sorted(s.take_uid for s in bench.segments("test"))[-1]  # the last take imported
    bad = next(folder.glob(f"{uid}_*.pt"))
    torch.save({"a": torch.zeros(3, D), "b": torch.zeros(3, D)}, bad)
    with pytest.raises(KscliError, match="exactly one such tensor") as e:
        import_features(layout, "omnivore_video", folder, ["test"], progress=False)
    assert str(bad) in str(e.value) and "move it away and rerun" in str(e.value)
    kept = FeatureStore(layout.features_dir("omnivore_video", "test"))
    assert 0 < len(kept) < len(bench.segments("test"))  # the other take's clips were written
    bad.unlink()
    s = import_features(layout, "omnivore_video", folder, ["test"], progress=False)[0]
    assert s.skipped == len(kept) and s.failed == s.total - len(kept) and s.extracted == 0


def test_sources_and_clear_errors(sample_root, tmp_path):
    assert {s["name"]: (s["feature_dim"], s["window_frames"], s["stride_frames"]) for s in list_sources()} == {
        "omnivore_video": (1536, 32, 16), "maws_clip_2b": (2048, 1, 1)}
    layout = layout_for(sample_root, tmp_path / "work")
    with pytest.raises(KscliError, match="unknown source; choose from omnivore_video, maws_clip_2b"):
        import_features(layout, "slowfast", tmp_path, ["val"])
    with pytest.raises(KscliError, match=r"no such folder; download the features part .*features/omnivore_video"):
        import_features(layout, "omnivore_video", tmp_path / "nope", ["val"])
    with pytest.raises(KscliError, match="no .pt feature files here"):
        import_features(layout, "omnivore_video", tmp_path, ["val"])
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(KscliError, match="--view"):
        import_features(layout, "omnivore_video", tmp_path, ["val"], view="side")
    with pytest.raises(KscliError, match="fps must be positive"):
        get_source("omnivore_video", fps=0)
    spec = get_source("maws_clip_2b", window_frames=32, stride_frames=16, fps=30, feature_dim=1280)
    assert (spec.window_frames, spec.stride_frames, spec.feature_dim) == (32, 16, 1280)


def test_import_features_cli_then_train_head(sample_root, official, tmp_path):
    from conftest import cli

    work, folder = tmp_path / "work", official[0]
    res = cli("import-features", "--source", "omnivore_video", "--features-dir", folder, "--data-root", sample_root,
              "--work-dir", work, "--split", "train,val", "--no-progress")
    assert "train: imported" in res.stdout and "failed 0" in res.stdout
    res = cli("train-head", "--head", "linear", "--store", "omnivore_video", "--data-root", sample_root,
              "--work-dir", work, "--name", "omni")
    assert (work / "runs" / "omni" / "metrics.json").is_file() and "top-1" in res.stdout


def test_windows_cut_each_segment_into_spans_for_the_sequence_heads(sample_root, official, tmp_path):
    from conftest import cli

    folder, info = official
    work = tmp_path / "work"
    res = cli("import-features", "--source", "omnivore_video", "--features-dir", folder, "--data-root", sample_root,
              "--work-dir", work, "--split", "train,val", "--windows", "3", "--no-progress")
    assert "omnivore_video-w3" in res.stdout and "failed 0" in res.stdout
    layout = layout_for(sample_root, work)
    store = FeatureStore(layout.features_dir("omnivore_video-w3", "train"))
    assert store.config["sampling"]["windows"] == 3 and store.feature_shape == (3, D)
    seg = max(Benchmark(layout).segments("train"), key=lambda s: (s.end - s.start, s.name))  # spans of several windows
    feats = store.get([seg.ego.name])[0]
    times = store.get([seg.ego.name], "frame_times")[0]
    edges = np.linspace(seg.start, seg.end, 4)
    n = info[seg.ego.name][0]
    for w in range(3):  # span w pools the published windows overlapping it, by the brute-force rule
        hit = expected_windows(edges[w], edges[w + 1], n)
        np.testing.assert_array_equal(feats[w], np.full(D, np.mean(hit), np.float32))
        np.testing.assert_allclose(times[2 * w:2 * w + 2], [hit[0] * 16 / 30 - seg.start,
                                                             (hit[-1] * 16 + 32) / 30 - seg.start], atol=1e-5)
    res = cli("train-head", "--head", "context", "--store", "omnivore_video-w3", "--data-root", sample_root,
              "--work-dir", work, "--name", "ctx-w3", "--epochs", "2")
    assert "top-1" in res.stdout
    with pytest.raises(KscliError, match="--windows must be at least 1"):
        import_features(layout, "omnivore_video", folder, ["train"], windows=0, progress=False)


def write_published(root, folder, source):
    """Feature files exactly as Ego-Exo4D publishes them, for every take and camera of the sample:
    `(T, 1, D)` tensors, Omnivore float32 (one window per 16 frames), MAWS float16 L2-normalised
    (one per frame); Aria files `<uid>_ariaNN_rgb.pt`; GoPros `<uid>_camNN_0.pt`, except one
    take whose GoPros are `gpNN`; the folder's `config.yaml`. Also the download's `takes.json`.
    Row i of a file holds the value i (MAWS: a unit vector whose first entry encodes i).
    Returns {take_uid: frames}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model_name: whatever\n")
    bench = Benchmark(Layout.resolve(data_root=root))
    segs = [s for split in ("train", "val", "test") for s in bench.segments(split)]
    takes = sorted({s.take_uid for s in segs})
    gp_take = takes[0]
    frames = {}
    for uid in takes:
        last = max(s.end for s in segs if s.take_uid == uid)
        frames[uid] = int(last * 30) + 7  # (frames - 32) % 16 != 0 for most takes: a back-padded window
    for seg in segs:
        for clip in seg.clips:
            cam_id, _ = camera_file_ids(clip.camera, clip.role)
            stream = "rgb" if clip.role == "ego" else "0"
            if clip.role == "exo" and seg.take_uid == gp_take:
                cam_id = cam_id.replace("cam", "gp")
            n = frames[seg.take_uid]
            if source == "omnivore_video":
                room = n - 32
                rows = room // 16 + 1 + (1 if room % 16 else 0)
                t = torch.arange(rows, dtype=torch.float32)[:, None, None].expand(rows, 1, 1536).clone()
            else:
                t = torch.zeros(n, 1, 2048)
                t[:, 0, 0] = torch.arange(n) / (2 * n)  # first entry i / 2n, the rest fills the unit norm
                t[:, 0, 1] = (1 - t[:, 0, 0] ** 2).sqrt()
                t = t.half()
            torch.save(t, folder / f"{seg.take_uid}_{cam_id}_{stream}.pt")
    (root / "takes.json").write_text(json.dumps([{"take_uid": u, "take_name": f"take{i}", "duration_sec": frames[u] / 30}
                                                 for i, u in enumerate(takes)]))
    return frames


def expected_value(source, seg, n):
    """What pooling a published file of n frames over a segment must give (see write_published)."""
    if source == "maws_clip_2b":  # the frames inside the segment, averaged
        hit = [i for i in range(n) if i / 30 < seg.end and (i + 1) / 30 > seg.start]
        return np.mean([float(torch.tensor(i / (2 * n)).half()) for i in hit])
    room = n - 32  # Omnivore: windows every 16 frames, and one ending at the last frame if needed
    starts = [16 * i for i in range(room // 16 + 1)] + ([room] if room % 16 else [])
    hit = [i for i, a in enumerate(starts) if a / 30 < seg.end and (a + 32) / 30 > seg.start]
    return np.mean(hit)


@pytest.mark.parametrize("source", ["omnivore_video", "maws_clip_2b"])
def test_published_files_import_with_no_overrides(sample_copy, tmp_path, source):
    from conftest import cli

    frames = write_published(sample_copy, tmp_path / "features" / source, source)
    work = tmp_path / "work"
    res = cli("import-features", "--source", source, "--features-dir", tmp_path / "features", "--data-root",
              sample_copy, "--work-dir", work, "--split", "train,val", "--no-progress")
    assert "failed 0" in res.stdout and "train: imported" in res.stdout
    store = FeatureStore(work / "features" / source / "train")
    assert store.feature_shape == (get_source(source).feature_dim,)
    segments = Benchmark(Layout.resolve(data_root=sample_copy)).segments("train")
    for seg in segments:
        for clip in seg.clips:
            assert store.get([clip.name])[0, 0] == pytest.approx(expected_value(source, seg, frames[seg.take_uid]),
                                                                  abs=2e-3)
    if source == "omnivore_video":
        # the last window ends at the take's last frame (the pooled span of a take's last segment
        # says where it ends); without the take lengths it sits on the grid, past the video's end
        (sample_copy / "takes.json").unlink()
        cli("import-features", "--source", source, "--features-dir", tmp_path / "features", "--data-root",
            sample_copy, "--work-dir", work, "--split", "train", "--tag", "grid", "--no-progress")
        grid = FeatureStore(work / "features" / "grid" / "train")
        padded = 0
        for uid, n in frames.items():
            last = [s for s in segments if s.take_uid == uid]
            if not last or (n - 32) % 16 == 0:
                continue
            seg = max(last, key=lambda s: s.end)
            end = store.get([seg.ego.name], "frame_times")[0, 1] + seg.start
            assert end == pytest.approx(n / 30, abs=1e-4)
            assert grid.get([seg.ego.name], "frame_times")[0, 1] + seg.start > n / 30 + 1e-3
            padded += 1
        assert padded > 0


def test_takes_json_that_is_not_one_is_a_clear_error(sample_copy, tmp_path, capsys):
    folder = tmp_path / "features" / "omnivore_video"
    write_published(sample_copy, folder, "omnivore_video")
    bad = sample_copy / "takes.json"
    bad.write_text('{"not": "takes"}')
    with pytest.raises(KscliError, match="no take with take_uid and duration_sec"):  # named: an error
        import_features(layout_for(sample_copy, tmp_path / "w"), "omnivore_video", folder, ["val"],
                        progress=False, takes_json=bad)
    # found beside the download: a note, and the import goes on with the last windows on the grid
    out = import_features(layout_for(sample_copy, tmp_path / "w2"), "omnivore_video", folder, ["val"], progress=False)
    assert out[0].failed == 0 and "importing without take lengths" in capsys.readouterr().err
    cfg = FeatureStore(tmp_path / "w2" / "features" / "omnivore_video" / "val").config
    assert "last_window" not in cfg["sampling"]  # recorded only when takes.json placed it


def test_the_back_padded_window_is_found_when_the_video_is_a_frame_longer():
    """takes.json says 32 + 16k frames (no back-padding needed), the video has one frame more:
    the file holds one window more than the grid fits, and that one ends at the video's end."""
    frames = 32 + 16 * 5
    starts, ends = OMNI.window_bounds(5 + 2, take_seconds=frames / 30)
    assert starts[-1] == pytest.approx((frames - 32) / 30) and ends[-1] == pytest.approx(frames / 30)
    starts, _ = OMNI.window_bounds(5 + 1, take_seconds=frames / 30)  # as many as the grid fits: untouched
    assert starts[-1] == pytest.approx(5 * 16 / 30)
