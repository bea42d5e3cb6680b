"""`kscli extract --backbone A,B`: one decode, one store per backbone, each exactly the store
`--backbone A` alone writes (real mp4 clips, real models saved to folders, real CLI)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, cli, run_kscli
from kscli.errors import KscliError
from kscli.extract.lock import RankLock
from kscli.extract.run import ExtractConfig
from kscli.extract.store import FeatureStore

VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
SPLIT = ["--split", "val,test"]
FIELDS = ("features", "frame_times", "num_frames", "fps")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two small random Hugging Face models saved as pretrained ones: a video model taking 4 frames
    (tiny-random takes 8, so their frames differ and the decode serves their union) and a
    per-frame image model with its own preprocessing (bicubic, short side, crop)."""
    import transformers as tf

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tf.VideoMAEModel(tf.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, **VIT)
                     ).save_pretrained(root / "videomae")
    tf.Dinov2Model(tf.Dinov2Config(image_size=32, patch_size=8, **VIT)).save_pretrained(root / "dino")
    return {"videomae-base": root / "videomae", "dinov2-small": root / "dino"}


BACKBONES = "tiny-random,videomae-base,dinov2-small"


def weights_arg(models):
    return ",".join(f"{name}={path}" for name, path in models.items())


def extract_args(sample_root, work, *more):
    return ["extract", "--data-root", sample_root, "--work-dir", work, *SPLIT, "--workers", "1", "--no-progress", *more]


@pytest.fixture(scope="module")
def singles(sample_root, models, tmp_path_factory):
    """Each backbone extracted alone: what every multi-backbone store must equal."""
    work = tmp_path_factory.mktemp("singles")
    cli(*extract_args(sample_root, work, "--backbone", "tiny-random"))
    for name, path in models.items():
        cli(*extract_args(sample_root, work, "--backbone", name, "--weights", path))
    return work


def store_dir(work, name, split):
    return work / "features" / name / split


def assert_same_store(work, ref, name, split, exact=True):
    """Same clips, same arrays bit for bit, same recorded settings (store.json and every part's config).
    `exact=False`: features within float32 rounding, for runs that batch the clips otherwise (CPU
    kernels may round a clip's features differently in a batch of another size)."""
    got, want = FeatureStore(store_dir(work, name, split)), FeatureStore(store_dir(ref, name, split))
    names = sorted(want.names)
    assert sorted(got.names) == names and names
    for field in FIELDS:
        a, b = got.get(names, field), want.get(names, field)
        if exact or field != "features":
            np.testing.assert_array_equal(a, b, err_msg=f"{name} {split} {field}")
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{name} {split} {field}")
    assert [got.role(n) for n in names] == [want.role(n) for n in names]
    ident = [json.loads((store_dir(w, name, split) / "store.json").read_text()) for w in (work, ref)]
    for one in ident:
        one.pop("created")
    assert ident[0] == ident[1]
    assert {k: v for k, v in got.config.items() if k != "versions"} == {
        k: v for k, v in want.config.items() if k != "versions"}


@pytest.mark.slow
def test_one_pass_writes_each_store_as_alone(sample_root, models, singles, tmp_path):
    work = tmp_path / "work"
    p = cli(*extract_args(sample_root, work, "--backbone", BACKBONES, "--weights", weights_arg(models)))
    for split in ("val", "test"):
        for name in BACKBONES.split(","):
            assert_same_store(work, singles, name, split)
            assert f"-> {store_dir(work, name, split)}" in p.stdout
    assert FeatureStore(store_dir(work, "videomae-base", "val")).get(
        sorted(FeatureStore(store_dir(work, "videomae-base", "val")).names), "frame_times").shape[1] == 4
    # a rerun finds every store complete and decodes nothing
    again = cli(*extract_args(sample_root, work, "--backbone", BACKBONES, "--weights", weights_arg(models)))
    assert again.stdout.count("extracted 0, skipped") == 6


def test_a_new_backbone_beside_finished_stores_decodes_only_for_it(sample_root, models, singles, tmp_path):
    work = tmp_path / "work"
    cli(*extract_args(sample_root, work, "--backbone", "tiny-random"))
    p = cli(*extract_args(sample_root, work, "--backbone", "tiny-random,dinov2-small",
                          "--weights", f"dinov2-small={models['dinov2-small']}"))
    lines = [line for line in p.stdout.splitlines() if line.startswith("val:")]
    assert "extracted 0, skipped" in lines[0] and "tiny-random" in lines[0]
    assert " in 0.0s (0.0 clips/s)" in lines[0]  # a store with nothing to do reports no time
    assert "extracted 0," not in lines[1] and "dinov2-small" in lines[1]
    for split in ("val", "test"):
        assert_same_store(work, singles, "dinov2-small", split)


@pytest.mark.slow
def test_kill_9_then_resume_finishes_each_store_where_it_stopped(sample_root, models, singles, tmp_path):
    work = tmp_path / "work"
    argv = extract_args(sample_root, work, "--backbone", BACKBONES, "--weights", weights_arg(models),
                        "--batch-size", "2", "--split", "val")
    proc = subprocess.Popen([sys.executable, "-m", "kscli", *map(str, argv)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = store_dir(work, "tiny-random", "val")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(first.glob("part-*.h5"))) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {name: len(FeatureStore(store_dir(work, name, "val"))) for name in BACKBONES.split(",")}
    total = len(FeatureStore(store_dir(singles, "tiny-random", "val")))
    assert 0 < done["tiny-random"] < total, done
    p = run_kscli(*argv)
    for name in BACKBONES.split(","):
        assert f"skipped {done[name]} (already done), failed 0 of {total} clips" in p.stdout, (name, p.stdout)
        assert_same_store(work, singles, name, "val")


def test_a_backbone_that_cannot_load_stops_the_run_before_any_decoding(sample_root, tmp_path):
    work = tmp_path / "work"
    r = cli(*extract_args(sample_root, work, "--backbone", "tiny-random,dinov2-small",
                          "--weights", f"dinov2-small={tmp_path / 'nowhere'}"), check=False)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "nowhere" in r.stderr
    assert not (work / "features").exists()
    r = cli(*extract_args(sample_root, work, "--backbone", "tiny-random,no-such-net"), check=False)
    assert r.exit_code == 2 and "unknown backbone 'no-such-net'" in r.stderr
    assert not (work / "features").exists()


def test_locks_failures_and_strict_are_per_store(sample_copy, models, tmp_path):
    from kscli.data.layout import Benchmark, Layout

    work = tmp_path / "work"
    gone = Benchmark(Layout.resolve(data_root=sample_copy)).segments("val")[0].ego.name
    (sample_copy / "keystep_benchmark" / "clips_448p" / gone).unlink()
    run = extract_args(sample_copy, work, "--backbone", "tiny-random,dinov2-small",
                       "--weights", f"dinov2-small={models['dinov2-small']}", "--split", "val")
    held = store_dir(work, "dinov2-small", "val")
    held.mkdir(parents=True)
    with RankLock(held, 0):  # another run writes the second store: refused, the first store untouched
        r = cli(*run, check=False)
    assert r.exit_code == 2 and "dinov2-small/val: rank 0 of this store is being written by" in r.stderr
    assert not list(store_dir(work, "tiny-random", "val").glob("part-*"))
    r = cli(*run, "--strict", check=False)
    assert r.exit_code == 1 and "--strict: 1 clip(s) failed" in r.stderr  # counted once, recorded in each store
    assert "1 clip(s) failed (recorded in each store that needed them)" in r.stdout
    for name in ("tiny-random", "dinov2-small"):
        failures = [json.loads(line) for f in store_dir(work, name, "val").glob("failures-r*.jsonl")
                    for line in f.read_text().splitlines()]
        assert [f["clip"] for f in failures] == [gone]
        assert gone not in FeatureStore(store_dir(work, name, "val"))


def test_shards_of_a_multi_backbone_run_make_the_same_stores(sample_root, models, singles, tmp_path):
    work = tmp_path / "work"
    for shard in (0, 1):
        cli(*extract_args(sample_root, work, "--backbone", "tiny-random,videomae-base", "--split", "val",
                          "--weights", f"videomae-base={models['videomae-base']}", "--shard", shard, "--num-shards", 2))
    for name in ("tiny-random", "videomae-base"):
        assert_same_store(work, singles, name, "val", exact=False)  # other batches than the unsharded run


def test_weights_and_names_are_checked_in_one_line():
    cfg = ExtractConfig(backbone="a,b", weights="b=/m/b")
    assert cfg.weights_for() == {"a": None, "b": "/m/b"}
    assert ExtractConfig(backbone="a", weights="/m/x=1").weights_for() == {"a": "/m/x=1"}  # one backbone: plain
    assert ExtractConfig(backbone="a", weights="a=/m/a").weights_for() == {"a": "/m/a"}
    for kw, words in ((dict(backbone="a,b", weights="/m/b"), "give NAME=DIR for each one"),
                      (dict(backbone="a,b", weights="c=/m/c"), "NAME one of a, b"),
                      (dict(backbone="a,b", weights="a=/1,a=/2"), "a is given twice"),
                      (dict(backbone="a,a"), "a is named twice"),
                      (dict(backbone="a,,b"), "a name is empty"),
                      (dict(backbone="a,b", tag="mine"), "--tag names one store")):
        with pytest.raises(KscliError, match=words):
            ExtractConfig(**kw)


@pytest.mark.slow
def test_a_fused_run_on_stores_from_one_pass_trains_evaluates_submits_and_reruns(sample_root, models, tmp_path):
    work = tmp_path / "work"
    where = ["--data-root", sample_root, "--work-dir", work]
    fused = "tiny-random,dinov2-small"
    cli("extract", "--backbone", fused, "--weights", f"dinov2-small={models['dinov2-small']}", *where,
        "--workers", "2", "--no-progress")
    cli("train-head", "--store", fused, "--head", "mlp", "--name", "fused", *where, "--no-progress")
    cli("train-head", "--store", "tiny-random", "--head", "linear", "--name", "alone", *where, "--no-progress")
    run = work / "runs" / "fused"
    config, metrics = (json.loads((run / f).read_text()) for f in ("config.json", "metrics.json"))
    assert sorted(config["stores"]) == ["dinov2-small", "tiny-random"]
    assert metrics["backbones"] == ["tiny-random", "dinov2-small"]
    assert [config["backbones"][n]["backbone"]["feature_dim"] for n in metrics["backbones"]] == [128, 32]
    scored = json.loads(cli("evaluate", run / "predictions_val.json", "--json", *where).stdout)
    assert scored["top1"] == pytest.approx(metrics["val"]["top1"])
    cli("train-head", "--from", "fused", "--name", "again", *where, "--no-progress")
    assert json.loads((work / "runs" / "again" / "metrics.json").read_text())["val"] == metrics["val"]
    sub = cli("submit", "--run", "fused", "--out", tmp_path / "fused.json", *where)
    doc = json.loads((tmp_path / "fused.json").read_text())
    assert doc["runs"] == ["fused"] and sorted(doc["stores"]["fused"]) == ["dinov2-small", "tiny-random"], sub.stdout
    from kscli.data.layout import Benchmark, Layout

    test = Benchmark(Layout.resolve(data_root=sample_root)).segments("test")
    assert sorted(r["ego_segment_name"] for r in doc["results"]) == sorted(s.name for s in test)
    ens = cli("submit", "--run", "fused", "--run", "alone", "--split", "val", "--out", tmp_path / "ens.json", *where)
    assert "2 run(s)" in ens.stdout
    cli("evaluate", tmp_path / "ens.json", *where)
    best = cli("submit", *where, "--out", tmp_path / "best.json")  # the best run by val top-1, fused ones included
    assert "fused" in best.stdout or "alone" in best.stdout
    cli("report", "fused", "--work-dir", work)
    assert "dinov2-small" in (run / "report.md").read_text()


def test_a_clip_the_union_cannot_decode_is_retried_per_backbone(sample_root, models, singles, tmp_path, monkeypatch):
    """A damaged packet that only the union of frames reaches must not cost the backbone whose own
    frames decode: each backbone's frames are decoded alone after a failed union, as alone."""
    from kscli.data.video import VideoError
    from kscli.extract import run

    real = run.decode_samples

    def damaged_where_the_union_reaches(path, samplings, rule="sampled"):
        if len(samplings) > 1:
            raise VideoError("decoding failed after 0 frame(s): Invalid data found when processing input")
        return real(path, samplings, rule)

    monkeypatch.setattr(run, "decode_samples", damaged_where_the_union_reaches)
    work = tmp_path / "work"
    cli(*extract_args(sample_root, work, "--backbone", "tiny-random,videomae-base", "--split", "val", "--workers", "0",
                      "--weights", f"videomae-base={models['videomae-base']}"))
    for name in ("tiny-random", "videomae-base"):
        assert_same_store(work, singles, name, "val")


def test_a_store_that_got_nothing_fails_the_run_though_another_store_is_complete(sample_root, models, tmp_path,
                                                                                monkeypatch):
    from kscli.data.video import VideoError
    from kscli.extract import run

    real = run.decode_samples

    def videomae_frames_never_decode(path, samplings, rule="sampled"):
        if any(s.num_frames == 4 for s in samplings):
            raise VideoError("frame 2 of 30 could not be decoded (damaged file?); 1 frame(s) decoded")
        return real(path, samplings, rule)

    work = tmp_path / "work"
    cli(*extract_args(sample_root, work, "--backbone", "tiny-random", "--split", "val", "--workers", "0"))
    monkeypatch.setattr(run, "decode_samples", videomae_frames_never_decode)
    r = cli(*extract_args(sample_root, work, "--backbone", "tiny-random,videomae-base", "--split", "val",
                          "--workers", "0", "--weights", f"videomae-base={models['videomae-base']}"), check=False)
    assert r.exit_code == 1 and "no clip of this run could be read for " in r.stderr and "videomae-base" in r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("val:")]
    assert "extracted 0, skipped" in lines[0] and lines[0].endswith("tiny-random/val")
    assert "extracted 0, skipped 0 (already done), failed" in lines[1] and lines[1].endswith("videomae-base/val")


def test_overwrite_moves_no_store_unless_every_store_may_be_redone(sample_root, models, tmp_path):
    work = tmp_path / "work"
    dino = ["--weights", f"dinov2-small={models['dinov2-small']}"]
    cli(*extract_args(sample_root, work, "--backbone", "tiny-random", "--workers", "0"))
    cli(*extract_args(sample_root, work, "--backbone", "dinov2-small", *dino, "--workers", "0", "--dtype", "float16"))
    before = sorted(p.name for p in store_dir(work, "tiny-random", "val").iterdir())
    # val of both redone as float32, but dinov2-small's test split stays float16: refused, nothing moved
    r = cli(*extract_args(sample_root, work, "--backbone", "tiny-random,dinov2-small", *dino, "--split", "val",
                          "--overwrite", "--workers", "0"), check=False)
    assert r.exit_code == 2 and "dtype is 'float16' in its test split" in r.stderr
    assert sorted(p.name for p in store_dir(work, "tiny-random", "val").iterdir()) == before
    assert not list((work / "features").glob("*/*.replaced-*"))
