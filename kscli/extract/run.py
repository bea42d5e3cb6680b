"""`kscli extract`: every clip of the chosen splits and views through one or several frozen
backbones, one store per backbone.

Data flow: clip list (from the annotations) -> this rank's shard (balanced by duration) -> minus
the clips every store already holds -> PyAV in DataLoader worker processes (one per core, one
thread each; batches cross clips), each clip decoded once for all backbones (the union of the
frames they sample) -> preprocess, per backbone (in the worker on CPU, on the device on CUDA)
-> each backbone (bf16 on CUDA) on the clips its store lacks -> one part per batch in each
store. A clip that is missing or does not decode is logged to the failures file of each store
that needed it and the run goes on.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import kscli
from kscli.data.layout import Benchmark, Layout, check_name, parse_splits
from kscli.data.segments import SPLITS
from kscli.data.video import DECODE_RULES, DECODER
from kscli.device import resolve_device
from kscli.errors import KscliError
from kscli.extract.backbone_base import RANDOM_FEATURES_WARNING, BackboneSpec, random_weights, registration
from kscli.extract.backbones import create_backbone
from kscli.extract.preprocess import preprocess_clips, resize_clip_uint8
from kscli.extract.processors import CROPS
from kscli.extract.sampling import SamplingConfig, decode_samples
from kscli.extract.shard import ShardPlan, assign_shards, cores_share, default_workers, resolve_shard
from kscli.extract.store import (FeatureStore, PartWriterThread, StoreRows, StoreWriter, open_for_writing,
                                 overwrite_stores)

VIEWS = ("ego", "exo", "all")


@dataclass(frozen=True)
class ClipJob:
    name: str
    role: str
    path: str
    duration: float


PRECISIONS = ("auto", "fp32", "bf16")
RESIZE_PLACES = ("auto", "worker", "device")
STORE_DTYPES = ("float32", "float16")


@dataclass
class ExtractConfig:
    """What `kscli extract` does; every value is checked here, so the library and the CLI refuse
    the same things in the same words. `backbone` has no default: a store is made by a model
    someone chose (`tiny-random`, a random test network, only when named). Several backbones
    joined with commas (`a,b`) share one decode of each clip and each write their own store,
    the one `--backbone a` alone would write; every other setting applies to each of them."""

    backbone: str
    weights: str | None = None  # one backbone: a hub id or folder; several: NAME=DIR,NAME=DIR (others: their default)
    splits: tuple[str, ...] = SPLITS
    view: str = "all"
    num_frames: int | None = None  # frames per window; None: the backbone's own
    windows: int = 1
    batch_size: int = 8
    workers: int | None = None  # decoding processes; None: this rank's share of the usable cores
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    resize_on: str = "auto"  # auto: device on CUDA, worker on CPU
    crop: str = "model"  # model: as the model's own processor; full: the centre square of the short side
    dtype: str = "float32"  # what the store keeps
    tag: str | None = None  # store folder name; default: backbone (+ -w<windows>)
    shard: int | None = None
    num_shards: int | None = None
    overwrite: bool = False
    limit: int | None = None  # only the first N clips of each split (smoke tests)
    decode: str = "sampled"  # sampled: only the frames the sample needs; all: every frame (same frames)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """One line for the first bad value."""
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise KscliError("--backbone: name the backbone to extract with (`kscli backbones` lists them; "
                             "tiny-random is a random network for tests)")
        names = self.backbone_names()
        if not all(names):
            raise KscliError(f"--backbone {self.backbone!r}: a name is empty; give NAME, or several as NAME,NAME")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise KscliError(f"--backbone {self.backbone!r}: {twice[0]} is named twice")
        self.weights_for()
        self.splits = tuple(parse_splits(self.splits))
        for name, value, allowed in (("--view", self.view, VIEWS), ("--precision", self.precision, PRECISIONS),
                                     ("--decode", self.decode, DECODE_RULES),
                                     ("--resize-on", self.resize_on, RESIZE_PLACES), ("--crop", self.crop, CROPS),
                                     ("--dtype", self.dtype, STORE_DTYPES)):
            if value not in allowed:
                raise KscliError(f"{name} {value!r}: choose from {', '.join(allowed)}")
        for name, value, low in (("--num-frames", self.num_frames, 1), ("--windows", self.windows, 1),
                                 ("--batch-size", self.batch_size, 1), ("--workers", self.workers, 0),
                                 ("--limit", self.limit, 1), ("--shard", self.shard, 0),
                                 ("--num-shards", self.num_shards, 1)):
            optional = name not in ("--windows", "--batch-size")
            if value is None and optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise KscliError(f"{name} {value!r}: must be a whole number >= {low}")
        if self.tag is not None:
            if len(names) > 1:
                raise KscliError("--tag names one store; with several backbones each store is named by its backbone "
                                 "(extract with one backbone at a time to name its store)")
            check_name(self.tag, "--tag")

    def backbone_names(self) -> tuple[str, ...]:
        """The backbones to extract with, in the order given."""
        return tuple(n.strip() for n in self.backbone.split(","))

    def weights_for(self) -> dict[str, str | None]:
        """backbone -> its --weights (None: the registered default). One backbone takes a plain
        value (or NAME=VALUE); several take NAME=DIR for each one that needs weights."""
        names = self.backbone_names()
        out: dict[str, str | None] = dict.fromkeys(names)
        if self.weights is None:
            return out
        given = str(self.weights)
        if len(names) == 1:
            prefix = f"{names[0]}="
            out[names[0]] = given[len(prefix):] if given.startswith(prefix) else given
            return out
        for item in given.split(","):
            name, eq, path = (x.strip() for x in item.partition("="))
            if not eq or name not in out or not path:
                raise KscliError(f"--weights {given!r}: with several backbones give NAME=DIR for each one that needs "
                                 f"weights, NAME one of {', '.join(names)} (e.g. --weights {names[-1]}=/models/{names[-1]})")
            if out[name] is not None:
                raise KscliError(f"--weights {given!r}: {name} is given twice")
            out[name] = path
        return out


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
    plan: "RunPlan | None" = None  # how this process ran (shard, device, workers)
    notes: list = field(default_factory=list)  # what the run changed on the way, in words
    clips_root: str = ""  # where the clips were read from
    random_features: bool = False  # made by a randomly initialised test backbone

    @property
    def clips_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


def format_summaries(summaries: list[SplitSummary]) -> str:
    """The lines `kscli extract` prints at the end: what this process chose, then per split
    what it did. Under several ranks every line starts with the rank, so the ranks' outputs
    can be told apart when a launcher interleaves them."""
    plan = next((s.plan for s in summaries if s.plan is not None), None)
    tag = f"[shard {plan.shard.shard + 1}/{plan.shard.num_shards}] " if plan and plan.shard.num_shards > 1 else ""
    lines = [f"{tag}{plan.text()}"] if plan else []
    failed = len(failed_clips(summaries))
    for s in summaries:
        lines.append(f"{tag}{s.split}: extracted {s.extracted}, skipped {s.skipped} (already done), failed "
                     f"{s.failed} of {s.total} clips in {s.seconds:.1f}s ({s.clips_per_s:.1f} clips/s) -> {s.store}")
        lines += [f"{tag}  note: {note}" for note in s.notes]
        lines += [f"{tag}  failed: {name}: {err}" for name, err in s.failures[:5]]
        if s.failed > 5:
            lines.append(f"{tag}  ... {s.failed - 5} more in {s.store}/failures-r*.jsonl")
    if failed:
        lines.append(f"{tag}{failed} clip(s) failed (recorded in each store that needed them); fix or re-download them and "
                     "rerun the same command to extract just those")
    if any(s.random_features for s in summaries):
        lines.append(f"{tag}WARNING: {RANDOM_FEATURES_WARNING}")
    return "\n".join(lines)


def failed_clips(summaries: list[SplitSummary]) -> set[tuple[str, str]]:
    """(split, clip) of every clip that failed in this run, once however many stores needed it."""
    return {(s.split, name) for s in summaries for name, _ in s.failures}


def extraction_problem(summaries: list[SplitSummary], strict: bool = False) -> str | None:
    """Why this run should exit non-zero, in one line, or None: every clip it tried failed and
    none of its clips is in the store from before (a wrong clip source, most likely: named), or,
    with `strict`, any clip failed. A rerun that retries only the known-broken clips of an
    otherwise finished store is not an error without `strict`."""
    stores: dict[str, list[SplitSummary]] = {}
    for s in summaries:  # a store (all its splits) is judged on its own: another's clips do not excuse it
        stores.setdefault(os.path.dirname(s.store), []).append(s)
    for store, mine in stores.items():
        failed = [(name, err) for s in mine for name, err in s.failures]
        n_failed = len(failed_clips(mine))
        if not n_failed or sum(s.extracted + s.skipped for s in mine):
            continue
        which = f" for {store}" if len(stores) > 1 else ""
        if all("clip file is missing" in err for _, err in failed):
            return (f"none of the {n_failed} clip(s) of this run is under {mine[0].clips_root} (e.g. {failed[0][0]})"
                    f"{which}: is --parts (or --clips-root / --data-root) right? `kscli check-data` lists what is there")
        name, err = failed[0]
        return (f"no clip of this run could be read{which}: all {n_failed} failed (e.g. {name}: {err}); "
                f"see failures-r*.jsonl next to the store, or run `kscli check-data`")
    n_failed = len(failed_clips(summaries))
    if strict and n_failed:
        return f"--strict: {n_failed} clip(s) failed in this run (listed above and in failures-r*.jsonl)"
    return None


def report_interrupted(summary: SplitSummary, path) -> None:
    """What Ctrl-C leaves behind, on stderr: the finished part files stay and a rerun resumes."""
    print(f"\ninterrupted: {summary.extracted} clips of {summary.split} were saved to {path}; "
          "rerun the same command to resume", file=sys.stderr)


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


@dataclass(frozen=True)
class FrameRequest:
    """What one backbone needs of every clip: its sampling, and the spec to resize the frames for
    in the worker (None: the device resizes them)."""

    sampling: SamplingConfig
    resize_for: BackboneSpec | None = None


class ClipDataset(torch.utils.data.Dataset):
    """Decodes one clip per item in a worker, once for every request that needs it; errors travel
    back as data, never kill the run.

    An item: name, role, error, `needs` (the requests it was decoded for), `views` {request:
    {"frames": uint8 tensor, "times": seconds}}, the clip's frame count, fps, frames decoded and
    decoding seconds."""

    def __init__(self, jobs: list[ClipJob], requests: list[FrameRequest], rule: str = "sampled",
                 needs: list[tuple[int, ...]] | None = None):
        """`rule`: the decoding rule (kscli.data.video); `needs[i]`: the requests job i is decoded
        for (default: all)."""
        self.jobs, self.requests, self.rule = jobs, requests, rule
        self.needs = needs if needs is not None else [tuple(range(len(requests)))] * len(jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        job, needs = self.jobs[i], self.needs[i]
        item = {"name": job.name, "role": job.role, "needs": needs, "error": None, "errors": {}}
        t0 = time.perf_counter()
        try:
            if not os.path.exists(job.path):
                raise FileNotFoundError("clip file is missing")
            if os.path.getsize(job.path) == 0:
                raise ValueError("clip file is empty (0 bytes)")
            parts = self._decode(job.path, needs, item["errors"])
        except Exception as e:  # noqa: BLE001 - any decode failure is recorded, not raised
            item["error"] = _error_line(e)
            return item
        if not parts:  # the union failed, and so did each backbone's frames alone
            item["error"] = item["errors"][needs[0]]
            return item
        views = {}
        for ks, clip in parts:
            for k, frames, times in zip(ks, clip.frames, clip.times):
                frames = torch.from_numpy(frames)
                if self.requests[k].resize_for is not None:
                    frames = resize_clip_uint8(frames, self.requests[k].resize_for)
                views[k] = {"frames": frames, "times": times}
        clip = parts[0][1]
        item.update(views=views, num_frames=clip.frame_count, fps=clip.fps,
                    decoded=sum(c.decoded for _, c in parts), decode_s=time.perf_counter() - t0)
        return item

    def _decode(self, path: str, needs: tuple[int, ...], errors: dict) -> list:
        """[(requests, Samples)]: the union of the requests' frames in one decode; if that fails
        (a damaged packet only some backbone's frames reach), each request's frames alone, as a
        run with that backbone alone reads them, recording in `errors` the requests that fail."""
        try:
            return [(needs, decode_samples(path, [self.requests[k].sampling for k in needs], self.rule))]
        except Exception:  # noqa: BLE001 - one backbone's frames may decode where the union does not
            if len(needs) == 1:
                raise
        parts = []
        for k in needs:
            try:
                parts.append(((k,), decode_samples(path, [self.requests[k].sampling], self.rule)))
            except Exception as e:  # noqa: BLE001 - recorded for that backbone's store
                errors[k] = _error_line(e)
        return parts


def _error_line(e: Exception) -> str:
    """A decoding failure as the one line a failures file records."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def decoder_worker_init(_):
    torch.set_num_threads(1)


def collate_items(items):
    return items


def software_versions() -> dict:
    import av
    import h5py

    out = {"kscli": kscli.__version__, "torch": torch.__version__, "av": av.__version__,
           "ffmpeg": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
           "h5py": h5py.__version__, "python": sys.version.split()[0]}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out



def store_tag(cfg: ExtractConfig, backbone: str | None = None) -> str:
    """The store a backbone of this run writes (default: the first): --tag, else its name (+ -w<windows>)."""
    name = backbone or cfg.backbone_names()[0]
    return cfg.tag or (name if cfg.windows == 1 else f"{name}-w{cfg.windows}")


@dataclass(frozen=True)
class RunPlan:
    """What this process chose before decoding anything; printed with the run's summary."""

    shard: ShardPlan
    device: str
    precision: str  # "bfloat16" or "float32"
    resize_on: str  # "worker" or "device"
    workers: int
    workers_why: str
    model_threads: int  # torch threads of the main process on CPU (at the start; see CpuThreads)
    cores: int = 1  # this rank's share of the usable cores

    def text(self) -> str:
        threads = f", {self.model_threads} model thread(s)" if self.device == "cpu" else ""
        return (f"{self.shard.source}: {self.device} {self.precision}, {self.workers} decoder worker(s) "
                f"({self.workers_why}), resize on {self.resize_on}{threads}")


def plan_run(cfg: ExtractConfig) -> RunPlan:
    """Shard, device, precision, decoder workers and model threads for this process."""
    shard = resolve_shard(cfg.shard, cfg.num_shards)
    device = resolve_device(cfg.device, shard.local_rank)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    resize_on = cfg.resize_on if cfg.resize_on != "auto" else ("device" if device.type == "cuda" else "worker")
    if cfg.workers is not None:
        workers, why = cfg.workers, "--workers"
    else:
        workers, why = default_workers(shard)
    # On CPU the decoders hold the cores; a multi-threaded model would spin against them
    # (measured: 0.76 -> 0.93 of the decode-only bound on 2 cores with bench/extract.py).
    share = cores_share(shard)
    threads = max(1, share - workers)
    return RunPlan(shard, str(device), "bfloat16" if bf16 else "float32", resize_on, workers, why, threads, share)


class CpuThreads:
    """Who gets the cores on the CPU. The model starts on the cores the decoders leave (one on a
    machine where workers = cores): right when decoding is the slower stage (0.76 -> 0.93 of the
    decode-only bound with a tiny model). A real backbone on the CPU is the slower stage by far,
    and there one thread halves it (0.51 of the model-only bound, VideoMAE-B on 2 cores). So after
    a few batches the two are compared, with the decoders' own clock (each item carries its
    decode seconds): if the model takes over 1.5x the decoders' time per batch, it gets all the
    cores of this rank (the decoders then mostly wait on their full prefetch queues)."""

    WARMUP, MEASURE, MARGIN = 1, 2, 1.5

    def __init__(self, plan: RunPlan, device: torch.device):
        self.plan, self.model_s, self.decode_s, self.seen = plan, 0.0, 0.0, 0
        self.deciding = device.type == "cpu" and plan.model_threads < plan.cores
        self.note: str | None = None

    def observe(self, batch: list[dict], model_s: float) -> None:
        if not self.deciding:
            return
        self.seen += 1
        if self.seen <= self.WARMUP:  # the first batch also pays for starting the workers
            return
        self.model_s += model_s
        self.decode_s += sum(it.get("decode_s", 0.0) for it in batch) / max(1, self.plan.workers)
        if self.seen < self.WARMUP + self.MEASURE:
            return
        self.deciding = False
        if self.model_s > self.MARGIN * self.decode_s:
            torch.set_num_threads(self.plan.cores)
            self.note = (f"the model is the slower stage ({self.model_s:.2f}s vs {self.decode_s:.2f}s of decoding "
                         f"over {self.MEASURE} batches): it now runs on {self.plan.cores} thread(s)")


class _Embedder:
    """The frozen backbone on its device, and how a batch of decoded clips becomes store rows."""

    def __init__(self, cfg: ExtractConfig, plan: RunPlan, name: str, weights: str | None):
        self.name = name
        self.device = torch.device(plan.device)
        self.use_device()
        self.dtype = torch.bfloat16 if plan.precision == "bfloat16" else torch.float32
        backbone = create_backbone(name, weights=weights, crop=cfg.crop,
                                   **({"num_frames": cfg.num_frames} if cfg.num_frames is not None else {}))
        self.backbone = backbone.to(device=self.device, dtype=self.dtype).eval()
        self.spec = backbone.spec
        self.sampling = SamplingConfig(num_frames=self.spec.num_frames, windows=cfg.windows)
        self.resize_for = self.spec if plan.resize_on == "worker" else None
        self.request = FrameRequest(self.sampling, self.resize_for)
        self.store_dtype = np.dtype(cfg.dtype)
        self.rule = cfg.decode
        self.config = {"backbone": self.spec.to_attrs(), "sampling": self.sampling.to_attrs(),
                       "dtype": cfg.dtype, "view": cfg.view, "precision": plan.precision,
                       "resize_on": plan.resize_on, "decoder": DECODER, "decode": cfg.decode,
                       "versions": software_versions()}

    @torch.inference_mode()
    def features(self, items: list[dict]) -> torch.Tensor:
        """(B, D) or (B, W, D) float32 on the device; the copies in are asynchronous from
        pinned memory on CUDA, and preprocessing runs on the device in one pass per frame size."""
        clips = [it["frames"].to(self.device, non_blocking=True) for it in items]
        by_shape: dict[tuple, list[int]] = {}
        for i, c in enumerate(clips):
            by_shape.setdefault(tuple(c.shape), []).append(i)
        if len(by_shape) == 1:
            pixels = preprocess_clips(torch.stack(clips), self.spec, dtype=self.dtype, geometry=self.resize_for is None)
        else:  # ego (square) and exo (wide) frames in one batch when resizing on the device
            pixels = torch.empty((len(clips), clips[0].shape[0], 3, self.spec.size, self.spec.size),
                                 dtype=self.dtype, device=self.device)
            for idx in by_shape.values():
                pixels[idx] = preprocess_clips(torch.stack([clips[i] for i in idx]), self.spec, dtype=self.dtype,
                                               geometry=self.resize_for is None)
        b, t = pixels.shape[:2]
        w = self.sampling.windows
        out = self.backbone(pixels.reshape(b * w, t // w, *pixels.shape[2:])).float()
        return out.reshape(b, w, -1) if w > 1 else out

    def rows_later(self, items: list[dict]):
        """Run the model on a batch now; return a callable that gives its StoreRows once the
        features are back on the host (the writer thread calls it, so the GPU goes on). It keeps
        only the batch's metadata, not its frames."""
        feats = self.features(items)
        if self.device.type == "cuda":
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            done = torch.cuda.Event(blocking=True)  # the waiting thread sleeps instead of spinning a core
            done.record()
        else:
            host, done = feats, None
        names, roles = [it["name"] for it in items], [it["role"] for it in items]
        times = np.stack([it["times"] for it in items])
        counts = np.array([it["num_frames"] for it in items])
        fps = np.array([it["fps"] for it in items])

        def make_rows() -> StoreRows:
            if done is not None:
                done.synchronize()
            return StoreRows(names=names, roles=roles, features=host.numpy().astype(self.store_dtype, copy=False),
                             frame_times=times, num_frames=counts, fps=fps)
        return make_rows

    def use_device(self) -> None:
        """Make this rank's GPU the calling thread's current device (the main thread and the
        writer thread): pinning and pinned buffers use the current device, which is per thread,
        and without this every rank of a node would also open a CUDA context on GPU 0."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)


def extract(layout: Layout, cfg: ExtractConfig, progress: bool = True) -> list[SplitSummary]:
    """Run extraction for each split and backbone; returns one summary per split and store, in
    that order. Resumable and shardable. Every backbone is loaded before any clip is decoded."""
    threads = torch.get_num_threads()
    try:
        plan = plan_run(cfg)
        bench = Benchmark(layout)
        jobs_by_split = {s: list_clip_jobs(bench, s, cfg.view) for s in cfg.splits}  # validate all first
        if not layout.clips_root.is_dir():
            raise KscliError(f"{layout.clips_root}: the clips folder does not exist; is --parts (now "
                             f"{layout.part!r}) or --clips-root / --data-root right? The download puts clips "
                             "in <data-root>/keystep_benchmark/<part>")
        for name in cfg.backbone_names():  # every name known before any model loads
            registration(name)
        if progress:
            print(plan.text(), file=sys.stderr)
        embedders = [_Embedder(cfg, plan, name, weights) for name, weights in cfg.weights_for().items()]
        if plan.device == "cpu":
            torch.set_num_threads(plan.model_threads)
        return [summary for split in cfg.splits
                for summary in _extract_split(layout, cfg, plan, embedders, split, jobs_by_split[split], progress)]
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Target:
    """One backbone's store in a run: its model, its writer, what it already holds, and (while
    clips are being embedded) the thread that writes its parts."""

    embedder: _Embedder
    writer: StoreWriter
    store: FeatureStore
    summary: SplitSummary
    parts: PartWriterThread | None = None


def _extract_split(layout: Layout, cfg: ExtractConfig, plan: RunPlan, embedders: list[_Embedder], split: str,
                   jobs: list[ClipJob], progress: bool) -> list[SplitSummary]:
    if cfg.limit is not None:
        jobs = sorted(jobs, key=lambda j: j.name)[: cfg.limit]
    mine = assign_shards(jobs, plan.shard.num_shards)[plan.shard.shard]
    stores = [(layout.features_dir(store_tag(cfg, e.name), split),
               {**e.config, "split": split, "clips": layout.clips_root.name}) for e in embedders]
    redoing = cfg.splits if cfg.overwrite else ()
    if cfg.overwrite:  # every store checked before any is moved aside
        overwrite_stores(stores, plan.shard.num_shards, redoing)
    with ExitStack() as held:  # every store's rank lock, until this split is done
        targets = []
        for embedder, (path, config) in zip(embedders, stores):
            writer, store = open_for_writing(path, config, plan.shard.shard, False, plan.shard.num_shards, redoing)
            held.callback(writer.close)
            summary = SplitSummary(split, str(path), total=len(mine), skipped=sum(j.name in store for j in mine),
                                   plan=plan, clips_root=str(layout.clips_root),
                                   random_features=random_weights(embedder.spec))
            targets.append(_Target(embedder, writer, store, summary))
        # each clip is decoded once, for the stores that lack it
        needs = [tuple(k for k, t in enumerate(targets) if j.name not in t.store) for j in mine]
        todo = [(j, n) for j, n in zip(mine, needs) if n]
        if todo:
            _decode_embed_write(targets, todo, split, cfg, plan, progress)
        for t in targets:
            t.writer.merge_parts()  # also finishes a merge that an earlier run was killed in
        return [t.summary for t in targets]


def _views(items: list[dict], k: int) -> list[dict]:
    """The items decoded for request `k`, each as that backbone's clip (its frames and times)."""
    return [{"name": it["name"], "role": it["role"], "num_frames": it["num_frames"], "fps": it["fps"],
             **it["views"][k]} for it in items if k in it["views"]]


def _decode_embed_write(targets: list[_Target], todo: list[tuple[ClipJob, tuple[int, ...]]], split: str,
                        cfg: ExtractConfig, plan: RunPlan, progress: bool) -> None:
    """Workers decode, the main thread runs the models, one writer thread per store writes its parts."""
    first = targets[0].embedder
    # Batches waiting per worker: full-size frames (resize on the device) are ~5x the bytes of
    # resized ones, so fewer wait; host memory is ~ workers x prefetch x batch x clip bytes.
    prefetch = (4 if first.resize_for is not None else 2) if plan.workers else None
    dataset = ClipDataset([j for j, _ in todo], [t.embedder.request for t in targets], first.rule,
                          needs=[n for _, n in todo])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=plan.workers, collate_fn=collate_items,
        worker_init_fn=decoder_worker_init, prefetch_factor=prefetch, pin_memory=first.device.type == "cuda")
    batches = iter(loader)  # forks the decoders now, before the progress bar and the writer threads start
    s = plan.shard
    bar = tqdm(total=len(todo), desc=f"extract {split} [{s.shard + 1}/{s.num_shards}]", unit="clip",
               disable=not progress, dynamic_ncols=True)
    summaries = [t.summary for t in targets]
    for t in targets:
        def written(rows: StoreRows, summary: SplitSummary = t.summary) -> None:
            summary.extracted += len(rows.names)

        t.parts = PartWriterThread(t.writer, on_written=written, thread_init=t.embedder.use_device)
    threads = CpuThreads(plan, first.device)
    t0 = time.perf_counter()
    try:
        for batch in batches:
            good = [it for it in batch if it["error"] is None]
            for it in batch:
                for k in it["needs"]:
                    err = it["error"] if it["error"] is not None else it["errors"].get(k)
                    if err is not None:  # this clip failed for this backbone's store
                        targets[k].writer.record_failure(it["name"], err)
                        targets[k].summary.failures.append((it["name"], err))
                        targets[k].summary.failed += 1
            t_model = time.perf_counter()
            for k, t in enumerate(targets):
                mine = _views(good, k)
                if mine:
                    t.parts.submit(t.embedder.rows_later(mine))
            if good:
                threads.observe(good, time.perf_counter() - t_model)
            bar.update(len(batch))
            bar.set_postfix(failed=max(x.failed for x in summaries), refresh=False)
        for t in targets:
            t.parts.close()
    except BaseException as e:
        for t in targets:
            try:
                t.parts.close()  # what was computed is written: a rerun resumes after it
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        bar.close()
        if isinstance(e, KeyboardInterrupt):
            for t in targets:
                report_interrupted(t.summary, t.writer.path)
        raise
    finally:
        bar.close()
        spent, busy = time.perf_counter() - t0, {k for _, needs in todo for k in needs}
        for k, x in enumerate(summaries):  # a store with nothing to do took no time
            x.seconds = spent if k in busy else 0.0
        if threads.note:
            summaries[0].notes.append(threads.note)
