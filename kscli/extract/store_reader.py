"""The read side of the feature store: :class:`FeatureStore` (every finished part of a store folder
seen as one table keyed by clip name) and the helpers that find and read part files.

The folder layout and how parts are written: see :mod:`kscli.extract.store`, which also
re-exports its public names.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import h5py
import numpy as np

from kscli.errors import KscliError
from kscli.fileio import loads_strict, read_json
from kscli.extract.backbone_base import random_weights
from kscli.extract.lock import active_writers

PART_RE = re.compile(r"^part-r(?P<rank>\d{3,})-s(?P<seq>\d{6,})\.h5$")
IDENTITY_FILE = "store.json"

# Everything in a store's config that shapes a feature. Rows made with any of these different
# are not the same features, so a store holds one value of each (checked on every write and
# read). `view`, `versions` and the decoding rule (`decode`: "sampled" and "all" give the same
# frames) are recorded too but may differ between parts.
IDENTITY_KEYS = ("backbone", "sampling", "dtype", "precision", "resize_on", "clips", "decoder", "import")


def identity(config: dict) -> dict:
    """The part of a store config that shapes its features (IDENTITY_KEYS). A model backbone is
    known by its weights' digest, not by the folder or hub id they were read from (a moved or
    re-downloaded copy of the same weights is the same backbone); imported features by their
    source and its window settings, not by the folder the published files are in."""
    out = {k: config.get(k) for k in IDENTITY_KEYS if config.get(k) is not None}
    bb = out.get("backbone")
    if isinstance(bb, dict):  # where the weights or the published files were read from is not what they are
        out["backbone"] = {k: v for k, v in bb.items() if k != "weights"}
    if isinstance(out.get("import"), dict):
        out["import"] = {k: v for k, v in out["import"].items() if k != "features_dir"}
    return out


def config_digest(config: dict) -> str:
    """16 hex digits naming a store's identity: two stores with the same digest hold features
    made the same way (what runs and submissions record)."""
    text = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_difference(store: dict, new: dict, store_word: str = "in the store",
                        new_word: str = "now") -> str | None:
    """The first setting that differs between two store configs, as a phrase, or None."""
    a, b = identity(store), identity(new)
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            sub = next(k for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k))
            key, x, y = f"{key}.{sub}", x.get(sub), y.get(sub)
        if x is None:
            return f"{key} is not recorded {store_word} (made by an older kscli) but is {y!r} {new_word}"
        if y is None:
            return f"{key} is {x!r} {store_word} but not set {new_word}"
        return f"{key} is {x!r} {store_word} but {y!r} {new_word}"
    return None


def as_strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def declared_config(path: Path) -> dict:
    """The config a store.json declares; a file that is not one is one line."""
    doc = read_json(path, "the store's identity")
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) \
            or not isinstance(doc["config"].get("backbone"), dict):
        raise KscliError(f"{path}: not a store.json kscli wrote (a JSON object whose config has a backbone); restore "
                         "it, or move the store aside and extract again")
    return doc["config"]


def unreadable_part(part: Path, e: Exception) -> KscliError:
    """The one line for a part file that cannot be read, whoever finds it."""
    return KscliError(f"{part}: unreadable feature part ({e}); `kscli features verify --move-aside` moves such "
                      "parts away, then rerun `kscli extract` to recompute their clips")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # merged away since the folder was listed
        return 0


def list_parts(folder: Path, rank: int | None = None) -> list[Path]:
    """The finished part files of a store folder (of one rank, or all), oldest first."""
    pattern = "part-r*-s*.h5" if rank is None else f"part-r{rank:03d}-s*.h5"
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob(pattern) if PART_RE.match(p.name)), key=part_key)


def part_key(path: Path) -> tuple[int, int]:
    m = PART_RE.match(path.name)
    return int(m.group("seq")), int(m.group("rank"))


class FeatureStore:
    """Read side: every finished part of one store folder seen as one table keyed by clip name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._load()

    def _load(self) -> None:
        """Index every finished part. A part that vanishes while we read (a merge removed it
        after renaming its merged copy into place) means: list the folder again."""
        for attempt in range(20):
            try:
                self._index_parts()
                return
            except FileNotFoundError:
                time.sleep(0.05 * attempt)
        raise KscliError(f"{self.path}: parts keep vanishing while reading the store; is a "
                         "process deleting them? Rerun when it is done")

    def _index_parts(self) -> None:
        self.parts = list_parts(self.path)
        self._index: dict[str, tuple[int, int]] = {}
        self._roles: dict[str, str] = {}
        self._part_configs: list[dict] = []
        self._shapes: list[tuple] = []
        declared = self.path / IDENTITY_FILE
        self.declared: dict | None = declared_config(declared) if declared.is_file() else None
        for i, part in enumerate(self.parts):
            try:
                with h5py.File(part, "r") as f:
                    names = as_strings(f["names"][()])
                    roles = as_strings(f["roles"][()])
                    feats = f["features"]
                    if feats.ndim < 2 or feats.dtype.kind != "f" or not len(names) == len(roles) == len(feats):
                        raise ValueError(f"{len(names)} names, {len(roles)} roles and {feats.dtype} features of "
                                         f"shape {feats.shape} do not make rows of (n, D) floats")
                    self._shapes.append(feats.shape)
                    config = loads_strict(f.attrs["config"], "its config attribute")
                    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict):
                        raise ValueError("its config attribute is not a store config (a JSON object with a backbone)")
                    self._part_configs.append(config)
            except FileNotFoundError:
                raise
            except (OSError, KeyError, ValueError, TypeError, KscliError) as e:
                if not part.exists():
                    raise FileNotFoundError(part) from None
                raise unreadable_part(part, e) from None
            for row, (n, r) in enumerate(zip(names, roles)):
                self._index[n] = (i, row)  # later parts win: they are the newest copy
                self._roles[n] = r
        self._config = self.declared or self._most_rows_config()

    def _most_rows_config(self) -> dict | None:
        """A store from before store.json: the config most of its rows were made with (ties: the
        oldest part's), so healing a mixed one moves the fewest rows aside."""
        rows: dict[str, int] = {}
        first: dict[str, dict] = {}
        for cfg, shape in zip(self._part_configs, self._shapes):
            d = config_digest(cfg)
            rows[d] = rows.get(d, 0) + int(shape[0])
            first.setdefault(d, cfg)
        return first[max(first, key=lambda d: rows[d])] if first else None

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    @property
    def exists(self) -> bool:
        return bool(self.parts)

    @property
    def names(self) -> list[str]:
        return list(self._index)

    @property
    def config(self) -> dict:
        if self._config is None:
            raise KscliError(f"{self.path}: no feature store here; run `kscli extract` first")
        return self._config

    @property
    def digest(self) -> str:
        """The store's config digest (:func:`config_digest`)."""
        return config_digest(self.config)

    @property
    def rows_digest(self) -> str:
        """16 hex digits naming which clips the store holds (sorted names): with `digest`, what a
        run or a submission records of the features it read."""
        return hashlib.sha256("\n".join(sorted(self._index)).encode()).hexdigest()[:16]

    @property
    def random_features(self) -> bool:
        """Whether the features come from a randomly initialised test backbone (tiny-random)."""
        return self._config is not None and random_weights(self._config.get("backbone") or {})

    def mismatched_parts(self) -> list[tuple[Path, int, str]]:
        """(part, rows, how it differs) for every part made otherwise than the store says (its
        store.json; a store from before store.json: the config of most of its rows)."""
        out = []
        diffs = [identity_difference(self.config, cfg, "in the store", "in this part") for cfg in self._part_configs]
        ref = next((sh for why, sh in zip(diffs, self._shapes) if why is None), self._shapes[0] if self._shapes else ())
        for part, why, shape in zip(self.parts, diffs, self._shapes):
            if why is None and shape[1:] != ref[1:]:
                why = f"its features are {shape[1:]} per clip, the store's {ref[1:]}"
            if why is not None:
                out.append((part, int(shape[0]), why))
        return out

    def check_one_way(self, tag: str | None = None) -> "FeatureStore":
        """Raise one line if the store mixes features made two ways (and say how to heal it);
        return self otherwise."""
        bad = self.mismatched_parts()
        if bad:
            rows = sum(n for _, n, _ in bad)
            name = tag or self.path.parent.name
            raise KscliError(f"{self.path}: this store mixes features made two ways: {rows} row(s) in "
                             f"{len(bad)} part(s) differ from the store ({bad[0][2]}); heal it with "
                             f"`kscli features verify --store {name} --split {self.path.name} --move-aside` "
                             "(moves those parts aside), then rerun `kscli extract` with the store's "
                             "settings to recompute their clips")
        return self

    @property
    def feature_shape(self) -> tuple:
        """Per-clip feature shape: (D,) or (W, D)."""
        return tuple(self._shapes[0][1:]) if self._shapes else ()

    def role(self, name: str) -> str:
        return self._roles[name]

    def get(self, names: list[str], field: str = "features") -> np.ndarray:
        """Rows for `names` in that order; a name not in the store raises KeyError. A merge
        that removes parts while we read is followed: the store is indexed again."""
        for _ in range(5):
            try:
                return self._get(names, field)
            except FileNotFoundError:
                self._load()
        return self._get(names, field)

    def _get(self, names: list[str], field: str) -> np.ndarray:
        out = None
        by_part: dict[int, list[tuple[int, int]]] = {}
        for pos, n in enumerate(names):
            part, row = self._index[n]
            by_part.setdefault(part, []).append((row, pos))
        for part, pairs in by_part.items():
            pairs.sort()
            rows = [r for r, _ in pairs]
            with h5py.File(self.parts[part], "r") as f:
                ds = f[field]
                # one contiguous read per part, then pick: h5py fancy indexing is slow
                block = ds[rows[0]:rows[-1] + 1]
                data = block[np.asarray(rows) - rows[0]]
            if out is None:
                out = np.empty((len(names), *data.shape[1:]), dtype=data.dtype)
            out[[p for _, p in pairs]] = data
        if out is None:
            out = np.empty((0, *self.feature_shape), dtype=np.float32)
        return out

    def failures(self) -> dict[str, str]:
        """clip -> last recorded error, for clips that are still not in the store."""
        failed: dict[str, str] = {}
        for log in sorted(self.path.glob("failures-r*.jsonl")):
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    continue  # a line cut by a kill
                if isinstance(rec, dict) and isinstance(rec.get("clip"), str):
                    failed[rec["clip"]] = str(rec.get("error"))
        return {k: v for k, v in failed.items() if k not in self._index}

    def info(self) -> dict:
        """A summary for `kscli features info`."""
        cfg = self.config
        roles: dict[str, int] = {}
        for r in self._roles.values():
            roles[r] = roles.get(r, 0) + 1
        mixed = [{"part": p.name, "rows": n, "difference": why} for p, n, why in self.mismatched_parts()]
        return {"path": str(self.path), "clips": len(self), "by_view": roles, "parts": len(self.parts),
                "feature_shape": list(self.feature_shape), "failures": len(self.failures()),
                "size_mb": round(sum(file_size(p) for p in self.parts) / 2**20, 2),
                "writing": {f"r{rank:03d}": who for rank, who in active_writers(self.path).items()},
                "digest": self.digest, "random_features": self.random_features,
                "mixed": mixed, "config": cfg}
