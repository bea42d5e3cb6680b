"""The GPU path, run where there is a GPU (`pytest -m cuda`; skipped elsewhere; bench/gpu_check.sh).

bf16 extraction with a full-size (randomly initialised) V-JEPA 2 ViT-L against an fp32 CPU run,
`train-head` on the GPU leaving the caller's RNG alone, `torchrun` with two ranks sharing one
GPU, and pinned batches.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, run_kscli, torchrun_cmd
from kscli.extract.store import FeatureStore

pytestmark = pytest.mark.cuda

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


def test_bf16_vitl_on_the_gpu_matches_fp32_on_the_cpu(sample_root, vjepa2_vitl, tmp_path):
    common = ["--data-root", sample_root, "--backbone", "vjepa2-vitl", "--weights", vjepa2_vitl,
              "--limit", "6", "--batch-size", "3", *VAL_EGO]
    gpu = run_kscli("extract", *common, "--work-dir", tmp_path / "gpu", "--device", "cuda")
    assert "cuda:0 bfloat16" in gpu.stdout and "resize on device" in gpu.stdout
    fp32 = run_kscli("extract", *common, "--work-dir", tmp_path / "gpu32", "--device", "cuda", "--precision", "fp32")
    assert "cuda:0 float32" in fp32.stdout
    run_kscli("extract", *common, "--work-dir", tmp_path / "cpu", "--device", "cpu")
    cpu = store_content(tmp_path / "cpu", "vjepa2-vitl")
    assert FeatureStore(tmp_path / "gpu" / "features" / "vjepa2-vitl" / "val").config["precision"] == "bfloat16"
    assert_same_store(store_content(tmp_path / "gpu32", "vjepa2-vitl"), cpu, min_cosine=0.9999)
    assert_same_store(store_content(tmp_path / "gpu", "vjepa2-vitl"), cpu, min_cosine=0.99)


def test_torchrun_two_ranks_share_one_gpu(sample_root, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")[:1]}
    p = subprocess.run([*torchrun_cmd(), "--standalone", "--nproc-per-node", "2", "-m", "kscli", "extract",
                        "--data-root", str(sample_root), "--work-dir", str(tmp_path / "gpu"), "--device", "cuda",
                        *VAL_EGO[:2], "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    for rank in (1, 2):
        assert f"[shard {rank}/2] torchrun RANK/WORLD_SIZE: cuda:0 bfloat16" in p.stdout
    run_kscli("extract", "--data-root", sample_root, "--work-dir", tmp_path / "cpu", "--device", "cpu",
              *VAL_EGO[:2], "--no-progress")
    assert_same_store(store_content(tmp_path / "gpu", "tiny-random"), store_content(tmp_path / "cpu", "tiny-random"),
                      min_cosine=0.995)


def test_train_head_on_the_gpu_leaves_the_callers_rng_alone():
    from test_heads_train import acc, cfg_for, make_set

    from kscli.heads.train import predict_proba, train_head

    train, val = make_set(seed=0), make_set(n=300, seed=1)
    torch.manual_seed(123)
    torch.cuda.manual_seed_all(456)
    cpu_state, gpu_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    for head in ("linear", "distill"):
        result = train_head(train, cfg_for(head, device="auto"))
        assert acc(predict_proba(result.model, val), val.labels) > 0.8
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(torch.cuda.get_rng_state(), gpu_state)


def test_train_head_cli_defaults_to_the_gpu(sample_root, tmp_path):
    work = tmp_path / "work"
    run_kscli("extract", "--data-root", sample_root, "--work-dir", work, "--split", "train,val", "--no-progress")
    p = run_kscli("train-head", "--head", "distill", "--data-root", sample_root, "--work-dir", work,
                  "--name", "gpu")
    run = work / "runs" / "gpu"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"] == "cuda:0" and "(cuda:0)" in p.stdout and 0 <= metrics["val"]["top1"] <= 100
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "auto"


def test_pinned_batches_for_asynchronous_copies(sample_root):
    from kscli.data.layout import Benchmark, Layout
    from kscli.extract.run import ClipDataset, _collate, list_clip_jobs
    from kscli.extract.sampling import SamplingConfig

    jobs = list_clip_jobs(Benchmark(Layout.resolve(data_root=sample_root)), "val", "ego")[:4]
    loader = torch.utils.data.DataLoader(ClipDataset(jobs, SamplingConfig(8), None), batch_size=4,
                                         collate_fn=_collate, pin_memory=True)
    batch = next(iter(loader))
    assert all(it["frames"].is_pinned() for it in batch)
