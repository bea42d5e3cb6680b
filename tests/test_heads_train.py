"""Heads, grid training, selection, checkpoints and metrics on small synthetic features."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from kscli.errors import KscliError
from kscli.heads.featureset import FeatureSet
from kscli.heads.metrics import compute_metrics, format_summary
from kscli.heads.base import config_for, head_class, list_heads, load_head
from kscli.heads.common import dropout
from kscli.heads.mlp import MLPHead, MLPNet
from kscli.heads.optim import StackedAdamW
from kscli.heads.stacked import class_balance_weights
from kscli.heads.train import stratified_holdout, train_head

C, D, V = 6, 24, 3


def make_set(n=480, seed=0, T=None, sep=2.0, p_view=0.7, labelled=True):
    """Class-mean Gaussian ego features (optionally T windows), cleaner exo views."""
    rng = np.random.default_rng(seed)
    mu = np.random.default_rng(123).normal(size=(C, D))  # same classes for every seed
    y = np.arange(n) % C
    rng.shuffle(y)
    if T is None:
        ego = mu[y] * sep / 2 + rng.normal(size=(n, D))
    else:  # the class shows in one random window of T (which also stands out along a fixed
        # "salience" direction, as the window with the action would); the others are noise
        u = np.random.default_rng(7).normal(size=D)
        ego = rng.normal(size=(n, T, D))
        ego[np.arange(n), rng.integers(0, T, n)] += mu[y] * sep + 6.0 * u / np.linalg.norm(u)
    ego = (ego * 3.0 + 5.0).astype(np.float32)  # not standardised
    mask = rng.random((n, V)) < p_view
    exo = (mu[y][:, None] * sep + 0.3 * rng.normal(size=(n, V, D))) * mask[..., None]
    return FeatureSet(names=[f"s{i}" for i in range(n)], ego=ego, exo=exo.astype(np.float32),
                      exo_mask=mask, labels=(y if labelled else np.full(n, -1)).astype(np.int64),
                      take=[f"t{i % 7}" for i in range(n)], start=np.zeros(n), end=np.ones(n),
                      scenario=None)


def cfg_for(head, **kw):
    base = dict(epochs=8, batch_size=64, num_threads=1, lrs=(1e-3, 3e-3),
                weight_decays=(1e-4, 0.1), **{"mlp": {"hidden": 64}, "distill": {"hidden": 64},
                                              "attentive": {"attn_dim": 32}}.get(head, {}))
    base.update(kw)
    return config_for(head, **base)


def predict_proba(head, ego):
    """A head's probabilities for raw ego features (every row present)."""
    n = len(ego)
    return head.predict_proba(FeatureSet([f"r{i}" for i in range(n)], ego, None, None,
                                         np.full(n, -1), None, None, None))


def net(head, cfg, members):
    """Head `head`'s stacked net with its defaults, updated by cfg."""
    return head_class(head).Net(D, C, {**config_for(head).model_cfg(), **cfg}, members=members,
                                generator=torch.Generator().manual_seed(0))


def acc(probs, labels):
    return float((probs.argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def data():
    return make_set(seed=0), make_set(n=300, seed=1)


# ----------------------------------------------------------------------------- registry
def test_registry_lists_heads_and_rejects_unknown():
    assert {"linear", "mlp", "distill", "attentive"} <= set(list_heads())
    with pytest.raises(KscliError, match="unknown head 'nope'; known heads: attentive, context"):
        config_for("nope")
    m = net("mlp", {"hidden": 16}, members=3)
    assert m.fc1_w.shape == (3, D, 16) and m.fc2_w.shape == (3, 16, C)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("head", ["linear", "mlp", "distill", "attentive"])
def test_head_learns_separable_problem(data, head):
    train, test = data
    res = train_head(cfg_for(head), train, C, progress=False)
    p = predict_proba(res.head, test.ego)
    assert p.shape == (len(test), C) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert acc(p, test.labels) > 0.85  # chance is 1/6
    assert res.model.members == 1 and not res.model.training
    assert len(res.grid) == 4 and len(res.history) == 8
    assert {"lr", "wd", "select_on", "select_top1"} <= set(res.selected)
    # the saved head (member cut out, preconditioner folded in) scores what selection saw
    hold = res.holdout_rows
    p_hold = predict_proba(res.head, train.ego[hold])
    assert abs(100 * acc(p_hold, train.labels[hold]) - res.selected["select_top1"]) <= (
        100 / len(hold) + 1e-6)


def test_same_seed_same_probabilities_other_seed_differs(data):
    train, test = data
    for head in ("mlp", "distill"):  # dropout and exo view dropout both draw random numbers
        cfg = cfg_for(head, epochs=3)
        p1 = predict_proba(train_head(cfg, train, C, progress=False).head, test.ego)
        p2 = predict_proba(train_head(cfg, train, C, progress=False).head, test.ego)
        assert np.array_equal(p1, p2)
        p3 = predict_proba(train_head(cfg_for(head, epochs=3, seed=1), train, C,
                                      progress=False).head, test.ego)
        assert not np.array_equal(p1, p3)


def test_training_leaves_global_rng_and_threads_alone(data):
    train, _ = data
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    train_head(cfg_for("mlp", epochs=1), train, C, progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_training_draws_only_from_the_generators_it_passes(data):
    """Randomness is passed, not reseeded: whatever torch's global generator holds, the same
    seed gives the same head (dropout and view dropout included)."""
    train, test = data
    for head in ("mlp", "distill"):
        cfg = cfg_for(head, epochs=2, input_dropout=0.2)
        runs = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            runs.append(predict_proba(train_head(cfg, train, C, progress=False).head, test.ego))
        assert np.array_equal(runs[0], runs[1])


class _GlobalDrawsNet(MLPNet):
    """A plugin-style net that draws from torch's global generator (F.dropout, torch.randn)."""
    where = "train"

    def _build(self) -> None:
        super()._build()
        if self.where == "init":
            self._param("extra_w", torch.randn(self.in_dim, 2))

    def _logits(self, x, gen=None):
        if gen is not None:
            x = torch.nn.functional.dropout(x, 0.1)
        return super()._logits(x, gen)


class _GlobalDrawsHead(MLPHead):  # not registered: trained through Head.fit
    Net = _GlobalDrawsNet


@pytest.mark.parametrize("where, doing", [("init", "building its model"), ("train", "training")])
def test_a_head_drawing_from_the_global_generator_is_stopped(data, where, doing):
    train, _ = data
    _GlobalDrawsNet.where = where
    head = _GlobalDrawsHead(cfg_for("mlp", epochs=1), D, C)
    with pytest.raises(KscliError, match=f"drew from torch's global random generator while {doing}, "
                                         "so the same seed would not give the same run"):
        head.fit(train, progress=False)


def test_grid_member_equals_training_that_config_alone(data):
    """Stacking is exact: each member trains as if alone (same init, batches, dropout)."""
    train, test = data
    for head in ("linear", "mlp"):
        grid = train_head(cfg_for(head, epochs=3, lrs=(3e-4, 3e-3), weight_decays=(0.0, 0.5)),
                          train, C, progress=False)
        sel = grid.selected
        alone = train_head(cfg_for(head, epochs=3, lrs=(sel["lr"],),
                                   weight_decays=(sel["wd"],)), train, C, progress=False)
        np.testing.assert_allclose(predict_proba(grid.head, test.ego),
                                   predict_proba(alone.head, test.ego), atol=1e-4)
        assert [(g["lr"], g["wd"]) for g in grid.grid] == [
            (3e-4, 0.0), (3e-4, 0.5), (3e-3, 0.0), (3e-3, 0.5)]


@pytest.mark.parametrize("head", ["linear", "mlp", "distill", "attentive"])
def test_stacked_members_compute_like_separate_heads(head):
    """Each member of a stacked head (distinct weights) = that member cut out alone."""
    torch.manual_seed(0)
    m = net(head, {"hidden": 16, "attn_dim": 8, "num_heads": 2}, members=3)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    m.eval()
    x = torch.randn(5, 4, D) if m.sequence_input else torch.randn(5, D)
    out = m.member_logits(x)
    assert out.shape == (3, 5, C)
    for g in range(3):
        torch.testing.assert_close(m.select_member(g).member_logits(x)[0], out[g])


# ----------------------------------------------------------------------------- selection
def test_selection_uses_stratified_holdout_and_ignores_val(data):
    train, test = data
    res = train_head(cfg_for("linear", epochs=3), train, C, progress=False)
    sel = res.selected
    assert sel["select_on"] == "holdout"
    hold, fit = res.holdout_rows, res.fit_rows
    assert len(np.intersect1d(hold, fit)) == 0 and len(hold) + len(fit) == len(train)
    assert sel["n_select"] == len(hold) and sel["n_fit"] == len(fit)
    counts = np.bincount(train.labels[hold], minlength=C)
    assert counts.min() == counts.max() == round(0.1 * len(train) / C)  # 80 per class -> 8
    # the recorded score is the kept member's top-1 on exactly those rows
    p = predict_proba(res.head, train.ego[hold])
    assert abs(100 * acc(p, train.labels[hold]) - sel["select_top1"]) < 1e-6
    assert max(g["select_top1"] for g in res.grid) == sel["select_top1"]
    # a val set with garbage labels changes nothing unless select_on == "val"
    junk = make_set(n=120, seed=5)
    junk.labels = np.random.default_rng(0).permutation(junk.labels)
    res2 = train_head(cfg_for("linear", epochs=3), train, C, val=junk, progress=False)
    assert np.array_equal(predict_proba(res.head, test.ego), predict_proba(res2.head, test.ego))


def test_selection_on_val_only_when_asked(data):
    train, test = data
    res = train_head(cfg_for("linear", epochs=3, select_on="val"), train, C, val=test,
                     progress=False)
    assert res.selected["select_on"] == "val" and res.holdout_rows is None
    assert res.selected["n_fit"] == len(train) and res.selected["n_select"] == len(test)
    p = predict_proba(res.head, test.ego)
    assert abs(100 * acc(p, test.labels) - res.selected["select_top1"]) < 1e-6
    with pytest.raises(KscliError, match="needs a val"):
        train_head(cfg_for("linear", select_on="val"), train, C, progress=False)
    with pytest.raises(KscliError, match="no labels"):
        train_head(cfg_for("linear", select_on="val"), train, C,
                   val=make_set(n=60, labelled=False), progress=False)


def test_unlabelled_train_rows_are_skipped():
    train = make_set(n=240)
    train.labels[:30] = -1
    res = train_head(cfg_for("linear", epochs=2), train, C, progress=False)
    assert res.selected["n_fit"] + res.selected["n_select"] == 210
    assert np.all(train.labels[np.concatenate([res.fit_rows, res.holdout_rows])] >= 0)
    assert res.notes and "30" in res.notes[0]


def test_stratified_holdout_keeps_singletons_in_fit():
    labels = np.array([0] * 20 + [1] * 10 + [2])
    fit, hold = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(np.bincount(labels[hold], minlength=3)) == [0, 2, 4]
    assert 30 in fit  # the single example of class 2
    assert np.array_equal(np.sort(np.concatenate([fit, hold])), np.arange(31))


# ----------------------------------------------------------------------------- distill
def test_distill_with_missing_exo_views():
    train = make_set(seed=0, p_view=0.6)
    rng = np.random.default_rng(3)
    train.exo_mask[rng.random(len(train)) < 0.4] = False  # 40 % of segments: no exo at all
    train.exo[~train.exo_mask] = 0.0
    assert (~train.exo_mask.any(1)).sum() > 100
    test = make_set(n=300, seed=1)
    res = train_head(cfg_for("distill"), train, C, progress=False)
    p = predict_proba(res.head, test.ego)
    assert acc(p, test.labels) > 0.85
    # what sits in an absent slot is never read
    noisy = FeatureSet(**{**train.__dict__, "exo": np.where(train.exo_mask[..., None],
                                                             train.exo, 1e6).astype(np.float32)})
    res2 = train_head(cfg_for("distill"), noisy, C, progress=False)
    assert np.array_equal(p, predict_proba(res2.head, test.ego))
    # inference needs ego only; the teacher can still be asked with exo
    t = res.head.teacher_proba(test.subset(np.arange(5)))
    assert t.shape == (5, C)
    assert res.head.teacher_proba(FeatureSet(**{**test.__dict__, "exo": None,
                                                "exo_mask": None})) is None
    no_exo = FeatureSet(**{**train.__dict__, "exo_mask": np.zeros_like(train.exo_mask)})
    with pytest.raises(KscliError, match="exo"):
        train_head(cfg_for("distill"), no_exo, C, progress=False)


# ----------------------------------------------------------------------------- sequences
def test_attentive_on_sequences_beats_mean_pooling():
    train, test = make_set(n=600, T=4, sep=0.7, seed=0), make_set(n=300, T=4, sep=0.7, seed=1)
    att = train_head(cfg_for("attentive", epochs=15), train, C, progress=False)
    p = predict_proba(att.head, test.ego)
    assert p.shape == (len(test), C)
    assert acc(p, test.labels) > 0.8
    # linear / mlp take (N, T, D) too: they mean-pool over T, which dilutes the one window
    lin = train_head(cfg_for("linear", epochs=15), train, C, progress=False)
    p_lin = predict_proba(lin.head, test.ego)
    assert p_lin.shape == (len(test), C)
    assert acc(p, test.labels) > acc(p_lin, test.labels) + 0.15
    # the attention weights are a distribution over the T windows
    x = att.model.prepare_ego(torch.from_numpy(test.ego[:8]))
    _, attn = att.model.pool(x)
    assert attn.shape == (8, 4, 1, att.model.cfg["num_heads"])
    torch.testing.assert_close(attn.sum(1), torch.ones(8, 1, att.model.cfg["num_heads"]))


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("head", ["linear", "mlp", "distill", "attentive"])
def test_checkpoint_rebuilds_from_itself(data, head):
    train, test = data
    res = train_head(cfg_for(head, epochs=2), train, C, progress=False)
    buf = io.BytesIO()
    torch.save({**res.head.state(), **res.record()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["head"] == head and ckpt["in_dim"] == D and ckpt["num_classes"] == C
    assert ckpt["selected"]["select_on"] == "holdout" and len(ckpt["grid"]) == 4
    again = load_head(ckpt)
    assert np.array_equal(predict_proba(again, test.ego), predict_proba(res.head, test.ego))
    np.testing.assert_allclose(ckpt["state_dict"]["ego_mean"].numpy(),
                               train.ego[res.fit_rows].reshape(len(res.fit_rows), -1, D)
                               .mean(1).mean(0), rtol=1e-4)
    np.testing.assert_array_equal(ckpt["prior"], res.head.prior)
    with pytest.raises(KscliError, match="does not fit"):
        load_head({**ckpt, "num_classes": C + 1, "prior": [1 / (C + 1)] * (C + 1)})
    with pytest.raises(KscliError, match=f"its class prior is not {C + 1} finite non-negative numbers"):
        load_head({**ckpt, "num_classes": C + 1})


# ----------------------------------------------------------------------------- optimiser
def test_stacked_adamw_matches_torch_adamw_per_member():
    torch.manual_seed(0)
    lrs, wds = [1e-2, 3e-3], [0.1, 0.0]
    w = torch.nn.Parameter(torch.randn(2, 5, 3))
    refs = [torch.nn.Parameter(w.detach()[g].clone()) for g in range(2)]
    ours = StackedAdamW([("w", w)], lrs, wds)
    theirs = [torch.optim.AdamW([refs[g]], lr=lrs[g], weight_decay=wds[g]) for g in range(2)]
    for step in range(5):
        grad = torch.randn(2, 5, 3)
        w.grad = grad.clone()
        ours.step()
        for g in range(2):
            refs[g].grad = grad[g].clone()
            theirs[g].step()
    for g in range(2):
        torch.testing.assert_close(w.detach()[g], refs[g].detach(), rtol=1e-5, atol=1e-6)
    ours.zero_grad(set_to_none=True)  # the stacked gradient too: backward would add to it
    assert w.grad is None
    w.grad = torch.zeros_like(w)
    assert ours.step(lambda: torch.tensor(3.0)) == 3.0  # torch's contract: the closure's loss
    with pytest.raises(ValueError, match="2 learning rates but 1 weight decays"):
        StackedAdamW([("w", w)], lrs, wds[:1])
    with pytest.raises(ValueError, match="no trainable parameter"):
        StackedAdamW([("w", w.detach())], lrs, wds)


def test_dropout_mask_is_shared_by_members():
    g = torch.Generator().manual_seed(0)
    h = torch.ones(3, 200, 50)
    out = dropout(h, 0.5, g, h.shape[-2:])
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert 0.45 < (out[0] == 0).float().mean() < 0.55
    assert torch.allclose(out[0][out[0] != 0], torch.tensor(2.0))
    assert dropout(h, 0.5, None) is h  # no generator: evaluation
    own = dropout(h, 0.5, g)  # no mask_shape: every element its own draw
    assert not torch.equal(own[0], own[1])
    # the mask is the generator's: the same seed, the same mask, whatever torch's global state
    torch.manual_seed(1)
    first = dropout(h, 0.5, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    assert torch.equal(first, dropout(h, 0.5, torch.Generator().manual_seed(5)))


def test_class_balance_weights_and_training(data):
    labels = np.array([0, 0, 0, 1])
    w = class_balance_weights(labels, 3)
    np.testing.assert_allclose(w, [4 / 6, 2.0, 0.0])
    train, test = data
    res = train_head(cfg_for("linear", epochs=3, class_balance=True), train, C, progress=False)
    assert acc(predict_proba(res.head, test.ego), test.labels) > 0.85


def test_bad_config_is_a_clear_error(data):
    train, _ = data
    with pytest.raises(KscliError, match="select_on"):
        cfg_for("linear", select_on="test")
    with pytest.raises(KscliError, match="num_classes"):
        train_head(cfg_for("linear"), train, C - 1, progress=False)
    with pytest.raises(KscliError, match="option 'lr': head 'linear' has no such option"):
        config_for("linear", lr=0.1)
    cfg = config_for("mlp")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KscliError, match="another head"):
        type(cfg).from_dict({**cfg.to_dict(), "head": "linear"})


# ----------------------------------------------------------------------------- metrics
def test_metrics_hand_made_case():
    probs = np.array([
        [0.70, 0.10, 0.10, 0.05, 0.03, 0.02],  # label 0: rank 0
        [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 4: rank 4 -> top-5 hit
        [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 5: rank 5 -> miss
        [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],  # label 1: tie with class 0 -> rank 1
        [0.10, 0.50, 0.10, 0.10, 0.10, 0.10],  # label 1: rank 0
        [0.10, 0.50, 0.10, 0.10, 0.10, 0.10],  # label -1: not scored
    ])
    labels = np.array([0, 4, 5, 1, 1, -1])
    scen = ["cook", "cook", "bike", "bike", "bike", "cook"]
    m = compute_metrics(probs, labels, scen, num_classes=6)
    assert m["n"] == 5 and m["num_classes_present"] == 4
    assert m["top1"] == pytest.approx(100 * 2 / 5)
    assert m["top5"] == pytest.approx(100 * 4 / 5)
    # per class: 0 -> 1/1, 1 -> 1/2, 4 -> 0, 5 -> 0
    assert m["mean_class_acc"] == pytest.approx(100 * (1 + 0.5 + 0 + 0) / 4)
    assert m["per_scenario"] == {"bike": {"top1": pytest.approx(100 / 3), "n": 3},
                                 "cook": {"top1": pytest.approx(50.0), "n": 2}}
    text = format_summary(m)
    assert "top-1  40.00 %" in text and "bike" in text and "(n=3)" in text
    assert compute_metrics(probs, labels, None, 6)["per_scenario"] == {}


def test_metrics_errors():
    with pytest.raises(KscliError, match="no labelled"):
        compute_metrics(np.ones((2, 3)) / 3, np.array([-1, -1]), None, 3)
    with pytest.raises(KscliError, match=r"\(N, 4\)"):
        compute_metrics(np.ones((2, 3)) / 3, np.array([0, 1]), None, 4)
    with pytest.raises(KscliError, match="scenario"):
        compute_metrics(np.ones((2, 3)) / 3, np.array([0, 1]), ["a"], 3)


def test_tiny_data_with_singleton_classes_still_trains():
    train = make_set(n=C)  # one example per class
    res = train_head(cfg_for("linear", epochs=2), train, C, progress=False)
    assert res.selected["n_select"] == 1 and res.selected["n_fit"] == C - 1
    assert res.notes and "not stratified" in res.notes[-1]


def test_selection_needs_a_labelled_row_with_ego_and_the_teacher_needs_exo(data):
    train, test = data
    unlabelled = FeatureSet(**{**test.__dict__, "labels": test.labels.copy(),
                               "ego_present": np.arange(len(test)) % 2 == 0})
    unlabelled.labels[unlabelled.ego_present] = -1  # the labelled rows have no ego feature
    with pytest.raises(KscliError, match="val has no labelled segment with an ego feature"):
        train_head(cfg_for("linear", epochs=1, select_on="val"), train, C, val=unlabelled,
                   progress=False)
    # a val store without exo views (extract --view ego): no teacher score is made up
    ego_only = FeatureSet(**{**test.__dict__, "exo_mask": np.zeros_like(test.exo_mask)})
    res = train_head(cfg_for("distill", epochs=1, select_on="val"), train, C, val=ego_only,
                     progress=False)
    assert "teacher_select_top1" not in res.selected
    assert "teacher_select_top1" not in res.history[-1]
    assert res.head.teacher_proba(ego_only) is None
    res = train_head(cfg_for("distill", epochs=1), train, C, progress=False)
    assert 0 <= res.selected["teacher_select_top1"] <= 100
