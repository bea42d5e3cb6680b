"""The HDF5 feature store: one folder per backbone and split, written as crash-safe part files.

Layout of a store folder (`<work>/features/<tag>/<split>/`):

    store.json             how every row was made (the config that shapes a feature, its digest)
    part-r000-s000000.h5   one finished batch: names, roles, features, frame times (+ attrs)
    part-r001-s000000.h5   ... each rank writes its own parts, so ranks never share a file
    failures-r000.jsonl    clips that were missing or did not decode, one JSON line each
    writer-r000.lock       locked while a run writes rank 0 (records pid, host, since)

A store is made one way. Its ``store.json`` is created (atomically, create-if-absent) by the
first writer that writes a part; every writer checks its settings against it before decoding
and again before its first part, so a resume or a second shard with other settings (backbone
weights, precision, frames, windows, crop, where frames are resized, dtype, clip source) is
refused in one line, and so are settings that differ from the store's other splits. Readers
check every part's own config against it: a store that is mixed anyway (made before
store.json existed) is reported, and ``verify_store(move_aside=True)`` heals it.

A part is written to `*.h5.tmp`, closed, fsynced and renamed, so a `kill -9` at any moment
leaves only whole parts (a stray `.tmp` is ignored and removed by the next writer of that rank).
Appending to one big HDF5 file in place is what this avoids: a killed append can corrupt rows
that were already there. At the end of a run each rank merges its parts into one file the same
way. Readers see the union of all parts as one store; a clip in several parts (a merge cut off
between its rename and its clean-up) reads from the newest part, and all copies are identical.
A reader that finds a part gone (merged away while it read) lists the folder again.

One writer per rank: ``writer-r000.lock`` is locked for as long as a run writes rank 0's
parts (see :mod:`kscli.extract.lock`), so two runs can never interleave part names or remove
each other's parts; a merge removes exactly the parts it merged.

The read side (:class:`FeatureStore`, :func:`list_parts`) is in :mod:`kscli.extract.store_reader`
and importable from here; this module holds the write side (:class:`StoreWriter`, part files,
merging, :class:`PartWriterThread`), config checks and ``verify_store``.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
from tqdm import tqdm

import kscli
from kscli.data.segments import SPLITS
from kscli.errors import KscliError
from kscli.fileio import commit, dumps_strict, fsync_dir, loads_strict, os_error_line, tmp_path
from kscli.extract.lock import RankLock, lock_ranks
from kscli.extract.store_reader import (IDENTITY_FILE, FeatureStore, declared_config, part_key, file_size, as_strings,
                                        config_digest, identity_difference, list_parts, unreadable_part)
from kscli.extract.store_reader import PART_RE  # noqa: F401 - re-export

STR = h5py.string_dtype("utf-8")


@dataclass
class StoreRows:
    """What one part holds (also what a writer buffers before writing a part)."""

    names: list[str]
    roles: list[str]
    features: np.ndarray  # (n, D) or (n, W, D)
    frame_times: np.ndarray  # (n, W*F) seconds from the clip's first frame
    num_frames: np.ndarray  # (n,) frames in the clip
    fps: np.ndarray  # (n,)


def write_part(path: Path, rows: StoreRows, config: dict) -> Path:
    """Write one part atomically: tmp file, close, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    write_h5(tmp, lambda f: _fill_part(f, rows, config), size_hint=rows.features.nbytes)
    return commit(tmp, path)


# Up to this size an HDF5 file is built in memory and written with one plain write(): a full
# disk then fails that write cleanly. HDF5 itself, failing a write half-way, leaves h5py in a
# state where it later crashes the process (seen: segfault at exit after a "File too large").
IN_MEMORY_MAX = 256 * 2**20


def write_h5(tmp: Path, fill, size_hint: int = 0) -> None:
    """Write an HDF5 file to `tmp` with `fill(h5py.File)`; on any failure no tmp is left and a
    full disk is one clear error naming the file. Files over IN_MEMORY_MAX are streamed after a
    free-space check (a quota or `ulimit -f` is not seen by that check)."""
    final = tmp.with_name(tmp.name[:-4])
    try:
        if size_hint <= IN_MEMORY_MAX:
            image = io.BytesIO()
            with h5py.File(image, "w") as f:
                fill(f)  # reads the inputs: their errors name them and pass through as they are
            try:
                with open(tmp, "wb") as out:
                    out.write(image.getbuffer())
            except OSError as e:
                raise KscliError(os_error_line(e, final)) from None
            return
        free = shutil.disk_usage(tmp.parent).free
        if free < size_hint * 1.05 + 2**24:
            raise KscliError(f"{tmp.parent}: writing {final.name} needs about {size_hint / 2**20:.0f} MB and the "
                             f"disk has {free / 2**20:.0f} MB free; free some space, then rerun the same command "
                             "(finished work is kept)")
        try:
            with h5py.File(tmp, "w") as f:
                fill(f)
        except OSError as e:
            raise KscliError(f"writing {os_error_line(e, final)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)  # never a half-written part under any name
        raise


def _fill_part(f, rows: StoreRows, config: dict) -> None:
    f.create_dataset("names", data=np.array(rows.names, dtype=object), dtype=STR)
    f.create_dataset("roles", data=np.array(rows.roles, dtype=object), dtype=STR)
    f.create_dataset("features", data=rows.features)
    f.create_dataset("frame_times", data=rows.frame_times.astype(np.float32))
    f.create_dataset("num_frames", data=rows.num_frames.astype(np.int64))
    f.create_dataset("fps", data=rows.fps.astype(np.float32))
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_part(path: Path) -> tuple[StoreRows, dict]:
    with h5py.File(path, "r") as f:
        rows = StoreRows(
            names=as_strings(f["names"][()]), roles=as_strings(f["roles"][()]),
            features=f["features"][()], frame_times=f["frame_times"][()],
            num_frames=f["num_frames"][()], fps=f["fps"][()])
        return rows, json.loads(f.attrs["config"])


def check_identity(path: Path, config: dict, redoing: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, to write `config`'s features into a store made otherwise: its
    ``store.json``, the parts of a store from before store.json, and the store's other splits
    (a head trains on one split and predicts another, so a store's splits are made one way)."""
    file = path / IDENTITY_FILE
    if file.is_file():
        _refuse_other(path, identity_difference(declared_config(file), config))
    else:
        legacy = FeatureStore(path)
        if legacy.exists:
            legacy.check_one_way()
            _refuse_other(path, identity_difference(legacy.config, config))
    check_sibling_splits(path, config, redoing)


def check_sibling_splits(path: Path, config: dict, redoing: tuple[str, ...] = ()) -> None:
    """Refuse `config` for split folder `path` if another split of the store was made otherwise
    (splits in `redoing`, which this run overwrites too, do not count)."""
    for sibling in sorted(path.parent.glob(f"*/{IDENTITY_FILE}")):
        if sibling.parent != path and sibling.parent.name in SPLITS and sibling.parent.name not in redoing:
            why = identity_difference(declared_config(sibling), config, f"in its {sibling.parent.name} split")
            if why:
                raise KscliError(f"{path.parent}: {why}; the splits of one store are made one way (a head "
                                 "trains on one split and predicts another): pass --tag NAME for a new store, "
                                 "or redo every split with --overwrite")


def claim_identity(path: Path, config: dict, redoing: tuple[str, ...] = ()) -> None:
    """Make `config` the store's identity (``store.json``) if it has none, then check it (see
    :func:`check_identity`). The file is created with ``os.link``, which fails if it exists: of
    two writers racing to create it (shards started together with other settings), one wins
    and the other is refused before its first part is written. A writer claims the store when
    it writes its first part, so a run that wrote nothing (every clip failed) claims nothing."""
    file = path / IDENTITY_FILE
    if not file.exists():
        check_identity(path, config, redoing)  # parts from before store.json, and the other splits
        record = {"config": config, "digest": config_digest(config), "kscli": kscli.__version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = tmp_path(file)
        try:
            tmp.write_text(dumps_strict(record, 1, str(file)), encoding="utf-8")
            os.link(tmp, file)  # atomic create-if-absent
            fsync_dir(path)
        except FileExistsError:
            pass  # another writer created it first: compare with theirs
        finally:
            tmp.unlink(missing_ok=True)
    check_identity(path, config, redoing)


def _refuse_other(path: Path, why: str | None) -> None:
    if why:
        raise KscliError(f"{path}: the store was made with other settings ({why}); pass --tag NAME for a "
                         "new store, or --overwrite to redo this one")


class StoreWriter:
    """Write side for one rank: each batch becomes a new part; ``merge_parts`` folds them into one.

    Holds the rank's lock (:class:`~kscli.extract.lock.RankLock`) from construction until
    ``close()``: a second writer of the same rank is refused with one line naming the holder.
    Use it as a context manager.
    """

    def __init__(self, path: str | Path, rank: int, config: dict, redoing: tuple[str, ...] = ()):
        self.path = Path(path)
        self.redoing = tuple(redoing)
        self.path.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.config = config
        self.lock = RankLock(self.path, rank)  # before touching any of this rank's files
        for stale in self.path.glob(f"part-r{rank:03d}-s*.h5.tmp"):
            stale.unlink()  # a part that never finished: its clips are not in the store
        seqs = [part_key(p)[0] for p in list_parts(self.path, rank)]
        self.seq = max(seqs, default=-1) + 1
        self.written: list[Path] = []
        self.claimed = False
        self.failure_log = self.path / f"failures-r{rank:03d}.jsonl"

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_path(self) -> Path:
        p = self.path / f"part-r{self.rank:03d}-s{self.seq:06d}.h5"
        self.seq += 1
        return p

    def write(self, rows: StoreRows) -> Path:
        if not self.claimed:  # the first part: the store is made this way from now on
            claim_identity(self.path, self.config, self.redoing)
            self.claimed = True
        part = write_part(self._next_path(), rows, self.config)
        self.written.append(part)
        return part

    def record_failure(self, clip: str, error: str) -> None:
        with open(self.failure_log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"clip": clip, "error": error,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
            f.flush()

    def merge_parts(self) -> Path | None:
        """Merge this rank's parts into one new part (written atomically), then remove the merged.

        Safe at any kill point: until the rename, the old parts are the store; after it, the new
        part holds the same rows and wins over any old part not yet removed.
        """
        parts = list_parts(self.path, self.rank)
        if len(parts) < 2:
            return parts[0] if parts else None
        # Part by part into the new file (built in memory up to IN_MEMORY_MAX, streamed to disk
        # above). The newest copy of a clip wins (parts sorted oldest first).
        owner: dict[str, tuple[int, int]] = {}
        digests = set()
        for i, p in enumerate(parts):
            try:
                with h5py.File(p, "r") as f:
                    names = as_strings(f["names"][()])
                    digests.add(config_digest(json.loads(f.attrs["config"])))
            except (OSError, KeyError, ValueError) as e:
                raise unreadable_part(p, e) from None
            for row, n in enumerate(names):
                owner[n] = (i, row)
        if len(digests) > 1:  # never one file that claims one config for rows made two ways
            FeatureStore(self.path).check_one_way()
            raise KscliError(f"{self.path}: rank {self.rank}'s parts were made with other settings; "
                             "`kscli features verify --move-aside` moves them aside")
        out = self._next_path()
        tmp = out.with_name(out.name + ".tmp")
        size = sum(file_size(p) for p in parts)
        write_h5(tmp, lambda g: self._fill_merged(parts, owner, g), size_hint=size)  # fails: the parts stay the store
        commit(tmp, out)
        for p in parts:
            p.unlink(missing_ok=True)
        fsync_dir(self.path)
        return out

    @staticmethod
    def _fill_merged(parts: list[Path], owner: dict, g) -> None:
        """Stream the parts into one file, each clip's newest copy once."""
        total = len(owner)
        with h5py.File(parts[0], "r") as f0:
            for key in ("names", "roles"):
                g.create_dataset(key, shape=(total,), dtype=STR)
            for key in ("features", "frame_times", "num_frames", "fps"):
                g.create_dataset(key, shape=(total, *f0[key].shape[1:]), dtype=f0[key].dtype)
            for k, v in f0.attrs.items():
                g.attrs[k] = v
            at = 0
            for i, p in enumerate(parts):
                try:
                    rows, _ = read_part(p)
                except (OSError, KeyError) as e:
                    raise unreadable_part(p, e) from None
                keep = [r for r, n in enumerate(rows.names) if owner[n] == (i, r)]
                if not keep:
                    continue
                sl = slice(at, at + len(keep))
                g["names"][sl] = np.array([rows.names[r] for r in keep], dtype=object)
                g["roles"][sl] = np.array([rows.roles[r] for r in keep], dtype=object)
                for key in ("features", "frame_times", "num_frames", "fps"):
                    g[key][sl] = getattr(rows, key)[keep]
                at += len(keep)


def check_part(path: Path, block: int = 4096) -> str | None:
    """Why a part file cannot be used (every row of every dataset is read, a block at a time),
    or None when it is whole."""
    try:
        with h5py.File(path, "r") as f:
            n = len(f["names"])
            if f["features"].ndim < 2 or f["features"].dtype.kind != "f":
                return f"features are {f['features'].dtype} of shape {f['features'].shape}, not (n, D) floats"
            bad = 0
            for key in ("names", "roles", "features", "frame_times", "num_frames", "fps"):
                if len(f[key]) != n:
                    return f"{key} has {len(f[key])} rows, names has {n}"
                for at in range(0, n, block):
                    rows = f[key][at:at + block]
                    if key == "features":
                        bad += int((~np.isfinite(rows.reshape(len(rows), -1)).all(1)).sum())
            if not isinstance(loads_strict(f.attrs["config"], "config"), dict):
                return "its config attribute is not a JSON object"
            if bad:
                return f"{bad} of {n} rows hold NaN or infinite features (moved aside, their clips are recomputed)"
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, TypeError, KscliError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


@contextmanager
def no_writers(path: Path, what: str):
    """Hold every rank's lock of a store for the block: no run writes it meanwhile (one that is
    writing makes this refuse, naming it), and none can start."""
    held = []
    try:
        for rank in lock_ranks(path):
            try:
                held.append(RankLock(path, rank, wait_s=0.5))
            except KscliError as e:
                raise KscliError(f"{what} refused: {e}") from None
        yield
    finally:
        for lock in held:
            lock.release()


def verify_store(path: Path, move_aside: bool = False, progress: bool = False
                 ) -> list[tuple[Path, str]]:
    """Every part of a store that cannot be read, with why. `move_aside` renames each to
    ``<part>.unreadable-<time>`` (kept for inspection, no longer part of the store), so the next
    `kscli extract` recomputes its clips; no run may be writing the store meanwhile."""
    path = Path(path)
    with (no_writers(path, "features verify --move-aside") if move_aside else nullcontext()):
        parts = list_parts(path)
        bad = []
        for p in tqdm(parts, desc=f"verify {path.name}", unit="part", disable=not progress):
            try:
                why = check_part(p)
            except FileNotFoundError:  # merged away by a run since the folder was listed: not damage
                continue
            if why is not None and p.exists():
                bad.append((p, why))
        damaged = {p for p, _ in bad}
        if not damaged:  # whole parts: are they all made the store's way?
            bad += [(p, f"{MADE_OTHERWISE}: {why}") for p, _, why in FeatureStore(path).mismatched_parts()]
        if move_aside:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for p, why in bad:
                kind = "unreadable" if p in damaged else "mismatched"
                os.rename(p, p.with_name(f"{p.name}.{kind}-{stamp}"))
            fsync_dir(path)
    return bad


MADE_OTHERWISE = "made with other settings than the store"


def overwrite_stores(stores: list[tuple[Path, dict]], num_shards: int = 1, redoing: tuple[str, ...] = ()) -> None:
    """--overwrite for the split folders a run writes (one per backbone): every check first, for
    every store (other splits made otherwise, several shards, a run writing one of them), then
    each old store is moved aside while every rank's lock of every one is held; nothing moves
    unless all pass. A store folder that holds nothing yet has nothing to move, but a run
    writing it still refuses the whole overwrite."""
    old = [(path, config) for path, config in stores
           if FeatureStore(path).exists or (path / IDENTITY_FILE).exists()]
    for path, config in old:
        check_sibling_splits(path, config, redoing)
        if num_shards > 1:
            raise KscliError(f"{path}: --overwrite refused: several shards would race to move it; when no "
                             "run writes it, move that folder away yourself, then rerun without --overwrite")
    with ExitStack() as held:
        for path, _ in stores:
            if path.is_dir():
                held.enter_context(no_writers(path, "--overwrite"))
        for path, _ in old:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = path.with_name(f"{path.name}.replaced-{stamp}")
            if aside.exists():
                aside = path.with_name(f"{path.name}.replaced-{stamp}-{os.getpid()}")
            os.rename(path, aside)
            print(f"--overwrite: the old store was moved to {aside} (delete it when you no longer need it)",
                  file=sys.stderr)


def open_for_writing(path: Path, config: dict, rank: int, overwrite: bool = False,
                     num_shards: int = 1, redoing: tuple[str, ...] = ()) -> tuple[StoreWriter, FeatureStore]:
    """Take rank `rank` of the store at `path` for writing: refuse other settings (or, with
    `overwrite`, move the old store aside: `overwrite_stores`), lock the rank, and read what is
    already done. The store is read after the lock, so a run that just finished is never redone.
    `redoing`: the other splits this run overwrites (their old settings do not count against it)."""
    if overwrite:
        overwrite_stores([(path, config)], num_shards, redoing)
    writer = StoreWriter(path, rank, config, redoing)
    try:
        # under the lock, before any decoding (and again with the first part): a run of this rank
        # with other settings may have claimed the store while we waited for the lock, and a run
        # with nothing left to write never claims anything
        check_identity(path, config, redoing)
        return writer, FeatureStore(path).check_one_way()
    except BaseException:
        writer.close()
        raise


class PartWriterThread:
    """Writes a rank's parts on a background thread, so the model never waits on HDF5 + fsync.

    ``submit(make_rows)`` queues a callable that returns the :class:`StoreRows` of one batch
    (it may first wait for the GPU to finish copying the features back); at most `depth`
    batches wait, then ``submit`` blocks. ``close()`` writes everything queued and re-raises a
    write error in the caller's thread. A kill loses at most the batches queued or in flight.
    """

    def __init__(self, writer: StoreWriter, depth: int = 2,
                 on_written: Callable[[StoreRows], None] | None = None,
                 thread_init: Callable[[], None] | None = None):
        self.writer, self.on_written, self.thread_init = writer, on_written, thread_init
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kscli-part-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.thread_init is not None:
            try:
                self.thread_init()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self.error = e
        while True:
            make_rows = self.queue.get()
            if make_rows is None:
                return
            if self.error is not None:
                continue  # keep draining so submit never blocks; the error is raised there
            try:
                rows = make_rows()
                self.writer.write(rows)
                if self.on_written is not None:
                    self.on_written(rows)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            if isinstance(e, OSError):
                raise KscliError(os_error_line(e, self.writer.path)) from e
            raise e

    def submit(self, make_rows: Callable[[], StoreRows]) -> None:
        self._raise()
        self.queue.put(make_rows)

    def close(self) -> None:
        """Write what is queued, stop the thread, raise its error if it had one."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self._raise()


# ----------------------------------------------------------------------------- what the CLI shows
def store_infos(layout, tag: str, splits: list[str]) -> list[dict]:
    """`FeatureStore.info()` of each split of store `tag` that exists; one line if none does."""
    stores = [FeatureStore(layout.features_dir(tag, s)) for s in splits]
    infos = [store.info() for store in stores if store.exists]
    if not infos:
        raise KscliError(f"{layout.store_dir(tag)}: no feature store for {','.join(splits)}; run "
                         f"`kscli extract --backbone {tag}` first")
    return infos


def format_info(infos: list[dict], tag: str) -> str:
    """What `kscli features info` prints: per split, what is there, how it was made, and any
    reason not to trust it (random features, parts made otherwise)."""
    from kscli.extract.backbone_base import RANDOM_FEATURES_WARNING
    from kscli.extract.processors import describe

    lines = []
    for info in infos:
        cfg = info["config"]
        bb = cfg["backbone"]
        lines.append(f"{info['path']}: {info['clips']} clips {info['by_view']}, features {info['feature_shape']} "
                     f"{cfg.get('dtype')}, {info['parts']} part(s), {info['size_mb']} MB, "
                     f"{info['failures']} failed clip(s)")
        lines.append(f"  backbone {bb.get('name')} ({bb.get('weights')}), sampling {cfg['sampling']}, "
                     f"precision {cfg.get('precision')}, resize on {cfg.get('resize_on')}, clips {cfg.get('clips')}")
        if bb.get("kind") != "official":
            lines.append(f"  preprocessing: {describe(bb)}")
        lines.append(f"  config digest {info['digest']}" + (f", weights digest {bb['weights_digest']}"
                                                            if bb.get("weights_digest") else ""))
        if info["random_features"]:
            lines.append(f"  WARNING: {RANDOM_FEATURES_WARNING}")
        if info["mixed"]:
            rows = sum(m["rows"] for m in info["mixed"])
            split = Path(info["path"]).name
            lines.append(f"  MIXED: {rows} row(s) in {len(info['mixed'])} part(s) were made otherwise than the store "
                         f"(e.g. {info['mixed'][0]['part']}: {info['mixed'][0]['difference']}); heal it with "
                         f"`kscli features verify --store {tag} --split {split} --move-aside`, then rerun "
                         "`kscli extract` with the store's settings")
        for rank, who in info["writing"].items():
            lines.append(f"  being written now: rank {rank} by {who}")
    return "\n".join(lines)


def verify_stores(layout, tag: str, splits: list[str], move_aside: bool = False,
                  progress: bool = False) -> tuple[str, int]:
    """`kscli features verify`: (the report, how many bad parts stay in the store)."""
    folders = [layout.features_dir(tag, s) for s in splits if layout.features_dir(tag, s).is_dir()]
    if not folders:
        raise KscliError(f"{layout.store_dir(tag)}: no feature store for {','.join(splits)}; run "
                         f"`kscli extract --backbone {tag}` first")
    lines, left = [], 0
    for folder in folders:
        parts = len(list_parts(folder))
        bad = verify_store(folder, move_aside=move_aside, progress=progress)
        kinds = ["made otherwise" if why.startswith(MADE_OTHERWISE) else "non-finite" if "NaN or infinite" in why
                 else "unreadable" for _, why in bad]
        counts = "".join(f", {kinds.count(k)} {k}" for k in ("unreadable", "non-finite", "made otherwise")
                         if k in kinds)
        lines.append(f"{folder}: {parts - len(bad)} good part(s){counts}")
        for (part, why), kind in zip(bad, kinds):
            lines.append(f"  {'moved aside' if move_aside else kind}: {part.name} ({why})")
        left += 0 if move_aside else len(bad)
    if left:
        lines.append(f"{left} bad part(s); rerun with --move-aside, then `kscli extract` (with the store's settings) "
                     "recomputes their clips")
    return "\n".join(lines), left
