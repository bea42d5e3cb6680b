"""Opening and reading clips with decord, quietly: one clear error instead of library noise.

decord prints to the process's stderr from C++, below Python: ffmpeg's own log lines
(`[mov,mp4,... @ 0x...] moov atom not found`, silenced with decord's log level) and its own
`[22:52:42] /github/workspace/src/video/video_reader.cc:83: ERROR opening: ...` before it
raises. The second cannot be turned off, so file descriptor 2 is pointed at a scratch file
while decord works; if decord raises, the useful part of what it printed becomes the error's
text (kscli records it once, as the clip's failure), otherwise it is dropped.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

_scratch = None  # one scratch file per process, reused for every clip
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[22:52:42] /path/video_reader.cc:83: "


class VideoError(RuntimeError):
    """A clip that cannot be opened or decoded; the message says why, in one line."""


@contextmanager
def _quiet_stderr():
    """Route fd 2 to a scratch file for the block; yields a function that returns what was written."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.TemporaryFile()
    _scratch.seek(0)
    _scratch.truncate()
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    os.dup2(_scratch.fileno(), 2)

    def written() -> str:
        _scratch.seek(0)
        return _scratch.read().decode("utf-8", errors="replace")

    try:
        yield written
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reason(exc: Exception, printed: str, path) -> str:
    """One line: decord's own last word when it printed one, else the exception's first line."""
    first = _DECORD_PREFIX.sub("", (str(exc).strip().splitlines() or [type(exc).__name__])[0])[:300]
    if "cannot find video stream" in first:
        return "no video stream in the file (audio only?)"
    lines = [_DECORD_PREFIX.sub("", ln).strip() for ln in printed.splitlines() if ln.strip()]
    said = lines[-1].replace(str(path), os.path.basename(str(path))) if lines else ""
    opening = re.match(r"ERROR opening: .+?, (.+)$", said)
    if opening:
        return f"cannot open the video: {opening.group(1)[:200]}"
    first = first.replace(str(path), os.path.basename(str(path)))
    return f"{first} ({said[:200]})" if said and said not in first else first


def read_frames(path, choose=None):
    """Open `path` with decord (one thread) and decode the frames `choose(frame_count)` names.

    Returns ``(frame_count, fps, frames)``: frames uint8 (N, H, W, 3) in the order chosen, or
    None without `choose`. Any failure raises :class:`VideoError` with one line of text.
    """
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    with _quiet_stderr() as printed:
        try:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            n = len(vr)
            if n < 1:
                raise VideoError("clip has no frames")
            fps = float(vr.get_avg_fps()) or 30.0
            frames = vr.get_batch(list(choose(n))).asnumpy() if choose is not None else None
        except VideoError:
            raise
        except Exception as e:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, ...
            raise VideoError(_reason(e, printed(), path)) from None
    return n, fps, frames
