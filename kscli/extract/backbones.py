"""The frozen-backbone registry: a name -> a ``Backbone`` that turns a clip into one feature vector.

Usage::

    bb = create_backbone("videomae-base")                      # default hub id (needs it cached)
    bb = create_backbone("videomae-base", weights="/models/videomae-base-k400")   # a local folder
    bb = bb.to("cuda", dtype=torch.bfloat16)                   # device/dtype: the caller's choice
    x = preprocess_clips(frames_uint8, bb.spec, device=bb.device, dtype=bb.dtype)
    feats = bb(x)                                              # (B, D) float32

Every backbone takes normalised ``(B, T, 3, S, S)`` pixels with ``T == spec.num_frames`` and
``S == spec.size`` (see :mod:`kscli.extract.preprocess`) and returns ``(B, spec.feature_dim)``
float32 (on the model's device). ``forward`` runs under ``torch.inference_mode()`` itself, casts the pixels to the
model's device and dtype, and the module is frozen: eval mode (``.train()`` is a no-op) and
``requires_grad=False``.

Where things live: :mod:`kscli.extract.backbone_base` (``BackboneSpec``, the ``Backbone`` base
class, ``register_backbone``), :mod:`kscli.extract.tiny` (tiny-random),
:mod:`kscli.extract.hf_backbones` (the Hugging Face video and per-frame image models) and
:mod:`kscli.extract.hf_loading` (loading their checkpoints). This module holds the lookups
(``create_backbone``, ``list_backbones``, ``backbone_names``) and imports the others, so importing
it registers every built-in backbone; the public names of those modules are importable from here.

``transformers`` is imported only inside the Hugging Face factories, never at module import.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

from kscli.errors import KscliError
from kscli.extract.backbone_base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_RANDOM_WEIGHTS,
    Backbone,
    BackboneSpec,
    Registration,
    registration,
    registered_names,
    register_backbone,
    weights_digest,
)
from kscli.extract.hf_loading import family_of
from kscli.extract.processors import CROPS, describe, family_geometry

# Importing these registers the built-in backbones (tiny-random first, then the Hugging Face ones);
# the names stay importable from here, as they were before this module was split.
from kscli.extract.tiny import TinyRandomBackbone  # noqa: F401 - re-export
from kscli.extract.hf_backbones import HFImageBackbone, HFVideoBackbone  # noqa: F401 - re-export
from kscli.extract.backbone_base import HALF  # noqa: F401 - re-export
from kscli.extract.hf_loading import PREPROCESSOR_FILES, TRANSFORMERS_FLOOR  # noqa: F401 - re-export

__all__ = [
    "BackboneSpec",
    "Backbone",
    "register_backbone",
    "create_backbone",
    "list_backbones",
    "backbone_names",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TINY_RANDOM_WEIGHTS",
]


# --------------------------------------------------------------------------------------------
# Lookups


def backbone_names() -> list[str]:
    return registered_names()


def create_backbone(name: str, weights: str | None = None, crop: str = "model", **kw) -> Backbone:
    """Build a registered backbone, frozen and in eval mode, on CPU in float32.

    ``crop="model"`` preprocesses as the model's own processor does (kscli.extract.processors);
    ``crop="full"`` takes the centre square of each frame's short side instead (the whole height
    of a wide frame).

    ``weights=None`` -> the registered default (a hub id, which must be in the local Hugging Face
    cache when offline); a local folder (``save_pretrained`` layout) works everywhere. Extra
    keywords go to the factory (e.g. ``num_frames=32`` where the model accepts other clip lengths,
    ``pool="cls+mean"`` for DINOv2). Move/cast afterwards with ``.to(device, dtype=...)``.
    """
    reg = registration(name)
    w = reg.default_weights if weights is None else str(weights)
    params = inspect.signature(reg.factory).parameters
    options = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(k for k in kw if k not in options)
    if unknown:
        raise KscliError(
            f"backbone '{name}' does not take option(s) {', '.join(unknown)}; it takes: {', '.join(options) or 'none'}"
        )
    if crop not in CROPS:
        raise KscliError(f"--crop {crop!r}: choose from {', '.join(CROPS)}")
    bb = reg.factory(w, **kw)
    if not isinstance(bb, Backbone):  # pragma: no cover - programming error in a factory
        raise TypeError(f"factory of backbone '{name}' returned {type(bb).__name__}, not a Backbone")
    if crop == "full":
        bb.spec = replace(bb.spec, resize_mode="full", resize_short=0)
    bb.spec = replace(bb.spec, weights_digest=weights_digest(bb, bb.unused_weights))
    return bb.freeze()


def list_backbones() -> list[dict[str, Any]]:
    """Static information about every registered backbone (builds nothing)."""
    out = []
    for name in backbone_names():
        r = registration(name)
        out.append(
            {
                "name": r.name,
                "description": r.description,
                "kind": r.kind,
                "default_weights": r.default_weights,  # None: nothing to load
                "weights": r.weights_label,  # printable: the default hub id, or what the weights are
                "num_frames": r.num_frames,
                "size": r.size,
                "feature_dim": r.feature_dim,
                "hf_class": r.hf_class,
                "preprocessing": _default_preprocessing(r),
            }
        )
    return out


def _default_preprocessing(r: Registration) -> str:
    """How a registered backbone makes its input when its weights folder says nothing else."""
    if r.name == "tiny-random":
        geo = family_geometry("", r.size)
    else:
        geo = family_geometry(family_of(r.name), r.size)
    return describe({"size": r.size, "resize_mode": geo.mode, "resize_short": geo.resize_short,
                     "interpolation": geo.interpolation, "mean": r.mean, "std": r.std})
