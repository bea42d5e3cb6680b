"""Opening and reading clips with decord, quietly: one clear error instead of library noise.

decord prints to the process's stderr from C++, below Python: ffmpeg's own log lines
(`[mov,mp4,... @ 0x...] moov atom not found`, silenced with decord's log level) and its own
`[22:52:42] /github/workspace/src/video/video_reader.cc:83: ERROR opening: ...` before it
raises. The second cannot be turned off, so file descriptor 2 is pointed at a scratch file
while decord works; if decord raises, the useful part of what it printed becomes the error's
text (kscli records it once, as the clip's failure). decord's and ffmpeg's own lines are then
dropped; anything else that reached fd 2 meanwhile (another thread of this process) is written
back to stderr afterwards, late but not lost. One scratch file per process (a forked child
opens its own) and one decode at a time per process hold the redirect (a lock).
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager

_scratch = None  # (pid, file): one scratch file per process, reused for every clip
_redirect = threading.Lock()  # fd 2 is process-wide: one redirect at a time
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[22:52:42] /path/video_reader.cc:83: "
_FFMPEG_LINE = re.compile(r"^\[[\w,]+ @ 0x[0-9a-f]+\] ")  # "[mov,mp4,m4a @ 0x55d5...] moov atom not found"


class VideoError(RuntimeError):
    """A clip that cannot be opened or decoded; the message says why, in one line."""


def _scratch_file():
    global _scratch
    if _scratch is None or _scratch[0] != os.getpid():  # a forked child must not share the parent's
        _scratch = (os.getpid(), tempfile.TemporaryFile())
    return _scratch[1]


def _is_library_noise(line: str) -> bool:
    return bool(_DECORD_PREFIX.match(line) or _FFMPEG_LINE.match(line))


@contextmanager
def _quiet_stderr():
    """Route fd 2 to a scratch file for the block; yields a function that returns decord's and
    ffmpeg's lines written meanwhile. Other lines go back to stderr when the block ends."""
    with _redirect:
        scratch = _scratch_file()
        scratch.seek(0)
        scratch.truncate()
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        saved = os.dup(2)
        os.dup2(scratch.fileno(), 2)

        def everything() -> list[str]:
            scratch.seek(0)
            return scratch.read().decode("utf-8", errors="replace").splitlines()

        try:
            yield lambda: "\n".join(ln for ln in everything() if _is_library_noise(ln))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            others = [ln for ln in everything() if ln.strip() and not _is_library_noise(ln)]
            if others:
                os.write(2, ("\n".join(others) + "\n").encode())


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
            fps = float(vr.get_avg_fps())
            if not math.isfinite(fps) or fps <= 0:  # frame times would be made up: a failure, not a guess
                raise VideoError(f"the clip has no usable frame rate (its container says {fps:g}); "
                                 "re-encode it with a frame rate")
            frames = vr.get_batch(list(choose(n))).asnumpy() if choose is not None else None
        except VideoError:
            raise
        except Exception as e:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, ...
            raise VideoError(_reason(e, printed(), path)) from None
    return n, fps, frames
