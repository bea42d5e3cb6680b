"""Stage two on real stores: feature assembly, train-head, evaluate, submit, report, demo (real CLI)."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, cli
from kscli.data.layout import Benchmark, Layout
from kscli.errors import KscliError
from kscli.heads.features import load_feature_set
from kscli.heads.metrics import compute_metrics
from kscli.heads.base import load_head
from kscli.heads.run import predict_split


@pytest.fixture(scope="module")
def extracted(sample_root, tmp_path_factory):
    """A copy of the sample with one train ego clip, one exo clip and one test ego clip gone, extracted."""
    root = tmp_path_factory.mktemp("pipeline")
    data, work = root / "download", root / "work"
    shutil.copytree(sample_root, data)
    bench = Benchmark(Layout.resolve(data_root=data))
    train, test = bench.segments("train"), bench.segments("test")
    gone = {"train_ego": train[3].ego.name, "exo": train[5].exo[0].name, "test_ego": test[1].ego.name}
    clips = data / "keystep_benchmark" / "clips_448p"
    for name in gone.values():
        (clips / name).unlink()
    cli("extract", "--backbone", "tiny-random", "--data-root", data, "--work-dir", work, "--workers", "2", "--no-progress")
    return data, work, gone


def args(extracted):
    data, work, _ = extracted
    return ["--data-root", data, "--work-dir", work]


def test_assembly_counts_missing_ego_and_masks_missing_exo(extracted):
    data, work, gone = extracted
    bench = Benchmark(Layout.resolve(data_root=data, work_dir=work))
    fs, asm = load_feature_set(bench, "train", ["tiny-random"])
    assert asm.missing_ego == [gone["train_ego"]] and gone["train_ego"] not in fs.names
    assert asm.used == len(fs) == len(bench.segments("train")) - 1
    assert asm.exo_missing == 1 and asm.exo_views == int(fs.exo_mask.sum())
    seg = bench.segments("train")[5]
    row = fs.names.index(seg.name)
    assert fs.exo_mask[row].sum() == len(seg.exo) - 1
    assert np.all(fs.exo[~fs.exo_mask] == 0) and fs.exo.shape[1] == max(len(s.exo) for s in bench.segments("train"))
    both, _ = load_feature_set(bench, "train", ["tiny-random", "tiny-random"])
    np.testing.assert_array_equal(both.ego, np.concatenate([fs.ego, fs.ego], axis=1))


@pytest.mark.parametrize("head", ["linear", "mlp", "distill", "attentive"])
def test_each_head_learns_the_sample_far_above_chance(extracted, head):
    _, work, _ = extracted
    res = cli("train-head", "--store", "tiny-random", "--head", head, "--name", f"h-{head}", *args(extracted))
    metrics = json.loads((work / "runs" / f"h-{head}" / "metrics.json").read_text())
    chance = 100 / 6
    assert metrics["val"]["top1"] >= 2.5 * chance, res.stdout
    assert metrics["selection"]["on"] == "holdout"
    assert metrics["train_segments_left_out"] == 1
    assert "top-1" in res.stdout


@pytest.mark.slow
def test_context_head_through_the_cli_keeps_segments_without_ego(extracted):
    data, work, gone = extracted
    res = cli("train-head", "--store", "tiny-random", "--head", "context", "--name", "ctx", *args(extracted))
    run = work / "runs" / "ctx"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["head"] == "context" and "top-1" in res.stdout
    assert metrics["val"]["top1"] >= 2.5 * 100 / 6, res.stdout
    # the train segment without an ego feature stays in its take as context
    assert metrics["train_segments_without_ego_feature"] == 1 and metrics["train_segments_left_out"] == 0
    assert metrics["selection"]["on"] == "holdout" and metrics["selection"]["n_select_takes"] >= 1
    # the teacher's own val top-1 (ego + exo) beside the student's, and both curves per epoch
    teacher = metrics["teacher"]
    assert 0 <= teacher["val_top1"] <= 100 and 0 <= teacher["student_val_top1"] <= 100 and teacher["n"] > 0
    assert "teacher (ego + exo, training only): val top-1" in res.stdout
    history = json.loads((run / "history.json").read_text())["history"]
    assert all(len(h["teacher_select_top1"]) == len(h["select_top1"]) for h in history)
    # the student's number beside the teacher's is its real val prediction, on the same segments
    val_fs, _ = load_feature_set(Benchmark(Layout.resolve(data_root=data, work_dir=work)), "val",
                                 ["tiny-random"], with_exo=True, keep_missing=True)
    rows = (val_fs.labels >= 0) & val_fs.exo_mask.any(1) & val_fs.ego_present
    pred = {r["ego_segment_name"]: r["label_id"] for r in
            json.loads((run / "predictions_val.json").read_text())["results"]}
    hits = [pred[n] == y for n, y, r in zip(val_fs.names, val_fs.labels, rows) if r]
    assert teacher["n"] == len(hits) and teacher["student_val_top1"] == pytest.approx(100 * np.mean(hits))
    no_teacher = cli("train-head", "--store", "tiny-random", "--head", "context", "--set", "use_exo=false", "--epochs", "1",
                     "--name", "ctx-noexo", *args(extracted))
    assert "teacher" not in json.loads((work / "runs" / "ctx-noexo" / "metrics.json").read_text())
    assert "teacher (ego + exo" not in no_teacher.stdout and "without the exo teacher" in no_teacher.stdout
    # every test segment is predicted; the one without an ego feature from its take, not the prior
    cli("submit", "--run", "ctx", *args(extracted))
    doc = json.loads((work / "submissions" / "test_ctx.json").read_text())
    bench = Benchmark(Layout.resolve(data_root=data, work_dir=work))
    assert sorted(r["ego_segment_name"] for r in doc["results"]) == sorted(s.name for s in bench.segments("test"))
    assert doc["without_ego_feature"] == [gone["test_ego"]]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    names, probs, missing = predict_split(ckpt, bench, "test")
    row = names.index(gone["test_ego"])
    assert missing == [gone["test_ego"]] and not np.allclose(probs[row], ckpt["prior"], atol=1e-3)
    by_name = {r["ego_segment_name"]: r["label_id"] for r in doc["results"]}
    assert [int(p.argmax()) for p in probs] == [by_name[n] for n in names]
    cli("report", "ctx", "--work-dir", work)
    assert "| teacher val top-1 (ego + exo" in (run / "report.md").read_text()
    val = cli("train-head", "--store", "tiny-random", "--head", "context", "--select-on", "val", "--name", "ctx-val", *args(extracted))
    sel = json.loads((work / "runs" / "ctx-val" / "metrics.json").read_text())["selection"]
    assert sel["on"] == "val" and sel["n_select"] == len(bench.segments("val")), val.stdout
    for bad, msg in ((["--head", "bogus"], "known heads: attentive, context, distill, linear, mlp"),
                     (["--head", "context", "--set", "nope=1"], "head 'context' has no option 'nope'; its options: lrs,"),
                     (["--head", "context", "--class-balance"], "'class_balance': head 'context' has no such option"),
                     (["--head", "mlp", "--set", "hidden=abc"], "hidden takes an integer, e.g. --set hidden=512"),
                     (["--head", "attentive", "--set", "dropout=1.5"], "dropout must be in [0, 1)"),
                     (["--head", "mlp", "--set", "hidden"], "expected key=value")):
        r = cli("train-head", "--store", "tiny-random", *bad, *args(extracted), check=False)
        assert r.exit_code == 2 and msg in r.stderr, r.stderr


def test_nonfinite_features_count_as_missing_and_metrics_refuse_nan(extracted, tmp_path):
    data, work, _ = extracted
    work2 = tmp_path / "work"
    shutil.copytree(work / "features", work2 / "features")
    bench = Benchmark(Layout.resolve(data_root=data, work_dir=work2))
    seg = bench.segments("val")[0]
    for part in (work2 / "features" / "tiny-random" / "val").glob("part-*.h5"):
        with h5py.File(part, "r+") as f:
            names = list(f["names"].asstr()[()])
            if seg.ego.name in names:
                f["features"][names.index(seg.ego.name)] = np.nan
    fs, asm = load_feature_set(bench, "val", ["tiny-random"], with_exo=False, keep_missing=True)
    assert asm.nonfinite == [seg.ego.name] and seg.name in asm.missing_ego and "NaN/inf" in asm.line()
    row = fs.names.index(seg.name)
    assert not fs.ego_present[row] and np.isfinite(fs.ego).all() and fs.ego_present.sum() == len(fs) - 1
    left_out, _ = load_feature_set(bench, "val", ["tiny-random"], with_exo=False)
    assert seg.name not in left_out.names and left_out.ego_present.all()
    with pytest.raises(KscliError, match="NaN or infinite"):  # a NaN would rank its label first
        compute_metrics(np.full((2, 6), np.nan), np.array([0, 1]), None, 6)


def test_same_seed_same_predictions_and_checkpoint_round_trip(extracted):
    data, work, _ = extracted
    cli("train-head", "--store", "tiny-random", "--head", "mlp", "--name", "seed-a", "--seed", "3", *args(extracted))
    cli("train-head", "--store", "tiny-random", "--head", "mlp", "--name", "seed-b", "--seed", "3", *args(extracted))
    a = json.loads((work / "runs" / "seed-a" / "predictions_val.json").read_text())["results"]
    b = json.loads((work / "runs" / "seed-b" / "predictions_val.json").read_text())["results"]
    assert a == b
    ckpt = torch.load(work / "runs" / "seed-a" / "checkpoint.pt", weights_only=True)
    assert ckpt["labels"][0]["label_id"] == 0 and ckpt["backbones"]["tiny-random"]["backbone"]["name"] == "tiny-random"
    head = load_head(ckpt)
    bench = Benchmark(Layout.resolve(data_root=data, work_dir=work))
    fs, _ = load_feature_set(bench, "val", ["tiny-random"], with_exo=False)
    probs = head.predict_proba(fs)
    by_name = {r["ego_segment_name"]: r for r in a}
    assert [int(p.argmax()) for p in probs] == [by_name[n]["label_id"] for n in fs.names]
    again = cli("train-head", "--store", "tiny-random", "--head", "mlp", "--name", "seed-a", *args(extracted), check=False)
    assert again.exit_code == 2 and "never overwritten" in again.stderr


def test_evaluate_rescores_a_run_and_rejects_bad_files(extracted, tmp_path):
    _, work, _ = extracted
    cli("train-head", "--store", "tiny-random", "--head", "linear", "--name", "ev", *args(extracted))
    preds = work / "runs" / "ev" / "predictions_val.json"
    res = cli("evaluate", preds, "--json", *args(extracted))
    assert json.loads(res.stdout)["top1"] == pytest.approx(
        json.loads((work / "runs" / "ev" / "metrics.json").read_text())["val"]["top1"])
    doc = json.loads(preds.read_text())
    bad = dict(doc, results=[dict(doc["results"][0], ego_segment_name="val/nope/start0_end1_aria01_214-1.mp4")]
               + doc["results"][1:])
    (tmp_path / "wrong.json").write_text(json.dumps(bad))
    r = cli("evaluate", tmp_path / "wrong.json", *args(extracted), check=False)
    assert r.exit_code == 2 and "results[0]: segment 'val/nope/" in r.stderr and "not in the annotations" in r.stderr
    bad = dict(doc, results=[dict(doc["results"][0], label_id=999)] + doc["results"][1:])
    (tmp_path / "label.json").write_text(json.dumps(bad))
    r = cli("evaluate", tmp_path / "label.json", *args(extracted), check=False)
    assert r.exit_code == 2 and "label_id 999 is not in the label mapping" in r.stderr
    (tmp_path / "short.json").write_text(json.dumps(dict(doc, results=doc["results"][1:])))
    r = cli("evaluate", tmp_path / "short.json", *args(extracted), check=False)
    assert r.exit_code == 2 and "1 segment(s) of the split have no prediction" in r.stderr


def test_submit_covers_every_test_segment_ensembles_and_writes_csv(extracted):
    data, work, gone = extracted
    cli("train-head", "--store", "tiny-random", "--head", "linear", "--name", "s-lin", *args(extracted))
    cli("train-head", "--store", "tiny-random", "--head", "distill", "--name", "s-dis", *args(extracted))
    res = cli("submit", "--run", "s-lin", *args(extracted))
    assert "1 segment(s) had no ego feature" in res.stdout and gone["test_ego"] in res.stdout
    out = work / "submissions" / "test_s-lin.json"
    doc = json.loads(out.read_text())
    test_names = [s.name for s in Benchmark(Layout.resolve(data_root=data)).segments("test")]
    assert sorted(r["ego_segment_name"] for r in doc["results"]) == sorted(test_names)
    assert doc["without_ego_feature"] == [gone["test_ego"]] and doc["challenge"] and doc["version"]
    assert all(len(r["top5"]) == 5 and r["top5"][0]["label_id"] == r["label_id"] for r in doc["results"])
    again = cli("submit", "--run", "s-lin", *args(extracted))  # never overwrites the first file
    assert json.loads(out.read_text()) == doc and "test_s-lin_" in again.stdout
    ens = cli("submit", "--run", "s-lin", "--run", work / "runs" / "s-dis", "--split", "val", "--format", "csv",
              *args(extracted))
    assert "2 run(s)" in ens.stdout and "top-1" in ens.stdout
    csv_file = work / "submissions" / "val_ensemble2.csv"
    lines = csv_file.read_text().splitlines()
    assert lines[0] == "ego_segment_name,label_id,top5_ids,top5_scores" and len(lines) == 1 + len(
        Benchmark(Layout.resolve(data_root=data)).segments("val"))
    cli("evaluate", csv_file, *args(extracted))
    r = cli("submit", "--run", "no-such-run", *args(extracted), check=False)
    assert r.exit_code == 2 and "no-such-run" in r.stderr
    r = cli("submit", "--run", "", *args(extracted), check=False)  # the option it came from is named
    assert r.exit_code == 2 and r.stderr.strip() == "error: run (--run): empty; give a plain name such as vjepa2-vitl or my-run"
    # a run named by a path that has no name of its own ('.', inside the run folder) is still that run
    here = os.getcwd()
    os.chdir(work / "runs" / "s-lin")
    try:
        dot = cli("submit", "--run", ".", "--split", "val", *args(extracted))
    finally:
        os.chdir(here)
    assert "val_s-lin.json" in dot.stdout
    assert json.loads((work / "submissions" / "val_s-lin.json").read_text())["runs"] == ["s-lin"]


def test_report_draws_valid_pngs(extracted):
    _, work, _ = extracted
    cli("train-head", "--store", "tiny-random", "--head", "mlp", "--name", "rep", *args(extracted))
    res = cli("report", "rep", "--work-dir", work)
    md = (work / "runs" / "rep" / "report.md").read_text()
    assert "report.md" in res.stdout and "val top-1" in md and "one segment = " in md
    import matplotlib.image as mpimg
    for name in ("per_scenario", "confusions", "by_length", "training_curve"):
        png = work / "runs" / "rep" / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"report/{name}.png" in md
        assert mpimg.imread(png).shape[0] > 100
    assert not list((work / "runs" / "rep").rglob("*.tmp"))


def test_report_pictures_say_what_they_show():
    from kscli.heads.report import plot_confusions, plot_per_scenario, plot_training_curve

    val = {"top1": 50.0, "n": 10, "per_scenario": {"bike": {"top1": 40.0, "n": 5}, "cooking": {"top1": 60.0, "n": 5}}}
    fig = plot_per_scenario(val)
    assert [t.get_text() for t in fig.axes[0].texts] == ["40.0%\nn=5", "60.0%\nn=5"]
    fig = plot_confusions(np.array([0, 0, 1, 2, 2, 2]), np.array([1, 1, 0, 0, 0, 1]), ["a", "b", "c"])
    ticks = fig.axes[0].get_xticks()
    assert np.allclose(ticks, np.round(ticks))  # counts of segments: no 0.25 ticks
    hist = [{"epoch": e, "train_loss": [1.0 / e, 2.0], "select_top1": [10.0 * e, 0.0]} for e in range(1, 4)]
    fig = plot_training_curve(hist, member=0, select_on="holdout")
    assert len(fig.axes) == 2  # one y quantity per panel, no twin axis
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert labels == ["training loss", "top-1 on the selection split (held-out part of train)"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [10, 20, 30])
    for h in hist:  # a head with a teacher: both curves, told apart
        h["teacher_select_top1"] = [h["select_top1"][0] + 5, 0.0]
    fig = plot_training_curve(hist, member=0, select_on="val")
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == ["student: top-1 on the selection split (val)",
                      "its teacher (ego + exo, training only), same split"]
    np.testing.assert_allclose(fig.axes[1].lines[1].get_ydata(), [15, 25, 35])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    res = cli("demo", "--out", tmp_path / "my demo $x", "--no-progress")
    out = res.stdout
    assert "RANDOMLY INITIALISED" in out and "OK: every clip checked" in out
    for head in ("linear", "mlp", "distill", "context"):
        assert f"\n{head} " in out
    assert "12 keysteps: chance is 8.3% top-1" in out and "(one segment = " in out
    subs = list((tmp_path / "my demo $x" / "work" / "submissions").glob("test_*.json"))
    assert len(subs) == 1 and json.loads(subs[0].read_text())["results"]
    # the commands it ends with work when pasted into a shell, from another folder, spaces and all
    steps = out[out.index("next, on the demo's files"):].splitlines()[1:-1]
    script = "set -e\n" + "\n".join(line.strip().replace("kscli ", f"{sys.executable} -m kscli ", 1)
                                     for line in steps)
    p = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tiny-random/train: " in p.stdout and "report: " in p.stdout and "2 run(s)" in p.stdout


@pytest.mark.slow
def test_a_new_head_from_the_design_doc_trains_through_the_cli(extracted, tmp_path):
    """docs/design.md's worked example, as a user adds it: one file in the folder they run the
    installed `kscli` in, named in KSCLI_HEADS as the page says (no PYTHONPATH), or by its path."""
    from conftest import run_kscli

    text = (REPO / "docs" / "design.md").read_text()
    block = text.split("### Adding a head", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.splitlines()) <= 40
    printed = "KSCLI_HEADS=lowrank_head kscli train-head --head lowrank --store STORE --set rank=8"
    assert f"`{printed}`" in " ".join(text.split())
    (tmp_path / "lowrank_head.py").write_text(block)
    script = shutil.which("kscli", path=os.path.dirname(sys.executable))
    assert script, "the package installs the kscli console script"

    def user(*argv, check=True):  # `KSCLI_HEADS=lowrank_head kscli ...` in the folder holding the file
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        p = subprocess.run([script, *map(str, argv)], cwd=tmp_path, capture_output=True, text=True,
                           env={**env, "KSCLI_HEADS": "lowrank_head"})
        assert not check or p.returncode == 0, p.stderr
        return p

    listed = user("heads").stdout
    assert "lowrank    low-rank linear probe" in listed
    assert "rank of the weight matrix" in user("heads", "--head", "lowrank").stdout
    _, work, _ = extracted
    argv = printed.split()[2:]  # the printed command, its store named, in the folder of the file
    argv[argv.index("STORE")] = "tiny-random"
    out = user(*argv, "--name", "toy", *args(extracted))
    metrics = json.loads((work / "runs" / "toy" / "metrics.json").read_text())
    assert metrics["head"] == "lowrank" and metrics["val"]["top1"] >= 2.5 * 100 / 6, out.stdout
    ckpt = torch.load(work / "runs" / "toy" / "checkpoint.pt", weights_only=True)
    assert ckpt["cfg"] == {"rank": 8} and ckpt["state_dict"]["a_w"].shape == (1, ckpt["in_dim"], 8)
    sub = run_kscli("submit", "--run", "toy", *args(extracted), env={"KSCLI_HEADS": str(tmp_path / "lowrank_head.py")})
    assert "test:" in sub.stdout  # by its path, from another folder
    # a plugin file named like another module (json.py) does not stand in for that module
    (tmp_path / "json.py").write_text(block)
    probe = ("from kscli.heads.base import list_heads; assert 'lowrank' in list_heads(); "
             "import json; print(json.dumps({'ok': 1}))")
    shadow = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "KSCLI_HEADS": str(tmp_path / "json.py")})
    assert shadow.returncode == 0 and '{"ok": 1}' in shadow.stdout, shadow.stderr
    # without the variable the head is unknown, in one line that names the variable
    gone = run_kscli("submit", "--run", "toy", "--split", "val", *args(extracted), check=False)
    assert gone.returncode == 2 and "unknown head 'lowrank'" in gone.stderr and "KSCLI_HEADS" in gone.stderr
    bad = run_kscli("heads", env={"KSCLI_HEADS": "no_such_module"}, check=False)
    assert bad.returncode == 2 and "KSCLI_HEADS: cannot import 'no_such_module'" in bad.stderr


@pytest.mark.slow
def test_the_readme_python_example_runs_as_printed(tmp_path):
    """README's "Using it from Python" block, copied as a user would, run in an empty folder."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Using it from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(block)
    p = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "top-1" in p.stdout and 0 <= float(p.stdout.strip().splitlines()[-1]) <= 100
    assert (tmp_path / "api-demo" / "work" / "runs").is_dir()
