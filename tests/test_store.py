"""The feature store: atomic parts, union reads, merges, failures, config checks."""

import numpy as np
import pytest

from kscli.errors import KscliError
from kscli.extract.store import FeatureStore, StoreRows, StoreWriter, identity_difference, open_for_writing, verify_store

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


def test_identity_difference_names_the_field():
    other = {**CFG, "sampling": {"num_frames": 16, "windows": 1}}
    assert identity_difference(CFG, CFG) is None
    assert identity_difference(CFG, other) == "sampling.num_frames is 2 in the store but 16 now"
    assert identity_difference(CFG, {**CFG, "precision": "bfloat16"}) == \
        "precision is not recorded in the store (made by an older kscli) but is 'bfloat16' now"
    assert identity_difference(CFG, {**CFG, "view": "exo", "versions": {"torch": "9"}}) is None  # not identity
    # the same weights from another folder are the same backbone; other weights are not
    a = {**CFG, "backbone": {"name": "b", "weights": "/x", "weights_digest": "d1"}}
    assert identity_difference(a, {**a, "backbone": {**a["backbone"], "weights": "/y"}}) is None
    assert "backbone.weights_digest is 'd1' in the store but 'd2' now" == identity_difference(
        a, {**a, "backbone": {**a["backbone"], "weights_digest": "d2"}})


def test_the_first_part_claims_the_store_and_other_settings_are_refused(tmp_path):
    fp16 = {**CFG, "dtype": "float16"}
    w1, _ = open_for_writing(tmp_path, CFG, rank=0)
    w2, _ = open_for_writing(tmp_path, fp16, rank=1)  # started together: neither has written yet
    w1.write(rows(["a"]))  # the first part claims the store for its settings
    with pytest.raises(KscliError, match=r"made with other settings \(dtype is 'float32' in the store but "
                                         r"'float16' now\); pass --tag NAME for a new store"):
        w2.write(rows(["b"]))
    w1.close(), w2.close()
    assert FeatureStore(tmp_path).names == ["a"] and (tmp_path / "store.json").is_file()
    with pytest.raises(KscliError, match="dtype is 'float32' in the store but 'float16' now"):
        open_for_writing(tmp_path, fp16, rank=1)  # a later start is refused before decoding
    w, store = open_for_writing(tmp_path, CFG, rank=1)
    w.close()


def test_a_store_split_made_otherwise_is_refused(tmp_path):
    with open_for_writing(tmp_path / "train", CFG, rank=0)[0] as w:
        w.write(rows(["a"]))
    with pytest.raises(KscliError, match=r"dtype is 'float32' in its train split but 'float16' now; the splits "
                                         "of one store are made one way"):
        open_for_writing(tmp_path / "test", {**CFG, "dtype": "float16"}, rank=0)


def _mixed_store(folder):
    """A store from before store.json, written by two runs with other frame counts."""
    from kscli.extract.store import write_part

    write_part(folder / "part-r000-s000000.h5", rows(["a", "b"]), CFG)
    other = {**CFG, "sampling": {"num_frames": 16, "windows": 1}}
    return write_part(folder / "part-r001-s000000.h5", rows(["c"], seed=4), other)


def test_a_mixed_store_is_reported_refused_and_healed(tmp_path):
    odd = _mixed_store(tmp_path)
    store = FeatureStore(tmp_path)
    info = store.info()
    assert info["mixed"] == [{"part": odd.name, "rows": 1, "difference":
                              "sampling.num_frames is 2 in the store but 16 in this part"}]
    with pytest.raises(KscliError, match=r"mixes features made two ways: 1 row\(s\) in 1 part\(s\) differ .* "
                                         r"--move-aside"):
        store.check_one_way()
    with pytest.raises(KscliError, match="mixes features made two ways"):
        open_for_writing(tmp_path, CFG, rank=0)  # a rerun never skips rows it cannot use
    bad = verify_store(tmp_path)
    assert [p for p, _ in bad] == [odd] and "made with other settings than the store" in bad[0][1]
    verify_store(tmp_path, move_aside=True)
    healed = FeatureStore(tmp_path).check_one_way()
    assert sorted(healed.names) == ["a", "b"] and list(tmp_path.glob(f"{odd.name}.mismatched-*"))
    w, store = open_for_writing(tmp_path, CFG, rank=1)  # the rerun recomputes c the store's way
    assert "c" not in store
    w.close()


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
