#!/usr/bin/env bash
# slurm_array.sh - `kscli extract` under a real SLURM (one node on localhost, bench/slurm_local.sh):
# a 2-task array with a step (--array=0-2:2), then one job of `srun --ntasks 2`, each on a fresh
# store of the tiny sample, and checks that each store holds every clip exactly once, the same
# clips as a one-process run. NOT run in CI: it needs root and installs Debian's slurm packages.
#
#   bash bench/slurm_array.sh            # from the repo root, with kscli installed in the python on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
PY=$(command -v python)
WORK=$(mktemp -d /tmp/kscli-slurm-XXXX)
chmod 755 "$WORK"
trap 'bash "$HERE/bench/slurm_local.sh" stop >/dev/null' EXIT

bash bench/slurm_local.sh start
"$PY" -m kscli sample --tiny --out "$WORK/download" >/dev/null
COMMON=(extract --backbone tiny-random --data-root "$WORK/download" --split train --no-progress --batch-size 4)

count() {  # count STORE_WORK_DIR: clips in its train store (each read once)
    "$PY" -m kscli features info --store tiny-random --work-dir "$1" --split train --json |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["clips"])'
}
"$PY" -m kscli "${COMMON[@]}" --work-dir "$WORK/single" >/dev/null
EXPECT=$(count "$WORK/single")

echo "== sbatch --array=0-2:2 (2 tasks, ids 0 and 2)"
bash bench/slurm_local.sh run -- --array=0-2:2 --ntasks 1 --cpus-per-task 1 --output "$WORK/array-%a.out" \
    --wrap "cd $HERE && $PY -m kscli ${COMMON[*]} --work-dir $WORK/array"
cat "$WORK"/array-*.out
GOT=$(count "$WORK/array")

echo "== sbatch --ntasks 2 + srun --ntasks 2"
bash bench/slurm_local.sh run -- --ntasks 2 --cpus-per-task 1 --output "$WORK/srun.out" \
    --wrap "cd $HERE && srun --ntasks 2 $PY -m kscli ${COMMON[*]} --work-dir $WORK/srun"
cat "$WORK/srun.out"
GOT_SRUN=$(count "$WORK/srun")

"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
import h5py
work = Path(sys.argv[1])
ref = None
for run in ("single", "array", "srun"):
    names = []
    for part in sorted((work / run / "features/tiny-random/train").glob("part-*.h5")):
        with h5py.File(part) as f:
            names += [n.decode() for n in f["names"][()]]
    assert len(names) == len(set(names)), f"{run}: a clip is stored twice"
    ref = ref or sorted(names)
    assert sorted(names) == ref, f"{run}: not the clips of the one-process run"
    print(f"{run}: {len(names)} clips in {len(list((work / run / 'features/tiny-random/train').glob('part-*.h5')))} part(s), each once")
EOF
echo "one process: $EXPECT clips; array of 2: $GOT; srun x2: $GOT_SRUN"
[[ $GOT == "$EXPECT" && $GOT_SRUN == "$EXPECT" ]] && echo "OK" || { echo "MISMATCH"; exit 1; }
