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

``transformers`` is imported only inside the Hugging Face factories, never at module import.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kscli.errors import KscliError
from kscli.extract.processors import CROPS, describe, family_geometry, geometry_from_processor

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

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)
TINY_RANDOM_WEIGHTS = "random (untrained) - for tests and the demo only"

PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


# --------------------------------------------------------------------------------------------
# Spec


def _triple(v, what: str) -> tuple[float, float, float]:
    try:
        t = tuple(float(x) for x in v)
    except TypeError:  # a scalar
        t = (float(v),) * 3
    if len(t) == 1:
        t = t * 3
    if len(t) != 3:
        raise ValueError(f"{what} must have 3 values (RGB), got {list(t)}")
    return t  # type: ignore[return-value]


def _to_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


@dataclass(frozen=True)
class BackboneSpec:
    """What a feature store / checkpoint needs to know about the backbone that made the features."""

    name: str  # registry name, e.g. "videomae-base"
    kind: str  # "video" (clip model) or "image" (per-frame model pooled over time)
    num_frames: int  # frames the model takes per clip (per window)
    size: int  # square input side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    weights: str  # HF hub id or local path it was loaded from, or TINY_RANDOM_WEIGHTS
    hf_class: str = ""  # transformers class name, for traceability
    pooling: str = ""  # how tokens/frames become one vector, e.g. "mean tokens", "cls per frame, mean over frames"
    # how frames become the input (kscli.extract.preprocess): "short" (short side -> resize_short,
    # centre crop size), "squash" (straight to size x size) or "full" (centre square -> size)
    resize_mode: str = "full"
    resize_short: int = 0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        object.__setattr__(self, "num_frames", int(self.num_frames))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "feature_dim", int(self.feature_dim))
        if self.kind not in ("video", "image"):
            raise ValueError(f"BackboneSpec.kind must be 'video' or 'image', got {self.kind!r}")
        object.__setattr__(self, "resize_short", int(self.resize_short))
        if self.resize_mode not in ("short", "squash", "full"):
            raise ValueError(f"BackboneSpec.resize_mode must be short, squash or full, got {self.resize_mode!r}")
        if self.resize_mode == "short" and self.resize_short < self.size:
            raise ValueError(f"BackboneSpec.resize_short ({self.resize_short}) must be at least size ({self.size})")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"BackboneSpec.interpolation must be bilinear or bicubic, got {self.interpolation!r}")

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able dict (str / int / list of float) for HDF5 attributes and checkpoints."""
        d = asdict(self)
        d["mean"] = [float(x) for x in self.mean]
        d["std"] = [float(x) for x in self.std]
        return d

    @classmethod
    def from_attrs(cls, d: Mapping[str, Any]) -> "BackboneSpec":
        """Inverse of :meth:`to_attrs`; accepts h5py values (numpy arrays/scalars, bytes); ignores unknown keys."""
        names = {f.name for f in fields(cls)}
        required = ("name", "kind", "num_frames", "size", "mean", "std", "feature_dim", "weights")
        missing = [k for k in required if k not in d]
        if missing:
            raise KscliError(f"backbone spec is missing field(s) {', '.join(missing)} (got keys: {', '.join(sorted(map(str, d)))})")
        kw: dict[str, Any] = {}
        for k in names:
            if k not in d:
                continue
            v = d[k]
            if k in ("num_frames", "size", "feature_dim", "resize_short"):
                v = int(v)
            elif k in ("mean", "std"):
                v = [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
            else:
                v = _to_str(v)
            kw[k] = v
        try:
            return cls(**kw)
        except (ValueError, TypeError) as e:
            raise KscliError(f"invalid backbone spec: {e}") from None


# --------------------------------------------------------------------------------------------
# Backbone base class


class Backbone(nn.Module):
    """A frozen feature extractor: normalised ``(B, T, 3, S, S)`` -> ``(B, D)`` float32.

    Subclasses implement ``_features(pixels)`` (pixels already on the model's device and dtype).
    """

    spec: BackboneSpec

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec

    # frozen: always eval mode
    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def _check_input(self, pixels: torch.Tensor) -> None:
        s = self.spec
        if pixels.ndim != 5 or pixels.shape[2] != 3:
            raise KscliError(f"backbone '{s.name}' takes pixels (B, T, 3, S, S), got shape {tuple(pixels.shape)}")
        if pixels.shape[1] != s.num_frames or pixels.shape[3] != s.size or pixels.shape[4] != s.size:
            raise KscliError(
                f"backbone '{s.name}' takes {s.num_frames} frames of {s.size}x{s.size} per clip, got shape "
                f"{tuple(pixels.shape)}: sample spec.num_frames frames and preprocess with spec.size"
            )
        if not pixels.is_floating_point():
            raise KscliError(f"backbone '{s.name}' takes normalised float pixels (use preprocess_clips), got {pixels.dtype}")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_input(pixels)
        with torch.inference_mode():
            x = pixels.to(device=self.device, dtype=self.dtype)
            f = self._features(x).float()
        return f.clone()  # a normal tensor (not an inference tensor): safe for any later in-place use

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = self.spec
        return f"name={s.name!r}, weights={s.weights!r}, frames={s.num_frames}, size={s.size}, dim={s.feature_dim}"


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class _Registration:
    name: str
    description: str
    factory: Callable[..., Backbone]
    kind: str
    default_weights: str | None
    num_frames: int
    size: int
    feature_dim: int
    hf_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_label: str


_REGISTRY: dict[str, _Registration] = {}


def register_backbone(
    name: str,
    *,
    description: str,
    kind: str = "video",
    default_weights: str | None = None,
    num_frames: int = 0,
    size: int = 0,
    feature_dim: int = 0,
    hf_class: str = "",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    weights_label: str | None = None,
):
    """Decorator registering a factory ``(weights: str | None, **kw) -> Backbone`` under ``name``.

    The keyword arguments after ``description`` are cheap static information shown by
    :func:`list_backbones` (and the defaults the factory falls back on); the spec of a built
    backbone is what counts. ``weights_label`` is what the listing shows as "weights" when
    there is no default to load (default: the default weights).
    """

    def deco(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone '{name}' is already registered")
        _REGISTRY[name] = _Registration(
            name=name,
            description=description,
            factory=factory,
            kind=kind,
            default_weights=default_weights,
            num_frames=int(num_frames),
            size=int(size),
            feature_dim=int(feature_dim),
            hf_class=hf_class,
            mean=_triple(mean, "mean"),
            std=_triple(std, "std"),
            weights_label=weights_label if weights_label is not None else (default_weights or ""),
        )
        return factory

    return deco


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def _get_registration(name: str) -> _Registration:
    reg = _REGISTRY.get(name)
    if reg is None:
        raise KscliError(f"unknown backbone '{name}'; known backbones: {', '.join(backbone_names())}")
    return reg


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
    reg = _get_registration(name)
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
    return bb.freeze()


def list_backbones() -> list[dict[str, Any]]:
    """Static information about every registered backbone (builds nothing)."""
    out = []
    for name in backbone_names():
        r = _REGISTRY[name]
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


def _default_preprocessing(r: _Registration) -> str:
    """How a registered backbone makes its input when its weights folder says nothing else."""
    if r.name == "tiny-random":
        geo = family_geometry("", r.size)
    else:
        geo = family_geometry(_FAMILY_OF.get(r.name, ""), r.size)
    return describe({"size": r.size, "resize_mode": geo.mode, "resize_short": geo.resize_short,
                     "interpolation": geo.interpolation, "mean": r.mean, "std": r.std})


# --------------------------------------------------------------------------------------------
# tiny-random: a small random 3D-conv net for tests and the demo


class TinyRandomBackbone(Backbone):
    """Three random conv3d+ReLU layers, then global average and max pooling concatenated.

    Weights come from a generator seeded with ``seed``, so every creation gives the same net.
    Not trained: the features only keep colour / spatial / temporal statistics of the input.
    """

    def __init__(self, spec: BackboneSpec, seed: int = 0):
        super().__init__(spec)
        c = spec.feature_dim // 2
        self.convs = nn.ModuleList(
            [
                nn.Conv3d(3, 16, kernel_size=(3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)),
                nn.Conv3d(16, 32, kernel_size=3, stride=(2, 2, 2), padding=1),
                nn.Conv3d(32, c, kernel_size=3, stride=(1, 2, 2), padding=1),
            ]
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 2, 1, 3, 4)  # (B, 3, T, S, S)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)


_TINY = dict(num_frames=8, size=64, feature_dim=128)


@register_backbone(
    "tiny-random",
    description="RANDOM untrained 3D-conv net (8x64x64 -> 128), fixed seed: for tests and the demo only, not a real backbone",
    kind="video",
    default_weights=None,
    hf_class="",
    mean=HALF,
    std=HALF,
    weights_label=TINY_RANDOM_WEIGHTS,
    **_TINY,
)
def _tiny_random(weights: str | None = None, *, num_frames: int | None = None, size: int | None = None, seed: int = 0) -> Backbone:
    if weights not in (None, "", "random", TINY_RANDOM_WEIGHTS):
        raise KscliError(
            f"backbone 'tiny-random' has no weights to load (got --weights {weights!r}); it is a fixed random net, drop --weights"
        )
    frames = int(num_frames) if num_frames else _TINY["num_frames"]
    sz = int(size) if size else _TINY["size"]
    if frames < 1 or sz < 8:
        raise KscliError(f"backbone 'tiny-random': needs num_frames >= 1 and size >= 8, got {frames} and {sz}")
    spec = BackboneSpec(
        name="tiny-random",
        kind="video",
        num_frames=frames,
        size=sz,
        feature_dim=_TINY["feature_dim"],
        mean=HALF,
        std=HALF,
        weights=TINY_RANDOM_WEIGHTS,
        hf_class="",
        pooling="conv3d x3 + relu, global mean and max concatenated",
    )
    return TinyRandomBackbone(spec, seed=seed)


# --------------------------------------------------------------------------------------------
# Hugging Face loading helpers


def _looks_local(weights: str) -> bool:
    w = os.path.expanduser(weights)
    return (
        os.path.isabs(w)
        or w.startswith(("./", "../", ".\\", "..\\"))
        or w in (".", "..")
        or os.path.exists(w)
        or w.count("/") > 1  # hub ids are "org/name"
    )


@contextmanager
def _quiet_transformers():
    """Silence transformers' load report and progress bars while loading (errors still raise)."""
    from transformers.utils import logging as hf_logging

    prev = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(prev)
        if bar:
            hf_logging.enable_progress_bar()


def _fix_hint(name: str, weights: str) -> str:
    return (
        f"download the model where there is internet (e.g. `hf download {weights} --local-dir DIR`, "
        f"or `save_pretrained(DIR)`) and pass the local folder with --weights DIR"
        if not _looks_local(weights)
        else f"pass --weights a folder made by `save_pretrained` / `hf download` holding config.json and the weights of a '{name}' model"
    )


_MODEL_TYPES = {
    "videomae": ("videomae",),
    "timesformer": ("timesformer",),
    "vjepa2": ("vjepa2",),
    "dinov2": ("dinov2", "dinov2_with_registers"),
    "siglip": ("siglip", "siglip_vision_model"),
}
_FAMILY_OF: dict[str, str] = {}  # registered name -> family


def _check_model_type(name: str, weights: str, model_type: str | None) -> None:
    fam = _FAMILY_OF.get(name)
    if fam is None or not model_type or model_type in _MODEL_TYPES[fam]:
        return
    others = [n for n, f in sorted(_FAMILY_OF.items()) if model_type in _MODEL_TYPES[f]]
    hint = f"; use backbone {' / '.join(others[:3])} for it" if others else ""
    raise KscliError(
        f"backbone '{name}' takes a {' / '.join(_MODEL_TYPES[fam])} checkpoint, but weights '{weights}' hold a "
        f"'{model_type}' model{hint}"
    )


def _local_model_type(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            mt = json.load(f).get("model_type")
        return str(mt) if mt else None
    except (OSError, ValueError, AttributeError):
        return None


TRANSFORMERS_FLOOR = (4, 56)  # from_pretrained(dtype=...) (tested: 4.55 fails, 4.56.0 passes the backbone tests)


def _transformers_class(name: str, class_name: str):
    """`transformers.<class_name>`, or one line saying which transformers kscli needs."""
    import transformers

    have = transformers.__version__
    if not transformers.utils.is_torch_available():
        raise KscliError(f"transformers {have} does not work with this torch {torch.__version__} (it needs a newer "
                         "one): upgrade torch, or pin transformers to one that takes it (torch 2.4: "
                         "'transformers>=4.56,<5.15'; torch 2.5: 'transformers>=4.56,<5.20')")
    nums = tuple(int(p) for p in re.findall(r"\d+", have)[:2])
    cls = getattr(transformers, class_name, None)
    if nums < TRANSFORMERS_FLOOR or cls is None:
        need = ".".join(map(str, TRANSFORMERS_FLOOR))
        raise KscliError(f"backbone '{name}' needs transformers >= {need} ({class_name}, from_pretrained(dtype=...)); "
                         f"this environment has {have}: pip install -U 'transformers>={need},<6'")
    return cls


def _load_hf_model(name: str, class_name: str, weights: str, ignore_missing: tuple[str, ...] = ()):
    """``transformers.<class_name>.from_pretrained(weights)`` in float32; every failure -> KscliError.

    Returns ``(model, source, used_network)`` where source is the absolute folder for a local path, else the hub id.
    Refuses a checkpoint that leaves parameters randomly initialised (missing keys), since that
    would silently give random features.
    """
    if weights is None or str(weights).strip() == "":
        raise KscliError(f"backbone '{name}' needs weights: pass --weights with a Hugging Face hub id or a local folder")
    weights = str(weights)
    local = _looks_local(weights)
    src = os.path.abspath(os.path.expanduser(weights)) if local else weights
    if local:
        if not os.path.isdir(src):
            raise KscliError(f"backbone '{name}': weights folder '{weights}' does not exist; {_fix_hint(name, weights)}")
        if not os.path.isfile(os.path.join(src, "config.json")):
            raise KscliError(
                f"backbone '{name}': weights folder '{weights}' has no config.json, so it is not a Hugging Face model folder; "
                f"{_fix_hint(name, weights)}"
            )
        _check_model_type(name, weights, _local_model_type(src))

    cls = _transformers_class(name, class_name)
    used_network = False
    try:
        with _quiet_transformers():
            try:
                # the local cache first: no network round trips (and no 30 s of retries offline)
                model, info = cls.from_pretrained(src, dtype=torch.float32, output_loading_info=True, local_files_only=True)
            except OSError:
                if local or _hub_offline():
                    raise
                used_network = True
                model, info = cls.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # OSError (not found / offline), ValueError (wrong model type), ...
        msg = " ".join(str(e).split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        raise KscliError(
            f"backbone '{name}': could not load weights '{weights}' with transformers.{class_name} "
            f"({type(e).__name__}: {msg}); {_fix_hint(name, weights)}"
            + ("" if local or _hub_offline() else " (set HF_HUB_OFFLINE=1 to skip the network attempt)")
        ) from e
    _check_model_type(name, weights, getattr(model.config, "model_type", None))
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(ignore_missing)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        bad = [str(k) for k in (missing + mismatched)]
        raise KscliError(
            f"backbone '{name}': weights '{weights}' do not fit transformers.{class_name}: {len(bad)} parameter(s) "
            f"would stay randomly initialised (e.g. {', '.join(bad[:3])}); pass a checkpoint of the right model family"
        )
    model.eval()
    return model, src, used_network


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:  # pragma: no cover
        return False


def _read_preprocessor_config(src: str, local: bool, use_network: bool = False) -> dict:
    """The first of preprocessor_config.json / video_preprocessor_config.json found, or {}. Never raises.

    For a hub id: the local cache only, unless ``use_network`` (the model itself came over the network).
    """
    for fn in PREPROCESSOR_FILES:
        path = None
        if local:
            p = os.path.join(src, fn)
            path = p if os.path.isfile(p) else None
        else:
            try:
                from transformers.utils import cached_file

                with _quiet_transformers():
                    path = cached_file(
                        src,
                        fn,
                        _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False,
                        _raise_exceptions_for_gated_repo=False,
                        local_files_only=not use_network,
                    )
            except Exception:
                path = None
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    d = json.load(f)
                if isinstance(d, dict):
                    return d
            except (OSError, ValueError):
                continue
    return {}


def _mean_std(pp: dict, reg: _Registration) -> tuple[tuple, tuple]:
    mean, std = reg.mean, reg.std
    try:
        if pp.get("image_mean") is not None:
            mean = _triple(pp["image_mean"], "image_mean")
        if pp.get("image_std") is not None:
            std = _triple(pp["image_std"], "image_std")
    except (ValueError, TypeError):
        mean, std = reg.mean, reg.std
    return mean, std


def _pp_crop_size(pp: dict) -> int | None:
    c = pp.get("crop_size")
    if isinstance(c, dict):
        c = c.get("height") or c.get("shortest_edge")
    try:
        return int(c) if c else None
    except (TypeError, ValueError):
        return None


def _as_int(v) -> int:
    if isinstance(v, (list, tuple)):
        v = v[0]
    return int(v)


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
    return _as_int(getattr(cfg, "patch_size", 1) or 1), int(getattr(cfg, "tubelet_size", 1) or 1)


def _make_video_factory(name: str, family: str):
    fam = _VIDEO_FAMILIES[family]

    def factory(weights: str | None, *, num_frames: int | None = None, size: int | None = None) -> Backbone:
        reg = _REGISTRY[name]
        model, src, net = _load_hf_model(name, fam["hf_class"], weights, fam["ignore_missing"])
        cfg = model.config
        patch, tubelet = _patch_and_tubelet(cfg)
        cfg_frames = getattr(cfg, fam["frames_attr"]) if fam["frames_attr"] else None
        cfg_size = _as_int(getattr(cfg, fam["size_attr"]))
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
        pp = _read_preprocessor_config(src, _looks_local(weights), net)
        mean, std = _mean_std(pp, reg)
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
        return HFVideoBackbone(spec, model, fam["pool"], fam["call_kwargs"])

    return factory


def _register_video(name, family, default_weights, num_frames, size, dim, note=""):
    fam = _VIDEO_FAMILIES[family]
    _FAMILY_OF[name] = family
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


def _make_image_factory(name: str, family: str):
    fam = _IMAGE_FAMILIES[family]

    def factory(weights: str | None, *, num_frames: int | None = None, size: int | None = None, pool: str | None = None) -> Backbone:
        reg = _REGISTRY[name]
        pool = pool or fam["default_pool"]
        if pool not in fam["pools"]:
            raise KscliError(f"backbone '{name}': unknown pool '{pool}'; choose one of {', '.join(fam['pools'])}")
        model, src, net = _load_hf_model(name, fam["hf_class"], weights)
        if not hasattr(model.config, "hidden_size") or not hasattr(model.config, "image_size"):
            raise KscliError(f"backbone '{name}': '{weights}' is a {type(model).__name__}, not a vision transformer image model")
        cfg = model.config
        local = _looks_local(weights)
        pp = _read_preprocessor_config(src, local, net)
        cfg_size = _as_int(cfg.image_size)
        patch = _as_int(getattr(cfg, "patch_size", 1) or 1)
        if size:
            sz = int(size)
        elif fam["flexible_size"]:
            # DINOv2 configs say 518 (the pretraining resolution); its processor crops 224
            sz = _pp_crop_size(pp) or min(cfg_size, reg.size)
        else:
            sz = cfg_size
        if sz != cfg_size and not fam["flexible_size"]:
            raise KscliError(f"backbone '{name}' ({weights}) takes exactly {cfg_size}x{cfg_size} inputs, not {sz}")
        if sz % patch:
            raise KscliError(f"backbone '{name}': size must be a multiple of the patch size {patch}, got {sz}")
        frames = int(num_frames) if num_frames else reg.num_frames
        if frames < 1:
            raise KscliError(f"backbone '{name}': num_frames must be >= 1, got {frames}")
        mean, std = _mean_std(pp, reg)
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


def _register_image(name, family, default_weights, num_frames, size, dim):
    fam = _IMAGE_FAMILIES[family]
    _FAMILY_OF[name] = family
    extra = f"; pool={'|'.join(fam['pools'])}" if len(fam["pools"]) > 1 else ""
    desc = f"per-frame image model {fam['hf_class']}; {fam['pools'][fam['default_pool']]}{extra}; num_frames=... to change T"
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
