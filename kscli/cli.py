"""The `kscli` command line: parses options and calls one library function per command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from kscli.data.layout import DEFAULT_PART
from kscli.errors import KscliError
from kscli.fileio import os_error_line


class KscliGroup(TyperGroup):
    """Turns a KscliError or a failed file operation into one line on stderr and exit code 2,
    Ctrl-C into exit code 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KscliError as e:
            typer.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `kscli ... | head`: the reader left; nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except OSError as e:
            if os.environ.get("KSCLI_DEBUG"):
                raise  # the full traceback, for a bug report
            where = "" if e.filename else "  (KSCLI_DEBUG=1 shows where)"
            typer.echo(f"error: {os_error_line(e)}{where}", err=True)
            ctx.exit(2)


app = typer.Typer(cls=KscliGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # "[default: ...]" in a help text is text, not a Rich style tag
                  help="Ego-Exo4D fine-grained keystep recognition: extract features, train heads, submit.")


def _version(value: bool) -> None:
    if value:
        import kscli

        typer.echo(f"kscli {kscli.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print kscli's version and exit.")) -> None:
    """Ego-Exo4D fine-grained keystep recognition: extract features, train heads, submit."""


features_app = typer.Typer(cls=KscliGroup, no_args_is_help=True, rich_markup_mode=None, help="Inspect feature stores.")
app.add_typer(features_app, name="features")

DataRoot = typer.Option(None, "--data-root", envvar="KSCLI_DATA_ROOT",
                        help="The folder given to `egoexo -o` (annotations and clips are found under it).")
AnnotationsDir = typer.Option(None, "--annotations-dir", envvar="KSCLI_ANNOTATIONS_DIR",
                              help="Override: folder holding label_mapping.csv and keystep_segment_*.json.")
ClipsRoot = typer.Option(None, "--clips-root", envvar="KSCLI_CLIPS_ROOT",
                         help="Override: folder the clip names are relative to (.../keystep_benchmark/clips_448p).")
WorkDir = typer.Option(None, "--work-dir", envvar="KSCLI_WORK_DIR",
                       help="Where kscli writes stores, runs, submissions [default: ./kscli-work].")
Parts = typer.Option(DEFAULT_PART, "--parts", help="The part of the download holding the clips, as the egoexo downloader's --parts names it: keystep_benchmark/<part>.")


def _layout(data_root, annotations_dir, clips_root, work_dir, part=DEFAULT_PART):
    from kscli.data.layout import Layout

    return Layout.resolve(data_root, annotations_dir, clips_root, work_dir, part)


def _renamed(old: str, new: str, value, current):
    """An old spelling still works this release (see CHANGELOG.md), with one line saying the new
    one. `value`: what the old spelling gave (None: not used); `current`: what the new one gave
    (None: not given). Both given with different values is refused in one line."""
    if value is None:
        return current
    if current is not None and _key(current) != _key(value):
        raise KscliError(f"two values for {new}: {current}, and {value} by {old} (its old spelling); give {new} only")
    typer.echo(f"note: {old} is now {new}; the old spelling goes in the next release", err=True)
    return value


def _key(value):
    """What makes two values of one option the same: a folder wherever it is named from, store
    names without the spaces around their commas."""
    if isinstance(value, Path):
        return value.expanduser().resolve()
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    return value


OLD_POSITIONAL = {"allow_extra_args": True}  # a command that still takes its 0.1.0 positional value


def _old_positional(ctx: typer.Context, what: str, option: str) -> str | None:
    """The one positional value an older spelling gave (`kscli sample DIR`, `features info
    STORE`), kept out of the usage line; more than one is refused, naming `option`."""
    if len(ctx.args) > 1:
        raise KscliError(f"unexpected arguments {' '.join(ctx.args)}; name the {what} with {option}")
    return ctx.args[0] if ctx.args else None


@app.command("sample", context_settings=OLD_POSITIONAL)
def sample_cmd(ctx: typer.Context,
               out: Optional[Path] = typer.Option(None, "--out", help="Folder to write the sample benchmark into."),
               seed: int = typer.Option(0, help="Random seed (same seed, same files)."),
               tiny: bool = typer.Option(False, "--tiny", help="The tiny version the tests use (64 px, seconds)."),
               size: int = typer.Option(448, help="Short side of the clips in pixels (even)."),
               encoding: str = typer.Option("default", help="default: x264's defaults, as Ego-Exo4D's clips were encoded (B-frames, long GOP); fast: quicker to write and decode, unlike the real clips."),
               workers: Optional[int] = typer.Option(None, help="Encoding processes (same files for any number) [default: cores]."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
               progress: bool = typer.Option(True, help="Show a progress bar.")):
    """Write a small synthetic benchmark in exactly the download's layout (real mp4 clips)."""
    from kscli.data.sample import tiny_sample_kwargs, write_sample_benchmark
    from kscli.device import usable_cores

    old = _old_positional(ctx, "folder", "--out")
    out_arg = None if old is None else Path(old)
    if out is not None and out_arg is not None and out.resolve() != out_arg.resolve():
        raise KscliError(f"two folders named: {out_arg} and --out {out}; give one")
    out = _renamed("a positional OUT", "--out", out_arg, out)  # `kscli sample DIR` keeps working
    if out is None:
        raise KscliError("where to? pass --out DIR (a new or empty folder)")
    kw = tiny_sample_kwargs() if tiny else {"short_side": size}
    summary = write_sample_benchmark(out, seed=seed, overwrite=overwrite, workers=workers or usable_cores()[0],
                                     progress=progress, encoding=encoding, **kw)
    typer.echo(summary.text())
    typer.echo(f"use it with: --data-root {out}")


@app.command("check-data")
def check_data_cmd(split: str = typer.Option("train,val,test", help="Comma-separated splits."),
                   view: str = typer.Option("all", help="ego, exo or all."),
                   min_frames: int = typer.Option(16, help="Frames a backbone samples; shorter clips are counted."),
                   decode: bool = typer.Option(True, help="Open each clip and read a frame (--no-decode: existence only)."),
                   workers: Optional[int] = typer.Option(None, help="Processes probing clips [default: cores, at most 8]."),
                   out: Optional[Path] = typer.Option(None, help="JSON report file [default: <work>/reports/check-data.json]."),
                   progress: bool = typer.Option(True, help="Show a progress bar."),
                   jobs: Optional[int] = typer.Option(None, "--jobs", hidden=True),
                   report: Optional[Path] = typer.Option(None, "--report", hidden=True),
                   parts: str = Parts, data_root: Optional[Path] = DataRoot, annotations_dir: Optional[Path] = AnnotationsDir,
                   clips_root: Optional[Path] = ClipsRoot, work_dir: Optional[Path] = WorkDir):
    """Check a download against its annotations: counts, missing, empty, undecodable and short clips."""
    from kscli.data.check import check_data, format_report, write_report
    from kscli.data.layout import parse_splits

    workers = _renamed("--jobs", "--workers", jobs, workers)
    out = _renamed("--report", "--out", report, out)
    layout = _layout(data_root, annotations_dir, clips_root, work_dir, parts)
    if view not in ("ego", "exo", "all"):
        raise KscliError(f"--view {view!r}: choose from ego, exo, all")
    rep = check_data(layout, parse_splits(split), view=view, min_frames=min_frames, decode=decode, jobs=workers,
                     progress=progress)
    path = write_report(rep, out or layout.reports_dir / "check-data.json")
    typer.echo(format_report(rep))
    typer.echo(f"report: {path}")
    if not rep.ok:
        raise typer.Exit(1)


@app.command("backbones")
def backbones_cmd(name: Optional[str] = typer.Option(None, "--name", help="Show one backbone in full."),
                  wide: bool = typer.Option(False, "--wide", help="Every backbone in full.")):
    """List the registered backbones (name, frames, size, feature dim, default weights)."""
    from kscli.extract.backbones import list_backbones

    rows = list_backbones()
    if name is not None:
        rows = [r for r in rows if r["name"] == name]
        if not rows:
            raise KscliError(f"unknown backbone {name!r}; see `kscli backbones`")
    if name is not None or wide:
        for r in rows:
            typer.echo(f"{r['name']}  ({r['kind']}, {r['num_frames']} frames of {r['size']}x{r['size']} -> "
                       f"{r['feature_dim']}-d)\n  weights: {r['weights']}\n  {r['description']}\n"
                       f"  preprocessing: {r['preprocessing']}\n  (a weights folder's preprocessor_config.json "
                       f"decides over these; --crop full keeps the frame's full height)")
        return
    typer.echo(f"{'name':<18} {'frames':>6} {'size':>4} {'dim':>5}  default weights")
    for r in rows:
        typer.echo(f"{r['name']:<18} {r['num_frames']:>6} {r['size']:>4} {r['feature_dim']:>5}  {r['weights'][:62]}")
    typer.echo("details: kscli backbones --name NAME (or --wide)")


@app.command("extract")
def extract_cmd(backbone: Optional[str] = typer.Option(None, help="Registered backbone name, required (see `kscli backbones`), or several as A,B: each clip is decoded once and each backbone writes its own store. tiny-random is a random test network."),
                weights: Optional[str] = typer.Option(None, help="HF hub id or local folder [default: the backbone's]; with several backbones NAME=DIR,NAME=DIR (the others load their default)."),
                split: str = typer.Option("train,val,test", help="Comma-separated splits."),
                view: str = typer.Option("all", help="ego, exo or all."),
                num_frames: Optional[int] = typer.Option(None, help="Frames per window [default: the backbone's]."),
                windows: int = typer.Option(1, help="Temporal windows per clip (>1 stores a W x D sequence)."),
                batch_size: int = typer.Option(8, help="Clips per model batch (one store part per batch)."),
                workers: Optional[int] = typer.Option(None, help="Decoding processes [default: this rank's share of the usable cores]."),
                device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
                precision: str = typer.Option("auto", help="auto (bf16 on CUDA), fp32 or bf16."),
                resize_on: str = typer.Option("auto", help="auto, worker or device: where frames are resized."),
                crop: str = typer.Option("model", help="model: resize and crop as the model's own processor; full: the centre square of the short side (keeps the frame's full height)."),
                dtype: str = typer.Option("float32", help="Stored feature dtype: float32 or float16."),
                decode: str = typer.Option("sampled", help="sampled: decode only the frames the sample needs (and those they depend on); all: every frame. Same frames, same store."),
                tag: Optional[str] = typer.Option(None, help="Store name under <work>/features [default: backbone(-wN)]; one backbone only."),
                shard: Optional[int] = typer.Option(None, help="This shard (0-based) [default: RANK or SLURM array]."),
                num_shards: Optional[int] = typer.Option(None, help="Number of shards [default: WORLD_SIZE or array size]."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Redo a store (the old one is moved aside)."),
                limit: Optional[int] = typer.Option(None, help="Only the first N clips per split (smoke test)."),
                strict: bool = typer.Option(False, "--strict", help="Exit 1 if any clip of this run failed (for pipelines)."),
                progress: bool = typer.Option(True, help="Show a progress bar."),
                parts: str = Parts, data_root: Optional[Path] = DataRoot, annotations_dir: Optional[Path] = AnnotationsDir,
                clips_root: Optional[Path] = ClipsRoot, work_dir: Optional[Path] = WorkDir):
    """Decode every clip once, run one or several frozen backbones, cache features in HDF5 (resumable, shardable)."""
    from kscli.extract.run import ExtractConfig, extract, extraction_problem, format_summaries

    cfg = ExtractConfig(backbone=backbone, weights=weights, splits=split, view=view,
                        num_frames=num_frames, windows=windows, batch_size=batch_size, workers=workers,
                        device=device, precision=precision, resize_on=resize_on, crop=crop, dtype=dtype, tag=tag,
                        shard=shard, num_shards=num_shards, overwrite=overwrite, limit=limit, decode=decode)
    summaries = extract(_layout(data_root, annotations_dir, clips_root, work_dir, parts), cfg, progress=progress)
    typer.echo(format_summaries(summaries))
    problem = extraction_problem(summaries, strict)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)


def _stores(named: str | None, work_dir, several: bool = False, backbone: str | None = None,
            positional: str | None = None):
    """(names, Layout) of the stores a `features` command reads, named by --store (the old
    spellings `--backbone NAME` and `features info NAME` still work, with a note). `several`:
    `a,b` names several and none named means every store there; otherwise one plain name, and
    none named is one line listing them."""
    from kscli.data.layout import Layout

    layout = Layout.work_only(work_dir)

    def plain_names(value: str) -> list[str]:  # each checked before any note is printed
        names = [n.strip() for n in value.split(",")] if several else [value]
        for name in names:
            layout.store_dir(name)
        return names

    for given in (named, backbone, positional):
        if given is not None:
            plain_names(given)
    named = _renamed("--backbone", "--store", backbone, named)
    named = _renamed("a positional STORE", "--store", positional, named)
    if named is None:
        if several and layout.store_names():
            return layout.store_names(), layout
        names = layout.store_names()
        there = f"stores in {layout.stores_dir}: {', '.join(names)}" if names else \
            f"there is no store in {layout.stores_dir} yet: run `kscli extract --backbone NAME` first"
        raise KscliError(f"which store? pass --store NAME (the backbone, or the --tag it was made with); {there}")
    return plain_names(named), layout


@features_app.command("info", context_settings=OLD_POSITIONAL)
def features_info_cmd(ctx: typer.Context,
                      store: Optional[str] = typer.Option(None, "--store", help="Store name(s) as written by extract / import-features (the backbone, or its --tag), a or a,b [default: every store]."),
                      backbone: Optional[str] = typer.Option(None, "--backbone", hidden=True),
                      split: str = typer.Option("train,val,test", help="Comma-separated splits."),
                      as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                      work_dir: Optional[Path] = WorkDir):
    """Summarise feature stores (every store in the work folder unless named): clips per view, shape, failures, size, config, and whether they are made one way."""
    from kscli.data.layout import parse_splits
    from kscli.extract.store import format_info, store_infos

    names, layout = _stores(store, work_dir, several=True, backbone=backbone,
                            positional=_old_positional(ctx, "store", "--store"))
    infos = {name: store_infos(layout, name, parse_splits(split)) for name in names}
    typer.echo(json.dumps([i for name in names for i in infos[name]], indent=1) if as_json else
               "\n".join(format_info(infos[name], name) for name in names))


@features_app.command("verify", context_settings=OLD_POSITIONAL)
def features_verify_cmd(ctx: typer.Context,
                        store: Optional[str] = typer.Option(None, "--store", help="Store name as written by extract / import-features (the backbone, or its --tag)."),
                        backbone: Optional[str] = typer.Option(None, "--backbone", hidden=True),
                        split: str = typer.Option("train,val,test", help="Comma-separated splits."),
                        move_aside: bool = typer.Option(False, "--move-aside",
                                                        help="Rename unreadable parts, and parts made otherwise than the store, to *.unreadable-<time> / *.mismatched-<time>, so a rerun of extract recomputes their clips."),
                        progress: bool = typer.Option(True, help="Show a progress bar."),
                        work_dir: Optional[Path] = WorkDir):
    """Read every part of a store in full; list those that cannot be read or were made otherwise (exit 1 if any stays)."""
    from kscli.data.layout import parse_splits
    from kscli.extract.store import verify_stores

    [store], layout = _stores(store, work_dir, backbone=backbone, positional=_old_positional(ctx, "store", "--store"))
    text, left = verify_stores(layout, store, parse_splits(split), move_aside=move_aside, progress=progress)
    typer.echo(text)
    if left:
        raise typer.Exit(1)


@app.command("import-features")
def import_features_cmd(source: str = typer.Option(..., help="omnivore_video or maws_clip_2b (Ego-Exo4D's precomputed features)."),
                        features_dir: Path = typer.Option(..., help="Folder of <take_uid>_<cam_id>_<stream_id>.pt files."),
                        split: str = typer.Option("train,val,test", help="Comma-separated splits."),
                        view: str = typer.Option("all", help="ego, exo or all."),
                        tag: Optional[str] = typer.Option(None, help="Store name [default: the source]."),
                        window_frames: Optional[int] = typer.Option(None, help="Frames per feature window [default: the source's]."),
                        stride_frames: Optional[int] = typer.Option(None, help="Frames between windows [default: the source's]."),
                        fps: Optional[float] = typer.Option(None, help="Frame rate of the windows [default: 30]."),
                        feature_dim: Optional[int] = typer.Option(None, help="Feature width [default: the source's]."),
                        exo_stream: str = typer.Option("0", help="Stream id of exo camera files."),
                        windows: int = typer.Option(1, help="Cut each segment into N equal spans, one pooled vector each (store <source>-wN)."),
                        takes_json: Optional[Path] = typer.Option(None, help="Ego-Exo4D's takes.json (take lengths: places the back-padded last window) [default: <data-root>/takes.json if there]."),
                        overwrite: bool = typer.Option(False, "--overwrite", help="Redo a store (the old one is moved aside)."),
                        progress: bool = typer.Option(True, help="Show a progress bar."),
                        data_root: Optional[Path] = DataRoot, annotations_dir: Optional[Path] = AnnotationsDir,
                        clips_root: Optional[Path] = ClipsRoot, work_dir: Optional[Path] = WorkDir):
    """Pool Ego-Exo4D's published per-take features over each segment into a feature store (no GPU needed)."""
    from kscli.data.layout import parse_splits
    from kscli.extract.official import import_features, import_problem

    layout = _layout(data_root, annotations_dir, clips_root, work_dir)
    summaries = import_features(layout, source, features_dir, parse_splits(split), view=view, tag=tag,
                                window_frames=window_frames, stride_frames=stride_frames, fps=fps,
                                exo_stream=exo_stream, progress=progress, feature_dim=feature_dim,
                                overwrite=overwrite, windows=windows, takes_json=takes_json)
    for s in summaries:
        typer.echo(f"{s.split}: imported {s.extracted}, skipped {s.skipped} (already done), failed {s.failed} of "
                   f"{s.total} clips; {s.nearest} used the nearest window -> {s.store}")
        for name, err in s.failures[:5]:
            typer.echo(f"  failed: {name}: {err}")
    problem = import_problem(summaries)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)


def _floats(value: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise KscliError(f"{name} {value!r}: expected comma-separated numbers, e.g. 1e-3,3e-3") from None
    if not out:
        raise KscliError(f"{name}: give at least one value")
    return out


TRAINING_OPTIONS = ("head", "store", "backbone", "epochs", "lrs", "wds", "label_smoothing", "class_balance", "select_on",
                    "seed", "set_")


@app.command("train-head")
def train_head_cmd(ctx: typer.Context,
                   head: str = typer.Option("linear", help="Which head: linear, mlp, distill, attentive, context (see `kscli heads`)."),
                   store: Optional[str] = typer.Option(None, "--store", help="Store name(s) as written by extract / import-features (the backbone, or its --tag): a, or a,b to concatenate their features (required)."),
                   epochs: Optional[int] = typer.Option(None, help="Epochs [default: enough steps for the data size]."),
                   lrs: Optional[str] = typer.Option(None, help="Learning-rate grid, e.g. 1e-3,3e-3 [default: the head's]."),
                   wds: Optional[str] = typer.Option(None, help="Weight-decay grid, e.g. 1e-4,0.05 [default: the head's]."),
                   label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing [default: the head's, 0.1]."),
                   class_balance: bool = typer.Option(False, "--class-balance", help="Class-balanced loss weights (single-segment heads)."),
                   select_on: str = typer.Option("holdout", help="holdout (a part of train) or val (only when you mean it)."),
                   seed: int = typer.Option(0, help="Random seed (same seed, same result)."),
                   device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N."),
                   name: Optional[str] = typer.Option(None, help="Run folder name [default: head_store_time]."),
                   from_run: Optional[str] = typer.Option(None, "--from", help="Retrain a run exactly as it was trained (its options and stores); only --name, --device and where things are may be given with it."),
                   progress: bool = typer.Option(True, help="Show what is being loaded and trained."),
                   set_: List[str] = typer.Option([], "--set", help="Any other option of the head, key=value (repeatable; `kscli heads --head NAME` lists them)."),
                   backbone: Optional[str] = typer.Option(None, "--backbone", hidden=True),
                   data_root: Optional[Path] = DataRoot, annotations_dir: Optional[Path] = AnnotationsDir,
                   clips_root: Optional[Path] = ClipsRoot, work_dir: Optional[Path] = WorkDir):
    """Train a head on cached features (its lr x wd grid), score it on val, save a run."""
    from kscli.heads.base import config_for
    from kscli.heads.run import parse_store_names, rerun_config, train_run

    def given(option: str) -> bool:  # on the command line (or from the environment), not a default
        return getattr(ctx.get_parameter_source(option), "name", "DEFAULT") != "DEFAULT"

    if from_run is None:
        store = _renamed("--backbone", "--store", backbone, store)  # the old spelling, before anything is read
    layout = _layout(data_root, annotations_dir, clips_root, work_dir)
    if from_run is not None:
        extra = [o for o in TRAINING_OPTIONS if given(o)]
        if extra:
            raise KscliError(f"--from {from_run}: takes the head, its options and its stores from that run; drop "
                             f"{', '.join('--' + o.rstrip('_').replace('_', '-') for o in extra)}")
        cfg, store_names = rerun_config(layout, from_run)
        if given("device"):
            cfg.device = device
    else:
        if store is None:
            names = layout.store_names()
            raise KscliError("--store: name the store(s) to train on" + (
                f" (stores in {layout.stores_dir}: {', '.join(names)})" if names else
                f"; there is no store in {layout.stores_dir}: run `kscli extract --backbone NAME` first"))
        flags = {"select_on": select_on, "seed": seed, "device": device, "epochs": epochs,
                 "label_smoothing": label_smoothing, "lrs": lrs and _floats(lrs, "--lrs"),
                 "weight_decays": wds and _floats(wds, "--wds"), "class_balance": class_balance or None}
        cfg = config_for(head, sets=set_, **{k: v for k, v in flags.items() if v is not None})
        store_names = parse_store_names(store)
    result = train_run(layout, store_names, cfg, name=name, progress=progress)
    typer.echo(result.summary)


@app.command("heads")
def heads_cmd(head: Optional[str] = typer.Option(None, "--head", help="Show one head's options: name, type, default, meaning.")):
    """List the heads, or one head's options (what --set key=value takes)."""
    from kscli.heads.base import describe_options, head_class, list_heads

    if head is None:
        for h in list_heads():
            typer.echo(f"{h:<10} {head_class(h).description}")
        typer.echo("options of a head: kscli heads --head NAME")
        return
    typer.echo(describe_options(head))
    typer.echo(f"set any of them with: kscli train-head --head {head} --set NAME=VALUE")


@app.command("evaluate")
def evaluate_cmd(predictions: Path = typer.Argument(..., help="A predictions/submission file (JSON, or CSV from submit)."),
                 split: str = typer.Option("val", help="The split the file predicts."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                 data_root: Optional[Path] = DataRoot, annotations_dir: Optional[Path] = AnnotationsDir,
                 clips_root: Optional[Path] = ClipsRoot, work_dir: Optional[Path] = WorkDir):
    """Score any prediction file against the annotations: top-1, top-5, mean per-class, per scenario."""
    from kscli.heads.metrics import format_summary
    from kscli.heads.run import evaluate_file

    metrics = evaluate_file(_layout(data_root, annotations_dir, clips_root, work_dir), predictions, split)
    typer.echo(json.dumps(metrics, indent=1) if as_json else format_summary(metrics))


@app.command("submit")
def submit_cmd(split: str = typer.Option("test", help="test (the challenge) or val (scored here too)."),
               run: List[str] = typer.Option([], "--run", help="Run folder or name; repeat to ensemble [default: best run]."),
               fmt: str = typer.Option("json", "--format", help="json (the challenge file) or csv."),
               out: Optional[Path] = typer.Option(None, help="Output file [default: <work>/submissions/...]."),
               data_root: Optional[Path] = DataRoot, annotations_dir: Optional[Path] = AnnotationsDir,
               clips_root: Optional[Path] = ClipsRoot, work_dir: Optional[Path] = WorkDir):
    """Predict every segment of a split from ego features alone and write the challenge file."""
    from kscli.extract.backbone_base import RANDOM_FEATURES_WARNING as RANDOM_FEATURES
    from kscli.heads.metrics import format_summary
    from kscli.heads.submit import submit

    res = submit(_layout(data_root, annotations_dir, clips_root, work_dir), run or None, split, fmt, out)
    if res.choice is not None:
        typer.echo(res.choice.text())
    typer.echo(f"{res.split}: {res.segments} segments predicted by {len(res.runs)} run(s) -> {res.path}")
    if res.random_features:
        typer.echo(f"WARNING: this submission is built on {RANDOM_FEATURES}; do not submit it", err=True)
    if res.without_ego_feature:
        typer.echo(f"{len(res.without_ego_feature)} segment(s) had no ego feature: predicted with the training "
                   "prior, or from their take by a context head (listed under 'without_ego_feature'), e.g.:")
        for n in res.without_ego_feature[:5]:
            typer.echo(f"  {n}")
    if res.metrics:
        typer.echo(format_summary(res.metrics))


@app.command("report")
def report_cmd(run: str = typer.Argument(..., help="Run folder or name."), work_dir: Optional[Path] = WorkDir):
    """Draw a run's pictures (per scenario, confusions, by length, training curve) and a Markdown summary."""
    from kscli.data.layout import Layout
    from kscli.heads.report import write_report
    from kscli.heads.submit import resolve_run

    path = write_report(resolve_run(Layout.work_only(work_dir), run))
    typer.echo(f"report: {path}")


@app.command("demo")
def demo_cmd(out: Optional[Path] = typer.Option(None, "--out", help="Where the sample and the work folder go [default: kscli-demo]."),
             seed: int = typer.Option(0, help="Random seed."),
             workers: Optional[int] = typer.Option(None, help="Processes for encoding and decoding [default: cores]."),
             progress: bool = typer.Option(True, help="Show progress bars."),
             folder: Optional[Path] = typer.Option(None, "--dir", hidden=True)):
    """Run everything on the embedded sample: sample, check, extract, four heads, a submission."""
    from kscli.demo import run_demo

    run_demo(_renamed("--dir", "--out", folder, out) or Path("kscli-demo"), seed=seed, workers=workers, progress=progress, say=typer.echo)


if __name__ == "__main__":
    app()
