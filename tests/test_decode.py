"""Decoding only what a sample needs: the same frames as decoding everything, where skipping is
exact; everywhere else, everything is decoded. Checked against PyAV's plain in-order decoding."""

import av
import numpy as np
import pytest

from kscli.data.video import DecodePlan, plan_decoding, read_frames
from kscli.extract.sampling import SamplingConfig, decode_frames
from test_hostile import write_video


def reference(path, idx):
    """The frames `idx` by the plain route: decode every frame in order, pick."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack([frames[i] for i in idx])


KINDS = {  # name -> (writer options, can skip?)
    "h264, x264 defaults (B-frames)": (dict(n=90, options={"threads": "1", "x264-params": "mbtree=0"}), True),
    "h264, no B-frames": (dict(n=60, options={"preset": "ultrafast", "threads": "1"}), True),
    "h264 10-bit, B-frames": (dict(n=45, pix="yuv420p10le", options={"threads": "1"}), True),
    "hevc, one sub-layer": (dict(n=45, codec="libx265", options={"x265-params": "log-level=none"}), True),
    "hevc, 3 sub-layers": (dict(n=45, codec="libx265",
                                options={"x265-params": "log-level=none:temporal-layers=3"}), False),
    "mjpeg": (dict(n=30, codec="mjpeg", pix="yuvj420p"), False),
    "vfr": (dict(n=40, vfr=True, options={"threads": "1"}), True),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    out = {}
    for name, (kw, _) in KINDS.items():
        path = root / f"{name.replace(' ', '_').replace(',', '')}.mp4"
        write_video(path, **kw)
        out[name] = path
    return out


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("frames,windows", [(16, 1), (8, 3), (1, 1), (64, 1)])
def test_sampled_gives_the_frames_of_decoding_everything(clips, kind, frames, windows):
    path = clips[kind]
    cfg = SamplingConfig(num_frames=frames, windows=windows)
    s = decode_frames(str(path), cfg, "sampled")
    a = decode_frames(str(path), cfg, "all")
    for x, y in zip(s[:4], a[:4]):
        np.testing.assert_array_equal(x, y)
    n = a[2]
    from kscli.extract.sampling import sample_frame_indices
    np.testing.assert_array_equal(s[0], reference(path, sample_frame_indices(n, frames, windows).reshape(-1)))
    assert a[4] == n  # "all" decodes every frame
    assert s[4] <= n


def test_skipping_is_used_only_where_it_is_exact_and_saves_work(clips, sample_root):
    for kind, (_, can_skip) in KINDS.items():
        clip = read_frames(clips[kind], lambda n: [0, n // 2], "sampled")
        if kind == "hevc, 3 sub-layers":  # an older x265 (PyAV < 15) writes one layer: then skipping is exact
            with av.open(str(clips[kind])) as c:
                can_skip = (c.streams.video[0].codec_context.extradata[21] >> 3) & 7 == 1
        assert clip.plan.can_skip == can_skip, (kind, clip.plan)
    # the sample's clips are encoded as Ego-Exo4D's are: their non-reference B-frames are skipped
    total = decoded = 0
    for path in sorted((sample_root / "keystep_benchmark" / "clips_448p" / "train").rglob("*.mp4")):
        clip = read_frames(path, lambda n: np.linspace(0, n - 1, 8).round(), "sampled")
        total, decoded = total + clip.frame_count, decoded + clip.decoded
    assert decoded < 0.8 * total, (decoded, total)
    no_b = read_frames(clips["h264, no B-frames"], lambda n: np.arange(0, n, 10), "sampled")
    assert no_b.decoded == no_b.frame_count  # every frame is a reference: nothing to skip


def test_the_plan_names_why_it_decodes_everything():
    assert plan_decoding("h264", None, [0, 2, 1]) == DecodePlan("pts", True, "")
    assert plan_decoding("mjpeg", None, [0, 1]).why == "mjpeg: no reference information kscli trusts"
    assert plan_decoding("h264", None, [0, None]) == DecodePlan("order", False, "packets without unique timestamps")
    assert plan_decoding("h264", None, [0, 0, 1]).index_by == "order"
    hvcc = bytearray(23)
    hvcc[0] = 1
    for layers, ok in ((1, True), (2, False), (0, False)):
        hvcc[21] = layers << 3
        assert plan_decoding("hevc", bytes(hvcc), [0, 1]).can_skip is ok
    assert not plan_decoding("hevc", b"\x00\x00\x00\x01", [0, 1]).can_skip  # Annex B: unknown layers


def test_a_bad_rule_is_refused(clips):
    with pytest.raises(ValueError, match="decode rule must be one of"):
        read_frames(clips["mjpeg"], lambda n: [0], "some")


def test_decoding_leaves_no_per_thread_scaler_for_a_forked_worker_to_inherit(clips):
    """PyAV >= 18.1.1 keeps one swscale context per thread for frame.to_ndarray(format=...); a
    DataLoader worker forked from a process that used it inherits it with slice threads that do
    not exist in the child, and freeing it there hung (CI). kscli's decoding uses a scaler of its
    own per clip, so the per-thread one is never made, and the frames are PyAV's own RGB."""
    import subprocess
    import sys

    probe = (
        "import sys, av.video.frame as f; from kscli.data.video import read_frames\n"
        f"d = read_frames({str(clips['h264, x264 defaults (B-frames)'])!r}, lambda n: list(range(n)), 'all')\n"
        "held = getattr(getattr(f, '_thread_local', None), 'reformatter', None)\n"
        "print(len(d.frames), held is None)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    n, clean = out.stdout.split()
    assert int(n) > 0 and clean == "True"


def test_a_worker_forked_after_the_parent_decoded_decodes_another_size(tmp_path):
    """The hang itself (PyAV 18.1.1 hung here every time before the fix): the parent converts a
    frame to RGB as a user's own code may (PyAV's per-thread scaler), then a forked process
    (as a DataLoader worker is) decodes a clip of another size with kscli."""
    import subprocess
    import sys

    small, wide = tmp_path / "small.mp4", tmp_path / "wide.mp4"
    write_video(small, n=10, w=448, h=448)
    write_video(wide, n=10, w=800, h=448)
    probe = (
        "import av, multiprocessing as mp\n"
        "from kscli.data.video import read_frames\n"
        f"with av.open({str(small)!r}) as c:\n"
        "    [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]\n"
        "def child():\n"
        f"    return len(read_frames({str(wide)!r}, lambda n: list(range(n)), 'all').frames)\n"
        "with mp.get_context('fork').Pool(1) as pool:\n"
        "    print(pool.apply_async(child).get(timeout=60))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "10", out.stderr[-500:]
