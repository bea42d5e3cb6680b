"""What every backbone builds on: :class:`BackboneSpec`, the frozen :class:`Backbone` base class and
the name -> factory registry that :func:`register_backbone` fills.

The built-in backbones register themselves from :mod:`kscli.extract.tiny` and
:mod:`kscli.extract.hf_backbones`; look them up through :mod:`kscli.extract.backbones`
(``create_backbone``, ``list_backbones``), which imports both.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kscli.errors import KscliError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)
TINY_RANDOM_WEIGHTS = "random (untrained) - for tests and the demo only"


# --------------------------------------------------------------------------------------------
# Spec


def rgb_triple(v, what: str) -> tuple[float, float, float]:
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
    # sha256 (first 16 hex digits) of the loaded parameters and buffers: which weights made the
    # features, wherever the folder or hub id they came from (see weights_digest)
    weights_digest: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", rgb_triple(self.mean, "mean"))
        object.__setattr__(self, "std", rgb_triple(self.std, "std"))
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


def random_weights(spec) -> bool:
    """Whether a backbone spec (a BackboneSpec or a store's recorded dict) is a randomly
    initialised test network (tiny-random): its features carry no learned information."""
    weights = spec.get("weights") if isinstance(spec, Mapping) else getattr(spec, "weights", None)
    return weights == TINY_RANDOM_WEIGHTS


RANDOM_FEATURES_WARNING = ("RANDOM FEATURES: made by tiny-random, a randomly initialised test network; "
                           "no number from them means anything about keystep recognition")


def weights_digest(module: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes), first 16 hex
    digits: the same weights give the same digest from a hub id, a local folder or a copy of it;
    other weights (another revision, a fine-tuned copy) give another. About 1 s per GB. Names
    starting with `skip` (parts never run, which a checkpoint may leave out: V-JEPA 2's
    predictor) do not count."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if name.startswith(skip):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Backbone base class


class Backbone(nn.Module):
    """A frozen feature extractor: normalised ``(B, T, 3, S, S)`` -> ``(B, D)`` float32.

    Subclasses implement ``_features(pixels)`` (pixels already on the model's device and dtype).
    ``unused_weights``: state-dict name prefixes of parts never run (left out of the digest).
    """

    spec: BackboneSpec
    unused_weights: tuple[str, ...] = ()

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
class Registration:
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


_REGISTRY: dict[str, Registration] = {}


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
        _REGISTRY[name] = Registration(
            name=name,
            description=description,
            factory=factory,
            kind=kind,
            default_weights=default_weights,
            num_frames=int(num_frames),
            size=int(size),
            feature_dim=int(feature_dim),
            hf_class=hf_class,
            mean=rgb_triple(mean, "mean"),
            std=rgb_triple(std, "std"),
            weights_label=weights_label if weights_label is not None else (default_weights or ""),
        )
        return factory

    return deco


def registration(name: str) -> Registration:
    """What `register_backbone` recorded for `name`; one line naming the known ones if none."""
    reg = _REGISTRY.get(name)
    if reg is None:
        raise KscliError(f"unknown backbone '{name}'; known backbones: {', '.join(registered_names())}")
    return reg


def registered_names() -> list[str]:
    return sorted(_REGISTRY)
