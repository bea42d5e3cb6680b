"""Writing a file so that a reader (or a crash) never sees half of it: the one helper every writer uses.

The content goes to ``<name>.<pid>.tmp`` in the same folder, is flushed to disk, and takes the final
name in one ``os.replace``; then the folder entry is flushed too. A kill at any moment leaves
the old file (or none) and perhaps a stray ``.tmp``, never a truncated file under the real name.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Callable

from kscli.errors import KscliError

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
    """``write(tmp)`` writes the whole file to the tmp path it is given; then it is committed.
    A failed write (full disk, quota, read-only folder) leaves nothing and is one KscliError
    naming the file and what to do."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        return commit(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KscliError(os_error_line(e, path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _first_nonfinite(obj, where: str = "") -> str | None:
    """Where in a JSON-able object the first NaN / infinity is (``metrics.val.top1``), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(the whole value)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _first_nonfinite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def dumps_strict(obj, indent: int | None = 1, what: str = "JSON") -> str:
    """Strict JSON text (RFC 8259: no NaN or Infinity). kscli never writes a non-finite number:
    one would be a bug upstream, so it is one line naming where it is, not a file that other
    tools cannot parse."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        raise KscliError(f"{what}: refusing to write a non-finite number (NaN or infinity) at "
                         f"{_first_nonfinite(obj)}; nothing was written") from None


def write_json_atomic(path: str | Path, obj, indent: int = 1) -> Path:
    """Strict JSON (no NaN / Infinity), written atomically."""
    return write_text_atomic(path, dumps_strict(obj, indent, str(path)))


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: Python would read infinity
        raise ValueError(f"{text} is not a finite number")
    return value


def loads_strict(text: str, what: str):
    """Parse strict JSON text; any problem is one KscliError naming `what` and where."""
    try:
        return json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise KscliError(f"{what}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:  # NaN / Infinity: Python's json takes them, strict JSON does not
        raise KscliError(f"{what}: {e} (strict JSON has no NaN or Infinity)") from None
    except RecursionError:
        raise KscliError(f"{what}: JSON nested too deeply to be a kscli or Ego-Exo4D file") from None


def read_json(path: str | Path, what: str | None = None):
    """The strict JSON content of a file (a UTF-8 BOM is accepted); a missing, unreadable,
    non-UTF-8 or malformed file is one KscliError naming it."""
    path = Path(path)
    what = f"{path}" if what is None else f"{path} ({what})"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise KscliError(f"{what}: file not found") from None
    except UnicodeDecodeError as e:
        raise KscliError(f"{what}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise KscliError(os_error_line(e, path)) from None
    return loads_strict(text, what)
