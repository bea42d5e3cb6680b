"""Per-segment features from the stores: the ego feature, the exo features with a mask, the label.

A segment whose ego clip has no feature (missing or undecodable clip) cannot be used for
training; it is left out and counted, never dropped silently. Several backbones' stores can
be joined: their features are concatenated along the feature axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kscli.data.layout import Benchmark
from kscli.errors import KscliError
from kscli.extract.store import FeatureStore, identity_difference
from kscli.heads.featureset import FeatureSet


@dataclass
class Assembly:
    """What went into a FeatureSet and what was left out."""

    split: str
    store_names: list[str]
    segments: int = 0
    used: int = 0
    missing_ego: list[str] = field(default_factory=list)  # no (finite) ego feature
    exo_views: int = 0  # exo clips with features
    exo_missing: int = 0  # exo clips named but without (finite) features
    nonfinite: list[str] = field(default_factory=list)  # clips whose stored feature has NaN/inf
    store_configs: dict = field(default_factory=dict)
    store_digests: dict = field(default_factory=dict)  # store_name -> {"config", "rows"} digests of the store read
    random_features: bool = False  # a store holds features of a randomly initialised test network
    kept_missing: bool = False  # segments without ego are rows (zeros) instead of left out

    def line(self) -> str:
        s = (f"{self.split}: {self.used} of {self.segments} segments have ego features "
             f"({'+'.join(self.store_names)})")
        if self.missing_ego:
            how = "kept with no ego feature" if self.kept_missing else "left out without ego features"
            s += f"; {len(self.missing_ego)} {how} (e.g. {self.missing_ego[0]})"
        if self.exo_views or self.exo_missing:
            s += f"; {self.exo_views} exo views, {self.exo_missing} exo clips without features"
        if self.nonfinite:
            s += (f"; {len(self.nonfinite)} clips whose features hold NaN/inf count as without "
                  f"features (e.g. {self.nonfinite[0]}: `kscli features verify --move-aside` moves their "
                  "parts aside, then `kscli extract` recomputes them)")
        return s


def store_digest(layout, store_name: str, split: str) -> dict | None:
    """What a run or a submission records of store `store_name`'s split: its config digest (how the
    features were made) and its rows digest (which clips it holds); None without features."""
    store = FeatureStore(layout.features_dir(store_name, split))
    return {"config": store.digest, "rows": store.rows_digest} if store.exists else None


def open_stores(bench: Benchmark, store_names: list[str], split: str, made_like: dict | None = None
                ) -> list[FeatureStore]:
    """The stores of `store_names` for `split`, each made one way; with `made_like` ({store_name: store
    config}, e.g. what a run trained on), each made exactly that way too."""
    stores = []
    for store_name in store_names:
        store = FeatureStore(bench.layout.features_dir(store_name, split))
        if not store.exists:
            raise KscliError(f"{store.path}: no features for split '{split}' in store '{store_name}'; run "
                             f"`kscli extract --backbone {store_name} --split {split}` first")
        store.check_one_way(store_name)
        if made_like is not None and store_name in made_like:
            why = identity_difference(made_like[store_name], store.config, "in the features the head trained on",
                                      f"in the {split} store")
            if why:
                raise KscliError(f"{store.path}: these features were made otherwise than those the head "
                                 f"trained on ({why}); a head only reads features made its way: extract "
                                 f"{split} with the settings of the train store, or retrain")
        stores.append(store)
    shapes = {s.feature_shape[:-1] for s in stores}
    if len(shapes) > 1:
        raise KscliError(f"stores {', '.join(store_names)} hold different windows per clip "
                         f"({sorted(shapes)}); join stores with the same --windows")
    return stores


def _read(stores: list[FeatureStore], names: list[str]) -> np.ndarray:
    return np.concatenate([s.get(names).astype(np.float32, copy=False) for s in stores], axis=-1)


def _finite_rows(feats: np.ndarray) -> np.ndarray:
    """(n,) bool: which clips' features hold no NaN / inf."""
    return np.isfinite(feats.reshape(len(feats), -1)).all(1)


def load_feature_set(bench: Benchmark, split: str, store_names: list[str], with_exo: bool = True,
                     keep_missing: bool = False, made_like: dict | None = None
                     ) -> tuple[FeatureSet, Assembly]:
    """The FeatureSet of one split from the stores `store_names` (joined along features).

    `keep_missing=False` leaves out segments without an ego feature (training, scoring);
    the names left out are in the Assembly. Exo views fill slots in camera order with a mask.
    `made_like` ({store_name: store config}): refuse stores made otherwise (see :func:`open_stores`).
    """
    stores = open_stores(bench, store_names, split, made_like)
    segments = bench.segments(split)
    asm = Assembly(split, list(store_names), segments=len(segments),
                   store_configs={t: s.config for t, s in zip(store_names, stores)},
                   store_digests={t: {"config": s.digest, "rows": s.rows_digest} for t, s in zip(store_names, stores)},
                   random_features=any(s.random_features for s in stores))
    asm.kept_missing = keep_missing
    has = [all(seg.ego.name in s for s in stores) for seg in segments]
    stored = [i for i, ok in enumerate(has) if ok]
    feats = _read(stores, [segments[i].ego.name for i in stored]) if stored else None
    if stored:  # a NaN / inf feature would poison statistics and predictions: treat as missing
        finite = _finite_rows(feats)
        for j in np.flatnonzero(~finite):
            has[stored[j]] = False
            asm.nonfinite.append(segments[stored[j]].ego.name)
        feats, stored = feats[finite], [i for i, ok in zip(stored, finite) if ok]
    asm.missing_ego = [seg.name for seg, ok in zip(segments, has) if not ok]
    rows_idx = [i for i, ok in enumerate(has) if ok or keep_missing]
    rows = [segments[i] for i in rows_idx]
    asm.used = sum(has)
    if not stored:
        raise KscliError(f"{stores[0].path}: none of the {len(segments)} {split} segments has an ego "
                         "feature; did extraction run with --view ego or all?")
    shape = (sum(s.feature_shape[-1] for s in stores),)
    shape = tuple(stores[0].feature_shape[:-1]) + shape
    ego = np.zeros((len(rows), *shape), np.float32)
    pos = {i: r for r, i in enumerate(rows_idx)}
    ego[[pos[i] for i in stored]] = feats
    num_views = max((len(seg.exo) for seg in rows), default=0) if with_exo else 0
    exo = np.zeros((len(rows), num_views, *shape), np.float32)
    mask = np.zeros((len(rows), num_views), bool)
    if num_views:
        slots, names = [], []
        for i, seg in enumerate(rows):
            for v, clip in enumerate(sorted(seg.exo, key=lambda c: c.camera)):
                if all(clip.name in s for s in stores):
                    slots.append((i, v))
                    names.append(clip.name)
                else:
                    asm.exo_missing += 1
        if names:
            unique = list(dict.fromkeys(names))
            feats = _read(stores, unique)
            finite = _finite_rows(feats)
            asm.nonfinite += [n for n, ok in zip(unique, finite) if not ok]
            pos = {n: k for k, n in enumerate(unique)}
            keep = [k for k, n in enumerate(names) if finite[pos[n]]]
            asm.exo_missing += len(names) - len(keep)
            slots, names = [slots[k] for k in keep], [names[k] for k in keep]
            if names:
                ii, vv = zip(*slots)
                exo[list(ii), list(vv)] = feats[[pos[n] for n in names]]
                mask[list(ii), list(vv)] = True
        asm.exo_views = len(names)
    labels = np.array([-1 if seg.label is None else seg.label for seg in rows], np.int64)
    scen = bench.labels.scenarios
    fs = FeatureSet(
        names=[seg.name for seg in rows], ego=ego, exo=exo, exo_mask=mask, labels=labels,
        take=[seg.take_name for seg in rows], start=np.array([seg.start for seg in rows]),
        end=np.array([seg.end for seg in rows]),
        scenario=[scen[seg.label] if seg.label is not None else "" for seg in rows],
        ego_present=np.array([has[i] for i in rows_idx], dtype=bool))
    return fs.validate(f"{split} features"), asm
