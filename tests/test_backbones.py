"""Backbone registry and preprocessing.

The Hugging Face families are tested offline on tiny randomly initialised models: a config is
built, ``save_pretrained`` to a temp folder (plus a ``preprocessor_config.json`` with a custom
mean), and loaded by path through ``create_backbone`` - the same code a real checkpoint takes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from dataclasses import replace
import torch

from kscli.errors import KscliError
from kscli.extract.backbones import (
    TINY_RANDOM_WEIGHTS,
    Backbone,
    BackboneSpec,
    create_backbone,
    list_backbones,
)
from kscli.extract.preprocess import preprocess_clips, resize_clip_uint8

torch.set_num_threads(2)

CUSTOM_MEAN = [0.25, 0.5, 0.75]
CUSTOM_STD = [0.2, 0.3, 0.4]


def _spec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), frames=4):
    return BackboneSpec(
        name="t", kind="video", num_frames=frames, size=size, mean=mean, std=std, feature_dim=8, weights="x"
    )


def _rand_frames(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------------------------ preprocess


def test_preprocess_shape_dtype_and_device():
    x = _rand_frames(2, 4, 48, 80, 3)
    y = preprocess_clips(x, _spec(32), device="cpu")
    assert y.shape == (2, 4, 3, 32, 32) and y.dtype == torch.float32 and y.is_contiguous()
    yb = preprocess_clips(x, _spec(32), dtype=torch.bfloat16)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, atol=0.05, rtol=0.01)
    # a single clip (T, H, W, 3) and a numpy array are accepted too
    assert preprocess_clips(x[0].numpy(), _spec(32)).shape == (1, 4, 3, 32, 32)
    with pytest.raises(TypeError):
        preprocess_clips(x.float(), _spec(32))


def test_preprocess_crops_the_centre_square_before_resizing():
    # 40 x 100 frame: red margins of 30 px left and right, a blue centre square 40 x 40
    f = torch.zeros(1, 2, 40, 100, 3, dtype=torch.uint8)
    f[..., 0] = 255  # red everywhere
    f[:, :, :, 30:70] = torch.tensor([0, 0, 255], dtype=torch.uint8)
    spec = _spec(16, mean=(0, 0, 0), std=(1, 1, 1))
    y = preprocess_clips(f, spec)
    assert y[:, :, :2].abs().max() < 1e-6 and (y[:, :, 2] - 1).abs().max() < 1e-6
    # portrait frame: top/bottom margins go
    g = torch.zeros(1, 1, 90, 30, 3, dtype=torch.uint8)
    g[:, :, 30:60] = 200
    assert (preprocess_clips(g, spec) - 200 / 255).abs().max() < 1e-6


def test_preprocess_spatial_layout_survives():
    # left half dark, right half bright: the resized image keeps that order (no transposition)
    f = torch.zeros(1, 1, 64, 64, 3, dtype=torch.uint8)
    f[:, :, :, 32:] = 255
    f[:, :, :8, :] = 128  # a grey band at the top
    y = preprocess_clips(f, _spec(16, mean=(0, 0, 0), std=(1, 1, 1)))[0, 0, 0]
    assert y[8:, :7].max() < 0.05 and y[8:, 9:].min() > 0.95
    assert abs(float(y[0, 0]) - 128 / 255) < 0.02


def test_preprocess_normalisation_values():
    f = torch.full((1, 2, 32, 32, 3), 0, dtype=torch.uint8)
    f[..., 0], f[..., 1], f[..., 2] = 0, 128, 255
    spec = _spec(32, mean=CUSTOM_MEAN, std=CUSTOM_STD)
    y = preprocess_clips(f, spec)
    expect = [(0 / 255 - 0.25) / 0.2, (128 / 255 - 0.5) / 0.3, (255 / 255 - 0.75) / 0.4]
    for c in range(3):
        torch.testing.assert_close(y[:, :, c], torch.full_like(y[:, :, c], expect[c]), atol=1e-5, rtol=0)


GEOMETRIES = {"full": dict(), "short": dict(resize_mode="short", resize_short=40, interpolation="bicubic"),
              "squash": dict(resize_mode="squash", interpolation="bicubic")}


@pytest.mark.parametrize("mode", list(GEOMETRIES))
def test_worker_resize_then_preprocess_equals_direct(mode):
    x = _rand_frames(3, 4, 72, 128, 3, seed=1)
    # smooth content so resampling differences would show as value errors, not noise
    x = (torch.linspace(0, 255, 128).view(1, 1, 1, 128, 1) * 0.5 + x.float() * 0.5).to(torch.uint8)
    spec = replace(_spec(32, mean=CUSTOM_MEAN, std=CUSTOM_STD), **GEOMETRIES[mode])
    direct = preprocess_clips(x, spec)
    small = torch.stack([resize_clip_uint8(c, spec) for c in x])
    assert small.shape == (3, 4, 32, 32, 3) and small.dtype == torch.uint8 and small.is_contiguous()
    via_worker = preprocess_clips(small, spec, geometry=False)
    assert torch.equal(via_worker, direct)  # the same uint8 kernels, then the same normalisation
    # numpy input (what the decoder gives) works in the worker helper
    assert torch.equal(resize_clip_uint8(x[0].numpy(), spec), small[0])
    with pytest.raises(ValueError, match="must already be 32x32"):
        preprocess_clips(x, spec, geometry=False)


@pytest.mark.parametrize("mode", list(GEOMETRIES))
def test_device_resize_path_matches_the_worker_path(mode):
    """The path used on a GPU (float resize, rounded to levels) gives the CPU worker's pixels to
    one grey level: all of them with bilinear; with bicubic 99.9% (torch's uint8 bicubic kernel
    rounds and clamps between its two passes: a few levels apart where the image is noise)."""
    x = _rand_frames(2, 3, 72, 128, 3, seed=2)
    x = (torch.linspace(0, 255, 128).view(1, 1, 128, 1) * 0.5 + x.float() * 0.5).to(torch.uint8)
    spec = replace(_spec(32), **GEOMETRIES[mode])
    worker = torch.stack([resize_clip_uint8(c, spec) for c in x]).int()
    device = torch.stack([resize_clip_uint8(c, spec, force_float=True) for c in x]).int()
    diff = (worker - device).abs()
    if spec.interpolation == "bilinear":
        assert diff.max() <= 1
    else:
        assert (diff <= 1).float().mean() >= 0.999 and diff.max() <= 3


# ------------------------------------------------------------------------------------ tiny-random


def _tiny_input(bb: Backbone, batch=4, seed=0):
    s = bb.spec
    return preprocess_clips(_rand_frames(batch, s.num_frames, 72, 96, 3, seed=seed), s)


def test_tiny_random_deterministic_and_shapes():
    a = create_backbone("tiny-random")
    b = create_backbone("tiny-random")
    s = a.spec
    assert (s.name, s.kind, s.weights) == ("tiny-random", "video", TINY_RANDOM_WEIGHTS)
    assert "random" in s.weights
    x = _tiny_input(a)
    fa, fb = a(x), b(x)
    assert fa.shape == (4, s.feature_dim) and fa.dtype == torch.float32
    assert torch.equal(fa, fb)
    assert not a.training and all(not p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training  # frozen: stays in eval mode
    y = _tiny_input(a, seed=1)
    assert (a(y) - fa).abs().max() > 1e-3
    assert (fa[0] - fa[1]).abs().max() > 1e-3
    with pytest.raises(KscliError, match="no weights"):
        create_backbone("tiny-random", weights="/some/folder")
    with pytest.raises(KscliError, match="frames"):
        a(x[:, :3])
    # other clip lengths / sizes are options; unknown options are a clear error
    c = create_backbone("tiny-random", num_frames=4, size=32)
    assert (c.spec.num_frames, c.spec.size) == (4, 32) and c(_tiny_input(c)).shape == (4, s.feature_dim)
    with pytest.raises(KscliError, match="pool"):
        create_backbone("tiny-random", pool="cls")
    # bf16 is the caller's choice; output stays float32
    assert a.to(dtype=torch.bfloat16)(x).dtype == torch.float32


def _synthetic_clips(n_per_class, frames, hw, seed=0):
    """4 classes = colour (red / green) x motion (bar moving right / bar moving down), random offsets."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for label in range(4):
        colour = [np.array([220, 40, 40]), np.array([40, 200, 40])][label % 2]
        for _ in range(n_per_class):
            v = rng.integers(0, 60, size=(frames, hw, hw, 3)).astype(np.float32)
            start = rng.integers(0, hw // 2)
            for t in range(frames):
                p = (start + t * hw // (2 * frames)) % hw
                if label < 2:
                    v[t, :, p : p + 6] = colour
                else:
                    v[t, p : p + 6, :] = colour
            clips.append(v.clip(0, 255).astype(np.uint8))
            labels.append(label)
    return torch.from_numpy(np.stack(clips)), torch.tensor(labels)


def test_tiny_random_features_are_linearly_separable():
    bb = create_backbone("tiny-random")
    x, y = _synthetic_clips(10, bb.spec.num_frames, 64)
    raw = bb(preprocess_clips(x, bb.spec))
    mu, sd = raw.mean(0), raw.std(0) + 1e-6
    f = (raw - mu) / sd
    # a linear head in closed form: ridge regression on one-hot targets (with a bias column)
    def design(z):
        return torch.cat([z, torch.ones(len(z), 1)], 1).double()

    A = design(f)
    w = torch.linalg.solve(A.T @ A + 1.0 * torch.eye(A.shape[1], dtype=A.dtype), A.T @ torch.eye(4, dtype=A.dtype)[y])

    def head(z):
        return design(z) @ w

    assert (head(f).argmax(1) == y).float().mean() == 1.0
    # and it generalises to fresh clips (the classes differ in colour and in motion)
    x2, y2 = _synthetic_clips(5, bb.spec.num_frames, 64, seed=1)
    f2 = (bb(preprocess_clips(x2, bb.spec)) - mu) / sd
    assert (head(f2).argmax(1) == y2).float().mean() >= 0.85


# ------------------------------------------------------------------------------------ spec & registry


def test_spec_attrs_roundtrip():
    s = BackboneSpec(
        name="videomae-base", kind="video", num_frames=16, size=224, mean=(0.485, 0.456, 0.406),
        std=[0.229, 0.224, 0.225], feature_dim=768, weights="/m", hf_class="VideoMAEModel", pooling="mean",
    )
    d = s.to_attrs()
    json.dumps(d)
    assert BackboneSpec.from_attrs(d) == s
    # what h5py gives back: numpy arrays/scalars, plus unknown keys
    d2 = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in d.items()}
    d2["num_frames"] = np.int64(16)
    d2["other"] = 1
    assert BackboneSpec.from_attrs(d2) == s
    # an older record without the optional fields
    d3 = {k: v for k, v in d.items() if k not in ("hf_class", "pooling")}
    assert BackboneSpec.from_attrs(d3).hf_class == ""
    with pytest.raises(KscliError, match="feature_dim"):
        BackboneSpec.from_attrs({k: v for k, v in d.items() if k != "feature_dim"})


def test_list_backbones_is_static_and_complete():
    rows = {r["name"]: r for r in list_backbones()}
    for name in ("tiny-random", "vjepa2-vitl", "videomae-base", "timesformer-base", "dinov2-base", "siglip-base",
                 "siglip2-base", "siglip2-large", "siglip2-so400m", "siglip2-giant"):
        assert name in rows
    assert rows["tiny-random"]["default_weights"] is None and "random" in rows["tiny-random"]["description"].lower()
    assert rows["tiny-random"]["weights"] == TINY_RANDOM_WEIGHTS
    assert rows["siglip-base"]["weights"] == "google/siglip-base-patch16-224"
    assert rows["videomae-base"]["default_weights"] == "MCG-NJU/videomae-base-finetuned-kinetics"
    assert rows["vjepa2-vitl"]["size"] == 256 and rows["vjepa2-vitl"]["feature_dim"] == 1024
    assert rows["dinov2-base"]["kind"] == "image"
    for name, weights, size, dim in (("siglip2-base", "google/siglip2-base-patch16-224", 224, 768),
                                     ("siglip2-large", "google/siglip2-large-patch16-256", 256, 1024),
                                     ("siglip2-so400m", "google/siglip2-so400m-patch14-384", 384, 1152),
                                     ("siglip2-giant", "google/siglip2-giant-opt-patch16-384", 384, 1536)):
        r = rows[name]
        assert (r["default_weights"], r["size"], r["feature_dim"], r["num_frames"], r["kind"]) == (weights, size, dim, 8, "image")
        assert r["hf_class"] == "SiglipVisionModel" and r["preprocessing"].startswith(
            f"resized to {size}x{size} (bilinear, antialiased), no crop; /255, mean (0.500, 0.500, 0.500)")
    for r in rows.values():
        assert r["num_frames"] > 0 and r["size"] > 0 and r["feature_dim"] > 0


def test_import_and_listing_do_not_import_transformers():
    import subprocess
    import sys

    code = (
        "import sys; from kscli.extract.backbones import list_backbones, create_backbone; "
        "import kscli.extract.preprocess; list_backbones(); create_backbone('tiny-random'); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_backbone_name():
    with pytest.raises(KscliError) as e:
        create_backbone("resnet-9000")
    msg = str(e.value)
    assert "resnet-9000" in msg and "tiny-random" in msg and "videomae-base" in msg and "\n" not in msg


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(KscliError) as e:
        create_backbone("videomae-base", weights=str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "--weights" in msg and "does not exist" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(KscliError, match="config.json"):
        create_backbone("dinov2-base", weights=str(tmp_path / "empty"))


def test_hub_id_not_available_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(KscliError) as e:
        create_backbone("videomae-base", weights="kscli-test/no-such-model")
    msg = str(e.value)
    assert "kscli-test/no-such-model" in msg and "download" in msg and "--weights" in msg


# ------------------------------------------------------------------------------------ HF families

VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _save(model, path, preprocessor: dict | None):
    torch.manual_seed(0)
    model.save_pretrained(path)
    if preprocessor is not None:
        with open(path / "preprocessor_config.json", "w") as f:
            json.dump(preprocessor, f)
    return path


def _check_common(bb: Backbone, path, *, size, frames, dim, mean, std, kind):
    s = bb.spec
    assert (s.size, s.num_frames, s.feature_dim, s.kind) == (size, frames, dim, kind)
    assert s.mean == pytest.approx(tuple(mean)) and s.std == pytest.approx(tuple(std))
    assert s.weights == str(path)
    assert not bb.training and all(not p.requires_grad for p in bb.parameters())
    assert BackboneSpec.from_attrs(s.to_attrs()) == s


def _pixels(bb: Backbone, batch=2, seed=0):
    return preprocess_clips(_rand_frames(batch, bb.spec.num_frames, 40, 56, 3, seed=seed), bb.spec)


def _timed(bb, x):
    t = time.perf_counter()
    f = bb(x)
    print(f"\n{bb.spec.name} ({bb.spec.hf_class}) tiny forward {tuple(x.shape)}: {1000 * (time.perf_counter() - t):.1f} ms")
    return f


def test_videomae(tmp_path):
    import transformers as tf

    cfg = tf.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, use_mean_pooling=True, num_labels=3, **VIT)
    torch.manual_seed(0)
    ref = tf.VideoMAEForVideoClassification(cfg).eval()  # like the hub's finetuned-kinetics checkpoint
    path = _save(ref, tmp_path / "vmae", {"image_mean": CUSTOM_MEAN, "image_std": CUSTOM_STD, "crop_size": {"height": 32, "width": 32}})
    bb = create_backbone("videomae-base", weights=str(path))
    _check_common(bb, path, size=32, frames=4, dim=32, mean=CUSTOM_MEAN, std=CUSTOM_STD, kind="video")
    assert bb.spec.hf_class == "VideoMAEModel"
    x = _pixels(bb)
    f = _timed(bb, x)
    assert f.shape == (2, 32) and f.dtype == torch.float32
    with torch.no_grad():
        expect = ref.videomae(x).last_hidden_state.mean(1)
    torch.testing.assert_close(f, expect, atol=1e-5, rtol=1e-4)
    assert (f[0] - f[1]).abs().max() > 1e-4
    with pytest.raises(KscliError, match="exactly 4 frames"):
        create_backbone("videomae-base", weights=str(path), num_frames=8)


def test_timesformer_without_preprocessor_uses_registered_defaults(tmp_path):
    import transformers as tf

    cfg = tf.TimesformerConfig(image_size=32, patch_size=16, num_frames=4, num_labels=3, **VIT)
    torch.manual_seed(0)
    ref = tf.TimesformerForVideoClassification(cfg).eval()
    path = _save(ref, tmp_path / "tsf", None)
    bb = create_backbone("timesformer-base", weights=str(path))
    _check_common(bb, path, size=32, frames=4, dim=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), kind="video")
    x = _pixels(bb)
    f = _timed(bb, x)
    with torch.no_grad():
        expect = ref.timesformer(x).last_hidden_state[:, 0]
    assert f.shape == (2, 32) and f.dtype == torch.float32
    torch.testing.assert_close(f, expect, atol=1e-5, rtol=1e-4)


def test_vjepa2(tmp_path):
    import transformers as tf

    cfg = tf.VJEPA2Config(
        crop_size=32, patch_size=16, frames_per_clip=4, tubelet_size=2, pred_hidden_size=32, pred_num_hidden_layers=1,
        pred_num_attention_heads=2, num_pooler_layers=1, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    )
    torch.manual_seed(0)
    ref = tf.VJEPA2Model(cfg).eval()
    path = _save(ref, tmp_path / "vjepa", {"image_mean": CUSTOM_MEAN, "image_std": CUSTOM_STD})
    bb = create_backbone("vjepa2-vitl", weights=str(path), num_frames=4)
    _check_common(bb, path, size=32, frames=4, dim=32, mean=CUSTOM_MEAN, std=CUSTOM_STD, kind="video")
    assert bb.spec.hf_class == "VJEPA2Model"
    x = _pixels(bb)
    f = _timed(bb, x)
    with torch.no_grad():
        expect = ref(x, skip_predictor=True).last_hidden_state.mean(1)
    assert f.shape == (2, 32) and f.dtype == torch.float32
    torch.testing.assert_close(f, expect, atol=1e-5, rtol=1e-4)
    # default clip length is the registered 16 (RoPE: any even length works); odd lengths refused
    assert create_backbone("vjepa2-vitl", weights=str(path)).spec.num_frames == 16
    with pytest.raises(KscliError, match="tubelet"):
        create_backbone("vjepa2-vitl", weights=str(path), num_frames=5)
    # weights saved without the predictor (never run, so left random on load): the digest, which
    # a store records, counts only what was loaded, so it is the same on every load
    bare = tmp_path / "no-predictor"
    ref.save_pretrained(bare, state_dict={k: v for k, v in ref.state_dict().items() if not k.startswith("predictor.")})
    digests = {create_backbone("vjepa2-vitl", weights=str(bare), num_frames=4).spec.weights_digest for _ in range(2)}
    assert len(digests) == 1 and digests == {bb.spec.weights_digest}


def test_dinov2(tmp_path):
    import transformers as tf

    cfg = tf.Dinov2Config(image_size=32, patch_size=8, **VIT)
    torch.manual_seed(0)
    ref = tf.Dinov2Model(cfg).eval()
    # crop_size (not the config's pretraining image_size) gives the input size, as for the real 518/224
    path = _save(ref, tmp_path / "dino", {"image_mean": CUSTOM_MEAN, "image_std": CUSTOM_STD, "crop_size": {"height": 24, "width": 24}})
    bb = create_backbone("dinov2-base", weights=str(path), num_frames=3)
    _check_common(bb, path, size=24, frames=3, dim=32, mean=CUSTOM_MEAN, std=CUSTOM_STD, kind="image")
    x = _pixels(bb)
    f = _timed(bb, x)
    with torch.no_grad():
        per_frame = ref(pixel_values=x.flatten(0, 1)).last_hidden_state
    expect = per_frame[:, 0].view(2, 3, -1).mean(1)
    assert f.shape == (2, 32) and f.dtype == torch.float32
    torch.testing.assert_close(f, expect, atol=1e-5, rtol=1e-4)
    # CLS + mean patch
    bb2 = create_backbone("dinov2-base", weights=str(path), num_frames=3, pool="cls+mean")
    assert bb2.spec.feature_dim == 64
    expect2 = torch.cat([per_frame[:, 0], per_frame[:, 1:].mean(1)], 1).view(2, 3, -1).mean(1)
    torch.testing.assert_close(bb2(x), expect2, atol=1e-5, rtol=1e-4)
    # the default number of frames is the registered one
    assert create_backbone("dinov2-base", weights=str(path)).spec.num_frames == 8


def _siglip_full_checkpoint_loads_as(name, folder, preprocessor):
    """A tiny SiglipModel (hub checkpoints hold the text tower too) saved to `folder`, loaded as `name`:
    SiglipVisionModel's pooler_output per frame, averaged over frames."""
    import transformers as tf

    cfg = tf.SiglipConfig(
        vision_config=dict(image_size=32, patch_size=16, **VIT),
        text_config=dict(vocab_size=100, max_position_embeddings=16, **VIT),
    )
    torch.manual_seed(0)
    ref = tf.SiglipModel(cfg).eval()
    path = _save(ref, folder, preprocessor)
    bb = create_backbone(name, weights=str(path), num_frames=2)
    _check_common(bb, path, size=32, frames=2, dim=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), kind="image")
    assert bb.spec.hf_class == "SiglipVisionModel"
    x = _pixels(bb)
    f = _timed(bb, x)
    with torch.no_grad():
        expect = ref.vision_model(pixel_values=x.flatten(0, 1)).pooler_output.view(2, 2, -1).mean(1)
    assert f.shape == (2, 32) and f.dtype == torch.float32
    torch.testing.assert_close(f, expect, atol=1e-5, rtol=1e-4)
    return bb


def test_siglip_full_checkpoint(tmp_path):
    _siglip_full_checkpoint_loads_as("siglip-base", tmp_path / "siglip",
                                     {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})


# what a SigLIP 2 FixRes checkpoint's preprocessor_config.json says (at the tiny model's 32x32)
SIGLIP2_PROCESSOR = {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
                     "do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
                     "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                     "image_std": [0.5, 0.5, 0.5]}


def test_siglip2_fixres_checkpoint(tmp_path):
    """SigLIP 2 FixRes checkpoints are SigLIP-architecture ("siglip") checkpoints with a bilinear processor."""
    bb = _siglip_full_checkpoint_loads_as("siglip2-base", tmp_path / "siglip2", SIGLIP2_PROCESSOR)
    assert (bb.spec.resize_mode, bb.spec.interpolation) == ("squash", "bilinear")
    # without a processor config, the registry's default for the family: squash, bilinear
    (tmp_path / "siglip2" / "preprocessor_config.json").unlink()
    spec = create_backbone("siglip2-base", weights=str(tmp_path / "siglip2")).spec
    assert (spec.resize_mode, spec.interpolation, spec.num_frames, spec.mean) == ("squash", "bilinear", 8, (0.5,) * 3)


def _naflex(kind, folder):
    import transformers as tf

    cfg = tf.Siglip2Config(vision_config=dict(num_patches=16, patch_size=16, **VIT),
                           text_config=dict(vocab_size=100, max_position_embeddings=16, **VIT))
    torch.manual_seed(0)
    model = tf.Siglip2Model(cfg) if kind == "siglip2" else tf.Siglip2VisionModel(cfg.vision_config)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["siglip2", "siglip2_vision_model"])
def test_siglip2_naflex_checkpoint_is_refused_in_one_line(kind, tmp_path):
    path = _naflex(kind, tmp_path / "naflex")
    assert json.loads((path / "config.json").read_text())["model_type"] == kind
    with pytest.raises(KscliError) as e:
        create_backbone("siglip2-so400m", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"'{kind}'" in msg
    assert "NaFlex" in msg and "FixRes" in msg and "--weights google/siglip2-so400m-patch14-384" in msg
    # under a SigLIP (v1) name: the same line, naming a SigLIP 2 FixRes backbone and checkpoint
    with pytest.raises(KscliError, match="NaFlex .* --backbone siglip2-base --weights google/siglip2-base-patch16-224"):
        create_backbone("siglip-base", weights=str(path))


def test_siglip2_naflex_hub_id_in_the_cache_is_refused_in_one_line(monkeypatch, tmp_path):
    """A hub id is checked from the local cache before from_pretrained (which fails less clearly)."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--kscli-test--siglip2-naflex"
    _naflex("siglip2", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(KscliError) as e:
        create_backbone("siglip2-base", weights="kscli-test/siglip2-naflex")
    msg = str(e.value)
    assert "\n" not in msg and "NaFlex" in msg and "--weights google/siglip2-base-patch16-224" in msg


def test_wrong_family_checkpoint_is_refused(tmp_path):
    import transformers as tf

    torch.manual_seed(0)
    path = _save(tf.Dinov2Model(tf.Dinov2Config(image_size=32, patch_size=8, **VIT)), tmp_path / "dino", None)
    with pytest.raises(KscliError) as e:
        create_backbone("videomae-base", weights=str(path))
    msg = str(e.value)
    assert str(path) in msg and "'dinov2'" in msg and "dinov2-base" in msg
    # AutoModel (DINOv2 family) would happily load anything: the model type is checked
    vpath = _save(tf.VideoMAEModel(tf.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, **VIT)), tmp_path / "vm", None)
    with pytest.raises(KscliError, match="'videomae' model"):
        create_backbone("dinov2-base", weights=str(vpath))


def test_a_too_old_transformers_is_one_line(monkeypatch, tmp_path):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.55.4")
    with pytest.raises(KscliError, match=r"needs transformers >= 4.56 .*has 4.55.4: pip install -U 'transformers>=4.56,<6'"):
        create_backbone("videomae-base", weights="MCG-NJU/videomae-base-finetuned-kinetics")
