#!/usr/bin/env bash
# The serving benchmark behind docs/results.md's serving figures, from nothing: 600 MAAD-like ads,
# an untrained `base` teacher (41.3M parameters) cut by the default recipe's stages with no
# distillation (benchmarks/shape-recipe.yaml: the default student's exact shapes, 1.6M
# parameters, in minutes rather than the hours of `make bench`), then benchmarks/serving.py.
# Latency does not depend on the weights; no accuracy figure comes from these models.
# Steps whose output exists are skipped. Extra arguments go to serving.py (e.g. --engine torch).
# Usage: benchmarks/serving.sh [serving.py arguments]   (about 10 minutes on two CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
DATA=${DATA:-runs/shape/data}  # make bench's 6,000 ads (runs/bench/data) serve as well
SHAPE=${SHAPE:-runs/shape}
mkdir -p "$SHAPE"

[ -f "$DATA/test.jsonl" ] || $ADAUDIT data make --out "$DATA" --n 600 --seed 0 --generator 1 > /dev/null
[ -f "$SHAPE/teacher/config.json" ] || $ADAUDIT teacher train --data "$DATA" --out "$SHAPE/teacher" --preset base --epochs 1
[ -f "$SHAPE/student/report.json" ] || $ADAUDIT compress --teacher "$SHAPE/teacher" --data "$DATA" \
  --out "$SHAPE/student" --recipe benchmarks/shape-recipe.yaml
.venv/bin/python -m benchmarks.serving --student "$SHAPE/student" --teacher "$SHAPE/teacher" --data "$DATA" \
  --out benchmarks/results --triton-threads 1 --shadow-busy-fraction 0.25 --shadow-rounds 5 "$@"
