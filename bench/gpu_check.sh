#!/usr/bin/env bash
# gpu_check.sh - the GPU path of kscli, checked on a GPU machine in one go (about 5 minutes).
#
# For a machine that has PyTorch (CUDA build), transformers, h5py, typer, tqdm, scikit-learn,
# matplotlib and pytest but no network. What it lacks (av) it installs from wheels placed
# in bench/wheels/ (or $KSCLI_WHEELS); fetch them on any machine with pip, for the GPU machine's
# Python (3.12 here):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2010_x86_64 -d bench/wheels \
#       av==18.1.0
#
# Then, from the repository root on the GPU machine:   bash bench/gpu_check.sh [OUT_DIR]
#
# 1. the tests marked `cuda` (tests/test_cuda.py): bf16 extraction with a full-size random
#    V-JEPA 2 ViT-L against an fp32 CPU run, torchrun with two ranks sharing one GPU, train-head
#    on the GPU leaving the caller's RNG alone, pinned batches; and kscli's pixels against each
#    family's default (torchvision) processor (tests/test_preprocess.py);
# 2. bench/extract.py on the GPU: decode-only bound, model-only bound (clips/s and share of the
#    bf16 peak), end to end, and end to end / min(decode, model) (target >= 0.8);
# 3. bench/gpu_decode.py: kscli's CPU decoder (sampled) per core against torchcodec's CUDA
#    decoder per GPU on 448p clips, when torchcodec is importable (put its wheel beside av's).
# Figures go to OUT_DIR (default: $OUT, else ./gpu-check-out): gpu_check.txt (what to paste into
# docs/performance.md), extract_gpu.json, and the logs. kscli runs from this checkout
# (PYTHONPATH), nothing is installed into the machine's Python but the two wheels, into a folder.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_DIR=${1:-${OUT:-$REPO/gpu-check-out}}
WHEELS=${KSCLI_WHEELS:-$REPO/bench/wheels}
SITE=${KSCLI_SITE:-/tmp/kscli-gpu-site}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
SUMMARY=$OUT_DIR/gpu_check.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA GPU here ($PY); run this on a GPU machine" >&2
    exit 2
fi
missing=$("$PY" -c 'import importlib.util as u; print(" ".join(m for m in ("av",) if u.find_spec(m) is None))')
if [[ -n $missing ]]; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: missing $missing and no wheels in $WHEELS; see the header of this script" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 2
    export PYTHONPATH=$SITE
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

say "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" - <<'EOF' | tee -a "$SUMMARY"
import os, torch, transformers, av, h5py
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s), {os.cpu_count()} CPUs; "
      f"torch {torch.__version__}, transformers {transformers.__version__}, av {av.__version__}, h5py {h5py.__version__}")
EOF

say "== tests marked cuda"
timeout 300 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
say "$(tail -1 "$OUT_DIR/gpu_tests.log") (exit $tests_rc)"
say "== kscli's pixels against each family's default (torchvision) processor"
timeout 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_preprocess.py -k processor 2>&1 \
    | tee "$OUT_DIR/processor_tests.log"
pp_rc=${PIPESTATUS[0]}
say "$(tail -1 "$OUT_DIR/processor_tests.log") (exit $pp_rc)"
tests_rc=$((tests_rc + pp_rc))

say "== bench/extract.py --device cuda --random-model vjepa2-vitl"
timeout 300 "$PY" bench/extract.py --device cuda --random-model vjepa2-vitl --takes 8 --batch-size 8 \
    --workers "$(nproc)" --out "$OUT_DIR/extract_gpu.json" 2>&1 | tee "$OUT_DIR/extract_gpu.log"
bench_rc=${PIPESTATUS[0]}
grep -E "clips \(|decode only|model only|end to end|naive|bound:|peak memory" "$OUT_DIR/extract_gpu.log" >> "$SUMMARY"
say "bench exit $bench_rc"

say "== bench/gpu_decode.py: CPU sampled per core vs torchcodec on CUDA"
timeout 300 "$PY" bench/gpu_decode.py 2>&1 | tee "$OUT_DIR/gpu_decode.log"
grep -E "clips\)" "$OUT_DIR/gpu_decode.log" >> "$SUMMARY"
echo "figures: $SUMMARY"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
