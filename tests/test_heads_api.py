"""The Head interface: registry, options and typed --set, old checkpoints, and the library
pieces the heads lean on (torch's schedulers, Ledoit-Wolf, metrics) checked against references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli
from kscli.errors import KscliError
from kscli.heads.base import (BUILTIN_HEADS, HeadConfig, config_for, head_class, list_heads,
                              load_head)
from kscli.heads.featureset import FeatureSet

FIXTURES = Path(__file__).parent / "data" / "checkpoints_v1"


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
    net = head.build_model(cfg.model_cfg())
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
def fixture_set() -> FeatureSet:
    """The features the v1 fixtures were trained and scored on."""
    e = np.load(FIXTURES / "expected.npz")
    n = len(e["ego"])
    return FeatureSet([f"s{i}" for i in range(n)], e["ego"], None, None, np.full(n, -1),
                      list(e["take"]), e["start"], e["end"])


@pytest.mark.parametrize("head", BUILTIN_HEADS)
def test_checkpoints_of_the_previous_release_load_and_predict_the_same(head):
    """Written by kscli before the Head interface (tests/data/checkpoints_v1): same numbers."""
    ckpt = torch.load(FIXTURES / f"{head}.pt", weights_only=True)
    probs = load_head(ckpt).predict_proba(fixture_set())
    np.testing.assert_array_equal(probs, np.load(FIXTURES / "expected.npz")[head])


def test_checkpoints_this_release_cannot_read_are_refused_in_one_line():
    ckpt = torch.load(FIXTURES / "mlp.pt", weights_only=True)
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
    from kscli.heads.common import warmup_cosine

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

    from kscli.heads.common import preconditioner

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


def test_long_option_names_keep_the_table_within_100_columns(monkeypatch):
    from dataclasses import dataclass

    from kscli.heads import base

    list_heads()  # the built-ins first; this test's head leaves the registry with the test
    monkeypatch.setattr(base, "_HEADS", dict(base._HEADS))

    from kscli.heads.base import describe_options, option, register_head
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

    text = describe_options("long-options-test")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "at some length" in text and "a-long-default-value-as-well" in text


def test_a_broken_plugin_module_is_one_line(tmp_path):
    from conftest import run_kscli

    (tmp_path / "broken_head.py").write_text("raise RuntimeError('half-written plugin')\n")
    r = run_kscli("heads", env={"KSCLI_HEADS": "broken_head", "PYTHONPATH": str(tmp_path)},
                  check=False)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: KSCLI_HEADS: cannot import 'broken_head' (RuntimeError: half-written plugin)")
