"""The Head interface: registry, options and typed --set, old checkpoints, and the library
pieces the heads lean on (torch's schedulers, Ledoit-Wolf, metrics) checked against references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import cli
from kscli.errors import KscliError
from kscli.heads.base import (BUILTIN_HEADS, HeadConfig, config_for, head_class, list_heads,
                              load_head)
from kscli.heads.featureset import FeatureSet



# ----------------------------------------------------------------------------- registry, options
def test_every_head_is_one_registered_class_with_described_options():
    assert set(BUILTIN_HEADS) <= set(list_heads())
    for name in BUILTIN_HEADS:
        cls = head_class(name)
        assert cls.name == name and cls.description and cls.Config.head == name
        assert issubclass(cls.Config, HeadConfig)
        rows = cls.Config.options()
        assert {r[0] for r in rows} >= {"lrs", "weight_decays", "epochs", "seed", "device"}
        assert all(meaning for *_, meaning in rows), name  # every option says what it means
        cfg = config_for(name)
        assert type(cfg).from_dict(cfg.to_dict()) == cfg  # what config.json saves reads back


def test_defaults_live_in_the_config_only():
    assert config_for("mlp").hidden == 512 and config_for("distill").hidden == 512
    assert config_for("attentive").dropout == 0.1 and config_for("mlp").dropout == 0.5
    # the net built for training carries exactly the config's model options
    cfg = config_for("attentive", dropout=0.25, attn_dim=16, num_heads=2)
    head = head_class("attentive")(cfg, 8, 3)
    net = head.build_model(cfg.model_cfg(), torch.Generator())
    assert net.cfg == {"num_heads": 2, "attn_dim": 16, "dropout": 0.25}


@pytest.mark.parametrize("item, value", [
    ("hidden=64", 64), ("dropout=0.25", 0.25), ("lrs=1e-3, 2e-3", (1e-3, 2e-3)),
    ("epochs=none", None), ("epochs=3", 3), ("class_balance=true", True),
    ("class-balance=no", False), ("device=cuda:1", "cuda:1")])
def test_set_is_parsed_by_the_fields_type(item, value):
    key = item.split("=")[0].replace("-", "_")
    assert getattr(config_for("mlp", sets=[item]), key) == value


@pytest.mark.parametrize("item, message", [
    ("hidden=abc", "--set hidden=abc: hidden takes an integer, e.g. --set hidden=512"),
    ("hidden=1.5", "hidden takes an integer"),
    ("dropout=lots", "dropout takes a number"),
    ("lrs=a,b", "lrs takes comma-separated numbers, e.g. --set lrs=0.001,0.003"),
    ("class_balance=maybe", "class_balance takes true or false"),
    ("epochs=x", "epochs takes an integer or none"),
    ("attn_dropout=0.1", "head 'mlp' has no option 'attn_dropout'; its options: lrs, "
                         "weight_decays, epochs"),
    ("hidden", "expected key=value"),
    ("dropout=1.0", "dropout must be in [0, 1)"),
    ("hidden=0", "hidden must be >= 1")])
def test_a_bad_set_is_one_line_naming_the_keys_or_the_type(item, message):
    with pytest.raises(KscliError) as e:
        config_for("mlp", sets=[item])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_heads_command_lists_heads_and_one_heads_options():
    out = cli("heads").stdout
    for name in BUILTIN_HEADS:
        assert any(line.startswith(name + " ") and len(line) > 20 for line in out.splitlines())
    opts = cli("heads", "--head", "attentive").stdout
    assert "dropout" in opts and "0.1" in opts and "attention" in opts
    assert max(len(line) for line in opts.splitlines()) <= 100
    bad = cli("heads", "--head", "nope", check=False)
    assert bad.exit_code == 2 and "known heads: attentive, context" in bad.stderr


# ----------------------------------------------------------------------------- old checkpoints
# The checkpoint layout kscli wrote before the Head interface (format "kscli-head", version 1),
# written down from that release: the cfg each head saved and its weights' names and shapes.
D, C, H = 6, 4, 8
_LN = {"g": (1, 1, H), "b": (1, 1, H)}
V1_LAYOUT = {
    "linear": ({}, {"fc_w": (1, D, C), "fc_b": (1, 1, C)}),
    "mlp": ({"hidden": H, "dropout": 0.5, "input_dropout": 0.0},
            {"fc1_w": (1, D, H), "fc1_b": (1, 1, H), **{f"ln1_{k}": v for k, v in _LN.items()},
             "fc2_w": (1, H, C), "fc2_b": (1, 1, C)}),
    "distill": ({"hidden": H, "dropout": 0.5, "input_dropout": 0.0, "temperature": 2.0,
                 "alpha": 1.0, "beta": 1.0, "teacher_weight": 1.0, "view_dropout": 0.3,
                 "exo_dim": D},
                {**{f"{t}_fc1_w": (1, D, H) for t in "st"}, **{f"{t}_fc1_b": (1, 1, H) for t in "st"},
                 **{f"{t}_ln1_{k}": v for t in "st" for k, v in _LN.items()},
                 **{f"{t}_fc2_w": (1, H, C) for t in "st"}, **{f"{t}_fc2_b": (1, 1, C) for t in "st"},
                 "t_exo_w": (1, D, H), "exo_mean": (D,), "exo_std": (D,)}),
    "attentive": ({"num_heads": 2, "attn_dim": H, "dropout": 0.1},
                  {"attn_w": (1, D, 2), "value_w": (1, D, H), **{f"ln_{k}": v for k, v in _LN.items()},
                   "fc_w": (1, H, C), "fc_b": (1, 1, C)}),
    "context": ({"d_model": H, "layers": 1, "heads": 2, "ffn_mult": 2, "dropout": 0.1,
                 "attn_dropout": 0.0, "input_dropout": 0.2, "max_rel": 32, "time_hidden": 4,
                 "temperature": 2.0, "alpha": 1.0, "beta": 1.0, "teacher_weight": 1.0,
                 "view_dropout": 0.3, "exo_dim": D}, None),  # names below, shapes from the net
}
_ENCODER = ["blocks.0.fc1", "blocks.0.fc2", "blocks.0.ln1", "blocks.0.ln2", "blocks.0.proj",
            "blocks.0.qkv", "cls", "in_norm", "in_proj", "norm", "time_mlp.0", "time_mlp.2"]
V1_CONTEXT_KEYS = sorted(
    ["ego_mean", "ego_std", "exo_mean", "exo_std", "time_mean", "time_std",
     "teacher.exo_proj.weight", "teacher.no_exo"]
    + [f"{e}.{m}.{p}" for e in ("student", "teacher") for m in _ENCODER for p in ("weight", "bias")]
    + [f"{e}.{p}" for e in ("student", "teacher") for p in ("missing", "rel_bias", "win_attn")])


def v1_checkpoint(head: str, tmp_path) -> dict:
    """A checkpoint in the v1 layout with random weights, saved and read back as a run's is,
    with the training record and run keys of that release (a flat TrainConfig among them)."""
    cfg, shapes = V1_LAYOUT[head]
    if shapes is None:  # the context net's many shapes: taken from a net, its names checked
        from kscli.heads.context_net import ContextNet

        state = ContextNet(D, C, cfg, generator=torch.Generator()).state_dict()
        assert sorted(state) == V1_CONTEXT_KEYS
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    shapes = {"ego_mean": (D,), "ego_std": (D,), **shapes}
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v, generator=gen) for k, v in shapes.items()}
    for k in state:
        if k.endswith("_std"):
            state[k] = state[k].abs() + 0.5
    ckpt = {"format": "kscli-head", "version": 1, "head": head, "in_dim": D, "num_classes": C,
            "cfg": cfg, "state_dict": state,
            "train_cfg": {"head": head, "hidden": 1024, "attn_dropout": 0.1, "lrs": [1e-3]},
            "selected": {"member": 0, "lr": 1e-3}, "grid": [], "history": [], "timings": {},
            "notes": [], "tags": ["tiny-random"], "prior": [0.25] * C, "labels": [],
            "backbones": {}, "metrics": {}}
    torch.save(ckpt, tmp_path / f"{head}.pt")
    return torch.load(tmp_path / f"{head}.pt", weights_only=True)


def _v1_logits(head: str, w: dict, x: torch.Tensor) -> torch.Tensor | None:
    """What the v1 heads computed, written out with torch.nn.functional (None: context)."""
    import torch.nn.functional as F

    x = (x - w["ego_mean"]) / w["ego_std"]
    ln = lambda h, p: F.layer_norm(h, (h.shape[-1],)) * w[f"{p}_g"][0] + w[f"{p}_b"][0]  # noqa: E731
    if head == "linear":
        return x @ w["fc_w"][0] + w["fc_b"][0]
    if head in ("mlp", "distill"):
        p = "" if head == "mlp" else "s_"
        h = F.gelu(ln(x @ w[f"{p}fc1_w"][0] + w[f"{p}fc1_b"][0], f"{p}ln1"))
        return h @ w[f"{p}fc2_w"][0] + w[f"{p}fc2_b"][0]
    if head == "attentive":  # one window: attention pooling is the identity
        return ln(x @ w["value_w"][0], "ln") @ w["fc_w"][0] + w["fc_b"][0]
    return None


@pytest.mark.parametrize("head", BUILTIN_HEADS)
def test_checkpoints_in_the_previous_layout_load_and_predict_as_that_release_did(head, tmp_path):
    ckpt = v1_checkpoint(head, tmp_path)
    n = 12
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(1))
    fs = FeatureSet([f"s{i}" for i in range(n)], x.numpy(), None, None, np.full(n, -1),
                    [f"t{i // 4}" for i in range(n)], np.arange(n) % 4 * 2.0, np.arange(n) % 4 * 2.0 + 1.5)
    loaded = load_head(ckpt)
    probs = loaded.predict_proba(fs)
    assert probs.shape == (n, C) and np.allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(loaded.prior, np.full(C, 0.25, np.float32))
    want = _v1_logits(head, ckpt["state_dict"], x)
    if want is not None:
        np.testing.assert_allclose(probs, want.softmax(-1).numpy(), atol=1e-6)


def test_checkpoints_this_release_cannot_read_are_refused_in_one_line(tmp_path):
    ckpt = v1_checkpoint("mlp", tmp_path)
    for bad, message in (({**ckpt, "version": 2}, "newer than this kscli"),
                         ({**ckpt, "format": "other"}, "checkpoint format is 'other'"),
                         ({k: v for k, v in ckpt.items() if k != "state_dict"}, "no 'state_dict'"),
                         ({**ckpt, "head": "nope"}, "unknown head 'nope'"),
                         ({**ckpt, "in_dim": 7}, "does not fit head 'mlp'"),
                         ([1, 2], "expected a dict")):
        with pytest.raises(KscliError, match=message):
            load_head(bad)


# ----------------------------------------------------------------------------- the libraries
def test_the_schedule_is_torchs_warmup_then_cosine():
    from kscli.heads.optim import warmup_cosine

    for total, warmup in ((100, 5), (10, 1), (1, 1), (64, 3)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=2.0)
        sched = warmup_cosine(opt, total, warmup)
        for step in range(total):
            want = (step + 1) / warmup if step < warmup else \
                0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * want, abs=1e-12)
            opt.step()
            sched.step()


@pytest.mark.parametrize("n, d", [(400, 30), (40, 60)])
def test_preconditioner_shrinkage_is_sklearns_ledoit_wolf(n, d):
    """Ours computes the same Ledoit-Wolf estimate as scikit-learn, in torch (see
    docs/design.md: 4x faster on 8,192 x 1,024 features, where it sits in every training)."""
    from sklearn.covariance import ledoit_wolf

    from kscli.heads.stats import preconditioner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0
    P, rho = preconditioner(torch.from_numpy(x).float(), 0.0, torch.Generator().manual_seed(0))
    shrunk, rho_sk = ledoit_wolf(x - x.mean(0), assume_centered=True)
    assert rho == pytest.approx(rho_sk, rel=1e-3, abs=1e-4)
    # P = c * shrunk^-1/2: P^-2 is proportional to sklearn's shrunk covariance
    inv2 = np.linalg.inv(P.double().numpy() @ P.double().numpy())
    np.testing.assert_allclose(inv2 / np.trace(inv2), shrunk / np.trace(shrunk), atol=2e-5)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_agree_with_sklearn():
    from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

    from kscli.heads.metrics import compute_metrics

    rng = np.random.default_rng(3)
    C = 12
    y = rng.integers(0, C - 2, 500)  # two classes never occur
    probs = rng.random((500, C)) + 2.0 * np.eye(C)[y] * (rng.random((500, 1)) < 0.4)
    m = compute_metrics(probs, y, None, C)
    assert m["top1"] == pytest.approx(100 * top_k_accuracy_score(y, probs, k=1, labels=range(C)))
    assert m["top5"] == pytest.approx(100 * top_k_accuracy_score(y, probs, k=5, labels=range(C)))
    assert m["mean_class_acc"] == pytest.approx(100 * balanced_accuracy_score(y, probs.argmax(1)))


# ----------------------------------------------------------------------------- review findings
def test_a_head_cannot_share_another_heads_config():
    from kscli.heads.base import register_head
    from kscli.heads.mlp import MLPHead

    class Wide(MLPHead):  # a plugin that forgot its own Config would take over `mlp`
        name = "wide"

    with pytest.raises(TypeError, match="its Config belongs to head 'mlp'; give head 'wide' its own"):
        register_head(Wide)
    assert config_for("mlp").head == "mlp" and "wide" not in list_heads()


@pytest.mark.parametrize("values, message", [
    ({"seed": -1}, "seed must be >= 0"), ({"num_threads": 0}, "num_threads must be >= 1"),
    ({"lrs": (float("nan"),)}, "lrs must be a finite number"),
    ({"precondition": float("inf")}, "precondition must be a finite number"),
    ({"class_balance": "false"}, "'class_balance' of head 'mlp' takes true or false, got 'false'"),
    ({"epochs": "5"}, "'epochs' of head 'mlp' takes an integer or none, got '5'"),
    ({"hidden": True}, "takes an integer"), ({"lrs": 0.1}, "takes comma-separated numbers")])
def test_bad_values_from_code_or_a_saved_config_are_one_line(values, message):
    with pytest.raises(KscliError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_for("mlp", **values)


def test_long_option_names_keep_the_table_within_100_columns():
    from dataclasses import dataclass

    from kscli.heads.base import describe_options, option, register_head, unregister_head
    from kscli.heads.linear import LinearNet
    from kscli.heads.stacked import StackedConfig, StackedHead

    @dataclass
    class LongConfig(StackedConfig):
        a_really_quite_long_option_name_for_a_test: str = option(
            "a-long-default-value-as-well", "what it means, which is also said at some length "
            "so that it has to wrap onto a second line")

    @register_head
    class LongHead(StackedHead):
        name = "long-options-test"
        description = "a head whose options are long, to check the table's layout " * 2
        Config = LongConfig
        Net = LinearNet

    try:
        text = describe_options("long-options-test")
    finally:  # this test's head leaves the registry with the test
        unregister_head("long-options-test")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "at some length" in text and "a-long-default-value-as-well" in text
    assert "long-options-test" not in list_heads()


def test_a_broken_plugin_module_is_one_line(tmp_path):
    from conftest import run_kscli

    (tmp_path / "broken_head.py").write_text("raise RuntimeError('half-written plugin')\n")
    r = run_kscli("heads", env={"KSCLI_HEADS": "broken_head", "PYTHONPATH": str(tmp_path)},
                  check=False)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: KSCLI_HEADS: cannot import 'broken_head' (RuntimeError: half-written plugin)")
