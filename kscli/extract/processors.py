"""How each model family's own Hugging Face processor makes its input, as kscli's preprocessing plan.

A model sees its best features on input made the way it was trained and evaluated. The
processors differ (transformers 5, checked against their classes in tests/test_preprocess.py):

| family | processor | resize | crop | interpolation |
|---|---|---|---|---|
| V-JEPA 2 | VJEPA2VideoProcessor | short side int(C * 256 / 224) (292 for 256) | centre C | bilinear |
| VideoMAE, TimeSformer | VideoMAEImageProcessor | short side C (224) | centre C | bilinear |
| DINOv2 | BitImageProcessor | short side 256 (C * 256 / 224) | centre C (224) | bicubic |
| SigLIP | SiglipImageProcessor | straight to C x C | none | bicubic |

A weights folder's own ``preprocessor_config.json`` / ``video_preprocessor_config.json`` wins over
these defaults (its resize rule, crop and interpolation; mean/std are read in backbones.py).
``kscli extract --crop full`` replaces any of them by the centre square of the short side, resized
to C: the whole height of a wide frame, so an ego camera's edges stay in.
"""

from __future__ import annotations

from dataclasses import dataclass

RESAMPLE = {2: "bilinear", 3: "bicubic", 1: "bicubic"}  # PIL enums; LANCZOS as transformers' fast path does
CROPS = ("model", "full")


@dataclass(frozen=True)
class Geometry:
    mode: str  # "short" | "squash" | "full" (see kscli.extract.preprocess)
    resize_short: int  # the short side before the centre crop ("short" only)
    interpolation: str  # "bilinear" | "bicubic"


def family_geometry(family: str, size: int) -> Geometry:
    """The registry's default for a family at input side `size` (its processor's class defaults)."""
    if family == "siglip":
        return Geometry("squash", 0, "bicubic")
    if family == "dinov2":
        return Geometry("short", int(size * 256 / 224), "bicubic")
    if family == "vjepa2":
        return Geometry("short", int(size * 256 / 224), "bilinear")
    if family in ("videomae", "timesformer"):
        return Geometry("short", size, "bilinear")
    return Geometry("full", 0, "bilinear")


def _edge(value, key: str) -> int | None:
    if isinstance(value, dict):
        value = value.get(key)
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


def geometry_from_processor(pp: dict, default: Geometry, size: int) -> Geometry:
    """The resize rule a processor config describes, for input side `size`; `default` for what it
    does not say (or says in a way kscli does not follow, e.g. no resize at all)."""
    if not pp:
        return default
    interp = RESAMPLE.get(pp.get("resample"), default.interpolation) if isinstance(pp.get("resample"), int) \
        else default.interpolation
    if pp.get("do_resize") is False:
        return Geometry(default.mode, default.resize_short, interp)
    size_cfg = pp.get("size")
    crop = pp.get("do_center_crop", default.mode == "short")
    short = _edge(size_cfg, "shortest_edge") if isinstance(size_cfg, dict) else _edge(size_cfg, "")
    if isinstance(size_cfg, dict) and size_cfg.get("height") and not crop:
        return Geometry("squash", 0, interp)
    if short and crop:
        crop_side = _edge(pp.get("crop_size"), "height") or size
        return Geometry("short", int(round(short * size / crop_side)), interp)
    return Geometry(default.mode, default.resize_short, interp)


def describe(spec) -> str:
    """One line: how frames become this backbone's input (for `kscli backbones --name`, features info)."""
    get = spec.get if isinstance(spec, dict) else (lambda k, d=None: getattr(spec, k, d))
    size, mode, interp = get("size"), get("resize_mode", "full") or "full", get("interpolation", "bilinear")
    mean = ", ".join(f"{float(m):.3f}" for m in get("mean", ()))
    std = ", ".join(f"{float(s):.3f}" for s in get("std", ()))
    geometry = {"short": f"short side to {get('resize_short')} ({interp}, antialiased), centre crop {size}x{size}",
                "squash": f"resized to {size}x{size} ({interp}, antialiased), no crop",
                "full": f"centre square of the short side resized to {size}x{size} ({interp}, antialiased)"}.get(
        mode, mode)
    return f"{geometry}; /255, mean ({mean}), std ({std})"
