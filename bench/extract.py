"""Extraction throughput: decode-only and model-only bounds vs `kscli extract` end to end vs a naive loop.

    python bench/extract.py                      # 448p generated clips, tiny backbone, CPU
    python bench/extract.py --random-model vjepa2-vitl --device cuda   # ViT-L-sized random model on a GPU

All are measured in this one process on the same clips with the same worker count, and printed
as clips/s and as ratios (these machines are noisy: compare ratios, not absolutes):

- decoding on one core, per view (ego 448x448, exo 796x448): ms per clip and decoded frames per
  second with `--decode sampled` (only the frames the sample needs and those they depend on)
  against `--decode all` (every frame), alternated in this process on the same clips;
- decode only: the DataLoader workers alone (PyAV + the worker-side resize on CPU), with
  `sampled` and with `all`;
- model only: the backbone on random pixels already on the device, with its FLOPs counted
  (torch's FlopCounterMode) and the achieved rate as a share of the device's peak
  (`--peak-tflops`, or the dense bf16 figure of known GPUs);
- end to end: `kscli extract` (workers, transfer, preprocessing, model, the writer thread),
  reported against min(decode, model): the share of the slower stage it reaches;
- a naive loop: decode one clip, run it, write it.

`--pair` measures instead what one decode for two backbones saves: `extract --backbone A,B`
against `--backbone A` then `--backbone B` (two decoding passes), alternated twice in this
process on the same clips, best of each, with the two ways' stores compared feature by feature.
A is tiny-random and B a random DINOv2 saved like a pretrained one (`--pair-model tiny`, the
default: both far cheaper than decoding, as on a GPU node where the GPU waits on the decoders;
`small`: about as costly as decoding on a CPU, where models and decoders share the cores).

The clips are encoded as Ego-Exo4D's are (x264 defaults: B-frames, long GOP); `--encoding fast`
makes the ultrafast, keyframe-every-second kind instead (about half as costly to decode, and
nothing for `sampled` to skip). Peak memory is measured in child runs over N and 2N clips: it
should stay flat in N.
`--out FILE` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kscli.data.layout import Benchmark, Layout
from kscli.data.sample import write_sample_benchmark
from kscli.device import resolve_device
from kscli.extract.backbones import create_backbone
from kscli.extract.preprocess import preprocess_clips
from kscli.extract.run import ClipDataset, ExtractConfig, FrameRequest, collate_items, decoder_worker_init, extract, list_clip_jobs
from kscli.extract.sampling import SamplingConfig, decode_frames
from kscli.extract.store import StoreRows, StoreWriter


def make_clips(root: Path, takes: int, seconds: tuple[float, float], encoding: str = "default") -> Layout:
    if not (root / "annotations").exists():
        write_sample_benchmark(root, seed=1, takes_per_split={"train": takes, "val": 1, "test": 1},
                               segments_per_take=(4, 4), clip_seconds=seconds, short_clip_prob=0.0,
                               workers=os.cpu_count() or 1, encoding=encoding)
    return Layout.resolve(data_root=root, work_dir=root / "work")


PAIR_MODELS = {"tiny": (48, 2), "small": (192, 4)}  # width, layers of the random DINOv2 of --pair


def small_random_dinov2(folder: Path, size: str = "tiny") -> str:
    """A small randomly initialised DINOv2 (PAIR_MODELS), saved so it loads like a pretrained one."""
    from transformers import Dinov2Config, Dinov2Model

    width, layers = PAIR_MODELS[size]
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=3,
                             intermediate_size=4 * width, image_size=224, patch_size=14)).save_pretrained(folder)
    return str(folder)


def pair_vs_passes(layout: Layout, cfg: dict, second: str, weights: str, rounds: int = 2) -> dict:
    """Seconds for `--backbone A,B` (one decode) and for A then B (two passes), alternated, best of
    `rounds`; and whether every store is the same feature for feature."""
    from kscli.extract.store import FeatureStore

    first = cfg["backbone"]
    best = {"one_pass": float("inf"), "two_passes": float("inf")}
    works = {}
    for k in range(rounds):
        for way in best:
            work = Path(tempfile.mkdtemp(prefix=f"kscli-bench-{way}-"))
            here = Layout.resolve(data_root=layout.data_root, work_dir=work)
            runs = ([dict(backbone=f"{first},{second}", weights=f"{second}={weights}")] if way == "one_pass" else
                    [dict(backbone=first, weights=None), dict(backbone=second, weights=weights)])
            t0 = time.perf_counter()
            for run in runs:
                extract(here, ExtractConfig(**{**cfg, **run}), progress=False)
            best[way] = min(best[way], time.perf_counter() - t0)
            works.setdefault(way, work)
    same = True
    for name in (first, second):
        stores = [FeatureStore(works[way] / "features" / name / "train") for way in ("one_pass", "two_passes")]
        names = sorted(stores[1].names)
        same &= sorted(stores[0].names) == names and all(
            np.array_equal(stores[0].get(names, f), stores[1].get(names, f)) for f in ("features", "frame_times"))
    return {"one_pass_s": best["one_pass"], "two_passes_s": best["two_passes"],
            "speedup": best["two_passes"] / best["one_pass"], "identical": bool(same)}


def random_hf_model(family: str, folder: Path) -> str:
    """A randomly initialised model of the real size, saved so it loads like a pretrained one."""
    from transformers import VideoMAEConfig, VideoMAEModel, VJEPA2Config, VJEPA2Model

    if family == "vjepa2-vitl":
        cfg = VJEPA2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           crop_size=256, frames_per_clip=64)
        VJEPA2Model(cfg).save_pretrained(folder)
    elif family == "videomae-base":
        VideoMAEModel(VideoMAEConfig()).save_pretrained(folder)
    else:
        raise SystemExit(f"--random-model {family}: choose vjepa2-vitl or videomae-base")
    return str(folder)


def decode_only(jobs, sampling, resize_for, workers, batch_size, rule: str = "sampled") -> float:
    loader = torch.utils.data.DataLoader(ClipDataset(jobs, [FrameRequest(sampling, resize_for)], rule), batch_size=batch_size,
                                         num_workers=workers, collate_fn=collate_items, worker_init_fn=decoder_worker_init,
                                         prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)
    return n / (time.perf_counter() - t0)


def decode_per_core(jobs, sampling, rounds: int = 2) -> dict:
    """Per view, on this one core: ms per clip and decoded frames/s for each rule, the rules
    alternated clip by clip (the same clips, the same noise), best of `rounds`."""
    out = {}
    torch.set_num_threads(1)
    for role in ("ego", "exo"):
        mine = [j for j in jobs if j.role == role]
        if not mine:
            continue
        best = {r: float("inf") for r in ("sampled", "all")}
        frames = {r: 0 for r in best}
        for k in range(rounds):
            spent = {r: 0.0 for r in best}
            for job in mine:
                for rule in best:
                    t0 = time.perf_counter()
                    decoded = decode_frames(job.path, sampling, rule)[4]
                    spent[rule] += time.perf_counter() - t0
                    frames[rule] += decoded if k == 0 else 0
            best = {r: min(best[r], spent[r]) for r in best}
        out[role] = {"clips": len(mine), **{f"{r}_ms_per_clip": 1000 * best[r] / len(mine) for r in best},
                     **{f"{r}_frames_per_clip": frames[r] / len(mine) for r in best},
                     **{f"{r}_decoded_frames_per_s": frames[r] / best[r] for r in best},
                     "speedup": best["all"] / best["sampled"]}
    return out


def naive_loop(jobs, backbone, sampling, device, dtype, store_dir: Path) -> float:
    """Decode one clip, run it, write it: no workers, no batching across clips."""
    with StoreWriter(store_dir, 0, {"backbone": backbone.spec.to_attrs()}) as writer:
        t0 = time.perf_counter()
        for job in jobs:
            frames, times, n, fps, _ = decode_frames(job.path, sampling)
            pixels = preprocess_clips(torch.from_numpy(frames)[None], backbone.spec, device=device, dtype=dtype)
            feat = backbone(pixels).float().cpu().numpy()
            writer.write(StoreRows([job.name], [job.role], feat, times[None], np.array([n]), np.array([fps])))
        return len(jobs) / (time.perf_counter() - t0)


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name substring.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def model_only(backbone, spec, batch_size, device, dtype, reps=5) -> tuple[float, float]:
    """(clips/s, TFLOP/s) of the backbone alone on a batch of pixels already on the device."""
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.randn(batch_size, spec.num_frames, 3, spec.size, spec.size, device=device, dtype=dtype)
    with FlopCounterMode(display=False) as counter:
        backbone(pixels)
    flops = counter.get_total_flops()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    backbone(pixels)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        backbone(pixels)
    sync()
    seconds = time.perf_counter() - t0
    return reps * batch_size / seconds, reps * flops / seconds / 1e12


def peak_rss_mb_child(argv: list[str]) -> float:
    out = subprocess.run([sys.executable, __file__, *argv, "--memory-probe"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--takes", type=int, default=8, help="train takes (4 segments, ego + 2-4 exo each)")
    ap.add_argument("--seconds", type=float, nargs=2, default=(2.0, 6.0))
    ap.add_argument("--encoding", default="default", choices=("default", "fast"),
                    help="how the generated clips are encoded (default: as Ego-Exo4D's)")
    ap.add_argument("--decode", default="sampled", choices=("sampled", "all"), help="the rule end to end")
    ap.add_argument("--num-frames", type=int, default=None, help="frames sampled per clip [default: the backbone's]")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backbone", default="tiny-random")
    ap.add_argument("--random-model", default=None, help="vjepa2-vitl or videomae-base at full size, random weights")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--root", default=None, help="where to generate clips [default: a temp folder]")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak [default: known GPUs]")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure peak memory over N and 2N clips (two more runs)")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--pair", action="store_true", help="measure one pass with two backbones against two passes")
    ap.add_argument("--pair-model", default="tiny", choices=tuple(PAIR_MODELS),
                    help="the second backbone of --pair: a random DINOv2, tiny (48-d, 2 layers: far cheaper than "
                         "decoding) or small (192-d, 4 layers: about as costly as decoding on a CPU)")
    ap.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    root = Path(args.root or tempfile.mkdtemp(prefix="kscli-bench-"))
    layout = make_clips(root / "download", args.takes, tuple(args.seconds), args.encoding)
    weights, backbone_name = None, args.backbone
    if args.random_model:
        backbone_name = args.random_model
        weights = random_hf_model(args.random_model, root / "model")
    cfg = dict(backbone=backbone_name, weights=weights, splits=("train",), view="all", num_frames=args.num_frames,
               batch_size=args.batch_size, workers=args.workers, device=args.device, decode=args.decode)

    if args.memory_probe:  # child: one end-to-end run, print peak RSS of this process + its workers
        layout = Layout.resolve(data_root=layout.data_root, work_dir=Path(tempfile.mkdtemp()))
        extract(layout, ExtractConfig(**cfg, limit=args.limit), progress=False)
        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print((me + kids) / 1024)
        return

    if args.pair:
        second = small_random_dinov2(root / f"pair-model-{args.pair_model}", args.pair_model)
        figures = pair_vs_passes(layout, {**cfg, "limit": args.limit}, "dinov2-small", second)
        print(f"{cfg['backbone']} + dinov2-small ({args.pair_model}, random), {args.workers} workers, {args.decode}: one pass "
              f"{figures['one_pass_s']:.1f} s vs two passes {figures['two_passes_s']:.1f} s: one pass is "
              f"{figures['speedup']:.2f}x faster; stores identical feature for feature: {figures['identical']}")
        if args.out:
            Path(args.out).write_text(json.dumps(figures, indent=1))
        return

    bench = Benchmark(layout)
    jobs = list_clip_jobs(bench, "train", "all")
    if args.limit:
        jobs = jobs[: args.limit]
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backbone = create_backbone(backbone_name, weights=weights,
                               **({"num_frames": args.num_frames} if args.num_frames else {})).to(device=device, dtype=dtype)
    spec = backbone.spec
    sampling = SamplingConfig(num_frames=args.num_frames or spec.num_frames)
    seconds = sum(j.duration for j in jobs)
    print(f"{len(jobs)} clips ({seconds:.0f} s of video, {len(bench.segments('train'))} segments), "
          f"backbone {spec.name} ({spec.num_frames}x{spec.size} -> {spec.feature_dim}) on {device}, "
          f"{args.workers} decode workers, batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    resize_for = spec if device.type != "cuda" else None
    threads = torch.get_num_threads()
    per_core = decode_per_core(jobs, sampling)
    torch.set_num_threads(threads)
    for role, f in per_core.items():
        print(f"one core, {role} ({f['clips']} clips): sampled {f['sampled_ms_per_clip']:6.1f} ms/clip "
              f"({f['sampled_frames_per_clip']:.0f} frames decoded, {f['sampled_decoded_frames_per_s']:.0f}/s) vs all "
              f"{f['all_ms_per_clip']:6.1f} ms/clip ({f['all_frames_per_clip']:.0f} frames, "
              f"{f['all_decoded_frames_per_s']:.0f}/s): sampled is {f['speedup']:.2f}x")
    rates = {}
    for rule in ("all", "sampled", "all", "sampled"):  # alternated: the machine's noise hits both
        rates[rule] = max(rates.get(rule, 0.0), decode_only(jobs, sampling, resize_for, args.workers,
                                                            args.batch_size, rule))
    print(f"decode only, {args.workers} workers: sampled {rates['sampled']:.1f} clips/s vs all {rates['all']:.1f} "
          f"clips/s: {rates['sampled'] / rates['all']:.2f}x")
    decode_rate = rates[args.decode]
    work = Path(tempfile.mkdtemp(prefix="kscli-bench-work-"))
    e2e_layout = Layout.resolve(data_root=layout.data_root, work_dir=work)
    [summary] = extract(e2e_layout, ExtractConfig(**cfg, limit=args.limit), progress=False)
    e2e_rate = summary.clips_per_s
    naive_rate = naive_loop(jobs, backbone, sampling, device, dtype, work / "naive")

    model_rate, tflops = model_only(backbone, spec, args.batch_size, device, dtype)
    peak = peak_tflops(device, args.peak_tflops)
    bound = min(decode_rate, model_rate)
    figures = {"clips": len(jobs), "backbone": spec.name, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "precision": str(dtype).replace("torch.", ""), "workers": args.workers, "batch_size": args.batch_size,
               "decode_clips_per_s": decode_rate, "model_clips_per_s": model_rate, "model_tflops": tflops,
               "model_share_of_peak": tflops / peak if peak else None, "end_to_end_clips_per_s": e2e_rate,
               "end_to_end_over_bound": e2e_rate / bound, "end_to_end_over_decode": e2e_rate / decode_rate,
               "naive_clips_per_s": naive_rate, "bound": "decode" if decode_rate < model_rate else "model",
               "encoding": args.encoding, "decode_rule": args.decode, "decode_per_core": per_core,
               "decode_only_sampled_clips_per_s": rates["sampled"], "decode_only_all_clips_per_s": rates["all"]}
    share = f", {100 * tflops / peak:.0f}% of the {peak:.0f} TFLOP/s peak" if peak else ""
    print(f"decode only (bound, {args.decode}) {decode_rate:8.1f} clips/s")
    print(f"model only (no decode)   {model_rate:8.1f} clips/s  ({tflops:.1f} TFLOP/s{share})")
    print(f"kscli extract end to end {e2e_rate:8.1f} clips/s  = {e2e_rate / bound:.2f} x min(decode, model), "
          f"{e2e_rate / decode_rate:.2f} x decode")
    print(f"naive loop               {naive_rate:8.1f} clips/s  -> kscli is {e2e_rate / naive_rate:.2f} x naive")
    print(f"bound: {figures['bound']}")
    if args.memory:
        half = max(1, len(jobs) // 2)
        argv = [a for a in sys.argv[1:] if a != "--memory-probe"] + ["--root", str(root)]
        m1 = peak_rss_mb_child(argv + ["--limit", str(half)])
        m2 = peak_rss_mb_child(argv + ["--limit", str(2 * half)])
        figures.update(peak_rss_mb_half=m1, peak_rss_mb_full=m2)
        print(f"peak memory (main + workers) {half} clips: {m1:.0f} MB, {2 * half} clips: {m2:.0f} MB "
              f"(ratio {m2 / m1:.2f}, flat is ~1.0)")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
