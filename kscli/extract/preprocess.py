"""Frame preprocessing for the frozen backbones, in torch (no torchvision).

The one policy, the same for every backbone: centre-crop each frame to the square of its short
side, resize that square to ``spec.size`` (bilinear with antialiasing), scale to [0, 1], then
``(x - mean) / std`` with the backbone's mean/std.

Cropping before resizing is both faster and equivalent (up to resampling) to the usual
"resize short side, then centre crop" of the Hugging Face processors when the crop is the whole
short side. On CPU the resize runs on the uint8 tensor (torch's fast uint8 antialias kernel);
on other devices it runs in float32 and is rounded back to integer levels, so both paths give the
same pixels up to rounding.

Two entry points:

* :func:`resize_clip_uint8` for a CPU decoding worker: shrink the decoded frames to
  ``size x size`` uint8 before sending them across processes (much less data to pickle).
* :func:`preprocess_clips` for the main process: uint8 ``(B, T, H, W, 3)`` (already resized or
  not) to the normalised ``(B, T, 3, S, S)`` float tensor the backbone takes. On frames that are
  already ``S x S`` the crop and resize are skipped, so the two routes give identical pixels on
  CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from kscli.extract.backbones import BackboneSpec

__all__ = ["preprocess_clips", "resize_clip_uint8", "center_crop_square"]


def _as_uint8_tensor(frames, what: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif not isinstance(frames, torch.Tensor):
        # decord NDArray and similar expose .asnumpy()
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


def _resize_square_nchw(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``(N, 3, s, s)`` to uint8 ``(N, 3, size, size)``; bilinear, antialiased.

    CPU: directly on uint8 (fast dedicated kernel). Other devices: in float32, rounded and clamped
    back to uint8 levels, so the result matches the CPU path up to rounding.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if x.device.type == "cpu":
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def resize_clip_uint8(frames, size: int) -> torch.Tensor:
    """Centre-crop to square and resize one clip: uint8 ``(T, H, W, 3)`` -> uint8 ``(T, size, size, 3)``.

    For a CPU decoding worker (accepts a torch tensor, a numpy array or a decord NDArray). The
    result is contiguous and can go through :func:`preprocess_clips` afterwards, whose resize is
    then a no-op. In a worker process call ``torch.set_num_threads(1)`` once.
    """
    frames = _as_uint8_tensor(frames, "resize_clip_uint8")
    if frames.ndim != 4:
        raise ValueError(f"resize_clip_uint8: expected (T, H, W, 3), got shape {tuple(frames.shape)}")
    size = int(size)
    sq = center_crop_square(frames)
    if sq.shape[1] == size and sq.shape[2] == size:
        return sq.contiguous()
    x = sq.permute(0, 3, 1, 2)  # (T, 3, s, s), channels_last memory: the fast uint8 path
    y = _resize_square_nchw(x, size)
    return y.permute(0, 2, 3, 1).contiguous()


def preprocess_clips(
    frames,
    spec: "BackboneSpec",
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 frames ``(B, T, H, W, 3)`` -> normalised ``(B, T, 3, S, S)`` on ``device`` in ``dtype``.

    ``S = spec.size``; mean/std are ``spec.mean``/``spec.std`` (on the [0, 1] scale). The uint8
    tensor is moved to ``device`` first (pinned memory makes that asynchronous), and all the work
    happens there. ``device=None`` keeps the frames' own device. Normalisation is computed in
    float32 and cast to ``dtype`` at the end. A single clip ``(T, H, W, 3)`` is also accepted and
    gets a batch dimension of 1.
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
    b, t = frames.shape[:2]
    size = int(spec.size)

    sq = center_crop_square(frames)
    s = sq.shape[2]
    x = sq.reshape(b * t, s, s, 3).permute(0, 3, 1, 2)  # (N, 3, s, s) uint8
    x = _resize_square_nchw(x, size)

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
