"""The feature store: atomic parts, union reads, merges, failures, config checks."""

import numpy as np
import pytest

from kscli.errors import KscliError
from kscli.extract.store import FeatureStore, StoreRows, StoreWriter, config_mismatch

CFG = {"backbone": {"name": "b", "feature_dim": 4}, "sampling": {"num_frames": 2, "windows": 1}, "dtype": "float32"}


def rows(names, d=4, seed=0):
    rng = np.random.default_rng(seed)
    n = len(names)
    return StoreRows(list(names), ["ego"] * n, rng.normal(size=(n, d)).astype(np.float32),
                     rng.random((n, 2)).astype(np.float32), np.arange(n) + 5, np.full(n, 30.0))


def test_parts_read_as_one_store_and_merge_keeps_everything(tmp_path):
    w0, w1 = StoreWriter(tmp_path, 0, CFG), StoreWriter(tmp_path, 1, CFG)
    a, b, c = rows(["a", "b"], seed=1), rows(["c"], seed=2), rows(["d", "e"], seed=3)
    w0.write(a)
    w0.write(b)
    w1.write(c)
    store = FeatureStore(tmp_path)
    assert sorted(store.names) == ["a", "b", "c", "d", "e"] and len(store.parts) == 3
    np.testing.assert_array_equal(store.get(["e", "a", "c"]), np.stack([c.features[1], a.features[0], b.features[0]]))
    before = store.get(["a", "b", "c", "d", "e"])
    w0.merge_parts()
    after = FeatureStore(tmp_path)
    assert len(after.parts) == 2 and sorted(after.names) == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(after.get(["a", "b", "c", "d", "e"]), before)
    np.testing.assert_array_equal(after.get(["b"], "num_frames"), [6])
    assert after.config == CFG and after.feature_shape == (4,)


def test_stray_tmp_is_ignored_and_cleaned_newest_copy_wins(tmp_path):
    with StoreWriter(tmp_path, 0, CFG) as w:
        w.write(rows(["a"], seed=1))
    (tmp_path / "part-r000-s000009.h5.tmp").write_bytes(b"half a file")
    assert FeatureStore(tmp_path).names == ["a"]
    newer = rows(["a"], seed=7)
    with StoreWriter(tmp_path, 0, CFG) as w:  # a new writer removes the stray tmp
        w.write(newer)
    assert not list(tmp_path.glob("*.tmp"))
    np.testing.assert_array_equal(FeatureStore(tmp_path).get(["a"]), newer.features)


def test_failures_are_logged_and_forgotten_once_extracted(tmp_path):
    w = StoreWriter(tmp_path, 0, CFG)
    w.record_failure("x", "FileNotFoundError: clip file is missing")
    w.record_failure("y", "DECORDError: bad")
    with open(w.failure_log, "a") as f:
        f.write('{"clip": "z", "err')  # a line cut by a kill
    w.write(rows(["y"]))
    assert FeatureStore(tmp_path).failures() == {"x": "FileNotFoundError: clip file is missing"}


def test_unreadable_part_is_a_clear_error(tmp_path):
    (tmp_path / "part-r000-s000000.h5").write_bytes(b"not hdf5")
    with pytest.raises(KscliError, match="part-r000-s000000.h5: unreadable feature part"):
        FeatureStore(tmp_path)


def test_config_mismatch_names_the_field():
    other = {**CFG, "sampling": {"num_frames": 16, "windows": 1}}
    assert config_mismatch(CFG, CFG) is None
    assert config_mismatch(CFG, other) == "sampling.num_frames is 2 in the store but 16 now"


def test_merge_names_the_part_it_cannot_read(tmp_path):
    with StoreWriter(tmp_path, 0, CFG) as w:
        w.write(rows(["a"], seed=1))
        broken = w.write(rows(["b"], seed=2))
        w.write(rows(["c"], seed=3))
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
        with pytest.raises(KscliError, match=f"{broken.name}: unreadable feature part"):
            w.merge_parts()
    assert not list(tmp_path.glob("*.tmp")) and len(list(tmp_path.glob("part-*.h5"))) == 3  # nothing lost


def test_verify_lists_damage_not_parts_merged_away_meanwhile(tmp_path, monkeypatch):
    from kscli.extract import store as store_mod

    with StoreWriter(tmp_path, 0, CFG) as w:
        gone, damaged, whole = w.write(rows(["a"])), w.write(rows(["b"])), w.write(rows(["c"]))
    damaged.write_bytes(b"not hdf5")
    real = store_mod.check_part

    def a_merge_removes_one_first(path, *a, **k):
        if path == gone:
            path.unlink()
        return real(path, *a, **k)

    monkeypatch.setattr(store_mod, "check_part", a_merge_removes_one_first)
    bad = store_mod.verify_store(tmp_path)
    assert [p for p, _ in bad] == [damaged] and whole.exists()
