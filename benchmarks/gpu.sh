#!/usr/bin/env bash
# The base benchmark (benchmarks/compression.sh's steps) on a GPU machine: the `base` teacher and the
# candidate compressions with --device cuda, then teacher training with torchrun (DDP over NCCL) and the
# chosen recipe's compress with FSDP2 on every GPU of the machine. Results go to a folder named for the GPU, e.g. benchmarks/results/gpu-nvidia-h100-80gb-hbm3/.
# Never run on a machine without CUDA (it stops at once); commit its results only after a real GPU run.
# Steps whose output exists are skipped, so an interrupted run continues.
# Usage: benchmarks/gpu.sh        (RUN=runs/gpu-bench by default; CANDIDATES as in compression.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=.venv/bin/python
ADAUDIT=".venv/bin/adaudit"
command -v nvidia-smi > /dev/null || { echo "error: nvidia-smi not found: benchmarks/gpu.sh needs a CUDA machine" >&2; exit 1; }
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
GPUS=$(nvidia-smi -L | wc -l)
SLUG=gpu-$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
RUN=${RUN:-runs/$SLUG}
RESULTS=benchmarks/results/$SLUG
mkdir -p "$RUN" "$RESULTS"
run() { echo "$*" >> "$RUN/commands.log"; "$@"; }
nvidia-smi > "$RUN/nvidia-smi.txt"

# 1. the base benchmark, on one GPU
[ -f "$RUN/data/train.jsonl" ] || run $ADAUDIT data make --out "$RUN/data" --n 6000 --seed 0 --generator 1 > "$RUN/data.json"
[ -f "$RUN/teacher/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/teacher" \
  --preset base --resume --device cuda
run $PYTHON -m benchmarks.recipe_choice prepare "$RUN" > /dev/null
for candidate in ${CANDIDATES:-default views-0}; do
  [ -f "$RUN/candidate-$candidate/report.json" ] || run $ADAUDIT compress --teacher "$RUN/teacher" \
    --data "$RUN/data" --out "$RUN/candidate-$candidate" --recipe "$RUN/recipes/$candidate.yaml" --device cuda
done
run $PYTHON -m benchmarks.recipe_choice choose "$RUN"
$PYTHON -m benchmarks.summarize "$RUN" "$RESULTS"

# 2. the same teacher trained with torchrun on every GPU (DDP, NCCL). The global batch (32 for base) stays
# what the preset says, so the number of ranks must divide it: the largest power of two <= the GPU count.
NPROC=1
while [ $((NPROC * 2)) -le "$GPUS" ] && [ $((32 % (NPROC * 2))) -eq 0 ]; do NPROC=$((NPROC * 2)); done
if [ "$NPROC" -gt 1 ]; then
  [ -f "$RUN/teacher-ddp$NPROC/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" \
    --out "$RUN/teacher-ddp$NPROC" --preset base --resume --device cuda --nproc-per-node "$NPROC"
  # 3. the chosen recipe's compress on every GPU with FSDP2 (gradients and optimizer state sharded)
  [ -f "$RUN/student-fsdp$NPROC/report.json" ] || run $ADAUDIT compress --teacher "$RUN/teacher" --data "$RUN/data" \
    --out "$RUN/student-fsdp$NPROC" --recipe "$($PYTHON -m benchmarks.recipe_choice chosen "$RUN")" --device cuda \
    --nproc-per-node "$NPROC" --fsdp
fi
# the figures side by side: 1 GPU against NPROC GPUs (wall time, loss curve, test accuracy)
$PYTHON - "$RUN" "$RESULTS" "$NPROC" "$GPU_NAME" "$GPUS" <<'PY'
import json, sys
from pathlib import Path
run, results, nproc, name, gpus = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rows = {}
for folder in [run / "teacher"] + ([run / f"teacher-ddp{nproc}"] if nproc > 1 else []):
    m = json.loads((folder / "metrics.json").read_text())
    rows[folder.name] = {"distributed": m.get("distributed"), "wall_seconds": m["wall_seconds"],
                         "train_loss": m["train_loss"], "test_accuracy": m["test"]["accuracy"]}
students = {}
for folder in [run / f"student-fsdp{nproc}"] if nproc > 1 else []:
    r = json.loads((folder / "report.json").read_text())
    students[folder.name] = {"distributed": r["distributed"], "wall_seconds": r["wall_seconds"],
                             "test_accuracy": r["student"]["accuracy"]}
out = {"gpu": name, "gpus": gpus, "teachers": rows, "students": students}
(results / "teacher-ddp.json").write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
PY
cp "$RUN/commands.log" "$RUN/nvidia-smi.txt" "$RESULTS/"
echo "results in $RESULTS (commit them: they come from a real GPU run)"
