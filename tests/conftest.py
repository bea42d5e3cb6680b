"""Shared fixtures: one tiny sample benchmark (real mp4 clips in the download's layout) per session."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kscli.data.sample import tiny_sample_kwargs, write_sample_benchmark

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where torch sees a GPU (bench/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The tiny sample benchmark; read-only by convention: copy it (`sample_copy`) to change it."""
    out = tmp_path_factory.mktemp("sample") / "download"
    write_sample_benchmark(out, seed=0, **tiny_sample_kwargs())
    return out


@pytest.fixture
def sample_copy(sample_root, tmp_path) -> Path:
    dst = tmp_path / "download"
    shutil.copytree(sample_root, dst)
    return dst


def cli(*args, check=True):
    """The real CLI in this process (typer's CliRunner): result.exit_code, .stdout, .stderr."""
    from typer.testing import CliRunner

    from kscli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if check and result.exit_code != 0:
        raise AssertionError(f"kscli {' '.join(map(str, args))} exited {result.exit_code}:\n"
                             f"{result.stdout}\n{result.stderr}\n{result.exception!r}")
    return result


def run_kscli(*args, env=None, check=True, **kw) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (`python -m kscli`), as a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "kscli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=kw.pop("cwd", REPO), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"kscli {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def torchrun_cmd() -> list[str]:
    """The torchrun launcher of this Python's torch (its script, or `python -m torch.distributed.run`)."""
    script = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "torch.distributed.run"]
