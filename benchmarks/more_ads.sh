#!/usr/bin/env bash
# Issue 28: a `base` teacher and its student trained on twice the training ads (the base benchmark's 4,200
# plus the 4,200 of a second data set, seed 1), scored on the base benchmark's own validation and test
# splits (benchmarks/more_ads.py). Steps whose output exists are skipped, so an interrupted run continues.
# Usage: benchmarks/more_ads.sh      (about 65 min for the teacher and 30 for the student on two CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
BASE=${BASE:-runs/bench-v}
EXTRA=${EXTRA:-runs/bench-v-pool}
RUN=${RUN:-runs/more-ads}
mkdir -p "$RUN"
run() { echo "$*" >> "$RUN/commands.log"; "$@"; }

[ -f "$BASE/data/train.jsonl" ] || run $ADAUDIT data make --out "$BASE/data" --n 6000 --seed 0 --generator 1
[ -f "$EXTRA/train.jsonl" ] || run $ADAUDIT data make --out "$EXTRA" --n 6000 --seed 1 --generator 1
[ -f "$RUN/data/joined.json" ] || run .venv/bin/python -m benchmarks.more_ads --data "$BASE/data" --extra "$EXTRA" \
  --out "$RUN/data"
# the base benchmark's teacher settings (preset defaults, seed 0); only the training ads differ
[ -f "$RUN/teacher/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/teacher" --preset base --resume
[ -f "$RUN/teacher-decisions/decisions.json" ] || run .venv/bin/python -m benchmarks.decisions \
  --model "$RUN/teacher" --teacher "$BASE/teacher" --data "$BASE/data" --out "$RUN/teacher-decisions"
[ -f "$RUN/student/report.json" ] || run $ADAUDIT compress --teacher "$RUN/teacher" --data "$RUN/data" \
  --out "$RUN/student"
run .venv/bin/python -m benchmarks.decisions --model "$RUN/student" --teacher "$RUN/teacher" --data "$BASE/data" \
  --out benchmarks/results/more-ads
