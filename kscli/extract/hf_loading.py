"""Loading Hugging Face checkpoints for the backbones: weights folder / hub id checks, the
transformers version check, ``from_pretrained`` with one-line errors, and reading the
checkpoint's preprocessor config (mean / std, crop size).

``transformers`` is imported only inside these functions, never at module import.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager

import torch

from kscli.errors import KscliError
from kscli.fileio import read_json
from kscli.extract.backbone_base import Registration, registration, rgb_triple

PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


# --------------------------------------------------------------------------------------------
# Hugging Face loading helpers


def looks_local(weights: str) -> bool:
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
        if not looks_local(weights)
        else f"pass --weights a folder made by `save_pretrained` / `hf download` holding config.json and the weights of a '{name}' model"
    )


_MODEL_TYPES = {
    "videomae": ("videomae",),
    "timesformer": ("timesformer",),
    "vjepa2": ("vjepa2",),
    "dinov2": ("dinov2", "dinov2_with_registers"),
    "siglip": ("siglip", "siglip_vision_model"),
    # SigLIP 2 FixRes checkpoints are SigLIP-architecture ("siglip") checkpoints. A SigLIP (v1)
    # checkpoint has the same model_type and cannot be told from one by its config, so it loads
    # under a siglip2-* name too; the store's weights digest records which weights were used.
    "siglip2": ("siglip", "siglip_vision_model"),
}
_FAMILY_OF: dict[str, str] = {}  # registered name -> family (set_family, family_of)


def set_family(name: str, family: str) -> None:
    """Record which checkpoint family (a key of _MODEL_TYPES) a registered backbone loads."""
    if family not in _MODEL_TYPES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(_MODEL_TYPES)}")
    _FAMILY_OF[name] = family


def family_of(name: str) -> str:
    """The checkpoint family of a registered backbone ("" for one that loads no checkpoint)."""
    return _FAMILY_OF.get(name, "")
# SigLIP 2 NaFlex: patch sequences with attention masks and spatial shapes, not square pixels
_NAFLEX_TYPES = ("siglip2", "siglip2_vision_model")
_FIXRES_EXAMPLE = "google/siglip2-base-patch16-224"


def _check_model_type(name: str, weights: str, model_type: str | None) -> None:
    fam = _FAMILY_OF.get(name)
    if fam is None or not model_type or model_type in _MODEL_TYPES[fam]:
        return
    if model_type in _NAFLEX_TYPES:
        fixres = registration(name).default_weights if fam == "siglip2" else _FIXRES_EXAMPLE
        pick = f"--weights {fixres}" if fam == "siglip2" else f"--backbone siglip2-base --weights {fixres}"
        raise KscliError(
            f"backbone '{name}': weights '{weights}' hold a SigLIP 2 NaFlex checkpoint ('{model_type}' model: "
            f"variable-size patch sequences), which kscli does not support (it feeds square fixed-size frames); "
            f"use a SigLIP 2 FixRes checkpoint instead, e.g. {pick}"
        )
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


def _cached_model_type(src: str, local: bool) -> str | None:
    """config.json's model_type: the folder's, or for a hub id the local cache's (None if not cached)."""
    if local:
        return _local_model_type(src)
    try:  # huggingface_hub's own lookup: the same in every transformers version kscli takes
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(src, "config.json")
    except Exception:  # noqa: BLE001 - not a valid hub id, no cache: nothing to check before loading
        return None
    return _local_model_type(os.path.dirname(path)) if isinstance(path, str) else None


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


def load_hf_model(name: str, class_name: str, weights: str, ignore_missing: tuple[str, ...] = ()):
    """``transformers.<class_name>.from_pretrained(weights)`` in float32; every failure -> KscliError.

    Returns ``(model, source, used_network)`` where source is the absolute folder for a local path, else the hub id.
    Refuses a checkpoint that leaves parameters randomly initialised (missing keys), since that
    would silently give random features.
    """
    if weights is None or str(weights).strip() == "":
        raise KscliError(f"backbone '{name}' needs weights: pass --weights with a Hugging Face hub id or a local folder")
    weights = str(weights)
    local = looks_local(weights)
    src = os.path.abspath(os.path.expanduser(weights)) if local else weights
    if local:
        if not os.path.isdir(src):
            raise KscliError(f"backbone '{name}': weights folder '{weights}' does not exist; {_fix_hint(name, weights)}")
        if not os.path.isfile(os.path.join(src, "config.json")):
            raise KscliError(
                f"backbone '{name}': weights folder '{weights}' has no config.json, so it is not a Hugging Face model folder; "
                f"{_fix_hint(name, weights)}"
            )
    # before loading (a hub id: if cached): another kind of checkpoint can fail in from_pretrained less clearly
    _check_model_type(name, weights, _cached_model_type(src, local))

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
        if not local:  # the network attempt may have fetched config.json: say what kind of checkpoint it is
            _check_model_type(name, weights, _cached_model_type(src, local))
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


def read_preprocessor_config(src: str, local: bool, use_network: bool = False) -> dict:
    """The first of preprocessor_config.json / video_preprocessor_config.json found, or {} when
    there is none. One that is there but cannot be read (not JSON, not an object) is an error:
    the model's own preprocessing is what it says, and a silent default would be recorded as if
    it were the model's.

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
            d = read_json(path, "the weights' processor config")
            if not isinstance(d, dict):
                raise KscliError(f"{path}: the weights' processor config is not a JSON object; fix or remove it "
                                 "(without it the model family's default preprocessing is used)")
            return d
    return {}


def mean_std(pp: dict, reg: Registration) -> tuple[tuple, tuple]:
    """The processor config's image_mean / image_std (the registry's where it says none); a
    value that is not 3 numbers (std > 0) is one line, never replaced by a default."""
    mean, std = reg.mean, reg.std
    try:
        if pp.get("image_mean") is not None:
            mean = rgb_triple(pp["image_mean"], "image_mean")
        if pp.get("image_std") is not None:
            std = rgb_triple(pp["image_std"], "image_std")
    except (ValueError, TypeError) as e:
        raise KscliError(f"the weights' processor config: {e}; fix image_mean / image_std there") from None
    if not all(math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
        raise KscliError(f"the weights' processor config: image_mean {list(mean)} / image_std {list(std)} must be "
                         "finite, with std > 0")
    return mean, std


def processor_crop_size(pp: dict) -> int | None:
    c = pp.get("crop_size")
    if isinstance(c, dict):
        c = c.get("height") or c.get("shortest_edge")
    try:
        return int(c) if c else None
    except (TypeError, ValueError):
        return None


def as_int(v) -> int:
    if isinstance(v, (list, tuple)):
        v = v[0]
    return int(v)
