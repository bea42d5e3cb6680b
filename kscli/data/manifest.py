"""The expected shape of a complete download, from `data_manifests/keystep_benchmark.json`."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

MANIFEST_NAME = "keystep_benchmark.json"


def load_manifest(name: str = MANIFEST_NAME) -> dict:
    """The benchmark manifest shipped with kscli (installed as the `kscli.data_manifests` package;
    read from the checkout's `data_manifests/` when kscli runs from source without installing)."""
    try:
        text = resources.files("kscli.data_manifests").joinpath(name).read_text("utf-8")
    except ModuleNotFoundError:
        text = (Path(__file__).resolve().parents[2] / "data_manifests" / name).read_text("utf-8")
    return json.loads(text)
