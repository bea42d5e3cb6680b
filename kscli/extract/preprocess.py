"""Frame preprocessing for the frozen backbones, in torch (no torchvision), as each model's own
Hugging Face processor does it.

A backbone's spec says how its input is made (the ``resize_mode`` of :class:`BackboneSpec`):

* ``short``: resize so the short side is ``resize_short`` (the long side ``int(R * long / short)``),
  then take the centre ``size x size`` (top ``(h - S) // 2``). V-JEPA 2 (292 -> 256, bilinear),
  DINOv2 (256 -> 224, bicubic), VideoMAE and TimeSformer (224 -> 224, bilinear).
* ``squash``: resize straight to ``size x size``, no crop. SigLIP (bicubic).
* ``full``: the centre square of the short side, resized to ``size x size``: the whole height of a
  wide frame, so an ego camera's edges (where the hands often are) stay in. ``kscli extract
  --crop full`` chooses it for any backbone; the tiny test backbone uses it.

then scale to [0, 1] and ``(x - mean) / std``. Resizing uses antialiasing (as PIL and the
torchvision processors do) and the spec's interpolation (bilinear or bicubic). Where the frames
are resized:

* :func:`resize_clip_uint8` in a CPU decoding worker: uint8 in, uint8 out at ``size x size``
  (much less data to send between processes), with torch's uint8 antialias kernels;
* :func:`preprocess_clips` in the main process: uint8 ``(B, T, H, W, 3)`` to the normalised
  ``(B, T, 3, S, S)`` float tensor the backbone takes, resizing on the device unless told the
  worker already did (``geometry=False``). Off the CPU the resize runs in float32 and is rounded
  back to integer levels: the two routes agree to one grey level with bilinear, to a few with
  bicubic (torch's uint8 bicubic kernel rounds between its two passes).

Measured against the processors' own output in tests/test_preprocess.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from kscli.extract.backbones import BackboneSpec

__all__ = ["preprocess_clips", "resize_clip_uint8", "center_crop_square", "resize_plan"]

RESIZE_MODES = ("short", "squash", "full")
INTERPOLATIONS = ("bilinear", "bicubic")


def _as_uint8_tensor(frames, what: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif not isinstance(frames, torch.Tensor):
        # array-likes that expose .asnumpy() (e.g. decord's NDArray)
        asnumpy = getattr(frames, "asnumpy", None)
        if asnumpy is None:
            raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(frames).__name__}")
        frames = torch.from_numpy(np.ascontiguousarray(asnumpy()))
    if frames.dtype != torch.uint8:
        raise TypeError(f"{what}: expected uint8 frames, got {frames.dtype}")
    if frames.shape[-1] != 3:
        raise ValueError(f"{what}: expected RGB frames with 3 channels last, got shape {tuple(frames.shape)}")
    return frames


def center_crop_square(frames: torch.Tensor) -> torch.Tensor:
    """Centre crop ``(..., H, W, C)`` to ``(..., s, s, C)`` with ``s = min(H, W)`` (a view, no copy)."""
    h, w = frames.shape[-3], frames.shape[-2]
    s = min(h, w)
    top = (h - s) // 2
    left = (w - s) // 2
    return frames[..., top : top + s, left : left + s, :]


def resize_plan(h: int, w: int, spec: "BackboneSpec") -> tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int]]:
    """For an ``h x w`` frame: (crop before resizing as top, left, height, width; the size to resize
    to; the top-left corner of the final ``size x size`` crop after resizing)."""
    size = int(spec.size)
    mode = getattr(spec, "resize_mode", "full") or "full"
    if mode == "squash":
        return (0, 0, h, w), (size, size), (0, 0)
    if mode == "short":
        r = int(spec.resize_short)
        nh, nw = (r, int(r * w / h)) if h <= w else (int(r * h / w), r)  # as transformers rounds
        return (0, 0, h, w), (nh, nw), ((nh - size) // 2, (nw - size) // 2)
    s = min(h, w)
    return ((h - s) // 2, (w - s) // 2, s, s), (size, size), (0, 0)


def _resize_nchw(x: torch.Tensor, out: tuple[int, int], interpolation: str, force_float: bool = False) -> torch.Tensor:
    """Resize uint8 ``(N, 3, h, w)`` to uint8 ``(N, 3, *out)`` with antialiasing.

    CPU: directly on uint8 (torch's fast dedicated kernels). Other devices (or ``force_float``):
    in float32, rounded and clamped back to uint8 levels, so both match to one level.
    """
    if tuple(x.shape[-2:]) == tuple(out):
        return x
    if x.device.type == "cpu" and not force_float:
        return F.interpolate(x, size=out, mode=interpolation, antialias=True, align_corners=False)
    y = F.interpolate(x.float(), size=out, mode=interpolation, antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _geometry_nchw(x: torch.Tensor, spec: "BackboneSpec", force_float: bool = False) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> uint8 ``(N, 3, S, S)`` by the spec's resize mode."""
    (top, left, ch, cw), out, (ct, cl) = resize_plan(x.shape[-2], x.shape[-1], spec)
    x = x[..., top:top + ch, left:left + cw]
    x = _resize_nchw(x, out, getattr(spec, "interpolation", "bilinear") or "bilinear", force_float)
    size = int(spec.size)
    return x[..., ct:ct + size, cl:cl + size]


def resize_clip_uint8(frames, spec: "BackboneSpec", force_float: bool = False) -> torch.Tensor:
    """One clip's frames as the model takes them, still uint8: ``(T, H, W, 3)`` -> ``(T, S, S, 3)``.

    For a CPU decoding worker (accepts a torch tensor, a numpy array or an array with .asnumpy()); then
    call :func:`preprocess_clips` with ``geometry=False``. In a worker process call
    ``torch.set_num_threads(1)`` once.
    """
    frames = _as_uint8_tensor(frames, "resize_clip_uint8")
    if frames.ndim != 4:
        raise ValueError(f"resize_clip_uint8: expected (T, H, W, 3), got shape {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), channels_last memory: the fast uint8 path
    return _geometry_nchw(x, spec, force_float).permute(0, 2, 3, 1).contiguous()


def preprocess_clips(
    frames,
    spec: "BackboneSpec",
    device=None,
    dtype: torch.dtype = torch.float32,
    geometry: bool = True,
) -> torch.Tensor:
    """uint8 frames ``(B, T, H, W, 3)`` -> normalised ``(B, T, 3, S, S)`` on ``device`` in ``dtype``.

    ``S = spec.size``; the resize and crop follow the spec (module doc) unless ``geometry=False``
    (the frames are already ``S x S`` from :func:`resize_clip_uint8`). mean/std are ``spec.mean``
    / ``spec.std`` on the [0, 1] scale. The uint8 tensor is moved to ``device`` first (pinned
    memory makes that asynchronous) and all the work happens there; ``device=None`` keeps the
    frames' own device. Normalisation is computed in float32 and cast to ``dtype`` at the end. A
    single clip ``(T, H, W, 3)`` is also accepted and gets a batch dimension of 1.
    """
    frames = _as_uint8_tensor(frames, "preprocess_clips")
    if frames.ndim == 4:
        frames = frames.unsqueeze(0)
    if frames.ndim != 5:
        raise ValueError(f"preprocess_clips: expected (B, T, H, W, 3), got shape {tuple(frames.shape)}")
    if device is not None:
        device = torch.device(device)
        if frames.device != device:
            pinned = frames.device.type == "cpu" and device.type == "cuda" and frames.is_pinned()
            frames = frames.to(device, non_blocking=pinned)
    b, t, h, w = frames.shape[:4]
    size = int(spec.size)
    x = frames.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    if geometry:
        x = _geometry_nchw(x, spec)
    elif (h, w) != (size, size):
        raise ValueError(f"preprocess_clips(geometry=False): frames must already be {size}x{size}, got {h}x{w}")
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = mean / std
    # make the layout dense NCHW on the 1-byte tensor (cheaper than on the float one)
    y = x.contiguous().float().mul_(scale).sub_(shift)  # == (x / 255 - mean) / std
    y = y.view(b, t, 3, size, size)
    if dtype != torch.float32:
        y = y.to(dtype)
    return y
