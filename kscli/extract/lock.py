"""One writer per (store, rank): an OS file lock held for as long as a run writes that rank's parts.

Two runs that write the same rank of one store would pick the same part names and clean up each
other's files (a resubmitted SLURM job, an array task retried while the first attempt still
runs, the same command in two terminals). So a writer first locks ``<store>/writer-r<rank>.lock``;
a second writer of that rank stops at once with one line naming the holder. The kernel drops
the lock when the holding process dies, ``kill -9`` included, so a crash never leaves a stale
lock behind; the file itself stays (it only names the last holder) and is never deleted, since
deleting a lock file lets two processes lock two different files.

The lock is a POSIX record lock (``fcntl.lockf``), not ``flock``: a record lock belongs to the
process and is not inherited by ``fork``, so the decoder workers a run forks cannot keep it
alive after the run itself was killed. Its one trap (closing *any* descriptor of the file
releases the process's lock) is why this module keeps a list of the locks this process holds
and never opens those files again. Record locks work across machines on NFS and on Lustre
mounted with ``-o flock``; a filesystem without locks is refused with a line that says so
rather than risking lost parts.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from kscli.errors import KscliError

LOCK_GLOB = "writer-r*.lock"
_HELD: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the lock files this process holds


def lock_path(store: Path, rank: int) -> Path:
    return Path(store) / f"writer-r{rank:03d}.lock"


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
            f"since {info.get('since', '?')}")


def _no_locks(path: Path, e: OSError) -> KscliError:
    return KscliError(f"{path}: this filesystem does not support file locks ({e.strerror}); kscli "
                      "needs them so that two runs never write the same part files: use a "
                      "--work-dir on local disk, NFSv4, or Lustre mounted with -o flock")


def _busy(path: Path, rank: int, who: str) -> KscliError:
    return KscliError(f"{path.parent}: rank {rank} of this store is being written by {who}; wait for "
                      "that run to end (or stop it), then rerun this command: it resumes where that run stopped")


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def open_lock_file(path: Path, rank: int) -> int:
    """The lock file of `rank` opened for reading and writing (made if absent), or one line
    saying why it cannot be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # 0o666 minus the umask: a group-shared store stays writable by the group
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        raise KscliError(f"{path}: no permission to open this lock file for rank {rank} (the store was "
                         "made by another user?); use your own --work-dir, or make the folder and its "
                         "files group-writable") from None


class RankLock:
    """An exclusive, non-blocking record lock on one rank's lock file; ``release()`` or process
    death frees it. The file records who holds it (pid, host, since) for the refusal message.

    After locking, the open file must still be the file at the path: a folder moved aside
    (``--overwrite``) takes its lock files with it, and a lock on one of those guards nothing.
    `wait_s` rides out a reader's momentary probe (:func:`held_by`) or such a move."""

    def __init__(self, store: str | Path, rank: int, wait_s: float = 2.0):
        self.path = lock_path(Path(store), rank)
        self.fd = None
        if _file_id(self.path) in _HELD:
            raise _busy(self.path, rank, f"this process (pid {os.getpid()})")
        deadline = time.monotonic() + wait_s
        while True:
            fd = open_lock_file(self.path, rank)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                os.close(fd)  # holds no lock of ours: closing it releases nothing
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise _busy(self.path, rank, _holder_text(self.path)) from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise _no_locks(self.path, e) from None
                raise
            st = os.fstat(fd)
            if _file_id(self.path) == (st.st_dev, st.st_ino):
                break
            fcntl.lockf(fd, fcntl.LOCK_UN)  # the file was moved away meanwhile: lock the new one
            os.close(fd)
        self.fd, self.key = fd, (st.st_dev, st.st_ino)
        _HELD.add(self.key)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.key)
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RankLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def held_by(path: Path) -> str | None:
    """Who holds a lock file now (``None`` if nobody): probes with a shared lock, never blocks."""
    if _file_id(Path(path)) in _HELD:
        return f"this process (pid {os.getpid()})"  # opening it again would drop our own lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return _holder_text(path)
    except OSError:
        return None
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_ranks(store: Path) -> list[int]:
    """The ranks that have a lock file in a store (written now or before)."""
    return sorted(int(p.stem.split("-r")[-1]) for p in Path(store).glob(LOCK_GLOB))


def active_writers(store: Path) -> dict[int, str]:
    """rank -> holder, for every rank of a store being written right now."""
    out = {}
    for rank in lock_ranks(store):
        who = held_by(lock_path(Path(store), rank))
        if who is not None:
            out[rank] = who
    return out
