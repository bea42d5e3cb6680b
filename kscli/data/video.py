"""Decoding clips with PyAV (FFmpeg): exactly the frames a sample needs, and only what they need.

How a clip is read (`read_frames`):

1. Demux every packet of the first video stream (cheap: no decoding). The packets are the
   clip's frames; ranked by presentation time (pts) they give each frame its index, and their
   number is the clip's frame count (what the container's header claims is not used).
2. Ask `choose(frame_count)` which indices the sample needs.
3. Decode. With ``rule="all"`` every packet is decoded. With ``rule="sampled"`` (the default)
   the decoder skips every *non-reference* frame (``skip_frame = NONREF``) except the sampled
   ones: no other frame is predicted from a non-reference frame, so skipping one changes no
   pixel of any frame that is decoded. In Ego-Exo4D's 448p clips (x264 defaults: 3 B-frames)
   about half the frames are such.

Skipping is used only where it is provably exact: H.264 (a frame with nal_ref_idc 0 is never a
reference), and HEVC when the stream has a single temporal sub-layer (read from its hvcC
record; with more, a lower layer's "non-reference" picture may be referenced by a higher
layer). Any other codec (MJPEG, VP9, AV1, ...), a stream whose packets lack unique timestamps,
or one whose hvcC cannot be read is decoded in full under either rule, so both rules always
give the same frames; `plan_decoding` says which applies and why.

Every failure is a :class:`VideoError` with one line of text; FFmpeg's own log stays quiet.
One decoder thread per clip: throughput comes from one process per core (measured fastest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DECODE_RULES = ("sampled", "all")
DECODER = "pyav"  # what a store records as its decoder (part of what shapes its features)
SKIP_EXACT_CODECS = ("h264", "hevc")  # codecs whose non-reference frames nothing references


class VideoError(RuntimeError):
    """A clip that cannot be opened or decoded; the message says why, in one line."""


@dataclass(frozen=True)
class DecodePlan:
    """How a stream is decoded: frames indexed by pts rank ("pts") or by output order
    ("order"), and whether non-reference frames may be skipped (`why` says why not)."""

    index_by: str
    can_skip: bool
    why: str


@dataclass
class Decoded:
    """What `read_frames` returns: the frame count, the frame rate, the chosen frames (uint8
    (N, H, W, 3) in the order chosen; None without `choose`) and how many frames were decoded."""

    frame_count: int
    fps: float
    frames: np.ndarray | None
    decoded: int
    plan: DecodePlan


def _hevc_single_sub_layer(extradata: bytes | None) -> bool:
    """Whether an hvcC record (ISO/IEC 14496-15) says the stream has one temporal sub-layer."""
    if not extradata or len(extradata) < 23 or extradata[0] != 1:
        return False  # Annex B or unknown: the layer count cannot be read
    return (extradata[21] >> 3) & 0x7 == 1


def plan_decoding(codec: str, extradata: bytes | None, pts: list) -> DecodePlan:
    """The decoding plan for a stream with codec `codec` and packets with timestamps `pts`."""
    if any(p is None for p in pts) or len(set(pts)) != len(pts):
        return DecodePlan("order", False, "packets without unique timestamps")
    if codec not in SKIP_EXACT_CODECS:
        return DecodePlan("pts", False, f"{codec}: no reference information kscli trusts")
    if codec == "hevc" and not _hevc_single_sub_layer(extradata):
        return DecodePlan("pts", False, "hevc with several (or unknown) temporal sub-layers")
    return DecodePlan("pts", True, "")


def _said(e: Exception) -> str:
    """FFmpeg's own words for an error, without the path PyAV appends."""
    said = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
    return str(said)[:200]


def read_frames(path, choose=None, rule: str = "sampled") -> Decoded:
    """Open `path` and decode the frames `choose(frame_count)` names (indices in presentation
    order, repeats allowed), by `rule` ("sampled" or "all": the same frames either way; see the
    module doc). Any failure raises :class:`VideoError` with one line of text."""
    import av  # imported here: kscli.data is importable without the video libraries

    if rule not in DECODE_RULES:
        raise ValueError(f"decode rule must be one of {DECODE_RULES}, got {rule!r}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoError(f"cannot open the video: {_said(e)}") from None
    with container:
        if not container.streams.video:
            raise VideoError("no video stream in the file (audio only?)")
        stream = container.streams.video[0]
        cc = stream.codec_context
        cc.thread_count, cc.thread_type = 1, "NONE"
        try:
            demuxed = [p for p in container.demux(stream) if p.size]
        except av.error.FFmpegError as e:
            raise VideoError(f"the file is damaged (truncated?): {_said(e)}") from None
        if stream.frames and len(demuxed) < stream.frames:
            raise VideoError(f"the file is truncated: its index lists {stream.frames} frames, {len(demuxed)} could "
                             "be read; re-download it")
        packets = [p for p in demuxed if not p.is_discard]  # an edit list's dropped frames are not the clip's
        n = len(packets)
        if n < 1:
            raise VideoError("clip has no frames")
        fps = float(stream.average_rate or 0)
        if not math.isfinite(fps) or fps <= 0:  # frame times would be made up: a failure, not a guess
            raise VideoError(f"the clip has no usable frame rate (its container says {fps:g}); "
                             "re-encode it with a frame rate")
        plan = plan_decoding(cc.name, cc.extradata, [p.pts for p in packets])
        if choose is None:
            return Decoded(n, fps, None, 0, plan)
        order = [int(i) for i in choose(n)]
        wanted = set(order)
        if not all(0 <= i < n for i in wanted):
            raise ValueError(f"frame indices must be in [0, {n})")
        frames, decoded = _decode(cc, demuxed, packets, plan, wanted, skip=plan.can_skip and rule == "sampled")
    missing = sorted(wanted - set(frames))
    if missing:
        raise VideoError(f"frame {missing[0]} of {n} could not be decoded (damaged file?); "
                         f"{decoded} frame(s) decoded")
    return Decoded(n, fps, np.stack([frames[i] for i in order]), decoded, plan)


def _decode(cc, demuxed, packets, plan: DecodePlan, wanted: set[int], skip: bool) -> tuple[dict, int]:
    """{index: rgb24 frame} for the wanted indices (of `packets`, the clip's frames), and how many
    frames the decoder produced. Every demuxed packet goes to the decoder (a dropped one may be
    a reference)."""
    import av
    from av.video.reformatter import VideoReformatter

    # A scaling context of our own for the clip. frame.to_ndarray(format=...) would use PyAV's
    # per-thread one (PyAV >= 18), which a forked decoder worker inherits from the process that
    # forked it, with swscale's slice threads that do not exist in the child: freeing it there
    # blocked forever (seen in CI: a DataLoader worker stuck in pthread_cond_destroy).
    rgb = VideoReformatter()
    if plan.index_by == "pts":
        ranks = {p: i for i, p in enumerate(sorted(pk.pts for pk in packets))}
        wanted_pts = {p for p, i in ranks.items() if i in wanted}
    out: dict[int, np.ndarray] = {}
    produced = 0

    def take(frame) -> None:
        nonlocal produced
        i = ranks.get(frame.pts, -1) if plan.index_by == "pts" else produced
        produced += 1
        if i in wanted and i not in out:
            out[i] = rgb.reformat(frame, format="rgb24").to_ndarray()

    try:
        for pk in demuxed:
            if skip:  # set per packet: the decoder decides when it decodes the packet (one thread)
                cc.skip_frame = "DEFAULT" if pk.pts in wanted_pts else "NONREF"
            for frame in cc.decode(pk):
                take(frame)
        cc.skip_frame = "DEFAULT"
        for frame in cc.decode(None):
            take(frame)
    except av.error.FFmpegError as e:
        raise VideoError(f"decoding failed after {produced} frame(s): {_said(e)}") from None
    return out, produced
