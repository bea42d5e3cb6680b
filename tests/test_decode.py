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
