"""The expected shape of a complete download, from `data_manifests/keystep_benchmark.json`."""

from __future__ import annotations

import json
from importlib import resources

MANIFEST_NAME = "keystep_benchmark.json"


def load_manifest(name: str = MANIFEST_NAME) -> dict:
    """The benchmark manifest shipped with kscli (installed as the `kscli.data_manifests` package)."""
    return json.loads(resources.files("kscli.data_manifests").joinpath(name).read_text("utf-8"))
