"""GPU decoding, measured before anything is built on it: kscli's CPU decoder (rule sampled) per
core against torchcodec's CUDA decoder per GPU, on 448p clips encoded as Ego-Exo4D's are.

    python bench/gpu_decode.py [--root DIR] [--frames 16]

torchcodec's own published benchmark has CUDA decoding slower than CPU decoding at 540p; this
says how many CPU cores one GPU's decoder is worth for our clips and our samples (the same
frames, `seek_mode="exact"`). Without torchcodec or a GPU it prints the CPU figures and says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extract import make_clips  # noqa: E402  (bench/extract.py: generated 448p clips)

from kscli.data.layout import Benchmark  # noqa: E402
from kscli.extract.run import list_clip_jobs  # noqa: E402
from kscli.extract.sampling import SamplingConfig, decode_frames, sample_frame_indices  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/kscli-bench-gpu-decode")
    ap.add_argument("--frames", type=int, default=16)
    args = ap.parse_args()
    layout = make_clips(Path(args.root), takes=3, seconds=(6.0, 16.0))
    jobs = list_clip_jobs(Benchmark(layout), "train", "all")
    sampling = SamplingConfig(num_frames=args.frames)
    import torch

    torch.set_num_threads(1)
    for role in ("ego", "exo"):
        mine = [j for j in jobs if j.role == role]
        t0 = time.perf_counter()
        counts = [decode_frames(j.path, sampling, "sampled")[2] for j in mine]
        cpu = len(mine) / (time.perf_counter() - t0)
        line = f"{role} ({len(mine)} clips): CPU sampled {cpu:.1f} clips/s per core"
        try:
            from torchcodec.decoders import VideoDecoder
        except ImportError:
            print(f"{line}; torchcodec is not installed: no GPU figure")
            continue
        if not torch.cuda.is_available():
            print(f"{line}; no CUDA GPU: no GPU figure")
            continue
        for warm in (True, False):  # the first pass pays for the CUDA context and NVDEC setup
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for job, n in zip(mine, counts):
                idx = sample_frame_indices(n, args.frames).reshape(-1).tolist()
                VideoDecoder(job.path, device="cuda", seek_mode="exact").get_frames_at(indices=idx)
            torch.cuda.synchronize()
            gpu = len(mine) / (time.perf_counter() - t0)
        print(f"{line}; torchcodec CUDA {gpu:.1f} clips/s per GPU = {gpu / cpu:.1f} cores' worth")


if __name__ == "__main__":
    main()
