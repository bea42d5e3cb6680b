"""Which frames of a clip a backbone sees, and decoding just those frames (kscli.data.video)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """`num_frames` per window, `windows` temporal windows per clip (1: one vector per clip)."""

    num_frames: int = 16
    windows: int = 1
    mode: str = "uniform"  # recorded in the store; imported stores say "official-windows-mean"

    def to_attrs(self) -> dict:
        return asdict(self)


def sample_frame_indices(clip_frames: int, num_frames: int, windows: int = 1) -> np.ndarray:
    """Frame indices, shape (windows, num_frames): each window is an equal slice of the clip,
    sampled at the centres of `num_frames` equal bins.

    A clip shorter than the sample repeats frames (nearest earlier frame), so a 0.16 s clip
    (5 frames at 30 fps) still fills 16 slots in time order; a clip never needs more frames
    decoded than the sample asks for, however long it is.
    """
    if clip_frames < 1:
        raise ValueError("clip has no frames")
    if num_frames < 1 or windows < 1:
        raise ValueError("num_frames and windows must be >= 1")
    slots = windows * num_frames
    # bin centres over the whole clip, window after window: window w covers [w/W, (w+1)/W)
    centres = (np.arange(slots, dtype=np.float64) + 0.5) * clip_frames / slots
    idx = np.floor(centres).astype(np.int64)
    return np.clip(idx, 0, clip_frames - 1).reshape(windows, num_frames)


def decode_frames(path: str, sampling: SamplingConfig, rule: str = "sampled"
                  ) -> tuple[np.ndarray, np.ndarray, int, float, int]:
    """Decode the sampled frames of one clip by decoding `rule` ("sampled": only what they need;
    "all": every frame; the same frames either way).

    Returns uint8 frames (W*F, H, W, 3), their times in seconds from the clip's first frame,
    the clip's frame count, its frame rate (probed, not assumed) and how many frames were
    decoded.
    """
    clip = decode_samples(path, [sampling], rule)
    return clip.frames[0], clip.times[0], clip.frame_count, clip.fps, clip.decoded


@dataclass
class Samples:
    """What `decode_samples` returns: per sampling, its uint8 frames (W*F, H, W, 3) and their
    times (seconds from the clip's first frame); the clip's frame count, frame rate and how
    many frames were decoded in all."""

    frames: list[np.ndarray]
    times: list[np.ndarray]
    frame_count: int
    fps: float
    decoded: int


def decode_samples(path: str, samplings: list[SamplingConfig], rule: str = "sampled") -> Samples:
    """Decode one clip once for several samplings (one per backbone): the union of the frames
    they sample is decoded, and each gets exactly the frames `decode_frames` would give it alone
    (the decoder's output for a frame does not depend on which other frames are asked for)."""
    from kscli.data.video import read_frames

    picks: list[np.ndarray] = []

    def choose(n: int) -> np.ndarray:
        picks[:] = [sample_frame_indices(n, s.num_frames, s.windows).reshape(-1) for s in samplings]
        return np.unique(np.concatenate(picks))

    clip = read_frames(path, choose, rule)
    union = np.unique(np.concatenate(picks))
    frames = [clip.frames if len(idx) == len(union) and (idx == union).all() else clip.frames[np.searchsorted(union, idx)]
              for idx in picks]
    return Samples(frames, [(idx / clip.fps).astype(np.float32) for idx in picks], clip.frame_count, clip.fps,
                   clip.decoded)
