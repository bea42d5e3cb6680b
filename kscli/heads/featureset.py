"""The in-memory feature set the heads train on: ego features, exo features, labels, per segment.

Whoever reads the HDF5 store builds one of these; `kscli.heads.train` only ever sees this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kscli.errors import KscliError


@dataclass
class FeatureSet:
    """One split's cached features, one row per ego segment.

    ego       (N, D) float32, or (N, T, D) when the store holds several temporal windows per clip
    exo       (N, V, D) or (N, V, T, D) float32, zeros where a view is absent
    exo_mask  (N, V) bool: which exo slots are real (a segment may have 0 to V views)
    labels    (N,) int64, -1 when unknown (test)
    take      take name per segment; start / end (N,) float seconds
    scenario  scenario per segment (from the label map), for per-scenario metrics; may be None
    ego_present (N,) bool or None: False for a segment kept without an ego feature (its ego row
              is zeros; `load_feature_set(keep_missing=True)`); None: every row has one
    """

    names: list[str]
    ego: np.ndarray
    exo: np.ndarray
    exo_mask: np.ndarray
    labels: np.ndarray
    take: list[str]
    start: np.ndarray
    end: np.ndarray
    scenario: list[str] | None = None
    ego_present: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.ego.shape[-1])

    @property
    def num_views(self) -> int:
        return 0 if self.exo_mask is None else int(self.exo_mask.shape[1])

    def with_ego(self) -> np.ndarray:
        """(N,) bool: which rows have an ego feature (every row when `ego_present` is None)."""
        if self.ego_present is None:
            return np.ones(len(self.names), dtype=bool)
        return np.asarray(self.ego_present, dtype=bool)

    def has_exo(self, rows=None) -> bool:
        """Whether any real exo view is here (among `rows`, an index or bool mask, if given);
        a store made with --view ego has slots but no view."""
        if self.exo is None or self.exo_mask is None:
            return False
        mask = np.asarray(self.exo_mask)
        return bool((mask if rows is None else mask[rows]).any())

    def subset(self, index) -> "FeatureSet":
        """Rows `index` (an int array or a bool mask) as a new FeatureSet (arrays are copies)."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        take_rows = lambda a: None if a is None else a[idx]  # noqa: E731
        return FeatureSet(
            names=pick(self.names),
            ego=self.ego[idx],
            exo=take_rows(self.exo),
            exo_mask=take_rows(self.exo_mask),
            labels=self.labels[idx],
            take=pick(self.take),
            start=take_rows(self.start),
            end=take_rows(self.end),
            scenario=pick(self.scenario),
            ego_present=take_rows(self.ego_present),
        )

    def validate(self, what: str = "features") -> "FeatureSet":
        """Check shapes agree; raise KscliError naming the field otherwise. Returns self."""
        n = len(self.names)
        if self.ego is None or self.ego.ndim not in (2, 3):
            raise KscliError(f"{what}: ego must be (N, D) or (N, T, D), got shape "
                             f"{None if self.ego is None else self.ego.shape}")
        if self.ego.shape[0] != n:
            raise KscliError(f"{what}: {n} names but ego has {self.ego.shape[0]} rows")
        if self.labels is None or self.labels.shape != (n,):
            raise KscliError(f"{what}: labels must be ({n},), got "
                             f"{None if self.labels is None else self.labels.shape}")
        if self.exo is not None or self.exo_mask is not None:
            if self.exo is None or self.exo_mask is None:
                raise KscliError(f"{what}: exo and exo_mask must be given together")
            if self.exo.ndim not in (3, 4) or self.exo.shape[0] != n:
                raise KscliError(f"{what}: exo must be (N, V, D) or (N, V, T, D) with N={n}, "
                                 f"got {self.exo.shape}")
            if self.exo_mask.shape != self.exo.shape[:2]:
                raise KscliError(f"{what}: exo_mask shape {self.exo_mask.shape} does not match "
                                 f"exo's (N, V) = {self.exo.shape[:2]}")
        if self.scenario is not None and len(self.scenario) != n:
            raise KscliError(f"{what}: {len(self.scenario)} scenario entries for {n} segments")
        if self.ego_present is not None and np.shape(self.ego_present) != (n,):
            raise KscliError(f"{what}: ego_present must be ({n},) bool, got shape "
                             f"{np.shape(self.ego_present)}")
        return self
