"""Does `pip install kscli` find a wheel for every dependency where researchers are?

For Linux x86_64 and aarch64 (glibc 2.28 or newer: RHEL/Rocky 8, Ubuntu 20.04 and later, GH200
nodes) and macOS on Apple silicon, for Python 3.10 to 3.14, kscli's dependencies
(pyproject.toml, transitively) are resolved from binary wheels only, for that platform,
without installing anything. uv does the resolving (`uv pip compile --python-platform`): it
evaluates each package's environment markers for the target platform, which pip's `--platform`
does not (pip asks for torch's Linux-only CUDA packages on macOS too). Prints one line per
platform and Python with the torch and PyAV versions chosen; exits 1 if any cannot be resolved.

    python -m pip install uv && python .ci/platforms.py [--jobs 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
PLATFORMS = {"linux x86_64": "x86_64-manylinux_2_28", "linux aarch64": "aarch64-manylinux_2_28",
             "macos arm64": "aarch64-apple-darwin"}


def resolve(uv: str, platform: str, python: str) -> tuple[str, str, bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pins.txt"
        p = subprocess.run([uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--python-platform",
                            PLATFORMS[platform], "--python-version", python, "--only-binary", ":all:", "--quiet",
                            "--no-header", "-o", str(out)], capture_output=True, text=True)
        if p.returncode != 0:
            why = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
            return platform, python, False, " ".join(why)[:300] or f"uv exited {p.returncode}"
        pins = dict(ln.split("==", 1) for ln in out.read_text().splitlines() if "==" in ln and not ln.startswith(" "))
        return platform, python, True, f"torch {pins.get('torch')}, av {pins.get('av')}, numpy {pins.get('numpy')}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5, help="resolutions at once (each waits mostly on the index)")
    args = ap.parse_args()
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        print("uv is not installed: python -m pip install uv", file=sys.stderr)
        return 2
    combos = [(pl, py) for pl in PLATFORMS for py in PYTHONS]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: resolve(uv, *c), combos))
    for platform, python, ok, what in results:
        print(f"{'ok  ' if ok else 'FAIL'} {platform:<14} python {python}: {what}")
    failed = [r for r in results if not r[2]]
    print(f"{len(results) - len(failed)} of {len(results)} platform x python combinations install from wheels")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
