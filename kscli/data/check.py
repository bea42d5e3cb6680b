"""`kscli check-data`: does a download hold every clip the annotations name, and do they decode?

The probes run in a pool of *spawned* processes. A forked pool hung once in ~100 runs: fork()
copies only the calling thread, and a child that then imported the video library for the first time sat
in the dynamic loader forever, on a loader lock that another thread of the parent (tqdm's
monitor thread, started by the progress bar) held at the moment of the fork. Spawned children
start from a fresh interpreter and inherit no lock; they cost a few hundred ms to start, once.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from kscli.data.layout import Benchmark, Layout
from kscli.data.manifest import load_manifest
from kscli.data.video import VideoError, read_frames
from kscli.device import usable_cores
from kscli.fileio import write_json_atomic

PROBLEMS = ("missing", "empty", "corrupt")  # a clip with any of these cannot be used


@dataclass
class ClipCheck:
    name: str
    split: str
    role: str
    status: str  # ok | missing | empty | corrupt
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    error: str = ""


def probe_clip(path: str | Path, decode: bool = True) -> dict:
    """Open a clip and decode its first frame; a dict with status, frames, fps, size, error."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"status": "missing"}
    except OSError as e:  # e.g. a folder on the way that may not be read
        return {"status": "corrupt", "error": f"cannot read: {e.strerror or e}"}
    if size == 0:
        return {"status": "empty", "error": "zero-byte file"}
    if not decode:
        return {"status": "ok"}
    try:
        clip = read_frames(path, choose=lambda n: [0])
    except VideoError as e:
        return {"status": "corrupt", "error": str(e)}
    h, w = clip.frames.shape[1:3]
    return {"status": "ok", "frames": clip.frame_count, "fps": clip.fps, "height": int(h), "width": int(w)}


def _probe_job(job):
    path, decode = job
    return probe_clip(path, decode)


@dataclass
class CheckReport:
    clips_root: str
    annotations_dir: str
    splits: dict = field(default_factory=dict)  # split -> {role -> counts}
    problems: list = field(default_factory=list)  # ClipCheck dicts with a problem
    short_clips: int = 0
    min_frames: int = 0
    notes: list = field(default_factory=list)
    ok: bool = True
    decoded: bool = True  # False with --no-decode: existence and size only

    def to_json(self) -> dict:
        return asdict(self)


def check_data(layout: Layout, splits: list[str], view: str = "all", min_frames: int = 16,
               decode: bool = True, jobs: int | None = None, progress: bool = True) -> CheckReport:
    """Check every clip of the given splits and views; `ok` is False if any is missing or unreadable.

    Probes run in spawned processes: a script that calls this at import level needs the usual
    ``if __name__ == "__main__":`` guard.

    `min_frames` is what a backbone samples: shorter clips are counted (they still work, frames
    are repeated) but are no error.
    """
    bench = Benchmark(layout)
    report = CheckReport(str(layout.clips_root), str(layout.annotations_dir), min_frames=min_frames,
                         decoded=decode)
    manifest = load_manifest()
    if bench.labels.num_classes != manifest["labels"]["num_classes"]:
        report.notes.append(f"label mapping has {bench.labels.num_classes} keysteps; the full benchmark "
                            f"has {manifest['labels']['num_classes']}")
    roles = ("ego", "exo") if view == "all" else (view,)
    checks: list[ClipCheck] = []
    for split in splits:
        segments = bench.segments(split)
        expected = manifest["splits"][split].get("segments")
        if expected is not None and len(segments) != expected:
            report.notes.append(f"{split}: {len(segments)} segments; the full benchmark has {expected}")
        for seg in segments:
            checks.extend(ClipCheck(c.name, split, c.role, "pending") for c in seg.clips if c.role in roles)
    jobs = jobs or min(8, usable_cores()[0])
    work = [(str(layout.clip_path(c.name)), decode) for c in checks]
    if jobs == 1 or len(work) < 64:
        results = map(_probe_job, work)
        pool = None
    else:  # spawn, not fork: see the module docstring
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_probe_job, work, chunksize=16)
    bar = tqdm(total=len(work), desc="check-data", unit="clip", disable=not progress)
    problems = 0
    try:
        for check, res in zip(checks, results):
            for k, v in res.items():
                setattr(check, k, v)
            bar.update(1)
            if check.status in PROBLEMS:
                problems += 1
                bar.set_postfix(problems=problems, refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for split in splits:
        per_role = {}
        for role in roles:
            cs = [c for c in checks if c.split == split and c.role == role]
            counts = Counter(c.status for c in cs)
            short = sum(1 for c in cs if c.status == "ok" and decode and c.frames < min_frames)
            per_role[role] = {"expected": len(cs), "ok": counts["ok"],
                              **{p: counts[p] for p in PROBLEMS}, "short": short}
            report.short_clips += short
        per_role["segments"] = len(bench.segments(split))
        report.splits[split] = per_role
    report.problems = [asdict(c) for c in checks if c.status in PROBLEMS]
    report.ok = not report.problems
    return report


def format_report(report: CheckReport) -> str:
    """A short table: one row per split and view."""
    head = f"{'split':<6} {'view':<4} {'segments':>8} {'clips':>7} {'ok':>7} " \
           f"{'missing':>7} {'empty':>6} {'corrupt':>7} {'short':>6}"
    lines = [f"clips root: {report.clips_root}", head, "-" * len(head)]
    for split, per_role in report.splits.items():
        for role, c in per_role.items():
            if role == "segments" or (role == "exo" and not c["expected"]):
                continue  # the test split lists no exo clips
            lines.append(f"{split:<6} {role:<4} {per_role['segments']:>8} {c['expected']:>7} {c['ok']:>7} "
                         f"{c['missing']:>7} {c['empty']:>6} {c['corrupt']:>7} {c['short']:>6}")
    for p in report.problems[:10]:
        lines.append(f"  {p['status']:<8} {p['name']}" + (f"  ({p['error']})" if p["error"] else ""))
    if len(report.problems) > 10:
        lines.append(f"  ... and {len(report.problems) - 10} more (see the JSON report)")
    if report.short_clips:
        lines.append(f"note: {report.short_clips} clips have fewer than {report.min_frames} frames "
                     "(usable: sampling repeats frames)")
    lines.extend(f"note: {n}" for n in report.notes)
    if report.ok:
        lines.append("OK: every clip checked is present and decodes" if report.decoded else
                     "OK: every clip checked is present and not empty (not decoded: --no-decode)")
    else:
        lines.append(f"PROBLEMS: {len(report.problems)} clips are missing or unreadable")
    return "\n".join(lines)


def write_report(report: CheckReport, path: Path) -> Path:
    return write_json_atomic(path, report.to_json())
