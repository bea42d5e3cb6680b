"""Writing a file so that a reader (or a crash) never sees half of it: the one helper every writer uses.

The content goes to ``<name>.<pid>.tmp`` in the same folder, is flushed to disk, and takes the final
name in one ``os.replace``; then the folder entry is flushed too. A kill at any moment leaves
the old file (or none) and perhaps a stray ``.tmp``, never a truncated file under the real name.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable

_OS_HINTS = {
    errno.EACCES: "check its permissions (kscli reads the download and writes under --work-dir / "
                  "KSCLI_WORK_DIR: pass one you can write to)",
    errno.EPERM: "check its permissions (kscli reads the download and writes under --work-dir / "
                 "KSCLI_WORK_DIR: pass one you can write to)",
    errno.EROFS: "that filesystem is read-only: pass a --work-dir (or KSCLI_WORK_DIR) on a writable one",
    errno.ENOSPC: "the disk is full: free some space, then rerun the same command (finished work is kept)",
    errno.EDQUOT: "your disk quota is used up: free some space, then rerun the same command (finished work is kept)",
    errno.EFBIG: "the file grew past a size limit (ulimit -f): raise it, then rerun the same command (finished "
                 "work is kept)",
}


def os_error_line(e: OSError, path=None) -> str:
    """One line for a failed file operation: which file, what the system said, what to do."""
    where = path or e.filename
    hint = _OS_HINTS.get(e.errno)
    what = f"{e.strerror or e}" if where or hint else f"{type(e).__name__}: {e.strerror or e}"
    return (f"{where}: " if where else "") + what + (f"; {hint}" if hint else "")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    """`<name>.<pid>.tmp`: two processes writing the same file never rename each other's half."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def commit(tmp: Path, path: Path) -> Path:
    """Make a closed tmp file durable, then give it its final name in one atomic step."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` writes the whole file to the tmp path it is given; then it is committed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        write(tmp)
        return commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj, indent: int = 1) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent))
