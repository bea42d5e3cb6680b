"""The Hugging Face backbones: video models (VideoMAE, TimeSformer, V-JEPA 2) and per-frame image
models pooled over time (DINOv2, SigLIP, SigLIP 2 FixRes). Importing this module registers them.

Loading and the checkpoint checks live in :mod:`kscli.extract.hf_loading`.
"""

from __future__ import annotations

import torch
from torch import nn

from kscli.errors import KscliError
from kscli.extract.backbone_base import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    register_backbone,
    registration,
)
from kscli.extract.hf_loading import (
    as_int,
    set_family,
    load_hf_model,
    looks_local,
    mean_std,
    processor_crop_size,
    read_preprocessor_config,
)
from kscli.extract.processors import family_geometry, geometry_from_processor


# --------------------------------------------------------------------------------------------
# Hugging Face video models


class HFVideoBackbone(Backbone):
    """A transformers video model; ``pool``: "mean" over ``last_hidden_state`` tokens or "cls" (token 0)."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, pool: str, call_kwargs: dict | None = None):
        super().__init__(spec)
        self.model = model
        self.pool = pool
        self.call_kwargs = dict(call_kwargs or {})

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.model(pixels, **self.call_kwargs).last_hidden_state
        if self.pool == "cls":
            return h[:, 0]
        return h.mean(dim=1)


# family -> how to read it
_VIDEO_FAMILIES = {
    # class, how the model is called, pooling, config attr for frames (None: registered default),
    # config attr for size, whether T / S may differ from the config
    "videomae": dict(
        hf_class="VideoMAEModel",
        call_kwargs={},
        pool="mean",
        pooling="mean over last_hidden_state tokens",
        frames_attr="num_frames",
        size_attr="image_size",
        flexible_frames=False,
        flexible_size=False,
        ignore_missing=(),
    ),
    "timesformer": dict(
        hf_class="TimesformerModel",
        call_kwargs={},
        pool="cls",
        pooling="CLS token of last_hidden_state (after the final layernorm)",
        frames_attr="num_frames",
        size_attr="image_size",
        flexible_frames=True,  # time embeddings are interpolated
        flexible_size=False,
        ignore_missing=(),
    ),
    "vjepa2": dict(
        hf_class="VJEPA2Model",
        call_kwargs={"skip_predictor": True},
        pool="mean",
        pooling="mean over encoder last_hidden_state tokens (skip_predictor=True)",
        frames_attr=None,  # frames_per_clip is the pretraining length; RoPE takes any even T
        size_attr="crop_size",
        flexible_frames=True,
        flexible_size=True,
        ignore_missing=("predictor.",),  # the predictor is never run
    ),
}


def _patch_and_tubelet(cfg) -> tuple[int, int]:
    return as_int(getattr(cfg, "patch_size", 1) or 1), int(getattr(cfg, "tubelet_size", 1) or 1)


def _make_video_factory(name: str, family: str):
    fam = _VIDEO_FAMILIES[family]

    def factory(weights: str | None, *, num_frames: int | None = None, size: int | None = None) -> Backbone:
        reg = registration(name)
        model, src, net = load_hf_model(name, fam["hf_class"], weights, fam["ignore_missing"])
        cfg = model.config
        patch, tubelet = _patch_and_tubelet(cfg)
        cfg_frames = getattr(cfg, fam["frames_attr"]) if fam["frames_attr"] else None
        cfg_size = as_int(getattr(cfg, fam["size_attr"]))
        frames = int(num_frames) if num_frames else int(cfg_frames or reg.num_frames)
        sz = int(size) if size else cfg_size
        if cfg_frames and frames != int(cfg_frames) and not fam["flexible_frames"]:
            raise KscliError(f"backbone '{name}' ({weights}) takes exactly {cfg_frames} frames per clip, not {frames}")
        if sz != cfg_size and not fam["flexible_size"]:
            raise KscliError(f"backbone '{name}' ({weights}) takes exactly {cfg_size}x{cfg_size} inputs, not {sz}")
        if frames < tubelet or frames % tubelet:
            raise KscliError(f"backbone '{name}': num_frames must be a multiple of the tubelet size {tubelet}, got {frames}")
        if sz % patch:
            raise KscliError(f"backbone '{name}': size must be a multiple of the patch size {patch}, got {sz}")
        pp = read_preprocessor_config(src, looks_local(weights), net)
        mean, std = mean_std(pp, reg)
        geo = geometry_from_processor(pp, family_geometry(family, sz), sz, family)
        spec = BackboneSpec(
            name=name,
            kind="video",
            num_frames=frames,
            size=sz,
            mean=mean,
            std=std,
            feature_dim=int(cfg.hidden_size),
            weights=src,
            hf_class=type(model).__name__,
            pooling=fam["pooling"],
            resize_mode=geo.mode,
            resize_short=geo.resize_short,
            interpolation=geo.interpolation,
        )
        bb = HFVideoBackbone(spec, model, fam["pool"], fam["call_kwargs"])
        bb.unused_weights = tuple(f"model.{p}" for p in fam["ignore_missing"])  # never run: not in the digest
        return bb

    return factory


def _register_video(name, family, default_weights, num_frames, size, dim, note=""):
    fam = _VIDEO_FAMILIES[family]
    set_family(name, family)
    desc = f"video model {fam['hf_class']}; {fam['pooling']}" + (f"; {note}" if note else "")
    register_backbone(
        name,
        description=desc,
        kind="video",
        default_weights=default_weights,
        num_frames=num_frames,
        size=size,
        feature_dim=dim,
        hf_class=fam["hf_class"],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )(_make_video_factory(name, family))


_VJEPA_NOTE = "16 frames by default (num_frames=... for more; the hub config's frames_per_clip=64 is the pretraining length)"
_register_video("vjepa2-vitl", "vjepa2", "facebook/vjepa2-vitl-fpc64-256", 16, 256, 1024, _VJEPA_NOTE)
_register_video("vjepa2-vith", "vjepa2", "facebook/vjepa2-vith-fpc64-256", 16, 256, 1280, _VJEPA_NOTE)
_register_video("vjepa2-vitg", "vjepa2", "facebook/vjepa2-vitg-fpc64-256", 16, 256, 1408, _VJEPA_NOTE)
_register_video("vjepa2-vitg-384", "vjepa2", "facebook/vjepa2-vitg-fpc64-384", 16, 384, 1408, _VJEPA_NOTE)
_register_video("videomae-base", "videomae", "MCG-NJU/videomae-base-finetuned-kinetics", 16, 224, 768)
_register_video("videomae-large", "videomae", "MCG-NJU/videomae-large-finetuned-kinetics", 16, 224, 1024)
_register_video("videomae-base-ssv2", "videomae", "MCG-NJU/videomae-base-finetuned-ssv2", 16, 224, 768)
_register_video("timesformer-base", "timesformer", "facebook/timesformer-base-finetuned-k400", 8, 224, 768)
_register_video("timesformer-hr", "timesformer", "facebook/timesformer-hr-finetuned-k400", 16, 448, 768)


# --------------------------------------------------------------------------------------------
# Hugging Face per-frame image models, pooled over time


class HFImageBackbone(Backbone):
    """A transformers image model run on all ``B*T`` frames at once; per-frame vectors averaged over time.

    ``pool``: "cls" (``pooler_output``: the layer-normed CLS token for DINOv2), "cls+mean" (CLS
    concatenated with the mean of the patch tokens, register tokens skipped), or "pooler"
    (``pooler_output``, SigLIP's attention-pooling head).
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, pool: str, call_kwargs: dict | None = None):
        super().__init__(spec)
        self.model = model
        self.pool = pool
        self.call_kwargs = dict(call_kwargs or {})
        self.num_register_tokens = int(getattr(model.config, "num_register_tokens", 0) or 0)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t = pixels.shape[:2]
        out = self.model(pixel_values=pixels.reshape(b * t, *pixels.shape[2:]), **self.call_kwargs)
        if self.pool == "cls+mean":
            h = out.last_hidden_state
            f = torch.cat([h[:, 0], h[:, 1 + self.num_register_tokens :].mean(dim=1)], dim=1)
        else:  # "cls" / "pooler"
            f = out.pooler_output
        return f.reshape(b, t, -1).mean(dim=1)


_IMAGE_FAMILIES = {
    "dinov2": dict(
        hf_class="AutoModel",
        pools={"cls": "CLS per frame, mean over frames", "cls+mean": "CLS + mean patch token per frame, mean over frames"},
        default_pool="cls",
        flexible_size=True,  # position embeddings are interpolated
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        call_kwargs={},
    ),
    "siglip": dict(
        hf_class="SiglipVisionModel",
        pools={"pooler": "pooler_output (attention pooling head) per frame, mean over frames"},
        default_pool="pooler",
        flexible_size=False,
        mean=HALF,
        std=HALF,
        call_kwargs={},
    ),
}
# SigLIP 2 FixRes checkpoints are SigLIP-architecture checkpoints (model_type "siglip"): the same
# class, head and pooling; only their processor's resampling differs (processors.py). NaFlex
# checkpoints ("siglip2") are refused in hf_loading.py.
_IMAGE_FAMILIES["siglip2"] = _IMAGE_FAMILIES["siglip"]


def _make_image_factory(name: str, family: str):
    fam = _IMAGE_FAMILIES[family]

    def factory(weights: str | None, *, num_frames: int | None = None, size: int | None = None, pool: str | None = None) -> Backbone:
        reg = registration(name)
        pool = pool or fam["default_pool"]
        if pool not in fam["pools"]:
            raise KscliError(f"backbone '{name}': unknown pool '{pool}'; choose one of {', '.join(fam['pools'])}")
        model, src, net = load_hf_model(name, fam["hf_class"], weights)
        if not hasattr(model.config, "hidden_size") or not hasattr(model.config, "image_size"):
            raise KscliError(f"backbone '{name}': '{weights}' is a {type(model).__name__}, not a vision transformer image model")
        cfg = model.config
        local = looks_local(weights)
        pp = read_preprocessor_config(src, local, net)
        cfg_size = as_int(cfg.image_size)
        patch = as_int(getattr(cfg, "patch_size", 1) or 1)
        if size:
            sz = int(size)
        elif fam["flexible_size"]:
            # DINOv2 configs say 518 (the pretraining resolution); its processor crops 224
            sz = processor_crop_size(pp) or min(cfg_size, reg.size)
        else:
            sz = cfg_size
        if sz != cfg_size and not fam["flexible_size"]:
            raise KscliError(f"backbone '{name}' ({weights}) takes exactly {cfg_size}x{cfg_size} inputs, not {sz}")
        if sz % patch:
            raise KscliError(f"backbone '{name}': size must be a multiple of the patch size {patch}, got {sz}")
        frames = int(num_frames) if num_frames else reg.num_frames
        if frames < 1:
            raise KscliError(f"backbone '{name}': num_frames must be >= 1, got {frames}")
        mean, std = mean_std(pp, reg)
        geo = geometry_from_processor(pp, family_geometry(family, sz), sz, family)
        dim = int(cfg.hidden_size) * (2 if pool == "cls+mean" else 1)
        spec = BackboneSpec(
            name=name,
            kind="image",
            num_frames=frames,
            size=sz,
            mean=mean,
            std=std,
            feature_dim=dim,
            weights=src,
            hf_class=type(model).__name__,
            pooling=fam["pools"][pool],
            resize_mode=geo.mode,
            resize_short=geo.resize_short,
            interpolation=geo.interpolation,
        )
        return HFImageBackbone(spec, model, pool, fam["call_kwargs"])

    return factory


def _register_image(name, family, default_weights, num_frames, size, dim, note=""):
    fam = _IMAGE_FAMILIES[family]
    set_family(name, family)
    extra = f"; pool={'|'.join(fam['pools'])}" if len(fam["pools"]) > 1 else ""
    desc = (f"per-frame image model {fam['hf_class']}; {fam['pools'][fam['default_pool']]}{extra}; num_frames=... to "
            "change T" + (f"; {note}" if note else ""))
    register_backbone(
        name,
        description=desc,
        kind="image",
        default_weights=default_weights,
        num_frames=num_frames,
        size=size,
        feature_dim=dim,
        hf_class=fam["hf_class"],
        mean=fam["mean"],
        std=fam["std"],
    )(_make_image_factory(name, family))


_register_image("dinov2-small", "dinov2", "facebook/dinov2-small", 8, 224, 384)
_register_image("dinov2-base", "dinov2", "facebook/dinov2-base", 8, 224, 768)
_register_image("dinov2-large", "dinov2", "facebook/dinov2-large", 8, 224, 1024)
_register_image("dinov2-giant", "dinov2", "facebook/dinov2-giant", 8, 224, 1536)
_register_image("siglip-base", "siglip", "google/siglip-base-patch16-224", 8, 224, 768)
_register_image("siglip-so400m", "siglip", "google/siglip-so400m-patch14-384", 8, 384, 1152)
_SIGLIP2_NOTE = "SigLIP 2 FixRes checkpoints (NaFlex ones are not supported)"
_register_image("siglip2-base", "siglip2", "google/siglip2-base-patch16-224", 8, 224, 768, _SIGLIP2_NOTE)
_register_image("siglip2-large", "siglip2", "google/siglip2-large-patch16-256", 8, 256, 1024, _SIGLIP2_NOTE)
_register_image("siglip2-so400m", "siglip2", "google/siglip2-so400m-patch14-384", 8, 384, 1152, _SIGLIP2_NOTE)
_register_image("siglip2-giant", "siglip2", "google/siglip2-giant-opt-patch16-384", 8, 384, 1536, _SIGLIP2_NOTE)
