"""Which decoder: PyAV (kscli's, rule sampled and all) against decord / decord2 when installed.

    python bench/decoders.py [--root DIR] [--frames 16] [--repeats 3000]

On generated clips encoded as Ego-Exo4D's are (x264 defaults), in this one process:
- pixels: every decoder's sampled frames against PyAV decoding all frames (max difference);
- speed on one core, per view (ego 448x448, exo 796x448): ms per clip, the decoders alternated
  clip by clip so the machine's noise hits them alike;
- memory: the process's peak RSS after N and 2N decodes of small clips (flat means no leak).
decord (0.6, Linux x86_64 only) and decord2 (a maintained fork with the same `decord` module)
cannot live in one environment: run this once in each to compare them (`pip install decord`).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kscli.data.layout import Benchmark, Layout  # noqa: E402
from kscli.data.sample import tiny_sample_kwargs, write_sample_benchmark  # noqa: E402
from kscli.data.video import read_frames  # noqa: E402
from kscli.extract.run import list_clip_jobs  # noqa: E402
from kscli.extract.sampling import sample_frame_indices  # noqa: E402


def pyav(rule):
    def read(path, frames):
        return read_frames(path, lambda n: sample_frame_indices(n, frames).reshape(-1), rule).frames
    return read


def decord_reader():
    try:
        import decord
    except ImportError:
        return None, None
    decord.logging.set_level(decord.logging.QUIET)

    def read(path, frames):
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return vr.get_batch(list(sample_frame_indices(len(vr), frames).reshape(-1))).asnumpy()
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("decord2", "decord"):
        try:
            return f"{dist} {version(dist)}", read
        except PackageNotFoundError:
            continue
    return f"decord {decord.__version__}", read


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/kscli-bench-decoders")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3000, help="decodes of small clips for the memory check")
    args = ap.parse_args()
    root = Path(args.root)
    if not (root / "448" / "annotations").exists():
        write_sample_benchmark(root / "448", seed=1, takes_per_split={"train": 2, "val": 1, "test": 1},
                               segments_per_take=(4, 4), clip_seconds=(6.0, 16.0), short_clip_prob=0.0,
                               workers=os.cpu_count() or 1)
    if not (root / "tiny" / "annotations").exists():
        write_sample_benchmark(root / "tiny", seed=2, workers=os.cpu_count() or 1, **tiny_sample_kwargs())
    jobs = list_clip_jobs(Benchmark(Layout.resolve(data_root=root / "448")), "train", "all")
    readers = {"pyav sampled": pyav("sampled"), "pyav all": pyav("all")}
    name, dec = decord_reader()
    if dec is not None:
        readers[name] = dec
    print(f"{len(jobs)} clips of 6-16 s, x264 defaults; {args.frames} frames sampled per clip; one core")

    worst = {k: 0 for k in readers}
    for job in jobs:
        ref = readers["pyav all"](job.path, args.frames).astype(np.int16)
        for k, read in readers.items():
            worst[k] = max(worst[k], int(np.abs(read(job.path, args.frames).astype(np.int16) - ref).max()))
    print("pixels, max difference from PyAV decoding every frame: "
          + ", ".join(f"{k} {v}" for k, v in worst.items()))

    for role in ("ego", "exo"):
        mine = [j for j in jobs if j.role == role]
        spent = {k: 0.0 for k in readers}
        for job in mine:
            for k, read in readers.items():
                t0 = time.perf_counter()
                read(job.path, args.frames)
                spent[k] += time.perf_counter() - t0
        base = spent["pyav all"]
        print(f"{role} ({len(mine)} clips): " + ", ".join(
            f"{k} {1000 * v / len(mine):.0f} ms/clip ({base / v:.2f}x pyav all)" for k, v in spent.items()))

    small = [j.path for j in list_clip_jobs(Benchmark(Layout.resolve(data_root=root / "tiny")), "train", "all")]
    for k, read in readers.items():
        before = peak_mb()
        for i in range(args.repeats):
            read(small[i % len(small)], 8)
            if i == args.repeats // 2:
                half = peak_mb()
        print(f"memory, {k}: peak RSS {before:.0f} MB before, {half:.0f} MB after {args.repeats // 2} decodes, "
              f"{peak_mb():.0f} MB after {args.repeats}")


if __name__ == "__main__":
    main()
