"""The pixels of the synthetic sample benchmark: rendering and H.264 encoding of one clip.

:func:`_render_clip` draws a clip's frames from its keystep's look (colour, stripe pattern, moving
blob; see :class:`kscli.data.sample_plan._ClassLook`) as seen by its camera: exo cameras show the
pattern cleanly from a fixed viewpoint above a class-independent floor band; the ego (Aria) view
washes the colours out, lowers the contrast, adds noise, a vignette, camera shake and a
random-coloured distractor box (the knobs are in ``_EXO_LOOK`` / ``_EGO_LOOK``).  Every take adds
its own brightness, offset and tint.  :func:`_encode_clip` writes the frames as an mp4
(single-threaded x264 with its default settings, as the real clips were made, so the output is
reproducible); :func:`write_clip` does both for one clip
and is what worker processes run.  PyAV is imported only when a clip is encoded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kscli.data.sample_plan import ClassLook, PlannedClip, clip_num_frames

# How each view shows the keystep; the ego view is the harder one.  contrast: stripe contrast;
# blob: blob opacity; noise: noise sigma (grey levels); wash: how far the class colours are pulled
# toward a random grey; gain_jitter: random brightness per clip (+-); box_area: range of the frame
# fraction the distractor box covers; shake: camera shake step (short-side units per frame).
_EXO_LOOK = dict(contrast=0.6, blob=0.9, noise=5.0)
_EGO_LOOK = dict(contrast=0.35, blob=0.6, noise=12.0, wash=0.3, gain_jitter=0.2, box_area=(0.2, 0.4), shake=0.012)


def _take_variation(seed: int, take_key: tuple) -> tuple[float, float, np.ndarray]:
    r = np.random.default_rng([seed, 4, *take_key])
    gain = float(r.uniform(0.85, 1.15))
    offset = float(r.uniform(-10, 10))
    tint = r.uniform(-5, 5, size=3).astype(np.float32)
    return gain, offset, tint


def _camera_view(k: int, seed: int) -> tuple[float, float, float, float, float, float]:
    """Fixed viewpoint of exo camera k: rotation, zoom, shift x, shift y, horizon, floor level."""
    r = np.random.default_rng([seed, 5, k])
    rot = float(r.uniform(-0.3, 0.3)) + k * math.pi / 4
    zoom = float(r.uniform(0.75, 1.3))
    return (rot, zoom, float(r.uniform(-0.4, 0.4)), float(r.uniform(-0.3, 0.3)),
            float(r.uniform(0.72, 0.85)), float(r.uniform(60, 160)))


# --------------------------------------------------------------------------------------------
# per-clip set-up: render grid, view, pattern
# --------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """The pixels a clip is drawn at: an output size H x W computed at 1/div resolution."""

    height: int  # render size, ceil(H / div) x ceil(W / div)
    width: int
    short: int
    ys: np.ndarray  # (height, width) float32 row / column of each render pixel
    xs: np.ndarray
    X0: np.ndarray  # (height, width) position in short-side units, frame centre at (0.5, 0.5)
    Y0: np.ndarray
    block: int  # noise is drawn at low resolution, one value per block x block pixels
    nh: int  # noise grid size
    nw: int


def _render_grid(H: int, W: int, div: int) -> _Grid:
    f32 = np.float32
    height, width = -(-H // div), -(-W // div)
    short = min(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(f32)
    # short-side units, frame centre at (0.5, 0.5), from the centres of the output pixels
    X0 = (xs * div + (div - 1) / 2.0 - (W - 1) / 2.0) / min(H, W) + 0.5
    Y0 = (ys * div + (div - 1) / 2.0 - (H - 1) / 2.0) / min(H, W) + 0.5
    block = max(2, short // 32)  # noise is drawn at low resolution: cheap to make and to encode
    return _Grid(height, width, short, ys, xs, X0, Y0, block, -(-height // block), -(-width // block))


@dataclass
class _Box:
    """The ego view's distractor box ("hands / object"), drifting across the frame."""

    x0: float  # top-left corner at frame 0, render pixels
    y0: float
    vx: float  # pixels per second
    vy: float
    w: float
    h: float
    rgb: np.ndarray  # (3,) float64

    def rects(self, idx: np.ndarray, fps: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1) of the box in frames ``idx``, wrapping around the frame."""
        boxes = []
        for i in idx:
            x0 = int(round(self.x0 + self.vx * i / fps)) % max(1, width)
            y0 = int(round(self.y0 + self.vy * i / fps)) % max(1, height)
            boxes.append((x0, y0, min(width, x0 + int(self.w)), min(height, y0 + int(self.h))))
        return boxes


@dataclass
class _View:
    """How one clip shows its keystep: pattern coordinates and the look of its camera."""

    X: np.ndarray  # (height, width) pattern coordinates of the render pixels
    Y: np.ndarray
    base: np.ndarray  # (3,) float64 class colour
    blob_rgb: np.ndarray  # (3,) float64 blob colour
    contrast: float
    blob_alpha: float
    noise_sigma: float
    gain: float
    shake: np.ndarray  # (frames, 2) pattern shift per frame
    gvig: np.ndarray | None = None  # ego: vignette times gain (float32)
    box: _Box | None = None  # ego: the distractor box
    floor: np.ndarray | None = None  # exo: (height, width) mask of the floor band
    floor_col: np.ndarray | None = None  # exo: (height, width) float32 floor grey levels


def _draw_box(rng: np.random.Generator, grid: _Grid, box_area: tuple[float, float]) -> _Box:
    width, height = grid.width, grid.height
    area = float(rng.uniform(*box_area))
    bw = float(rng.uniform(0.45, 0.9)) * width
    bh = min(float(height), area * width * height / bw)
    bx0 = float(rng.uniform(0, width - bw))
    by0 = float(rng.uniform(0, height - bh))
    bvx, bvy = rng.uniform(-0.15, 0.15, size=2) * grid.short  # pixels per second
    dcol = rng.uniform(20, 235, size=3)
    return _Box(bx0, by0, bvx, bvy, bw, bh, dcol)


def _ego_view(look: ClassLook, grid: _Grid, rng: np.random.Generator, gain: float, n: int) -> _View:
    """The Aria view: washed-out colours, low contrast, vignette, distractor box, camera shake."""
    look_e = _EGO_LOOK
    grey = float(rng.uniform(110, 150))
    wash = look_e["wash"]  # class colours pulled toward grey
    base = (1 - wash) * look.rgb.astype(np.float64) + wash * grey
    blob_rgb = (1 - wash) * look.blob_rgb.astype(np.float64) + wash * grey
    gain *= 1.0 + float(rng.uniform(-1.0, 1.0)) * look_e["gain_jitter"]
    rr = (grid.X0 - 0.5) ** 2 + (grid.Y0 - 0.5) ** 2
    vig = np.clip(1.15 - 1.3 * rr, 0.35, 1.0).astype(np.float32)  # fisheye-like fall-off
    box = _draw_box(rng, grid, look_e["box_area"])
    shake = np.cumsum(rng.normal(0, look_e["shake"], size=(n, 2)), axis=0) + rng.uniform(-0.1, 0.1, 2)
    return _View(
        X=grid.X0, Y=grid.Y0, base=base, blob_rgb=blob_rgb, contrast=look_e["contrast"],
        blob_alpha=look_e["blob"], noise_sigma=look_e["noise"], gain=gain, shake=shake,
        gvig=vig * np.float32(gain), box=box,
    )


def _exo_view(look: ClassLook, grid: _Grid, k: int, seed: int, gain: float, n: int) -> _View:
    """Exo camera ``k``: the pattern from its fixed viewpoint, above a class-independent floor band."""
    rot, zoom, sx, sy, horizon, floor_level = _camera_view(k, seed)
    cr, sr = math.cos(rot), math.sin(rot)
    Xc, Yc = grid.X0 - 0.5, grid.Y0 - 0.5
    X = (cr * Xc - sr * Yc) * zoom + 0.5 + sx  # this camera's fixed viewpoint on the pattern
    Y = (sr * Xc + cr * Yc) * zoom + 0.5 + sy
    floor = grid.ys / max(1, grid.height - 1) > horizon  # class-independent floor band
    floor_col = (floor_level + np.sin(grid.xs / grid.short * 40.0) * 8.0).astype(np.float32)
    gain *= 1.0 + 0.05 * (k - 1.5)
    return _View(
        X=X, Y=Y, base=look.rgb.astype(np.float64), blob_rgb=look.blob_rgb.astype(np.float64),
        contrast=_EXO_LOOK["contrast"], blob_alpha=_EXO_LOOK["blob"], noise_sigma=_EXO_LOOK["noise"],
        gain=gain, shake=np.zeros((n, 2)), floor=floor, floor_col=floor_col,
    )


@dataclass
class _Pattern:
    """The spatial parts of a clip's stripes and blob, computed once per clip.

    Stripes: sin(2 pi f (X cos + Y sin) - phase); shake is a phase shift, so sin/cos of the
    spatial part are computed once.  Blob: exp(-|(X,Y) - c|^2 / r^2), expanded.
    """

    two_pi_f: float
    cos_t: float
    sin_t: float
    sinA: np.ndarray
    cosA: np.ndarray
    inv_r2: float
    negR2: np.ndarray
    X2: np.ndarray
    Y2: np.ndarray


def _pattern(look: ClassLook, view: _View) -> _Pattern:
    f32 = np.float32
    X, Y = view.X, view.Y
    two_pi_f = 2 * math.pi * look.freq
    cos_t, sin_t = math.cos(look.theta), math.sin(look.theta)
    arg = (two_pi_f * (X * cos_t + Y * sin_t)).astype(f32)
    inv_r2 = 1.0 / look.blob_r ** 2
    return _Pattern(
        two_pi_f=two_pi_f, cos_t=cos_t, sin_t=sin_t, sinA=np.sin(arg), cosA=np.cos(arg), inv_r2=inv_r2,
        negR2=(-(X * X + Y * Y) * inv_r2).astype(f32),
        X2=(2 * inv_r2 * X).astype(f32),
        Y2=(2 * inv_r2 * Y).astype(f32),
    )


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------


def _colour_weights(look: ClassLook, p: _Pattern, view: _View, t: np.ndarray, idx: np.ndarray):
    """Per-pixel weights (A, B) of the class colour and the blob colour in frames ``idx`` (times t)."""
    f32 = np.float32
    dx, dy = view.shake[idx, 0], view.shake[idx, 1]
    phase = look.drift * t - p.two_pi_f * (dx * p.cos_t + dy * p.sin_t)
    c_p = np.cos(phase).astype(f32)[:, None, None]
    s_p = np.sin(phase).astype(f32)[:, None, None]
    stripes = p.sinA * c_p
    stripes -= p.cosA * s_p  # = sin(arg - phase)
    L = stripes
    L *= f32(0.5 * view.contrast)
    L += f32(1.0 - 0.5 * view.contrast)
    u = look.blob_c[0] + look.blob_amp[0] * np.sin(look.blob_omega * t) - dx
    v = look.blob_c[1] + look.blob_amp[1] * np.cos(look.blob_omega * t) - dy
    m = p.X2 * u.astype(f32)[:, None, None]
    m += p.Y2 * v.astype(f32)[:, None, None]
    m += p.negR2
    m -= ((u * u + v * v) * p.inv_r2).astype(f32)[:, None, None]
    np.exp(m, out=m)
    m *= f32(view.blob_alpha)
    A = L * (1 - m)  # weight of the class colour
    B = m  # weight of the blob colour
    if view.gvig is not None:
        A *= view.gvig
        B *= view.gvig
    else:
        A *= f32(view.gain)
        B *= f32(view.gain)
    return A, B


def _frame_noise(rng: np.random.Generator, grid: _Grid, static_noise: np.ndarray, kk: int,
                 noise_sigma: float, offset: float) -> np.ndarray:
    """(kk, height, width) float32 noise plus the take's offset: the clip's field and a per-frame part."""
    f32 = np.float32
    noise = rng.standard_normal((kk, grid.nh, grid.nw), dtype=f32) * f32(0.6 * noise_sigma)
    noise += static_noise
    N = np.repeat(np.repeat(noise, grid.block, axis=1), grid.block, axis=2)[:, :grid.height, :grid.width]
    N += f32(offset)
    return N


def _compose_frames(A: np.ndarray, B: np.ndarray, N: np.ndarray, view: _View, tint: np.ndarray,
                    idx: np.ndarray, fps: int, grid: _Grid) -> np.ndarray:
    """(kk, height, width, 3) uint8 frames: colours weighted by A and B, box or floor, noise, tint."""
    f32 = np.float32
    height, width = grid.height, grid.width
    out = np.empty((len(idx), height, width, 3), dtype=np.uint8)
    if view.box is not None:
        boxes = view.box.rects(idx, fps, width, height)
    for c in range(3):
        ch = A * f32(view.base[c])
        ch += B * f32(view.blob_rgb[c])
        if view.box is not None:
            for j, (x0, y0, x1, y1) in enumerate(boxes):
                ch[j, y0:y1, x0:x1] = view.gvig[y0:y1, x0:x1] * f32(view.box.rgb[c])
        else:
            np.copyto(ch, view.floor_col * f32(view.gain), where=view.floor[None])
        ch += N
        ch += f32(tint[c])
        np.clip(ch, 0, 255, out=ch)
        out[..., c] = ch
    return out


def _render_clip(clip: PlannedClip, look: ClassLook, *, seed: int, height: int, width: int, fps: int, div: int = 1):
    """Yield the clip's frames as (ceil(height/div), ceil(width/div), 3) uint8 arrays.

    Frames are computed at 1/div resolution; the encoder enlarges them to height x width
    (bilinear, while converting to yuv420p).  The patterns are smooth, and it makes 448p
    generation several times faster.
    Vectorised over pixels and over chunks of frames.  A frame is, per colour channel c::

        gain * vignette * (base_c * L * (1 - m) + blob_c * m) + offset + tint_c + noise

    with L the class stripe pattern at the class contrast and m the class blob; exo frames have a
    class-independent floor band, ego frames a random-coloured distractor box (see module doc).
    """
    f32 = np.float32
    rng = np.random.default_rng(list(clip.clip_seed))
    n = clip_num_frames(clip.start, clip.end, fps)
    grid = _render_grid(height, width, div)
    gain, offset, tint = _take_variation(seed, clip.take_key)
    if clip.ego:
        view = _ego_view(look, grid, rng, gain, n)
    else:
        view = _exo_view(look, grid, clip.exo_index, seed, gain, n)
    pattern = _pattern(look, view)
    # noise: a per-clip field plus a smaller per-frame part (all-new noise every frame is costly to encode)
    static_noise = rng.standard_normal((grid.nh, grid.nw), dtype=f32) * f32(0.8 * view.noise_sigma)

    k = max(1, min(n, 1_000_000 // (grid.height * grid.width)))  # frames per chunk, ~1 M pixels a chunk
    for i0 in range(0, n, k):
        idx = np.arange(i0, min(n, i0 + k))
        t = clip.start + idx / fps  # take time: ego and exo clips of a segment are in sync
        A, B = _colour_weights(look, pattern, view, t, idx)
        N = _frame_noise(rng, grid, static_noise, len(idx), view.noise_sigma, offset)
        yield from _compose_frames(A, B, N, view, tint, idx, fps, grid)


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


# How clips are encoded. "default": x264's own defaults, which is how Ego-Exo4D's downscale script
# (`ffmpeg -i SRC -vf scale=... OUT.mp4`, no codec options) made its 448p takes: preset medium,
# crf 23, CABAC, 3 reference frames, 3 B-frames with pyramid, keyframes up to 250 frames apart;
# about half the frames are non-reference B-frames. One rate-control setting differs: MB-tree
# is off. With it on, the x264 in PyAV's wheels gave different bytes for identical frames from
# run to run (measured on the tiny sample's clips: 6 of 13 clips had 2+ outcomes in 8 runs; at
# 448x448, 2 outcomes in 6), so "same seed, same files" would not hold; with it off, every clip
# had one outcome in every run (also at 448x448 and 796x448). MB-tree only moves quantizers
# between blocks: the stream's structure, which is what decoding costs, stays (120 frames of
# 448x448: 87 B / 32 P / 1 I against 88 / 31 / 1 with it on). "fast": preset ultrafast with a
# keyframe every second (no B-frames, no CABAC): quick to write and decode, and so not what real
# clips cost.
ENCODINGS = ("default", "fast")
_X264 = {"default": {"threads": "1", "x264-params": "mbtree=0"},
         "fast": {"threads": "1", "preset": "ultrafast"}}


def _encode_clip(path: Path, frames, *, width: int, height: int, fps: int, crf: int | None,
                 encoding: str = "default") -> int:
    """Encode RGB frames to H.264 mp4 at path (via a temp name renamed at the end); return frame count.

    Frames of another size are scaled (bilinear) to width x height. One x264 thread, so the
    output is reproducible; `crf` None keeps the encoding's own (23 for both)."""
    import av  # PyAV; imported here so the rest of kscli.data does not need it
    from av.video.reformatter import VideoReformatter

    tmp = path.with_name(f".{path.stem}.partial.mp4")
    n = 0
    options = dict(_X264[encoding])
    if crf is not None:
        options["crf"] = str(crf)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps, options=options)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            if encoding == "fast":
                stream.codec_context.gop_size = fps
            scaler = VideoReformatter()  # one scaling context for the whole clip
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                frame = scaler.reformat(frame, width=width, height=height, format="yuv420p", interpolation="BILINEAR")
                frame.pts = n
                for packet in stream.encode(frame):
                    container.mux(packet)
                n += 1
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def write_clip(job):
    """Render and encode one clip; ``job`` is (clip, look, seed, (height, width), fps, crf, encoding, div, root)."""
    clip, look, seed, size, fps, crf, encoding, div, root = job
    height, width = size
    path = Path(root) / clip.rel
    frames = _render_clip(clip, look, seed=seed, height=height, width=width, fps=fps, div=div)
    n = _encode_clip(path, frames, width=width, height=height, fps=fps, crf=crf, encoding=encoding)
    return n, path.stat().st_size
