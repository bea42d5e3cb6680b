"""The take-context head on small synthetic takes: it must use the other segments of a take."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from kscli.errors import KscliError
from kscli.heads.base import config_for, load_head
from kscli.heads.context import ContextConfig, ContextHead
from kscli.heads.featureset import FeatureSet
from kscli.heads.takes import group_takes, take_holdout
from kscli.heads.train import train_head


def train_context_head(cfg, train, num_classes, val=None, progress=False):
    return train_head(cfg, train, num_classes, val=val, progress=progress)


def predict_context_proba(head, fs, present=None):
    return head.predict_proba(fs, present=present)


def takes_of(fs, rows):
    return set(np.asarray(fs.take)[rows])

SCEN, STEPS = 3, 6  # 3 scenarios with a 6-keystep procedure each
C = SCEN * STEPS
D, V = 32, 2
MU = np.random.default_rng(1234).normal(size=(C, D))  # class embeddings, shared by all sets


def make_takes(n_takes: int, seed: int, T: int | None = None, noise: float = 3.0,
               with_exo: bool = True, salient: bool = False) -> FeatureSet:
    """Takes whose keysteps follow their scenario's order with skips (and a rare swap); per
    segment ego = class embedding + heavy noise (single-segment accuracy is mediocre); exo
    views are cleaner, and ~30 % of segments have none. Rows come out shuffled."""
    rng = np.random.default_rng(seed)
    order = np.random.default_rng(99).permutation(C).reshape(SCEN, STEPS)
    ys, takes, starts, ends = [], [], [], []
    for t in range(n_takes):
        proc = order[rng.integers(SCEN)]
        y = [c for c in proc if rng.random() < 0.8] or [proc[0]]
        if len(y) > 2 and rng.random() < 0.2:
            j = rng.integers(len(y) - 1)
            y[j], y[j + 1] = y[j + 1], y[j]
        dur = rng.uniform(2, 10, len(y))
        step = dur[:-1] + rng.uniform(0, 3, len(y) - 1)  # gaps of 0-3 s
        start = np.cumsum(np.concatenate([[rng.uniform(0, 5)], step]))
        ys += y
        takes += [f"s{seed}_take{t}"] * len(y)
        starts.append(start)
        ends.append(start + dur)
    y = np.array(ys, np.int64)
    n = len(y)
    if T is None:
        ego = MU[y] + noise * rng.normal(size=(n, D))
    elif salient:  # the keystep shows in one random window of T, which also stands out along a
        # fixed "salience" direction (as the window with the action would); the rest is noise
        u = np.random.default_rng(7).normal(size=D)
        ego = noise * rng.normal(size=(n, T, D))
        ego[np.arange(n), rng.integers(0, T, n)] += 2.0 * MU[y] + 8.0 * u / np.linalg.norm(u)
    else:
        ego = MU[y][:, None] + noise * np.sqrt(T) * rng.normal(size=(n, T, D))
    ego = (3.0 * ego + 1.0).astype(np.float32)
    mask = (rng.random((n, V)) < 0.7) & (rng.random((n, 1)) < 0.7) if with_exo \
        else np.zeros((n, V), bool)
    exo = ((MU[y][:, None] + 0.5 * rng.normal(size=(n, V, D))) * mask[..., None]).astype(np.float32)
    perm = rng.permutation(n)
    return FeatureSet(names=[f"seg{i}" for i in range(n)], ego=ego[perm], exo=exo[perm],
                      exo_mask=mask[perm], labels=y[perm], take=[takes[i] for i in perm],
                      start=np.concatenate(starts)[perm], end=np.concatenate(ends)[perm],
                      scenario=[f"scen{c // STEPS}" for c in y[perm]])


def small_cfg(**kw) -> ContextConfig:
    base = dict(d_model=32, layers=1, heads=2, ffn_mult=2, time_hidden=16, batch_takes=8,
                epochs=25, lrs=(3e-3,), weight_decays=(0.05,), dropout=0.1, input_dropout=0.1,
                num_threads=1)
    base.update(kw)
    return config_for("context", **base)


def acc(p, y):
    return float((p.argmax(1) == y).mean())


@pytest.fixture(scope="module")
def sets():
    return make_takes(90, seed=0), make_takes(60, seed=1, with_exo=False)


@pytest.fixture(scope="module")
def trained(sets):
    train, _ = sets
    return train_context_head(small_cfg(lrs=(3e-3, 6e-3), epochs=30), train, C, progress=False)


# ----------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_context_beats_single_segment_mlp_on_heldout_takes(sets, trained):
    train, test = sets
    assert not test.exo_mask.any()  # ego only at test
    mlp = train_head(config_for("mlp", hidden=64, epochs=30, batch_size=64, num_threads=1),
                     train, C, progress=False)
    a_mlp = acc(mlp.head.predict_proba(test), test.labels)
    p = predict_context_proba(trained.head, test)
    assert p.shape == (len(test), C) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    a_ctx = acc(p, test.labels)
    assert a_mlp < 0.5  # the single-segment problem is hard
    assert a_ctx > a_mlp + 0.15, (a_ctx, a_mlp)


def test_result_records_selection_grid_and_history(trained):
    r = trained
    sel = r.selected
    assert sel["select_on"] == "holdout" and sel["teacher"] is True
    assert sel["grid_size"] == 2 and [(g["lr"], g["wd"]) for g in r.grid] == [(3e-3, 0.05),
                                                                              (6e-3, 0.05)]
    assert sel["member"] in (0, 1) and sel["lr"] == r.grid[sel["member"]]["lr"]
    assert len(r.history) == sel["epochs"] == 30
    h = r.history[-1]
    assert len(h["train_loss"]) == len(h["select_top1"]) == 2
    assert sel["select_top1"] == max(g["select_top1"] for g in r.grid)
    assert r.history[0]["train_loss"][0] > r.history[-1]["train_loss"][0]
    assert not r.model.training


def test_take_level_holdout_keeps_takes_whole(sets, trained):
    train, _ = sets
    fit, hold = takes_of(train, trained.fit_rows), takes_of(train, trained.holdout_rows)
    assert hold and fit and not (fit & hold) and fit | hold == set(train.take)
    assert trained.selected["n_select_takes"] == len(hold)
    assert trained.selected["n_select"] == sum(t in hold for t in train.take)
    assert trained.selected["n_fit_segments"] == len(trained.fit_rows)
    f2, h2 = take_holdout(train.take, train.labels, 0.25, seed=3)
    assert not set(f2) & set(h2) and len(h2) == round(0.25 * len(set(train.take)))
    assert take_holdout(train.take, train.labels, 0.25, seed=3) == (f2, h2)
    with pytest.raises(KscliError, match="at least 2 takes"):
        take_holdout(["a"] * 5, np.zeros(5), 0.2)


def test_same_seed_same_probabilities_other_seed_differs(sets):
    train, test = sets
    small = train.subset(np.flatnonzero(np.isin(train.take, sorted(set(train.take))[:40])))
    cfg = small_cfg(epochs=3)
    p1 = predict_context_proba(train_context_head(cfg, small, C, progress=False).head, test)
    p2 = predict_context_proba(train_context_head(cfg, small, C, progress=False).head, test)
    assert np.array_equal(p1, p2)
    p3 = predict_context_proba(train_context_head(small_cfg(epochs=3, seed=1), small, C,
                                                  progress=False).head, test)
    assert not np.array_equal(p1, p3)


def test_training_leaves_global_rng_and_threads_alone(sets):
    train, _ = sets
    small = train.subset(np.flatnonzero(np.isin(train.take, sorted(set(train.take))[:20])))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    train_context_head(small_cfg(epochs=1), small, C, progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_attention_dropout_draws_from_the_passed_generator(sets, monkeypatch):
    """attn_dropout > 0 is applied by hand (SDPA's own would draw from torch's global generator):
    the same seed gives the same head whatever the global seed, and without the dropout the hand
    path computes what scaled_dot_product_attention does."""
    import kscli.heads.context_net as context_net

    train, test = sets
    small = train.subset(np.flatnonzero(np.isin(train.take, sorted(set(train.take))[:20])))
    cfg = small_cfg(epochs=2, attn_dropout=0.2)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(predict_context_proba(train_context_head(cfg, small, C, progress=False).head, test))
    assert np.array_equal(runs[0], runs[1])

    net = context_net.ContextNet(D, C, {**cfg.model_cfg(), "exo_dim": 0},
                                 generator=torch.Generator().manual_seed(0))
    blk = net.student.blocks[0]
    n, B, L = 7, 2, 4
    x = torch.randn(n, 32, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    bias = torch.zeros(B, 2, L, L)
    bias[1, :, :, 3] = float("-inf")  # the second take has 3 tokens
    by_sdpa = blk(x, idx, (B, L), bias, None)
    monkeypatch.setattr(context_net, "dropout", lambda t, p, gen, mask_shape=None: t)
    by_hand = blk(x, idx, (B, L), bias, torch.Generator())
    torch.testing.assert_close(by_hand, by_sdpa)


# ----------------------------------------------------------------------------- inference
def test_checkpoint_round_trip_gives_identical_probabilities(sets, trained):
    _, test = sets
    ckpt = trained.head.state()
    assert ckpt["format"] == "kscli-head" and ckpt["version"] == 1 and ckpt["head"] == "context"
    assert ckpt["in_dim"] == D and ckpt["num_classes"] == C
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())
    json.dumps({k: v for k, v in ckpt.items() if k != "state_dict"})  # all plain types
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    head = load_head(loaded)
    assert np.array_equal(head.predict_proba(test), trained.head.predict_proba(test))
    assert ContextConfig.from_dict(trained.record()["train_cfg"]) == trained.cfg
    with pytest.raises(KscliError, match="not 'context'"):
        ContextHead.from_state({**loaded, "head": "mlp"})
    with pytest.raises(KscliError, match="does not fit"):
        load_head({**loaded, "cfg": {**loaded["cfg"], "d_model": 64}})


def test_row_order_does_not_matter(sets, trained):
    _, test = sets
    perm = np.random.default_rng(5).permutation(len(test))
    p = predict_context_proba(trained.head, test)
    np.testing.assert_allclose(predict_context_proba(trained.head, test.subset(perm)), p[perm],
                               atol=1e-6)


def test_missing_ego_rows_are_predicted_from_context(sets, trained):
    _, test = sets
    rng = np.random.default_rng(11)
    missing = rng.random(len(test)) < 0.3
    present = ~missing
    p = predict_context_proba(trained.head, test, present=present)
    a_missing = acc(p[missing], test.labels[missing])
    assert a_missing > 3.0 / C, a_missing  # chance is 1/C; context alone does much better
    # the present rows keep most of their accuracy
    full = predict_context_proba(trained.head, test)
    assert acc(p[present], test.labels[present]) > acc(full[present], test.labels[present]) - 0.1
    # present=None: rows of exact zeros (how missing clips are loaded) count as missing
    zeroed = test.subset(np.arange(len(test)))
    zeroed.ego[missing] = 0.0
    np.testing.assert_allclose(predict_context_proba(trained.head, zeroed), p, atol=1e-6)
    with pytest.raises(KscliError, match="present"):
        predict_context_proba(trained.head, test, present=present[:-1])


def test_exo_absent_for_some_segments_and_none_at_all(sets):
    train, test = sets
    assert (~train.exo_mask.any(1)).any() and train.exo_mask.any()  # a mix in the fixture
    small = train.subset(np.flatnonzero(np.isin(train.take, sorted(set(train.take))[:30])))
    r = train_context_head(small_cfg(epochs=2), small, C, progress=False)
    assert r.selected["teacher"] is True and r.model.has_teacher
    no_exo = small.subset(np.arange(len(small)))
    no_exo.exo, no_exo.exo_mask = None, None
    r2 = train_context_head(small_cfg(epochs=2), no_exo, C, progress=False)
    assert r2.selected["teacher"] is False and not r2.model.has_teacher
    assert any("without the exo teacher" in n for n in r2.notes)
    assert predict_context_proba(r2.head, test).shape == (len(test), C)


@pytest.mark.slow
def test_window_sequences_are_attention_pooled():
    """(N, T, D) stores (extract --windows T): the head pools the windows with learned
    attention, so a keystep that shows in one window of four is found; mean-pooling the
    same windows first (what a T = 1 store gives) dilutes it."""
    kw = dict(T=4, salient=True, noise=3.0)
    train, test = make_takes(90, seed=2, **kw), make_takes(40, seed=3, with_exo=False, **kw)
    assert train.ego.ndim == 3 and train.exo.ndim == 3
    train.exo = np.repeat(train.exo[:, :, None], 4, axis=2)  # (N, V, T, D) exo as well
    cfg = small_cfg(epochs=30, lrs=(3e-3,), segment_dropout=0.0)
    r = train_context_head(cfg, train, C, progress=False)
    p = predict_context_proba(r.head, test)
    assert p.shape == (len(test), C)
    pooled_tr, pooled_te = train.subset(np.arange(len(train))), test.subset(np.arange(len(test)))
    pooled_tr.ego, pooled_te.ego = train.ego.mean(1), test.ego.mean(1)
    r_mean = train_context_head(cfg, pooled_tr, C, progress=False)
    a_att, a_mean = acc(p, test.labels), acc(predict_context_proba(r_mean.head, pooled_te),
                                             test.labels)
    assert a_att > a_mean + 0.1, (a_att, a_mean)
    # the saved head reads (N, T, D) the same way after a checkpoint round trip
    buf = io.BytesIO()
    torch.save(r.head.state(), buf)
    buf.seek(0)
    again = load_head(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(predict_context_proba(again, test), p)


def test_select_on_val_and_config_checks(sets):
    train, test = sets
    small = train.subset(np.flatnonzero(np.isin(train.take, sorted(set(train.take))[:20])))
    r = train_context_head(small_cfg(epochs=1, select_on="val"), small, C, val=test,
                           progress=False)
    assert r.selected["select_on"] == "val" and r.holdout_rows is None
    assert r.selected["n_select"] == len(test) and takes_of(small, r.fit_rows) == set(small.take)
    with pytest.raises(KscliError, match="needs a val"):
        train_context_head(small_cfg(select_on="val"), small, C, progress=False)
    with pytest.raises(KscliError, match="no such option; its options: lrs"):
        ContextConfig.from_dict({"nope": 1})
    with pytest.raises(KscliError, match="multiple"):
        small_cfg(d_model=30, heads=4)
    cfg = small_cfg()
    assert ContextConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_degenerate_inputs_end_none_one_row_and_nan_rows(sets):
    train, test = sets
    # no end times: segments are instants at their start
    inst = test.subset(np.arange(len(test)))
    inst.end = None
    p = predict_context_proba(train_context_head(small_cfg(epochs=1), train, C, progress=False).head, inst)
    assert p.shape == (len(test), C) and np.isfinite(p).all()
    # two labelled rows with identical features: nothing to whiten, the weights stay finite
    takes = np.asarray(train.take)
    two = train.subset([np.flatnonzero(takes == t)[0] for t in sorted(set(train.take))[:2]])
    two.ego[:] = two.ego[0]
    r = train_context_head(small_cfg(epochs=1), two, C, progress=False)
    assert max(float(v.abs().max()) for v in r.model.state_dict().values()) < 1e3
    # a NaN ego row is a missing one: its take's predictions stay finite
    bad = test.subset(np.arange(len(test)))
    bad.ego[0] = np.nan
    assert np.isfinite(predict_context_proba(r.head, bad)).all()


def test_group_takes_sorts_by_start_within_take():
    names, groups = group_takes(["b", "a", "b", "a", "b"], [5.0, 2.0, 1.0, 0.0, 3.0])
    assert names == ["a", "b"]
    assert [g.tolist() for g in groups] == [[3, 1], [2, 4, 0]]
