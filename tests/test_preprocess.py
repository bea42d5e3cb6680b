"""Each backbone family's input, made by kscli, against the output of that family's own processor
class in transformers, on frames of the benchmark's sizes (448x448 ego, 448x796 exo) and one other.

- Always: the PIL processors (what transformers uses without torchvision): within one grey level
  (their resampling is PIL's, kscli's torch's antialias kernels; measured: max 1 level, mean
  under 0.01). V-JEPA 2 has no PIL processor; its steps are run through the generic one.
- With torchvision installed (the usual install; `bench/gpu_check.sh` runs these): the default
  processors, V-JEPA 2's VJEPA2VideoProcessor among them: identical pixels (measured: 0 levels).
"""

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import cli
from kscli.extract.backbones import create_backbone, list_backbones
from kscli.extract.preprocess import preprocess_clips, resize_clip_uint8
from kscli.extract.store import FeatureStore

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
TRANSFORMERS_5_4 = tuple(int(p) for p in __import__("transformers").__version__.split(".")[:2]) >= (5, 4)


def _pil(tf, name):
    """The PIL-based processor class: `XPil` from transformers 5.4 on, the plain `X` before."""
    return getattr(tf, f"{name}Pil", None) or getattr(tf, name)
VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
SIZES = ((448, 448), (448, 796), (480, 640))


def natural_frames(h, w, t=2, seed=0):
    """Smooth structure plus grain, like video frames (pure noise would only test the kernels' rounding)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(t, 3, h // 16, w // 16, generator=g) * 255
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    img = img + torch.randn(t, 3, h, w, generator=g) * 12
    return img.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _model(family, folder):
    import transformers as tf

    if family == "videomae":
        model = tf.VideoMAEModel(tf.VideoMAEConfig(image_size=224, patch_size=16, num_frames=2, tubelet_size=2, **VIT))
    elif family == "timesformer":
        model = tf.TimesformerModel(tf.TimesformerConfig(image_size=224, patch_size=16, num_frames=2, **VIT))
    elif family == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(image_size=224, patch_size=14, **VIT))
    elif family in ("siglip", "siglip2"):  # SigLIP 2 FixRes checkpoints are SigLIP-architecture ones
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(image_size=224, patch_size=16, **VIT))
    else:
        model = tf.VJEPA2Model(tf.VJEPA2Config(
            crop_size=256, patch_size=16, tubelet_size=2, frames_per_clip=2, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, mlp_ratio=2, pred_hidden_size=32, pred_num_hidden_layers=1,
            pred_num_attention_heads=2))
    model.save_pretrained(folder)
    return folder


def _processor(family, fast):
    """The family's processor as its hub checkpoints configure it; (processor, input kind, saved)."""
    import transformers as tf

    video_mae = tf.VideoMAEImageProcessor if fast else _pil(tf, "VideoMAEImageProcessor")
    if family == "videomae":
        return video_mae(), "images", True
    if family == "timesformer":
        return video_mae(image_mean=[0.45] * 3, image_std=[0.225] * 3), "images", True
    if family == "dinov2":
        bit = tf.BitImageProcessor if fast else _pil(tf, "BitImageProcessor")
        return bit(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                   do_center_crop=True, **IMAGENET), "images", True
    siglip = tf.SiglipImageProcessor if fast else _pil(tf, "SiglipImageProcessor")
    if family == "siglip":
        return siglip(), "images", True
    if family == "siglip2":  # SigLIP 2 FixRes: SigLIP's class, as its checkpoints configure it (bilinear)
        return siglip(resample=2, size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3), \
            "images", True
    if fast:  # V-JEPA 2: its own class; the folder has no processor file: the registry's default is compared
        return tf.VJEPA2VideoProcessor(), "videos", False
    return _pil(tf, "VideoMAEImageProcessor")(size={"shortest_edge": 292}, crop_size={"height": 256, "width": 256},
                                              **IMAGENET), "images", False


BACKBONE = {"videomae": "videomae-base", "timesformer": "timesformer-base", "dinov2": "dinov2-base",
            "siglip": "siglip-base", "siglip2": "siglip2-base", "vjepa2": "vjepa2-vitl"}


def _compare(family, fast, tmp_path):
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    proc, kind, save = _processor(family, fast)
    folder = _model(family, tmp_path / family)
    if save:
        proc.save_pretrained(folder)  # what `hf download` puts beside the weights
    spec = create_backbone(BACKBONE[family], weights=str(folder)).spec
    worst = []
    for h, w in SIZES:
        x = natural_frames(h, w)
        ours = preprocess_clips(x[None], spec)[0]
        assert torch.equal(preprocess_clips(torch.stack([resize_clip_uint8(x, spec)]), spec, geometry=False)[0], ours)
        if kind == "videos":
            ref = proc(videos=[x.numpy()], return_tensors="pt")["pixel_values_videos"][0]
        else:
            ref = proc(images=list(x.numpy()), return_tensors="pt")["pixel_values"]
        ref = ref[0] if ref.ndim == 5 else ref  # VideoMAE's processor reads a list of frames as one video
        assert ref.shape == ours.shape
        levels = (ours - ref).abs() * torch.tensor(spec.std).view(1, 3, 1, 1) * 255
        worst.append((float(levels.max()), float(levels.mean())))
    return spec, worst


@pytest.mark.parametrize("family", list(BACKBONE))
def test_pixels_match_the_models_own_pil_processor(family, tmp_path):
    spec, worst = _compare(family, False, tmp_path)
    assert max(m for m, _ in worst) <= 1.0 + 1e-3 and max(a for _, a in worst) < 0.02, worst


@pytest.mark.skipif(not (HAS_TORCHVISION and TRANSFORMERS_5_4),
                    reason="the default (fast) processors need torchvision (and transformers >= 5.4 to be the default)")
@pytest.mark.parametrize("family", list(BACKBONE))
def test_pixels_equal_the_models_own_default_processor(family, tmp_path):
    spec, worst = _compare(family, True, tmp_path)
    assert max(m for m, _ in worst) <= 1e-3, worst


def test_each_family_preprocesses_its_own_way(tmp_path):
    got = {}
    for family, name in BACKBONE.items():
        s = create_backbone(name, weights=str(_model(family, tmp_path / family))).spec
        got[family] = (s.resize_mode, s.resize_short, s.size, s.interpolation)
    assert got == {"videomae": ("short", 224, 224, "bilinear"), "timesformer": ("short", 224, 224, "bilinear"),
                   "dinov2": ("short", 256, 224, "bicubic"), "siglip": ("squash", 0, 224, "bicubic"),
                   "siglip2": ("squash", 0, 224, "bilinear"), "vjepa2": ("short", 292, 256, "bilinear")}
    full = create_backbone("vjepa2-vitl", weights=str(tmp_path / "vjepa2"), crop="full").spec
    assert (full.resize_mode, full.resize_short) == ("full", 0)
    listed = {b["name"]: b["preprocessing"] for b in list_backbones()}
    assert listed["vjepa2-vitl"].startswith("short side to 292 (bilinear, antialiased), centre crop 256x256")
    assert listed["siglip-so400m"].startswith("resized to 384x384 (bicubic, antialiased), no crop")
    assert listed["siglip2-so400m"].startswith("resized to 384x384 (bilinear, antialiased), no crop")


def test_a_weights_folders_processor_config_wins_and_is_recorded(sample_root, tmp_path):
    """`preprocessor_config.json` beside the weights decides; the store records it; a store made
    with other preprocessing (or before kscli recorded it) is refused on resume, not mixed."""
    folder = _model("dinov2", tmp_path / "dino")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": 240}, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}, "resample": 2, **IMAGENET}))
    work = tmp_path / "work"
    args = ["extract", "--data-root", sample_root, "--work-dir", work, "--backbone", "dinov2-base", "--weights",
            folder, "--split", "test", "--view", "ego", "--no-progress"]
    cli(*args)
    cfg = FeatureStore(work / "features" / "dinov2-base" / "test").config["backbone"]
    assert (cfg["resize_mode"], cfg["resize_short"], cfg["interpolation"]) == ("short", 240, "bilinear")
    info = cli("features", "info", "--store", "dinov2-base", "--work-dir", work, "--split", "test")
    assert "preprocessing: short side to 240 (bilinear, antialiased), centre crop 224x224" in info.stdout
    full = cli(*args, "--crop", "full", check=False)
    assert full.exit_code == 2 and "backbone.resize_mode is 'short' in the store but 'full' now" in full.stderr
    # a store from before preprocessing was recorded: its parts lack the keys, and no store.json
    _as_an_older_kscli_left_it(work / "features" / "dinov2-base" / "test", ("resize_mode", "resize_short",
                                                                            "interpolation"))
    again = cli(*args, check=False)
    assert again.exit_code == 2 and "backbone.interpolation is not recorded in the store (made by an older " \
        "kscli) but is 'bilinear' now" in again.stderr and "--overwrite" in again.stderr


def _as_an_older_kscli_left_it(store, drop_keys):
    import h5py

    (store / "store.json").unlink()
    for part in store.glob("part-*.h5"):
        with h5py.File(part, "r+") as f:
            old = json.loads(f.attrs["config"])
            for key in drop_keys:
                old["backbone"].pop(key)
            f.attrs["config"] = json.dumps(old)


def test_backbones_name_shows_what_a_model_gets():
    out = cli("backbones", "--name", "vjepa2-vitl").stdout
    assert "facebook/vjepa2-vitl-fpc64-256" in out and "16 frames" in out
    assert "short side to 292 (bilinear, antialiased), centre crop 256x256" in out
    out = cli("backbones", "--name", "siglip2-base").stdout
    assert "google/siglip2-base-patch16-224" in out and "SiglipVisionModel" in out and "NaFlex" in out
    assert "preprocessing: resized to 224x224 (bilinear, antialiased), no crop; /255, mean (0.500, 0.500, 0.500)" in out
    listing = cli("backbones").stdout
    assert any(line.split()[:4] == ["siglip2-base", "8", "224", "768"] for line in listing.splitlines())
    assert np.all([len(line) <= 100 for line in cli("backbones").stdout.splitlines()])


def test_processor_configs_kscli_cannot_follow_are_one_line_not_a_substitute():
    from kscli.errors import KscliError
    from kscli.extract.processors import Geometry, family_geometry, geometry_from_processor

    short = family_geometry("videomae", 224)
    assert geometry_from_processor({"size": {"height": 224, "width": 224}, "do_center_crop": True,
                                    "crop_size": {"height": 224, "width": 224}}, short, 224) == Geometry("squash", 0, "bilinear")
    for pp, why in (({"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": 224}, "then crops 224"),
                    ({"resample": 0}, "resample=0"), ({"resample": 1}, "resample=1"),
                    ({"size": {"shortest_edge": 200}, "crop_size": 224, "do_center_crop": True}, "would pad"),
                    ({"size": {"height": 32, "width": 48}, "do_center_crop": False}, "32x48 without a crop")):
        with pytest.raises(KscliError, match=why):
            geometry_from_processor(pp, short, 224)
    # V-JEPA 2's processor derives its resize from the crop, whatever a saved `size` says
    assert geometry_from_processor({"size": {"shortest_edge": 300}, "crop_size": 256}, family_geometry("vjepa2", 256),
                                   256, "vjepa2") == Geometry("short", 292, "bilinear")


def test_a_store_an_older_kscli_made_is_refused_naming_what_it_did_not_record(sample_root, tmp_path):
    """An older kscli recorded neither the weights' digest nor the preprocessing: such a store
    cannot be shown to hold this run's features, so resuming it is refused (never mixed) in one
    line naming what it did not record, and --overwrite redoes it."""
    work = tmp_path / "work"
    base = ["extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "test",
            "--view", "ego", "--no-progress"]
    cli(*base)
    _as_an_older_kscli_left_it(work / "features" / "tiny-random" / "test", ("weights_digest",))
    refused = cli(*base, check=False)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "backbone.weights_digest is not recorded in the store (made by an older kscli)" in refused.stderr
    assert "pass --tag NAME for a new store, or --overwrite to redo this one" in refused.stderr
    assert "extracted 8" in cli(*base, "--overwrite").stdout


def test_a_transformers_that_cannot_use_this_torch_is_one_line(monkeypatch):
    import transformers

    from kscli.errors import KscliError

    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    with pytest.raises(KscliError, match=r"does not work with this torch .* 'transformers>=4.56,<5.15'"):
        create_backbone("videomae-base", weights="MCG-NJU/videomae-base-finetuned-kinetics")


def test_a_processor_config_that_cannot_be_read_is_an_error_not_a_default(sample_root, tmp_path):
    folder = _model("dinov2", tmp_path / "dino")
    args = ["extract", "--data-root", sample_root, "--work-dir", tmp_path / "work", "--backbone", "dinov2-base",
            "--weights", folder, "--split", "test", "--view", "ego", "--no-progress"]
    for text, why in (("{not json", "malformed JSON"), ("[1, 2]", "not a JSON object"),
                      ('{"image_mean": [0.5, 0.5], "image_std": [1, 1, 1]}', "image_mean")):
        (folder / "preprocessor_config.json").write_text(text)
        r = cli(*args, check=False)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and why in r.stderr, (text, r.stderr)
        assert not (tmp_path / "work" / "features" / "dinov2-base").exists()  # nothing recorded as the model's
