"""The GPU path, run where there is a GPU (`pytest -m cuda`; skipped elsewhere; bench/gpu_check.sh).

bf16 extraction with a full-size (randomly initialised) V-JEPA 2 ViT-L against an fp32 CPU run,
`train-head` on the GPU leaving the caller's RNG alone, `torchrun` with two ranks sharing one
GPU, and pinned batches. Where a check can also run on the CPU (bf16 on the CPU, train-head on
the CPU) it does, unmarked, so the code of the GPU checks runs in every test session too.
"""

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO, run_kscli, torchrun_cmd
from kscli.extract.store import FeatureStore

VAL_EGO = ["--split", "val", "--view", "ego", "--no-progress"]


def store_content(work, tag, split="val"):
    store = FeatureStore(work / "features" / tag / split)
    names = sorted(store.names)
    return names, {field: store.get(names, field) for field in ("features", "frame_times", "num_frames", "fps")}


def cosine_rows(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_same_store(gpu, cpu, min_cosine):
    """Same clips, same frame times and counts exactly; features within the GPU run's precision."""
    (gn, g), (cn, c) = gpu, cpu
    assert gn == cn and len(gn) > 0
    for field in ("frame_times", "num_frames", "fps"):
        np.testing.assert_array_equal(g[field], c[field])
    cos = cosine_rows(g["features"], c["features"])
    assert cos.min() > min_cosine, cos


@pytest.fixture(scope="module")
def vjepa2_vitl(tmp_path_factory):
    """V-JEPA 2 ViT-L at full size with random weights, saved so it loads like the real one."""
    from transformers import VJEPA2Config, VJEPA2Model

    folder = tmp_path_factory.mktemp("vjepa2-vitl")
    cfg = VJEPA2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, crop_size=256,
                       frames_per_clip=64)
    torch.manual_seed(0)
    VJEPA2Model(cfg).save_pretrained(folder)
    return folder


def extract_three_ways(root, work, device, model_args):
    """The same clips in bf16 and in fp32 on `device`, and in fp32 on the CPU: the stores."""
    common = ["--data-root", root, *model_args, "--limit", "6", "--batch-size", "3", *VAL_EGO]
    tag = model_args[model_args.index("--backbone") + 1]
    bf16 = run_kscli("extract", "--backbone", "tiny-random", *common, "--work-dir", work / "bf16", "--device", device, "--precision", "bf16",
                     "--resize-on", "device")
    assert f"{device} bfloat16" in bf16.stdout and "resize on device" in bf16.stdout
    fp32 = run_kscli("extract", "--backbone", "tiny-random", *common, "--work-dir", work / "fp32", "--device", device, "--precision", "fp32")
    assert f"{device} float32" in fp32.stdout
    run_kscli("extract", "--backbone", "tiny-random", *common, "--work-dir", work / "cpu", "--device", "cpu")
    assert FeatureStore(work / "bf16" / "features" / tag / "val").config["precision"] == "bfloat16"
    return [store_content(work / w, tag) for w in ("bf16", "fp32", "cpu")]


@pytest.mark.cuda
def test_bf16_vitl_on_the_gpu_matches_fp32_on_the_cpu(sample_root, vjepa2_vitl, tmp_path):
    bf16, fp32, cpu = extract_three_ways(sample_root, tmp_path, "cuda:0",
                                         ["--backbone", "vjepa2-vitl", "--weights", vjepa2_vitl])
    assert_same_store(fp32, cpu, min_cosine=0.9999)
    assert_same_store(bf16, cpu, min_cosine=0.99)


@pytest.mark.slow
def test_bf16_with_resize_on_the_device_on_the_cpu_matches_fp32(sample_root, tmp_path):
    bf16, fp32, cpu = extract_three_ways(sample_root, tmp_path, "cpu", ["--backbone", "tiny-random"])
    assert_same_store(fp32, cpu, min_cosine=0.999999)
    assert_same_store(bf16, cpu, min_cosine=0.99)


@pytest.mark.cuda
def test_torchrun_two_ranks_share_one_gpu(sample_root, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")[:1]}
    p = subprocess.run([*torchrun_cmd(), "--standalone", "--nproc-per-node", "2", "-m", "kscli", "extract", "--backbone", "tiny-random",
                        "--data-root", str(sample_root), "--work-dir", str(tmp_path / "gpu"), "--device", "cuda",
                        *VAL_EGO[:2], "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    for rank in (1, 2):
        assert f"[shard {rank}/2] torchrun RANK/WORLD_SIZE: cuda:0 bfloat16" in p.stdout
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", tmp_path / "cpu", "--device", "cpu",
              *VAL_EGO[:2], "--no-progress")
    assert_same_store(store_content(tmp_path / "gpu", "tiny-random"), store_content(tmp_path / "cpu", "tiny-random"),
                      min_cosine=0.995)


ON_GPU_AND_CPU = pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda), "cpu"])


@ON_GPU_AND_CPU
def test_train_head_leaves_the_callers_rng_alone(device):
    from test_heads_train import C, acc, cfg_for, make_set

    from test_heads_train import predict_proba

    from kscli.heads.base import config_for
    from kscli.heads.train import train_head

    train, val = make_set(seed=0), make_set(n=300, seed=1)
    torch.manual_seed(123)
    states = lambda: [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if device == "cuda" else [])  # noqa: E731
    before = states()
    for head in ("linear", "distill"):
        result = train_head(cfg_for(head, device=device), train, C, progress=False)
        assert acc(predict_proba(result.head, val.ego), val.labels) > 0.8
    ctx = train_head(config_for("context", device=device, epochs=5, seed=0), train, C, progress=False)
    assert ctx.head.predict_proba(val).shape == (len(val), C)
    assert all(torch.equal(a, b) for a, b in zip(states(), before))


@pytest.mark.slow
@ON_GPU_AND_CPU
def test_train_head_cli_trains_on_the_device(sample_root, tmp_path, device):
    work = tmp_path / "work"
    run_kscli("extract", "--backbone", "tiny-random", "--data-root", sample_root, "--work-dir", work, "--split", "train,val", "--no-progress")
    p = run_kscli("train-head", "--store", "tiny-random", "--head", "distill", "--data-root", sample_root, "--work-dir", work,
                  "--name", "run", *(["--device", "cpu"] if device == "cpu" else []))
    run = work / "runs" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    expect = "cuda:0" if device == "cuda" else "cpu"
    assert metrics["device"] == expect and f"({expect})" in p.stdout and 0 <= metrics["val"]["top1"] <= 100
    assert json.loads((run / "config.json").read_text())["train"]["device"] == ("auto" if device == "cuda" else "cpu")


@pytest.mark.cuda
def test_pinned_batches_for_asynchronous_copies(sample_root):
    from kscli.data.layout import Benchmark, Layout
    from kscli.extract.run import ClipDataset, FrameRequest, collate_items, list_clip_jobs
    from kscli.extract.sampling import SamplingConfig

    jobs = list_clip_jobs(Benchmark(Layout.resolve(data_root=sample_root)), "val", "ego")[:4]
    loader = torch.utils.data.DataLoader(ClipDataset(jobs, [FrameRequest(SamplingConfig(8))]), batch_size=4,
                                         collate_fn=collate_items, pin_memory=True)
    batch = next(iter(loader))
    assert all(it["views"][0]["frames"].is_pinned() for it in batch)
