"""`kscli extract`: every clip of the chosen splits and views through a frozen backbone into a store.

Data flow: clip list (from the annotations) -> this rank's shard (balanced by duration) -> minus
the clips the store already holds -> decord in DataLoader worker processes (one per core, one
thread each; batches cross clips) -> preprocess (in the worker on CPU, on the device on CUDA)
-> backbone (bf16 on CUDA) -> one store part per batch. A clip that is missing or does not
decode is logged to the store's failures file and the run goes on.
"""

from __future__ import annotations

import heapq
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import kscli
from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.extract.backbones import create_backbone
from kscli.extract.preprocess import preprocess_clips, resize_clip_uint8
from kscli.extract.sampling import SamplingConfig, decode_frames
from kscli.extract.store import FeatureStore, StoreRows, StoreWriter, config_mismatch

VIEWS = ("ego", "exo", "all")


@dataclass(frozen=True)
class ClipJob:
    name: str
    role: str
    path: str
    duration: float


@dataclass
class ExtractConfig:
    backbone: str = "tiny-random"
    weights: str | None = None
    splits: tuple[str, ...] = ("train", "val", "test")
    view: str = "all"
    num_frames: int | None = None  # frames per window; None: the backbone's own
    windows: int = 1
    batch_size: int = 8
    workers: int | None = None  # decoding processes; None: one per core (measured best)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    resize_on: str = "auto"  # auto: device on CUDA, worker on CPU
    dtype: str = "float32"  # what the store keeps
    tag: str | None = None  # store folder name; default: backbone (+ -w<windows>)
    shard: int | None = None
    num_shards: int | None = None
    overwrite: bool = False
    limit: int | None = None  # only the first N clips of each split (smoke tests)


@dataclass
class SplitSummary:
    split: str
    store: str
    total: int = 0  # clips of this shard
    extracted: int = 0
    skipped: int = 0  # already in the store
    failed: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


def report_interrupted(summary: SplitSummary, path) -> None:
    """What Ctrl-C leaves behind, on stderr: the finished part files stay and a rerun resumes."""
    print(f"\ninterrupted: {summary.extracted} clips of {summary.split} were saved to {path}; "
          "rerun the same command to resume", file=sys.stderr)


def resolve_shard(shard: int | None, num_shards: int | None) -> tuple[int, int]:
    """Explicit --shard/--num-shards, else torchrun (RANK/WORLD_SIZE), else a SLURM array."""
    env = os.environ
    if shard is None and num_shards is None:
        if "RANK" in env and "WORLD_SIZE" in env:
            shard, num_shards = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env:
            tid = int(env["SLURM_ARRAY_TASK_ID"])
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            count = env.get("SLURM_ARRAY_TASK_COUNT")
            num_shards = int(count) if count else int(env.get("SLURM_ARRAY_TASK_MAX", tid)) - lo + 1
            shard = tid - lo
        else:
            shard, num_shards = 0, 1
    if shard is None or num_shards is None:
        raise KscliError("--shard and --num-shards go together (e.g. --shard 0 --num-shards 4)")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise KscliError(f"--shard {shard} --num-shards {num_shards}: need 0 <= shard < num-shards")
    return shard, num_shards


def assign_shards(jobs: list[ClipJob], num_shards: int) -> list[list[ClipJob]]:
    """Deterministic, duration-balanced split: longest clip first to the least-loaded shard."""
    order = sorted(jobs, key=lambda j: (-j.duration, j.name))
    heap = [(0.0, s) for s in range(num_shards)]
    out: list[list[ClipJob]] = [[] for _ in range(num_shards)]
    for job in order:
        load, s = heapq.heappop(heap)
        out[s].append(job)
        heapq.heappush(heap, (load + max(job.duration, 0.1), s))
    return [sorted(o, key=lambda j: j.name) for o in out]


def view_clips(bench: Benchmark, split: str, view: str) -> list[tuple]:
    """(segment, clip) for every clip of a split in the chosen view(s), each clip once (an exo
    clip may be named by several segments; the first names it)."""
    if view not in VIEWS:
        raise KscliError(f"--view {view!r}: choose from {', '.join(VIEWS)}")
    seen: dict[str, tuple] = {}
    for seg in bench.segments(split):
        for clip in seg.clips:
            if view in ("all", clip.role) and clip.name not in seen:
                seen[clip.name] = (seg, clip)
    return list(seen.values())


def list_clip_jobs(bench: Benchmark, split: str, view: str) -> list[ClipJob]:
    """Every clip of a split in the chosen view(s), each once, as decoding jobs."""
    return [ClipJob(clip.name, clip.role, str(bench.layout.clip_path(clip.name)), seg.duration)
            for seg, clip in view_clips(bench, split, view)]


class ClipDataset(torch.utils.data.Dataset):
    """Decodes one clip per item in a worker; errors travel back as data, never kill the run."""

    def __init__(self, jobs: list[ClipJob], sampling: SamplingConfig, resize_to: int | None):
        self.jobs, self.sampling, self.resize_to = jobs, sampling, resize_to

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        job = self.jobs[i]
        item = {"name": job.name, "role": job.role, "error": None}
        try:
            if not os.path.exists(job.path):
                raise FileNotFoundError("clip file is missing")
            if os.path.getsize(job.path) == 0:
                raise ValueError("clip file is empty (0 bytes)")
            frames, times, n, fps = decode_frames(job.path, self.sampling)
            frames = torch.from_numpy(frames)
            if self.resize_to:
                frames = resize_clip_uint8(frames, self.resize_to)
            item.update(frames=frames, times=times, num_frames=n, fps=fps)
        except Exception as e:  # noqa: BLE001 - any decode failure is recorded, not raised
            msg = str(e).strip().splitlines()
            item["error"] = f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
        return item


def _worker_init(_):
    torch.set_num_threads(1)


def _collate(items):
    return items


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KscliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def _versions() -> dict:
    import decord
    import h5py

    out = {"kscli": kscli.__version__, "torch": torch.__version__, "decord": decord.__version__,
           "h5py": h5py.__version__, "python": sys.version.split()[0]}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


def store_tag(cfg: ExtractConfig) -> str:
    return cfg.tag or (cfg.backbone if cfg.windows == 1 else f"{cfg.backbone}-w{cfg.windows}")


def _prepare_store(path: Path, config: dict, overwrite: bool, num_shards: int) -> FeatureStore:
    store = FeatureStore(path)
    if store.exists and overwrite:
        if num_shards > 1:
            raise KscliError(f"{path}: --overwrite with several shards would let ranks race over "
                             "the old store; move that folder away yourself, then rerun without --overwrite")
        aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(path), str(aside))
        print(f"--overwrite: the old store was moved to {aside} (delete it when you no longer need it)",
              file=sys.stderr)
        return FeatureStore(path)
    if store.exists:
        why = config_mismatch(store.config, config)
        if why:
            raise KscliError(f"{path}: the store was made with other settings ({why}); pass --tag NAME "
                             "for a new store, or --overwrite to redo this one")
    return store


def extract(layout: Layout, cfg: ExtractConfig, progress: bool = True) -> list[SplitSummary]:
    """Run extraction for each split; returns one summary per split. Resumable and shardable."""
    threads = torch.get_num_threads()
    try:
        return _extract(layout, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _extract(layout: Layout, cfg: ExtractConfig, progress: bool) -> list[SplitSummary]:
    shard, num_shards = resolve_shard(cfg.shard, cfg.num_shards)
    bench = Benchmark(layout)
    jobs_by_split = {s: list_clip_jobs(bench, s, cfg.view) for s in cfg.splits}  # validate all first
    device = _device(cfg.device)
    backbone = create_backbone(cfg.backbone, weights=cfg.weights,
                               **({"num_frames": cfg.num_frames} if cfg.num_frames else {}))
    spec = backbone.spec
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    model_dtype = torch.bfloat16 if use_bf16 else torch.float32
    backbone = backbone.to(device=device, dtype=model_dtype).eval()
    sampling = SamplingConfig(num_frames=spec.num_frames, windows=cfg.windows)
    resize_in_worker = cfg.resize_on == "worker" or (cfg.resize_on == "auto" and device.type != "cuda")
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)  # one per core
    if device.type == "cpu" and workers:
        # the decoders hold the cores; a multi-threaded model would spin against them (measured:
        # 0.76 -> 0.93 of the decode-only bound on 2 cores with bench/extract.py)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    store_dtype = np.dtype(cfg.dtype)
    tag = store_tag(cfg)
    summaries = []
    for split in cfg.splits:
        jobs = jobs_by_split[split]
        if cfg.limit is not None:
            jobs = sorted(jobs, key=lambda j: j.name)[: cfg.limit]
        mine = assign_shards(jobs, num_shards)[shard]
        path = layout.features_dir(tag, split)
        config = {"backbone": spec.to_attrs(), "sampling": sampling.to_attrs(), "dtype": cfg.dtype,
                  "split": split, "view": cfg.view, "precision": str(model_dtype).replace("torch.", ""),
                  "resize_on": "worker" if resize_in_worker else "device", "versions": _versions()}
        store = _prepare_store(path, config, cfg.overwrite, num_shards)
        todo = [j for j in mine if j.name not in store]
        summary = SplitSummary(split, str(path), total=len(mine), skipped=len(mine) - len(todo))
        summaries.append(summary)
        if not todo:
            continue
        writer = StoreWriter(path, shard, config)
        loader = torch.utils.data.DataLoader(
            ClipDataset(todo, sampling, spec.size if resize_in_worker else None),
            batch_size=cfg.batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
            worker_init_fn=_worker_init, prefetch_factor=4 if workers else None,
            pin_memory=device.type == "cuda")
        bar = tqdm(total=len(todo), desc=f"extract {split} [{shard + 1}/{num_shards}]", unit="clip",
                   disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for batch in loader:
                good = [it for it in batch if it["error"] is None]
                for it in batch:
                    if it["error"] is not None:
                        writer.record_failure(it["name"], it["error"])
                        summary.failures.append((it["name"], it["error"]))
                        summary.failed += 1
                if good:
                    feats = _embed(backbone, good, spec, device, model_dtype, sampling.windows)
                    writer.write(StoreRows(
                        names=[it["name"] for it in good], roles=[it["role"] for it in good],
                        features=feats.astype(store_dtype, copy=False),
                        frame_times=np.stack([it["times"] for it in good]),
                        num_frames=np.array([it["num_frames"] for it in good]),
                        fps=np.array([it["fps"] for it in good])))
                    summary.extracted += len(good)
                bar.update(len(batch))
                bar.set_postfix(failed=summary.failed, refresh=False)
        except KeyboardInterrupt:
            bar.close()
            summary.seconds = time.perf_counter() - t0
            report_interrupted(summary, path)
            raise
        finally:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        writer.merge_parts()
    return summaries


@torch.inference_mode()
def _embed(backbone, items: list[dict], spec, device, dtype, windows: int) -> np.ndarray:
    """Features for a batch of decoded clips: (B, D), or (B, W, D) with several windows."""
    if all(it["frames"].shape == items[0]["frames"].shape for it in items):
        frames = torch.stack([it["frames"] for it in items])
        pixels = preprocess_clips(frames, spec, device=device, dtype=dtype)
    else:  # native sizes differ (ego square, exo wide): resize each on the device, then stack
        pixels = torch.cat([preprocess_clips(it["frames"][None], spec, device=device, dtype=dtype)
                            for it in items])
    b, t = pixels.shape[:2]
    pixels = pixels.reshape(b * windows, t // windows, *pixels.shape[2:])
    out = backbone(pixels).float().cpu().numpy()
    return out.reshape(b, windows, -1) if windows > 1 else out


def summary_dict(summary: SplitSummary) -> dict:
    d = asdict(summary)
    d["clips_per_s"] = round(summary.clips_per_s, 2)
    d["failures"] = d["failures"][:20]
    return d
