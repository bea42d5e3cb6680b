"""How each model family's own Hugging Face processor makes its input, as kscli's preprocessing plan.

A model sees its best features on input made the way it was trained and evaluated. The
processors differ (transformers 5, checked against their classes in tests/test_preprocess.py):

| family | processor | resize | crop | interpolation |
|---|---|---|---|---|
| V-JEPA 2 | VJEPA2VideoProcessor | short side int(C * 256 / 224) (292 for 256) | centre C | bilinear |
| VideoMAE, TimeSformer | VideoMAEImageProcessor | short side C (224) | centre C | bilinear |
| DINOv2 | BitImageProcessor | short side 256 (C * 256 / 224) | centre C (224) | bicubic |
| SigLIP | SiglipImageProcessor | straight to C x C | none | bicubic |
| SigLIP 2 (FixRes) | SiglipImageProcessor, as its checkpoints configure it (resample 2) | straight to C x C | none | bilinear |

A weights folder's own ``preprocessor_config.json`` / ``video_preprocessor_config.json`` wins over
these defaults (its resize rule, crop and interpolation; mean/std are read in hf_loading.py).
``kscli extract --crop full`` replaces any of them by the centre square of the short side, resized
to C: the whole height of a wide frame, so an ego camera's edges stay in.
"""

from __future__ import annotations

from dataclasses import dataclass

from kscli.errors import KscliError

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
    if family == "siglip2":  # the class is SigLIP's; the SigLIP 2 checkpoints' configs say resample 2
        return Geometry("squash", 0, "bilinear")
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


def geometry_from_processor(pp: dict, default: Geometry, size: int, family: str = "") -> Geometry:
    """The resize rule a processor config describes, for input side `size`; `default` for what it
    does not say. A rule kscli cannot reproduce exactly is one clear error, never a silent
    substitute."""
    if not pp:
        return default
    resample = pp.get("resample")
    if resample is None:
        interp = default.interpolation
    elif resample in RESAMPLE and resample != 1:
        interp = RESAMPLE[resample]
    else:
        raise KscliError(f"the weights' processor config asks for resample={resample!r}; kscli resizes with "
                         "bilinear (2) or bicubic (3): edit the config, or pass --crop full")
    if family == "vjepa2":  # VJEPA2VideoProcessor derives its resize from the crop, whatever `size` says
        return Geometry("short", int(size * 256 / 224), interp)
    if pp.get("do_resize") is False:
        return Geometry(default.mode, default.resize_short, interp)
    size_cfg = pp.get("size")
    crop = pp.get("do_center_crop")
    crop = default.mode == "short" if crop is None else bool(crop)
    crop_side = _edge(pp.get("crop_size"), "height") or size
    if isinstance(size_cfg, dict) and size_cfg.get("height"):
        h, w = int(size_cfg["height"]), int(size_cfg.get("width") or size_cfg["height"])
        if (not crop and h == w) or (h == w == crop_side):
            return Geometry("squash", 0, interp)
        if not crop:
            raise KscliError(f"the weights' processor config resizes to {h}x{w} without a crop; kscli feeds square "
                             "inputs: edit the config, or pass --crop full")
        raise KscliError(f"the weights' processor config resizes to {h}x{w} and then crops {crop_side}; kscli "
                         "does not do that: edit the config, or pass --crop full")
    short = _edge(size_cfg, "shortest_edge") if isinstance(size_cfg, dict) else _edge(size_cfg, "")
    if short and crop:
        resize = int(round(short * size / crop_side))
        if resize < size:
            raise KscliError(f"the weights' processor config resizes the short side to {short}, below its crop "
                             f"{crop_side} (the processor would pad); kscli does not pad: pass --crop full")
        return Geometry("short", resize, interp)
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
