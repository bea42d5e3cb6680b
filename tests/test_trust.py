"""Numbers you can trust: every way a new user or a hostile tester got a wrong or meaningless
number with exit 0 (issue #17), each through the real CLI, each refused in one line or made
right."""

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, cli, run_kscli
from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.extract.store import FeatureStore

TINY = ("--backbone", "tiny-random")  # extract: the backbone
STORE = ("--store", "tiny-random")  # train-head, features: the store it wrote


@pytest.fixture(scope="module")
def work(sample_root, tmp_path_factory):
    """The tiny sample extracted with tiny-random (every split, every view): one store."""
    root = tmp_path_factory.mktemp("trust")
    work = root / "work"
    cli("extract", *TINY, "--data-root", sample_root, "--work-dir", work, "--workers", "0", "--no-progress")
    return work


def where(sample_root, work):
    return ["--data-root", sample_root, "--work-dir", work]


def one_line(result, code=2):
    """The result of a refusal: exit `code`, one line on stderr, no traceback."""
    err = result.stderr
    assert result.exit_code == code if hasattr(result, "exit_code") else result.returncode == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- 1. random features
def test_no_command_falls_back_to_the_random_backbone(sample_root, tmp_path, work):
    e = one_line(cli("extract", *where(sample_root, tmp_path), "--split", "test", check=False))
    assert "--backbone: name the backbone to extract with" in e
    assert not (tmp_path / "features").exists()
    t = one_line(cli("train-head", "--head", "mlp", "--set", "hidden=1024", *where(sample_root, work), check=False))
    assert "--store: name the store(s) to train on (stores in" in t and "tiny-random" in t


def test_random_features_say_so_everywhere(sample_root, work, tmp_path):
    info = cli("features", "info", *STORE, "--work-dir", work, "--split", "test")
    assert "WARNING: RANDOM FEATURES: made by tiny-random" in info.stdout
    ex = cli("extract", *TINY, *where(sample_root, work), "--split", "test", "--no-progress")
    assert "WARNING: RANDOM FEATURES" in ex.stdout
    run = cli("train-head", *STORE, "--head", "linear", "--name", "rand", *where(sample_root, work))
    assert "WARNING: RANDOM FEATURES" in run.stdout
    assert json.loads((work / "runs" / "rand" / "metrics.json").read_text())["random_features"] is True
    sub = cli("submit", "--run", "rand", "--out", tmp_path / "s.json", *where(sample_root, work))
    assert "WARNING: this submission is built on RANDOM FEATURES" in sub.stderr
    assert json.loads((tmp_path / "s.json").read_text())["warning"].startswith("RANDOM FEATURES")


# ----------------------------------------------------------------------------- 2. one store, one way
def test_a_resume_with_other_settings_is_refused_in_one_line(sample_root, tmp_path):
    base = [*TINY, *where(sample_root, tmp_path), "--split", "train", "--limit", "4", "--workers", "0",
            "--no-progress"]
    cli("extract", *base, "--precision", "fp32")
    bf16 = one_line(cli("extract", *base, "--precision", "bf16", check=False))
    assert "precision is 'float32' in the store but 'bfloat16' now); pass --tag NAME for a new store" in bf16
    store = FeatureStore(tmp_path / "features" / "tiny-random" / "train")
    assert len(store) == 4 and not store.mismatched_parts()


def test_another_clip_source_is_refused(sample_root, tmp_path):
    data = tmp_path / "download"
    shutil.copytree(sample_root, data, symlinks=True)
    clips = data / "keystep_benchmark"
    (clips / "clips_96p").symlink_to(clips / "clips_448p")
    base = [*TINY, *where(data, tmp_path / "work"), "--split", "val", "--workers", "0", "--no-progress"]
    cli("extract", *base, "--limit", "2")
    other = one_line(cli("extract", *base, "--parts", "clips_96p", check=False))
    assert "clips is 'clips_448p' in the store but 'clips_96p' now" in other


@pytest.mark.slow
def test_two_shards_started_together_with_other_settings_never_mix(sample_root, tmp_path):
    work = tmp_path / "work"
    procs = [subprocess.Popen([sys.executable, "-m", "kscli", "extract", *TINY, "--data-root", str(sample_root),
                               "--work-dir", str(work), "--split", "train", "--workers", "0", "--batch-size", "2",
                               "--no-progress", "--shard", str(k), "--num-shards", "2", "--num-frames", str(frames)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, frames in ((0, 8), (1, 4))]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    err = next(e for p, (_, e) in zip(procs, outs) if p.returncode == 2)
    assert err.count("\n") == 1 and "backbone.num_frames is" in err and "pass --tag NAME" in err, err
    store = FeatureStore(work / "features" / "tiny-random" / "train").check_one_way()
    assert not store.mismatched_parts() and len(store) > 0


def _make_mixed(store_dir):
    """What an older kscli let happen: parts of two frame counts, no store.json."""
    (store_dir / "store.json").unlink()
    part = sorted(store_dir.glob("part-*.h5"))[0]
    with h5py.File(part, "r") as f:
        rows = f["features"][()]
        cfg = json.loads(f.attrs["config"])
        names = [n.decode() for n in f["names"][:2]]
    from kscli.extract.store import StoreRows, write_part

    cfg["backbone"]["num_frames"] = 4
    write_part(store_dir / "part-r001-s999999.h5", StoreRows(names, ["ego", "ego"], rows[:2], np.zeros((2, 4)),
                                                             np.array([9, 9]), np.array([30.0, 30.0])), cfg)


def test_a_mixed_store_is_reported_and_healed_through_the_cli(sample_root, tmp_path):
    work = tmp_path / "work"
    base = [*where(sample_root, work), "--split", "train", "--workers", "0", "--no-progress"]
    cli("extract", *TINY, *base)
    folder = work / "features" / "tiny-random" / "train"
    _make_mixed(folder)
    info = cli("features", "info", *STORE, "--work-dir", work, "--split", "train")
    assert "MIXED:" in info.stdout and "were made otherwise than the store" in info.stdout
    assert "features verify --store tiny-random --split train --move-aside" in info.stdout
    again = one_line(cli("extract", *TINY, *base, check=False))  # never "skipped (already done)"
    assert "mixes features made two ways" in again
    train = one_line(cli("train-head", *STORE, *where(sample_root, work), check=False))
    assert "mixes features made two ways" in train
    v = cli("features", "verify", *STORE, "--work-dir", work, "--split", "train", check=False)
    assert v.exit_code == 1 and "1 made otherwise" in v.stdout
    cli("features", "verify", *STORE, "--work-dir", work, "--split", "train", "--move-aside")
    healed = cli("extract", *TINY, *base)
    assert "failed 0" in healed.stdout
    assert not FeatureStore(folder).check_one_way().mismatched_parts()


def test_the_old_backbone_spelling_still_names_a_store_with_one_note(sample_root, work, tmp_path):
    """--backbone, the old spelling of --store in train-head and features info/verify, still
    works in 0.2.0 the same as --store, with one line on stderr naming the new spelling."""
    w = tmp_path / "work"
    shutil.copytree(work / "features", w / "features")
    note = "note: --backbone is now --store; the old spelling goes in the next release\n"
    old = cli("train-head", *TINY, "--head", "linear", "--name", "old", "--no-progress", *where(sample_root, w))
    assert old.stderr == note and (w / "runs" / "old" / "metrics.json").is_file()
    assert json.loads((w / "runs" / "old" / "config.json").read_text())["tags"] == ["tiny-random"]
    new = cli("train-head", *STORE, "--head", "linear", "--name", "new", "--no-progress", *where(sample_root, w))
    assert new.stderr == "" and "--backbone" not in cli("train-head", "--help").stdout
    metrics = [json.loads((w / "runs" / n / "metrics.json").read_text()) for n in ("old", "new")]
    assert metrics[0]["val"] == metrics[1]["val"]
    info = cli("features", "info", *TINY, "--work-dir", w, "--split", "test", "--json")
    assert info.stderr == note
    assert info.stdout == cli("features", "info", *STORE, "--work-dir", w, "--split", "test", "--json").stdout
    both = cli("features", "info", *STORE, *TINY, "--work-dir", w, "--split", "test", "--json")  # the same store
    assert both.stderr == note and both.stdout == info.stdout
    verify = cli("features", "verify", *TINY, "--work-dir", w, "--split", "test", "--no-progress")
    assert verify.stderr == note and "good part(s)" in verify.stdout


# ----------------------------------------------------------------------------- 3. the best run
def test_submit_ranks_every_run_on_val_scored_now_and_says_so(sample_root, work, tmp_path):
    w = tmp_path / "work"
    shutil.copytree(work / "features", w / "features")
    for name, seed in (("a-same", 1), ("b-same", 1), ("c-other", 2)):
        cli("train-head", *STORE, "--head", "linear", "--seed", str(seed), "--name", name, *where(sample_root, w))
    scores = {n: json.loads((w / "runs" / n / "metrics.json").read_text())["val"]["top1"]
              for n in ("a-same", "b-same", "c-other")}
    # a run whose recorded numbers flatter it (stale, or a 1-example holdout): not what is ranked
    lie = w / "runs" / "c-other" / "metrics.json"
    doc = json.loads(lie.read_text())
    doc["val"]["top1"], doc["selection"]["select_top1"] = 100.0, 100.0
    lie.write_text(json.dumps(doc))
    (w / "runs" / "d-damaged").mkdir()
    shutil.copy(w / "runs" / "a-same" / "checkpoint.pt", w / "runs" / "d-damaged" / "checkpoint.pt")
    (w / "runs" / "d-damaged" / "metrics.json").write_text("{not json")
    (w / "runs" / "e-broken").mkdir()
    (w / "runs" / "e-broken" / "checkpoint.pt").write_bytes(b"half a checkpoint")
    (w / "runs" / "e-broken" / "metrics.json").write_text("{}")
    res = cli("submit", "--split", "val", *where(sample_root, w))
    n = len(Benchmark(Layout.resolve(data_root=sample_root)).segments("val"))
    best = max(scores.values())
    expected = min(k for k in ("a-same", "b-same", "c-other", "d-damaged")
                   if scores.get(k, scores["a-same"]) == best)  # d-damaged is a copy of a-same
    assert f"on the same {n} val segments (scored now): {expected} {best:.2f}%" in res.stdout
    assert "runner-up:" in res.stdout and "e-broken: " in res.stdout and "left out" in res.stdout
    assert f"submissions/val_{expected}.json" in res.stdout


# ----------------------------------------------------------------------------- 4. finite numbers only
def test_a_diverged_training_stops_with_one_line(sample_root, work):
    e = one_line(cli("train-head", *STORE, "--head", "mlp", "--lrs", "1e30", "--wds", "0", "--name", "boom",
                     *where(sample_root, work), "--no-progress", check=False))
    assert "training diverged" in e and "try smaller ones" in e
    assert not (work / "runs" / "boom").exists()


def test_a_diverged_member_is_left_out_with_a_note(sample_root, work):
    r = cli("train-head", *STORE, "--head", "linear", "--lrs", "1e-2,1e30", "--name", "half-boom",
            *where(sample_root, work), "--no-progress")
    metrics = json.loads((work / "runs" / "half-boom" / "metrics.json").read_text())
    assert metrics["selection"]["lr"] == 1e-2 and "lr 1e+30 wd 0.0001 diverged" in r.stdout
    history = (work / "runs" / "half-boom" / "history.json").read_text()
    assert "NaN" not in history and "Infinity" not in history
    json.loads(history, parse_constant=lambda c: pytest.fail(f"{c} in history.json"))


def test_evaluate_and_submit_refuse_non_finite_scores(sample_root, work, tmp_path):
    cli("train-head", *STORE, "--head", "linear", "--name", "fin", *where(sample_root, work))
    preds = (work / "runs" / "fin" / "predictions_val.json").read_text()
    bad = tmp_path / "nan.json"
    bad.write_text(preds.replace('"score": ', '"score": NaN, "x": ', 1))
    e = one_line(cli("evaluate", bad, *where(sample_root, work), check=False))
    assert "NaN is not a JSON number" in e
    doc = json.loads(preds)
    rows = [[r["ego_segment_name"], r["label_id"], " ".join(str(t["label_id"]) for t in r["top5"]),
             " ".join("nan" for _ in r["top5"])] for r in doc["results"]]
    csv = tmp_path / "nan.csv"
    csv.write_text("ego_segment_name,label_id,top5_ids,top5_scores\n" + "\n".join(",".join(map(str, r)) for r in rows))
    assert "is not a finite number" in one_line(cli("evaluate", csv, *where(sample_root, work), check=False))
    for what, spoil in (("NaN", lambda sd: sd["fc_w"].fill_(float("nan"))),
                        ("standard deviation <= 0", lambda sd: sd["ego_std"].zero_())):
        ckpt = torch.load(work / "runs" / "fin" / "checkpoint.pt", weights_only=True)
        spoil(ckpt["state_dict"])
        run = work / "runs" / f"spoilt-{what[:3]}"
        shutil.copytree(work / "runs" / "fin", run)
        torch.save(ckpt, run / "checkpoint.pt")
        e = one_line(cli("submit", "--run", run, *where(sample_root, work), check=False))
        assert what in e, e


# ----------------------------------------------------------------------------- 5. nothing lost or misplaced
@pytest.mark.slow
def test_two_runs_started_in_the_same_second_both_finish(sample_root, work):
    from kscli.heads.run import reserve_run_dir

    layout = Layout.resolve(data_root=sample_root, work_dir=work)
    a = reserve_run_dir(layout, None, "linear", ["tiny-random"])
    b = reserve_run_dir(layout, None, "linear", ["tiny-random"])
    assert a != b and b.name.startswith(a.name[:len("linear_tiny-random_2")])
    shutil.rmtree(a), shutil.rmtree(b)
    procs = [subprocess.Popen([sys.executable, "-m", "kscli", "train-head", *STORE, "--head", "linear", "--data-root",
                               str(sample_root), "--work-dir", str(work), "--no-progress"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    made = {line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("run ")}
    assert len(made) == 2 and all(Path(m).is_dir() for m in made)


@pytest.mark.parametrize("args", [["train-head", *STORE, "--name", "../../x"], ["train-head", *STORE, "--name", "/abs/x"],
                                  ["extract", *TINY, "--tag", "../../../x", "--split", "test"],
                                  ["train-head", "--store", "../features/x"]])
def test_names_never_leave_the_work_dir(sample_root, tmp_path, args):
    work = tmp_path / "a" / "b" / "work"
    before = set(tmp_path.rglob("*"))
    e = one_line(cli(*args, *where(sample_root, work), check=False))
    assert "kscli keeps stores and runs under --work-dir" in e
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_name_in_use_fails_before_training(sample_root, work):
    cli("train-head", *STORE, "--head", "linear", "--name", "taken", *where(sample_root, work))
    r = run_kscli("train-head", *STORE, "--head", "mlp", "--name", "taken", *where(sample_root, work), check=False)
    assert r.returncode == 2 and "a run of that name exists" in r.stderr and "epoch" not in r.stderr
    (work / "runs" / "killed").mkdir()
    (work / "runs" / "killed" / ".unfinished").write_text('{"pid": 99, "host": "h", "since": "t"}')
    r = run_kscli("train-head", *STORE, "--name", "killed", *where(sample_root, work), check=False)
    assert "is unfinished (started by pid 99 on h at t): still training, or killed" in r.stderr


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_line_with_nothing_half_written(sample_root, work):
    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))
    p = subprocess.run([sys.executable, "-m", "kscli", "train-head", *STORE, "--head", "mlp", "--name", "full",
                        "--data-root", str(sample_root), "--work-dir", str(work), "--no-progress"], cwd=REPO,
                       capture_output=True, text=True, preexec_fn=limited)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "the file grew past a size limit" in p.stderr and "/runs/full/" in p.stderr
    assert not (work / "runs" / "full").exists()


def test_a_kill_while_saving_the_checkpoint_leaves_no_run(sample_root, work, monkeypatch):
    import pathlib

    real = pathlib.Path.write_bytes

    def dies_half_way(self, data):
        real(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_bytes", dies_half_way)
    r = cli("train-head", *STORE, "--head", "linear", "--name", "cut", *where(sample_root, work), check=False)
    monkeypatch.setattr(pathlib.Path, "write_bytes", real)
    assert r.exit_code == 130 and not (work / "runs" / "cut").exists()


# ----------------------------------------------------------------------------- 6. checked where it enters
@pytest.mark.parametrize("flag,value,words", [("--limit", "-3", "--limit -3: must be a whole number >= 1"),
                                              ("--num-frames", "0", "--num-frames 0: must be a whole number >= 1"),
                                              ("--precision", "fp16", "--precision 'fp16': choose from auto, fp32, bf16")])
def test_bad_extract_values_are_refused_by_cli_and_api_alike(sample_root, tmp_path, flag, value, words):
    from kscli.extract.run import ExtractConfig

    e = one_line(cli("extract", *TINY, *where(sample_root, tmp_path), flag, value, check=False))
    assert words in e
    key = flag[2:].replace("-", "_")
    with pytest.raises(KscliError, match=words.replace("(", r"\(")):
        ExtractConfig(backbone="tiny-random", **{key: value if key == "precision" else int(value)})


def test_an_extract_that_reads_nothing_exits_non_zero_naming_the_cause(sample_root, tmp_path):
    e = one_line(cli("extract", *TINY, *where(sample_root, tmp_path), "--parts", "clips_96p", check=False))
    assert "clips_96p: the clips folder does not exist; is --parts (now 'clips_96p')" in e
    empty = tmp_path / "clips"
    empty.mkdir()
    r = cli("extract", *TINY, *where(sample_root, tmp_path), "--clips-root", empty, "--split", "val",
            "--workers", "0", "--no-progress", check=False)
    assert r.exit_code == 1 and f"is under {empty}" in r.stderr and "is --parts (or --clips-root" in r.stderr
    assert not (tmp_path / "features" / "tiny-random" / "val" / "store.json").exists()


# ----------------------------------------------------------------------------- 7. one line, never a traceback
def test_damaged_or_hostile_files_are_one_line(sample_root, work, tmp_path):
    cli("train-head", *STORE, "--head", "linear", "--name", "rep", *where(sample_root, work))
    assert "unknown split 'tst'" in one_line(cli("evaluate", work / "runs" / "rep" / "predictions_val.json",
                                                 "--split", "tst", *where(sample_root, work), check=False))
    history = work / "runs" / "rep" / "history.json"
    history.write_text(json.dumps({"history": [{"epoch": "one", "train_loss": "low"}]}))
    assert "history.json: not a history train-head wrote" in one_line(
        cli("report", "rep", "--work-dir", work, check=False))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in one_line(cli("evaluate", deep, *where(sample_root, work), check=False))
    data = tmp_path / "download"
    shutil.copytree(sample_root, data)
    (data / "annotations" / "keystep_benchmark" / "keystep_segment_val.json").write_text(
        '{"segments": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nested too deeply" in one_line(cli("check-data", "--data-root", data, "--work-dir", tmp_path,
                                               "--split", "val", check=False))
    ckpt = torch.load(work / "runs" / "rep" / "checkpoint.pt", weights_only=True)
    ckpt["in_dim"] = "128"
    run = work / "runs" / "wrong-type"
    shutil.copytree(work / "runs" / "rep", run)
    torch.save(ckpt, run / "checkpoint.pt")
    assert "field 'in_dim' is str '128', expected an integer" in one_line(
        cli("submit", "--run", run, *where(sample_root, work), check=False))


def test_a_head_too_big_for_memory_is_one_line(sample_root, work):
    e = one_line(cli("train-head", *STORE, "--head", "mlp", "--set", "hidden=100000000", *where(sample_root, work),
                     check=False))
    assert "these options need about" in e and "GB free; choose smaller sizes" in e


# ----------------------------------------------------------------------------- every number reproducible
def test_a_run_folder_reruns_to_the_same_metrics_and_submissions_say_what_made_them(sample_root, work, tmp_path):
    cli("train-head", *STORE, "--head", "distill", "--seed", "4", "--lrs", "2e-3", "--set", "hidden=64",
        "--name", "orig", *where(sample_root, work))
    cli("train-head", "--from", "orig", "--name", "again", *where(sample_root, work))
    a, b = (json.loads((work / "runs" / n / "metrics.json").read_text()) for n in ("orig", "again"))
    assert a["val"] == b["val"] and a["selection"]["select_top1"] == b["selection"]["select_top1"]
    refused = one_line(cli("train-head", "--from", "orig", "--head", "mlp", *where(sample_root, work), check=False))
    assert "drop --head" in refused
    saved = json.loads((work / "runs" / "orig" / "config.json").read_text())
    assert saved["kscli"] and saved["stores"]["tiny-random"]["train"] and saved["annotations"]["label_mapping"]
    cli("submit", "--run", "orig", "--out", tmp_path / "t.json", *where(sample_root, work))
    doc = json.loads((tmp_path / "t.json").read_text())
    test = FeatureStore(work / "features" / "tiny-random" / "test")
    assert doc["runs"] == ["orig"] and doc["kscli"]
    assert doc["stores"] == {"orig": {"tiny-random": {"config": test.digest, "rows": test.rows_digest}}}


# ----------------------------------------------------------------------------- found by an independent review
@pytest.mark.slow
def test_a_run_of_the_same_rank_with_other_settings_started_moments_later_is_refused(sample_root, tmp_path):
    """B checks before A has written anything, then waits for A's lock: once it has the lock it
    must compare again, not report A's rows as its own 'already done'."""
    from kscli.extract.lock import held_by, lock_path
    from kscli.extract.store import open_for_writing
    from test_store import CFG, rows

    folder = tmp_path / "store"
    a = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, 'tests')\n"
        "from test_store import CFG, rows\n"
        "from kscli.extract.store import open_for_writing\n"
        f"w, _ = open_for_writing(__import__('pathlib').Path({str(folder)!r}), CFG, 0)\n"
        "print('locked', flush=True); time.sleep(1.0); w.write(rows(['a'])); w.close()")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert a.stdout.readline().strip() == "locked" and held_by(lock_path(folder, 0))
    with pytest.raises(KscliError, match="dtype is 'float32' in the store but 'float16' now"):
        open_for_writing(folder, {**CFG, "dtype": "float16"}, 0)  # waits for A's lock, then compares
    assert a.wait(timeout=30) == 0


@pytest.mark.slow
def test_from_refuses_a_store_that_holds_other_clips_now(sample_root, tmp_path):
    w = tmp_path / "work"
    base = [*TINY, *where(sample_root, w), "--workers", "0", "--no-progress"]
    cli("extract", *base, "--split", "train", "--limit", "30")
    cli("extract", *base, "--split", "val")
    cli("train-head", *STORE, "--head", "linear", "--name", "few", *where(sample_root, w))
    cli("extract", *base, "--split", "train")  # same settings, more clips
    e = one_line(cli("train-head", "--from", "few", *where(sample_root, w), check=False))
    assert "the store is not what few trained on (other clips" in e


def test_evaluate_gives_top5_credit_only_for_listed_classes(sample_root, work, tmp_path):
    cli("train-head", *STORE, "--head", "linear", "--name", "t5", *where(sample_root, work))
    doc = json.loads((work / "runs" / "t5" / "predictions_val.json").read_text())
    for r in doc["results"]:
        r["label_id"], r["top5"] = 5, [{"label_id": 5, "score": 1.0}]
    f = tmp_path / "one.json"
    f.write_text(json.dumps(doc))
    m = json.loads(cli("evaluate", f, "--json", *where(sample_root, work)).stdout)
    assert m["top5"] == m["top1"]  # one class named: top-5 is top-1
    doc["results"][0]["top5"] = [{"label_id": 5, "score": 1.0}, {"label_id": 5, "score": 0.5}]
    f.write_text(json.dumps(doc))
    assert "names a label_id twice" in one_line(cli("evaluate", f, *where(sample_root, work), check=False))


@pytest.mark.slow
def test_rows_with_non_finite_features_can_be_recomputed(sample_root, tmp_path):
    w = tmp_path / "work"
    base = [*TINY, *where(sample_root, w), "--split", "val", "--workers", "0", "--no-progress"]
    cli("extract", *base)
    folder = w / "features" / "tiny-random" / "val"
    part = next(folder.glob("part-*.h5"))
    with h5py.File(part, "r+") as f:
        f["features"][:3] = np.nan
    v = cli("features", "verify", *STORE, "--work-dir", w, "--split", "val", check=False)
    assert v.exit_code == 1 and "1 non-finite" in v.stdout and "3 of" in v.stdout
    cli("features", "verify", *STORE, "--work-dir", w, "--split", "val", "--move-aside")
    again = cli("extract", *base)
    store = FeatureStore(folder)
    assert "extracted" in again.stdout and np.isfinite(store.get(store.names)).all()


@pytest.mark.slow
def test_hand_edited_stores_are_one_line(sample_root, tmp_path):
    w = tmp_path / "work"
    cli("extract", *TINY, *where(sample_root, w), "--split", "train", "--workers", "0", "--no-progress")
    folder = w / "features" / "tiny-random" / "train"
    part = next(folder.glob("part-*.h5"))
    for name, spoil in (("config null", lambda f: f.attrs.__setitem__("config", "null")),
                        ("names one short", lambda f: (f.__delitem__("names"),
                                                       f.create_dataset("names", data=np.array(["x"] * (len(f["features"]) - 1), dtype=object),
                                                                        dtype=h5py.string_dtype())))):
        backup = part.read_bytes()
        with h5py.File(part, "r+") as f:
            spoil(f)
        for args in (["features", "info", *STORE, "--work-dir", w], ["train-head", *STORE, *where(sample_root, w)]):
            e = one_line(cli(*args, check=False))
            assert "unreadable feature part" in e, (name, e)
        part.write_bytes(backup)
    (folder / "store.json").write_text("[1]")
    assert "not a store.json kscli wrote" in one_line(cli("features", "info", *STORE, "--work-dir", w, check=False))


def test_hand_edited_run_files_and_checkpoints_are_one_line(sample_root, work, tmp_path):
    cli("train-head", *STORE, "--head", "linear", "--name", "ed", *where(sample_root, work))
    run = work / "runs" / "ed"
    for name, edit in (("config.json", lambda d: d["train"].pop("head")), ("config.json", lambda d: d.update(stores=[1]))):
        shutil.copytree(run, tmp_path / "r")
        doc = json.loads((run / name).read_text())
        edit(doc)
        (run / name).write_text(json.dumps(doc))
        assert "cannot be rerun exactly" in one_line(cli("train-head", "--from", "ed", *where(sample_root, work),
                                                         check=False))
        shutil.rmtree(run), shutil.copytree(tmp_path / "r", run), shutil.rmtree(tmp_path / "r")
    doc = json.loads((run / "metrics.json").read_text())
    doc["selection"] = [1]
    (run / "metrics.json").write_text(json.dumps(doc))
    assert "is not as train-head wrote it" in one_line(cli("report", "ed", "--work-dir", work, check=False))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    bad = work / "runs" / "ed-bad"
    shutil.copytree(run, bad)
    torch.save({**ckpt, "tags": []}, bad / "checkpoint.pt")
    assert "field 'tags' must name the store" in one_line(cli("submit", "--run", bad, *where(sample_root, work),
                                                                check=False))
    torch.save({k: v for k, v in ckpt.items() if k != "tags"}, bad / "checkpoint.pt")
    assert "does not name the stores it was trained on" in one_line(
        cli("submit", "--run", bad, *where(sample_root, work), check=False))
    (bad / ".unfinished").write_text("{}")
    assert "this run is unfinished" in one_line(cli("submit", "--run", "ed-bad", *where(sample_root, work),
                                                    check=False))


def test_small_holes_the_review_found(sample_root, tmp_path, work):
    from kscli.fileio import loads_strict

    with pytest.raises(KscliError, match="1e999 is not a finite number"):
        loads_strict('{"end_time": 1e999}', "x")
    assert "holds a comma" in one_line(cli("extract", *TINY, "--tag", "a,b", *where(sample_root, tmp_path), check=False))
    short = tmp_path / "short.csv"
    short.write_text("ego_segment_name,label_id,top5_ids,top5_scores\nval/x.mp4\n")
    assert "line 2: not a row of" in one_line(cli("evaluate", short, *where(sample_root, work), check=False))
