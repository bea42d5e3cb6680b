"""What training optimises, pinned against torch's own reference functions: the stacked
cross-entropy (label smoothing, class weights), the distill and context losses term by term,
the class-balance weights and that they reach the loss, the grid-selection rule with its
tie-breaks, and which rows the teacher's val comparison counts.

Every net here runs in eval mode (no dropout, no view dropout) and in float64, so each term is
compared with its reference to ~1e-12 and a changed factor (T instead of T^2), a dropped term
or a swapped tie-break cannot hide in a tolerance."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

import kscli.heads.train as train_mod
from kscli.heads.base import config_for, head_class
from kscli.heads.context import ContextConfig
from kscli.heads.context_net import ContextNet
from kscli.heads.distill import DistillConfig, DistillNet
from kscli.heads.featureset import FeatureSet
from kscli.heads.layers import stacked_cross_entropy
from kscli.heads.run import teacher_metrics
from kscli.heads.stacked import class_balance_weights
from kscli.heads.takes import Takes
from kscli.heads.train import Curves, member_key, train_head

C, D, DX, V, H = 5, 16, 12, 3, 16
T = 3.0  # temperature != 1 (and != 2), so T and T^2 and 1 all differ
WEIGHT = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0], dtype=torch.float64)  # class 2 weighs 0
TIGHT = dict(rtol=1e-10, atol=1e-12)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, **TIGHT)


@torch.no_grad()
def perturb(net: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Move every parameter off its init by N(0, scale^2) noise: logits of order 1 (terms that
    a factor could hide in are not ~0) and, for stacked parameters (G, ...), members that
    differ from one another."""
    g = gen(seed)
    for p in net.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def kl_ref(ls, lt, temperature):
    """torch's KL(softmax(lt/T) || softmax(ls/T)), mean over rows, times T^2."""
    return F.kl_div(F.log_softmax(ls / temperature, -1), F.log_softmax(lt / temperature, -1),
                    log_target=True, reduction="batchmean") * temperature * temperature


# ----------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class_weights"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_stacked_cross_entropy_equals_torch_cross_entropy_per_member(smoothing, weighted):
    g = gen(0)
    logits = (2.0 * torch.randn(3, 11, C, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2, 1, 4, 4, 3])  # class 2 (weight 0) is present
    w = WEIGHT if weighted else None
    ours = stacked_cross_entropy(logits, y, smoothing, w)
    ref = torch.stack([F.cross_entropy(logits[i], y, weight=w, label_smoothing=smoothing)
                       for i in range(3)])
    assert ours.shape == (3,) and len(set(ref.tolist())) == 3  # members differ
    close(ours, ref)
    # the gradient training follows is torch's too
    g_ours, = torch.autograd.grad(ours.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    close(g_ours, g_ref)


def test_stacked_cross_entropy_weights_the_smoothing_term_per_class_as_torch_does():
    """With both on, torch's smoothing term is e/C sum_c w[c] (-log p_c), not w[y] times the
    mean over classes: the two differ, and ours is torch's."""
    logits = 2.0 * torch.randn(2, 9, C, generator=gen(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 1, 1, 3, 0])
    e = 0.1
    logp = logits.log_softmax(-1)
    wy = WEIGHT[y]
    nll = -logp.gather(-1, y.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
    by_wy = ((1 - e) * nll - e * logp.mean(-1)) * wy  # smoothing weighed by w[y]
    per_class = (1 - e) * nll * wy - e / C * (logp * WEIGHT).sum(-1)  # torch's
    ours = stacked_cross_entropy(logits, y, e, WEIGHT)
    close(ours, per_class.sum(1) / wy.sum())
    assert (ours - by_wy.sum(1) / wy.sum()).abs().min() > 1e-3


def test_stacked_cross_entropy_float32_matches_torch():
    logits = torch.randn(2, 64, C, generator=gen(2))
    y = torch.randint(0, C, (64,), generator=gen(3))
    w = WEIGHT.float()
    ref = torch.stack([F.cross_entropy(logits[i], y, weight=w, label_smoothing=0.1)
                       for i in range(2)])
    torch.testing.assert_close(stacked_cross_entropy(logits, y, 0.1, w), ref)


# ----------------------------------------------------------------------------- distill
def distill_net() -> DistillNet:
    cfg = {**DistillConfig(hidden=H).model_cfg(), "exo_dim": DX}
    net = DistillNet(D, C, cfg, members=2, generator=gen(0))
    perturb(net, seed=1)
    return net.double().eval()


def distill_batch() -> dict:
    g = gen(4)
    B = 10
    mask = torch.rand(B, V, generator=g) < 0.6
    mask[0] = False  # a segment without any exo view
    mask[1] = True
    exo = torch.randn(B, V, DX, generator=g, dtype=torch.float64) * mask.unsqueeze(-1)
    return {"ego": torch.randn(B, D, generator=g, dtype=torch.float64),
            "y": torch.tensor([0, 1, 2, 3, 4, 0, 1, 3, 4, 4]), "exo": exo, "exo_mask": mask}


def distill_loss(net, batch, smoothing, weight, **terms):
    net.cfg.update({"teacher_weight": 0.0, "alpha": 0.0, "beta": 0.0, "temperature": T, **terms})
    return net.loss(batch, smoothing, weight)


def distill_refs(net, batch, smoothing, weight) -> dict:
    """Each term per member (2,), from the net's own student / teacher and torch's functions.
    The exo is pooled here by hand (masked mean of the real views; 0 with none)."""
    x, y, m = batch["ego"], batch["y"], batch["exo_mask"].double()
    pooled = (batch["exo"] * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    close(net.pool_exo(batch["exo"], batch["exo_mask"]), pooled)
    hs, ls = net.student(x)
    ht, lt = net.teacher(x, pooled)
    per = lambda f: torch.stack([f(g) for g in range(net.members)])  # noqa: E731
    ce = lambda lg: per(lambda g: F.cross_entropy(lg[g], y, weight=weight,  # noqa: E731
                                                   label_smoothing=smoothing))
    return {"ce_student": ce(ls), "ce_teacher": ce(lt),
            "kl": per(lambda g: kl_ref(ls[g], lt[g], T)),
            "hint": per(lambda g: F.mse_loss(hs[g], ht[g]))}


CASES = [(0.0, None), (0.1, None), (0.1, WEIGHT)]
CASE_IDS = ["plain", "smoothing", "smoothing+class_weights"]


@pytest.mark.parametrize("smoothing,weight", CASES, ids=CASE_IDS)
def test_distill_loss_without_teacher_terms_is_the_students_torch_cross_entropy(smoothing, weight):
    net, batch = distill_net(), distill_batch()
    ref = distill_refs(net, batch, smoothing, weight)
    loss = distill_loss(net, batch, smoothing, weight)
    assert loss.shape == (2,) and (ref["ce_student"][0] - ref["ce_student"][1]).abs() > 1e-3
    close(loss, ref["ce_student"])


@pytest.mark.parametrize("smoothing,weight", CASES, ids=CASE_IDS)
def test_distill_teacher_cross_entropy_term_is_weighted_by_teacher_weight(smoothing, weight):
    net, batch = distill_net(), distill_batch()
    ref = distill_refs(net, batch, smoothing, weight)
    close(distill_loss(net, batch, smoothing, weight, teacher_weight=0.7),
          ref["ce_student"] + 0.7 * ref["ce_teacher"])


def test_distill_kl_term_is_alpha_T2_kl_from_teacher_to_student():
    net, batch = distill_net(), distill_batch()
    ref = distill_refs(net, batch, 0.1, WEIGHT)
    assert (ref["kl"] > 1e-2).all()  # large enough that T vs T^2 shows
    close(distill_loss(net, batch, 0.1, WEIGHT, alpha=0.5), ref["ce_student"] + 0.5 * ref["kl"])


def test_distill_hint_term_is_beta_mse_of_hidden_states():
    net, batch = distill_net(), distill_batch()
    ref = distill_refs(net, batch, 0.1, WEIGHT)
    assert (ref["hint"] > 1e-2).all()
    close(distill_loss(net, batch, 0.1, WEIGHT, beta=0.3), ref["ce_student"] + 0.3 * ref["hint"])


def test_distill_total_is_the_sum_of_the_four_terms():
    net, batch = distill_net(), distill_batch()
    ref = distill_refs(net, batch, 0.1, WEIGHT)
    close(distill_loss(net, batch, 0.1, WEIGHT, teacher_weight=0.7, alpha=0.5, beta=0.3),
          ref["ce_student"] + 0.7 * ref["ce_teacher"] + 0.5 * ref["kl"] + 0.3 * ref["hint"])


def _grads(loss, named):
    gs = torch.autograd.grad(loss.sum(), [p for _, p in named], allow_unused=True)
    return {n: (0.0 if g is None else float(g.abs().max())) for (n, _), g in zip(named, gs)}


@pytest.mark.parametrize("term,value", [("alpha", 0.5), ("beta", 0.3), ("teacher_weight", 0.7)])
def test_distill_only_the_teachers_own_cross_entropy_trains_the_teacher(term, value):
    """KL and hint are taught to the student with the teacher detached; the teacher learns
    from its own cross-entropy alone."""
    net, batch = distill_net(), distill_batch()
    named = list(net.named_parameters())
    grads = _grads(distill_loss(net, batch, 0.1, WEIGHT, **{term: value}), named)
    teacher = [n for n, _ in named if n.startswith("t_")]
    student = [n for n, _ in named if n.startswith("s_")]
    assert teacher and student and len(teacher) + len(student) == len(named)
    assert all(grads[n] > 0 for n in student)  # the student always learns
    if term == "teacher_weight":
        assert all(grads[n] > 0 for n in teacher), grads
    else:
        assert all(grads[n] == 0 for n in teacher), grads


# ----------------------------------------------------------------------------- context
def context_fs() -> FeatureSet:
    """Three takes (4, 3 and 5 segments), some unlabelled, some without exo, one without ego."""
    rng = np.random.default_rng(5)
    lens = [4, 3, 5]
    n = sum(lens)
    take = [f"take{i}" for i, k in enumerate(lens) for _ in range(k)]
    start = np.concatenate([np.cumsum(rng.uniform(1, 4, k)) for k in lens])
    labels = rng.integers(0, C, n)
    labels[[1, 6, 10]] = -1
    mask = rng.random((n, V)) < 0.6
    mask[[0, 5]] = False
    mask[[2, 7]] = True
    exo = (rng.normal(size=(n, V, DX)) * mask[..., None]).astype(np.float32)
    ego = rng.normal(size=(n, D)).astype(np.float32)
    present = np.ones(n, bool)
    present[3] = False
    ego[3] = 0.0
    return FeatureSet(names=[f"s{i}" for i in range(n)], ego=ego, exo=exo, exo_mask=mask,
                      labels=labels.astype(np.int64), take=take, start=start,
                      end=start + 0.8, scenario=None, ego_present=present)


def context_net_and_batch():
    opts = dict(d_model=16, heads=2, layers=1, ffn_mult=2, time_hidden=8, max_rel=4)
    cfg = {**ContextConfig(**opts).model_cfg(), "exo_dim": DX}
    net = ContextNet(D, C, cfg, generator=gen(0))
    perturb(net, seed=2)
    net = net.double().eval()
    fs = context_fs()
    data = Takes(net, fs, None, with_exo=True)
    b = data.batch(data.groups, with_exo=True)
    b = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
         for k, v in b.items()}
    assert (b["y"] < 0).any() and (b["y"] >= 0).any()
    return net, b


def context_loss(net, b, smoothing, **terms):
    net.cfg.update({"teacher_weight": 0.0, "alpha": 0.0, "beta": 0.0, "temperature": T, **terms})
    return net.loss(b, smoothing)


def context_refs(net, b, smoothing) -> dict:
    hs, ls = net.student(b)
    ht, lt = net.teacher(b, *net.pool_exo(b["exo"], b["exo_mask"]))
    lab = b["y"] >= 0
    ce = lambda lg: F.cross_entropy(lg[lab], b["y"][lab], label_smoothing=smoothing)  # noqa: E731
    return {"ce_student": ce(ls), "ce_teacher": ce(lt), "kl": kl_ref(ls, lt, T),
            "hint": F.mse_loss(hs, ht)}


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_context_loss_is_the_sum_of_the_four_terms_each_as_torch_computes_it(smoothing):
    net, b = context_net_and_batch()
    ref = context_refs(net, b, smoothing)
    assert ref["kl"] > 1e-2 and ref["hint"] > 1e-2
    close(context_loss(net, b, smoothing), ref["ce_student"])
    close(context_loss(net, b, smoothing, teacher_weight=0.7),
          ref["ce_student"] + 0.7 * ref["ce_teacher"])
    close(context_loss(net, b, smoothing, alpha=0.5), ref["ce_student"] + 0.5 * ref["kl"])
    close(context_loss(net, b, smoothing, beta=0.3), ref["ce_student"] + 0.3 * ref["hint"])
    close(context_loss(net, b, smoothing, teacher_weight=0.7, alpha=0.5, beta=0.3),
          ref["ce_student"] + 0.7 * ref["ce_teacher"] + 0.5 * ref["kl"] + 0.3 * ref["hint"])


def test_context_unlabelled_tokens_do_not_count_in_cross_entropy():
    net, b = context_net_and_batch()
    lab = b["y"] >= 0
    _, ls = net.student(b)
    # the labelled tokens' mean, not a mean that counts the unlabelled ones as zeros
    per = F.cross_entropy(ls[lab], b["y"][lab], label_smoothing=0.1, reduction="none")
    close(context_loss(net, b, 0.1), per.mean())
    # no label at all: CE is exactly 0 (with a graph), the distillation terms still count
    none = {**b, "y": torch.full_like(b["y"], -1)}
    loss = context_loss(net, none, 0.1, teacher_weight=0.7)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    ref = context_refs(net, b, 0.1)
    close(context_loss(net, none, 0.1, teacher_weight=0.7, alpha=0.5, beta=0.3),
          0.5 * ref["kl"] + 0.3 * ref["hint"])


def test_context_loss_without_exo_in_the_batch_is_the_students_cross_entropy():
    net, b = context_net_and_batch()
    no_exo = {k: v for k, v in b.items() if k not in ("exo", "exo_mask")}
    close(context_loss(net, no_exo, 0.1, teacher_weight=0.7, alpha=0.5, beta=0.3),
          context_refs(net, b, 0.1)["ce_student"])


def named_like(named, prefix):
    return [n for n, _ in named if n.startswith(prefix)]


@pytest.mark.parametrize("term,value", [("alpha", 0.5), ("beta", 0.3), ("teacher_weight", 0.7)])
def test_context_only_the_teachers_own_cross_entropy_trains_the_teacher(term, value):
    net, b = context_net_and_batch()
    named = list(net.named_parameters())
    grads = _grads(context_loss(net, b, 0.1, **{term: value}), named)
    teacher = [n for n, _ in named if n.startswith("teacher.")]
    assert teacher and sum(grads[n] for n in named_like(named, "student.cls.")) > 0
    if term == "teacher_weight":
        assert grads["teacher.cls.weight"] > 0 and grads["teacher.in_proj.weight"] > 0
    else:
        assert all(grads[n] == 0 for n in teacher), {n: grads[n] for n in teacher}


# ----------------------------------------------------------------------------- class balance
def test_class_balance_weights_are_sklearns_balanced_weights_zero_for_absent_classes():
    labels = np.array([0] * 12 + [1] * 3 + [3] * 5 + [4])  # class 2 absent
    w = class_balance_weights(labels, C)
    present = np.unique(labels)
    expected = np.zeros(C)
    expected[present] = compute_class_weight("balanced", classes=present, y=labels)
    assert w.dtype == np.float32 and w.shape == (C,)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w[2] == 0.0
    np.testing.assert_allclose(w[labels].mean(), 1.0, rtol=1e-6)  # mean 1 over the samples


def imbalanced_set(n_per=(30, 12, 6, 0, 3)) -> FeatureSet:
    rng = np.random.default_rng(8)
    y = np.concatenate([np.full(k, c) for c, k in enumerate(n_per)]).astype(np.int64)
    rng.shuffle(y)
    mu = np.random.default_rng(9).normal(size=(C, D))
    n = len(y)
    ego = (mu[y] + rng.normal(size=(n, D))).astype(np.float32)
    return FeatureSet(names=[f"s{i}" for i in range(n)], ego=ego, exo=None, exo_mask=None,
                      labels=y, take=None, start=None, end=None)


@pytest.mark.parametrize("balance", [True, False])
def test_stacked_training_passes_class_balance_weights_and_smoothing_to_the_loss(
        monkeypatch, balance):
    net_cls = head_class("linear").Net
    original = net_cls.loss
    seen = []

    def recording_loss(self, batch, label_smoothing=0.0, class_weight=None, gen=None):
        seen.append((label_smoothing, None if class_weight is None
                     else class_weight.detach().cpu().numpy().copy()))
        return original(self, batch, label_smoothing, class_weight, gen)

    monkeypatch.setattr(net_cls, "loss", recording_loss)
    fs = imbalanced_set()
    cfg = config_for("linear", epochs=2, batch_size=16, num_threads=1, lrs=(1e-2,),
                     weight_decays=(0.0,), class_balance=balance, label_smoothing=0.15)
    res = train_head(cfg, fs, C, progress=False)
    assert len(seen) >= 2 * -(-len(res.fit_rows) // 16)  # every step (2 epochs)
    expected = class_balance_weights(fs.labels[res.fit_rows], C)
    for smoothing, w in seen:
        assert smoothing == 0.15
        if balance:
            np.testing.assert_array_equal(w, expected)
            assert w[3] == 0.0 and w[4] > w[1] > w[0] > 0  # rarer classes weigh more
        else:
            assert w is None


# ----------------------------------------------------------------------------- selection
def test_member_key_orders_by_top1_then_lower_nll_then_earlier_member():
    best = lambda rows: min(range(len(rows)), key=lambda g: member_key(*rows[g], g))  # noqa: E731
    assert best([(50.0, 0.1), (60.0, 2.0), (55.0, 0.5)]) == 1  # top-1 first, whatever the NLL
    assert best([(60.0, 0.9), (60.0, 0.7), (60.0, 0.8)]) == 1  # then the lower NLL
    assert best([(50.0, 0.1), (60.0, 0.7), (60.0, 0.7)]) == 1  # then the earlier member
    assert best([(60.0, 0.7), (40.0, 0.1), (60.0, 0.7)]) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_member_key_a_non_finite_score_never_wins(bad):
    best = lambda rows: min(range(len(rows)), key=lambda g: member_key(*rows[g], g))  # noqa: E731
    assert best([(bad, 0.5), (10.0, 3.0)]) == 1  # non-finite top-1 loses to any finite one
    assert best([(10.0, 3.0), (bad, 0.5)]) == 0
    assert best([(60.0, bad), (60.0, 3.0)]) == 1  # same top-1: a non-finite NLL loses
    assert best([(bad, bad), (0.0, 9.0)]) == 1


def test_curves_best_uses_the_given_epoch_and_members():
    cur = Curves(members=4, epochs=2)
    cur.add([0, 1, 2, 3], 0, np.ones(4), np.array([90.0, 10.0, 10.0, 10.0]), np.ones(4), None, 1.0)
    cur.add([0, 1, 2, 3], 1, np.ones(4), np.array([40.0, 60.0, 60.0, 60.0]),
            np.array([0.1, 0.8, 0.7, 0.7]), None, 1.0)
    assert cur.best(range(4), 0) == 0
    assert cur.best(range(4), -1) == cur.best(range(4), 1) == 2  # lower NLL, then earlier
    assert cur.best([0, 1, 3], -1) == 3
    assert [h["best_member"] for h in cur.history()] == [0, 2]


SELECTION_CASES = {
    # last epoch (acc %, NLL) per member -> the member fit must keep; epoch 1 favours member 0
    # strongly, so a rule that looked at an earlier epoch would pick 0
    "best_top1_wins": ([50.0, 60.0, 55.0], [0.1, 2.0, 0.5], 1),
    "tie_goes_to_lower_nll": ([60.0, 60.0, 60.0], [0.9, 0.7, 0.8], 1),
    "then_to_earlier_member": ([40.0, 60.0, 60.0], [0.1, 0.7, 0.7], 1),
    "nan_top1_never_wins": ([np.nan, 20.0, 30.0], [0.1, 0.7, 0.9], 2),
}


@pytest.mark.parametrize("case", list(SELECTION_CASES))
def test_fit_selects_by_the_rule_after_the_last_epoch(monkeypatch, case):
    acc, nll, want = SELECTION_CASES[case]
    first = (np.array([99.0, 1.0, 1.0]), np.array([0.01, 5.0, 5.0]), None)
    last = (np.array(acc), np.array(nll), None)
    calls = []

    def fake_score_members(head):
        calls.append(1)
        return first if len(calls) == 1 else last

    monkeypatch.setattr(train_mod, "score_members", fake_score_members)
    lrs = (1e-3, 2e-3, 3e-3)
    cfg = config_for("linear", epochs=2, batch_size=32, num_threads=1, lrs=lrs,
                     weight_decays=(0.0,))
    res = train_head(cfg, imbalanced_set(), C, progress=False)
    assert len(calls) == 2
    sel = res.selected
    assert sel["member"] == want and sel["lr"] == lrs[want]
    assert sel["select_top1"] == acc[want] and sel["select_nll"] == nll[want]
    assert res.history[0]["best_member"] == 0 and res.history[-1]["best_member"] == want


# ----------------------------------------------------------------------------- teacher metrics
def test_teacher_metrics_counts_labelled_rows_with_ego_and_an_exo_view():
    # row: label, has ego, exo views; counted rows 0-3 (teacher right on 0, 1, 3; student on
    # 1, 3); every left-out row has the teacher wrong and the student right, so counting any
    # of them would change both numbers
    rows = [(0, True, [1, 0]), (1, True, [1, 1]), (2, True, [0, 1]), (0, True, [0, 1]),
            (-1, True, [1, 0]),  # unlabelled
            (1, False, [1, 0]),  # no ego feature
            (2, True, [0, 0]),  # no exo view
            (0, False, [0, 0])]
    labels = np.array([r[0] for r in rows])
    n, k = len(rows), 3
    teacher_right = [True, True, False, True, False, False, False, False]
    student_right = [False, True, False, True, True, True, True, True]

    def probs(right):
        out = np.full((n, k), 0.1, np.float32)
        for i, ok in enumerate(right):
            y = max(labels[i], 0)
            out[i, y if ok else (y + 1) % k] = 0.8
        return out

    fs = FeatureSet(names=[f"s{i}" for i in range(n)], ego=np.ones((n, 4), np.float32),
                    exo=np.ones((n, 2, 4), np.float32),
                    exo_mask=np.array([r[2] for r in rows], bool), labels=labels,
                    take=None, start=None, end=None,
                    ego_present=np.array([r[1] for r in rows]))
    teacher_p = probs(teacher_right)
    head = SimpleNamespace(teacher_trained=True, teacher_proba=lambda f: teacher_p)
    out = teacher_metrics(head, fs, probs(student_right), k)
    assert out["n"] == 4
    assert out["val_top1"] == pytest.approx(75.0) and out["student_val_top1"] == pytest.approx(50.0)
    # the edge cases: no teacher, no exo in val, no row that qualifies
    assert teacher_metrics(SimpleNamespace(teacher_trained=False), fs, teacher_p, k) is None
    no_exo = fs.subset(np.arange(n))
    no_exo.exo_mask = np.zeros((n, 2), bool)
    assert "note" in teacher_metrics(head, no_exo, teacher_p, k)
    left_out = fs.subset([4, 5, 6, 7])
    head_left = SimpleNamespace(teacher_trained=True, teacher_proba=lambda f: teacher_p[4:])
    assert "note" in teacher_metrics(head_left, left_out, probs(student_right)[4:], k)
