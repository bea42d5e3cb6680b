"""The benchmark's files as the download gives them: label mapping, segments, layout, errors."""

import json

import pytest

from kscli.data.labels import read_label_map
from kscli.data.layout import Benchmark, Layout, parse_splits
from kscli.data.segments import camera_role, parse_clip_name, read_segments
from kscli.errors import KscliError

LABELS_CSV = (
    "label_id,step_unique_id,step_name,scenario_name\n"
    "0,1567,Stir the mixture,cooking\n"
    '1,502,"Whisk eggs, then add milk",cooking\n'
    "2,824,Read the instructions,health\n"
)


def seg(name="train/take_1/start0.85598_end33.20377_aria02_214-1.mp4", exo=("cam01", "cam02"), **kw):
    stem = name.rsplit("_", 2)[0] if "aria" in name else name
    base = name[: name.index("_aria")] if "_aria" in name else stem
    d = {"segment_name_list": [name] + [f"{base}_{c}.mp4" for c in exo], "ego_segment_name": name,
         "take_uid": "77cd56fc", "take_name": "take_1", "start_time": 0.85598, "end_time": 33.20377,
         "step_unique_id": 1567, "label_id": 0, "step_name": "Stir the mixture"}
    d.update(kw)
    return d


def write_split(folder, split, segments):
    fname = {"train": "keystep_segment_train.json", "val": "keystep_segment_val.json",
             "test": "keystep_segment_test_unannotated.json"}[split]
    p = folder / fname
    p.write_text(json.dumps({"date": "04/02/2024", "description": "x", "splits": split, "segments": segments}))
    return p


@pytest.fixture
def labels_path(tmp_path):
    p = tmp_path / "label_mapping.csv"
    p.write_text(LABELS_CSV)
    return p


def test_label_map_reads_quoted_names_with_commas(labels_path):
    lm = read_label_map(labels_path)
    assert lm.num_classes == 3
    assert lm[1].step_name == "Whisk eggs, then add milk"
    assert lm[1].step_unique_id == 502 and lm[2].scenario == "health"
    assert lm.from_rows(lm.to_rows()).keysteps == lm.keysteps


@pytest.mark.parametrize("text, needle", [
    ("label_id,step_unique_id,step_name\n0,1,a\n", "scenario_name"),
    ("label_id,step_unique_id,step_name,scenario_name\n0,1,Whisk eggs, then milk,cooking\n", "line 2"),
    ("label_id,step_unique_id,step_name,scenario_name\n0,1,a,cooking\n2,3,b,bike\n", "without gaps"),
    ("label_id,step_unique_id,step_name,scenario_name\nzero,1,a,cooking\n", "'label_id'"),
    ("label_id,step_unique_id,step_name,scenario_name\n0,1,a,cooking\n0,2,b,bike\n", "twice"),
])
def test_label_map_errors_name_file_and_line(tmp_path, text, needle):
    p = tmp_path / "label_mapping.csv"
    p.write_text(text)
    with pytest.raises(KscliError, match=needle) as e:
        read_label_map(p)
    assert str(p) in str(e.value)


def test_read_real_layout_segments(tmp_path, labels_path):
    lm = read_label_map(labels_path)
    p = write_split(tmp_path, "train", [
        seg(),
        seg("train/take_2/start0_end43.5086_aria_214-1.mp4", exo=("cam01",), start_time=0, end_time=43.5086,
            take_name="take_2", label_id=1, step_unique_id=502),
    ])
    ann = read_segments(p, "train", lm)
    a, b = ann.segments
    assert a.ego.camera == "aria02_214-1" and a.ego.role == "ego"
    assert [c.camera for c in a.exo] == ["cam01", "cam02"] and all(c.role == "exo" for c in a.exo)
    assert a.label == 0 and a.split == "train" and a.duration == pytest.approx(33.20377 - 0.85598)
    assert b.ego.camera == "aria_214-1" and b.start == 0.0 and b.label == 1
    assert b.name == "train/take_2/start0_end43.5086_aria_214-1.mp4"
    assert ann.meta["splits"] == "train"


def test_test_split_needs_no_labels_and_no_exo(tmp_path):
    s = {"ego_segment_name": "test/t/start1_end2_aria01_214-1.mp4", "take_uid": "u", "take_name": "t",
         "start_time": 1, "end_time": 2}
    ann = read_segments(write_split(tmp_path, "test", [s]), "test")
    assert ann.segments[0].label is None and ann.segments[0].exo == ()


@pytest.mark.parametrize("cam, role", [("aria01_214-1", "ego"), ("aria_214-1", "ego"), ("aria09_214-1", "ego"),
                                       ("cam01", "exo"), ("cam12", "exo"), ("gp03", "exo")])
def test_camera_roles(cam, role):
    assert camera_role(cam) == role
    assert parse_clip_name(f"val/take/start3.5_end9_{cam}.mp4").camera == cam


@pytest.mark.parametrize("name", ["/etc/passwd/start0_end1_cam01.mp4", "../x/start0_end1_cam01.mp4",
                                  "train/../../start0_end1_cam01.mp4", "train\\t\\start0_end1_cam01.mp4",
                                  "train/t/./start0_end1_cam01.mp4"])
def test_clip_names_that_escape_the_root_are_refused(name):
    with pytest.raises(KscliError, match="clips root|absolute"):
        parse_clip_name(name)


@pytest.mark.parametrize("mutate, needle", [
    (lambda s: s.pop("label_id"), "segment 0 .*missing field 'label_id'"),
    (lambda s: s.update(label_id=7), "field 'label_id' is 7, not in the label mapping"),
    (lambda s: s.update(step_unique_id=999), "field 'step_unique_id' is 999 but label_id 0"),
    (lambda s: s.update(start_time="zero"), "field 'start_time' is 'zero'"),
    (lambda s: s.update(end_time=0.1), "'end_time' .* before"),
    (lambda s: s.update(ego_segment_name="train/t/start0_end1_cam01.mp4"), "not an Aria"),
    (lambda s: s.update(segment_name_list=["train/t/../../../start0_end1_cam01.mp4"]), "escape"),
])
def test_segment_errors_name_file_segment_and_field(tmp_path, labels_path, mutate, needle):
    s = seg()
    mutate(s)
    p = write_split(tmp_path, "train", [s])
    with pytest.raises(KscliError, match=needle) as e:
        read_segments(p, "train", read_label_map(labels_path))
    assert str(p) in str(e.value)


def test_duplicate_segments_and_malformed_json(tmp_path, labels_path):
    lm = read_label_map(labels_path)
    p = write_split(tmp_path, "train", [seg(), seg()])
    with pytest.raises(KscliError, match=r"segment 1 \(train/take_1/.*duplicate segment name \(also segment 0\)"):
        read_segments(p, "train", lm)
    p.write_text('{"segments": [ {"ego_segment_name": ')
    with pytest.raises(KscliError, match="malformed JSON at line 1"):
        read_segments(p, "train", lm)
    with pytest.raises(KscliError, match="not found"):
        read_segments(tmp_path / "nope.json", "train", lm)


def test_layout_follows_download_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("KSCLI_WORK_DIR", raising=False)
    lay = Layout.resolve(data_root=tmp_path)
    assert lay.annotations_dir == tmp_path / "annotations" / "keystep_benchmark"
    assert lay.clips_root == tmp_path / "keystep_benchmark" / "clips_448p"
    assert lay.label_mapping_path.name == "label_mapping.csv"
    monkeypatch.setenv("KSCLI_DATA_ROOT", str(tmp_path / "dl"))
    monkeypatch.setenv("KSCLI_WORK_DIR", str(tmp_path / "w"))
    lay = Layout.resolve(clips_root=tmp_path / "clips", part="keystep_benchmark/clips_448p")
    assert lay.clips_root == tmp_path / "clips" and lay.annotations_dir.parent.parent == tmp_path / "dl"
    assert lay.features_dir("b", "val") == tmp_path / "w" / "features" / "b" / "val"
    monkeypatch.delenv("KSCLI_DATA_ROOT")
    with pytest.raises(KscliError, match="--data-root"):
        Layout.resolve()
    assert parse_splits("train, val,train") == ["train", "val"]
    with pytest.raises(KscliError, match="unknown split 'dev'"):
        parse_splits("train,dev")


def test_benchmark_reads_each_split_once(tmp_path, labels_path):
    ann = tmp_path / "annotations" / "keystep_benchmark"
    ann.mkdir(parents=True)
    (ann / "label_mapping.csv").write_text(LABELS_CSV)
    write_split(ann, "val", [seg("val/take_1/start0.85598_end33.20377_aria02_214-1.mp4")])
    bench = Benchmark(Layout.resolve(data_root=tmp_path))
    assert bench.labels.num_classes == 3
    assert bench.segments("val") is bench.segments("val")


def test_every_help_shows_its_defaults():
    """Help texts keep their "[default: ...]" (it was once read as a Rich style tag and dropped,
    leaving descriptions that ended in a bare " .")."""
    import re

    from conftest import cli
    from kscli.cli import app

    commands = [[c.name] for c in app.registered_commands] + [["features", "info"], ["features", "verify"]]
    for cmd in commands:
        out = cli(*cmd, "--help").stdout
        assert not [line for line in out.splitlines() if re.search(r"\s\.\s*$", line)], (cmd, out)
        if cmd[0] in ("extract", "check-data", "train-head", "import-features"):
            assert "[default: " in out, (cmd, out)


@pytest.mark.slow
def test_one_vocabulary_and_old_spellings_for_one_more_release(sample_root, tmp_path):
    """--workers, --out, --store mean the same in every command; the old spellings still work,
    each with one line naming the new one."""
    from conftest import cli

    common = ["check-data", "--data-root", sample_root, "--work-dir", tmp_path, "--split", "test", "--no-progress"]
    new = cli(*common, "--workers", "1", "--out", tmp_path / "a.json")
    assert (tmp_path / "a.json").is_file() and "note:" not in new.stderr
    old = cli(*common, "--jobs", "1", "--report", tmp_path / "b.json")
    assert (tmp_path / "b.json").is_file()
    assert "note: --jobs is now --workers" in old.stderr and "note: --report is now --out" in old.stderr
    cli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", tmp_path, "--split", "test", "--workers", "0",
        "--no-progress")
    by_option = cli("features", "info", "--store", "tiny-random", "--work-dir", tmp_path, "--json").stdout
    positional = cli("features", "info", "tiny-random", "--work-dir", tmp_path, "--json")
    assert positional.stdout == by_option and positional.stderr.startswith("note: a positional STORE is now --store")
    old_option = cli("features", "info", "--backbone", "tiny-random", "--work-dir", tmp_path, "--json")
    assert old_option.stdout == by_option and old_option.stderr.startswith("note: --backbone is now --store")
    every = cli("features", "info", "--work-dir", tmp_path, "--json").stdout  # no name: every store there
    assert every == by_option
    empty = cli("features", "info", "--work-dir", tmp_path / "nothing", check=False)
    assert empty.exit_code == 2 and "there is no store in" in empty.stderr
    for cmd in (["sample"], ["demo"], ["check-data"], ["extract"], ["train-head"], ["import-features"]):
        text = cli(*cmd, "--help").stdout
        assert "--progress" in text or cmd == ["sample"], cmd
    assert "--out" in cli("sample", "--help").stdout and "--out" in cli("demo", "--help").stdout
    made = cli("sample", "--tiny", "--out", tmp_path / "s1")
    assert (tmp_path / "s1" / "annotations").is_dir() and f"--data-root {tmp_path / 's1'}" in made.stdout
    before = cli("sample", "--tiny", tmp_path / "s2")  # the positional folder of before
    assert (tmp_path / "s2" / "annotations").is_dir() and "note: a positional OUT is now --out" in before.stderr
    two = cli("sample", "--tiny", tmp_path / "s3", "--out", tmp_path / "s4", check=False)
    assert two.exit_code == 2 and "two folders named" in two.stderr and not (tmp_path / "s3").exists()
    full = cli("sample", "--tiny", "--out", tmp_path / "s1", check=False)
    assert full.exit_code == 2 and "pass --overwrite" in full.stderr


@pytest.mark.parametrize("args", [["train-head", "--store", "tiny-random", "--backbone", "other"],
                                  ["features", "info", "--store", "tiny-random", "--backbone", "other"],
                                  ["features", "verify", "--store", "tiny-random", "--backbone", "other"],
                                  ["features", "info", "other", "--store", "tiny-random"],
                                  ["check-data", "--workers", "1", "--jobs", "2"],
                                  ["check-data", "--out", "a.json", "--report", "b.json"],
                                  ["demo", "--out", "a", "--dir", "b"]])
def test_an_old_and_a_new_spelling_with_two_values_are_refused(sample_root, tmp_path, monkeypatch, args):
    """Both spellings of one option with different values: one line, exit 2, nothing done."""
    from conftest import cli

    monkeypatch.chdir(tmp_path)
    where = {"train-head": ["--data-root", sample_root, "--work-dir", tmp_path], "features": ["--work-dir", tmp_path],
             "check-data": ["--data-root", sample_root, "--work-dir", tmp_path], "demo": []}[args[0]]
    r = cli(*args, *where, check=False)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "two values for --" in r.stderr and "note:" not in r.stderr, r.stderr
    assert "give --" in r.stderr and " only" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["features", "info", "/some/where"], ["features", "info", "--backbone", "a/b"],
                                  ["features", "verify", "x/y"]])
def test_a_bad_store_name_in_an_old_spelling_is_one_line_without_the_note(tmp_path, args):
    from conftest import cli

    r = cli(*args, "--work-dir", tmp_path, check=False)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "note:" not in r.stderr, r.stderr
    assert "holds a path separator" in r.stderr


def test_from_takes_the_store_from_the_run_in_either_spelling(sample_root, tmp_path):
    from conftest import cli

    for option in ("--store", "--backbone"):
        r = cli("train-head", "--from", "some-run", option, "tiny-random", "--data-root", sample_root,
                "--work-dir", tmp_path, check=False)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and f"drop {option}" in r.stderr, r.stderr


def test_check_data_imports_no_torch():
    """kscli.data (check-data, the sample writer) runs without torch: it counts cores through
    kscli.device, which imports torch only where it resolves a device."""
    import subprocess
    import sys

    probe = "import sys, kscli.data.check, kscli.data.sample; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
