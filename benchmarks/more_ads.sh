#!/usr/bin/env bash
# Issue 28: a `base` teacher and its student trained on more training ads (the base benchmark's 4,200 plus the
# 4,200 of each extra data set of the same generator, other seeds), scored on the base benchmark's own
# validation and test splits (benchmarks/more_ads.py). Steps whose output exists are skipped, so an
# interrupted run continues.
# Usage: benchmarks/more_ads.sh      twice the ads (about 35 min for the teacher, 30 for the student, 2 CPU cores)
#        RUN=runs/more-ads-3x EXTRAS="runs/bench-v-pool runs/bench-v-pool2" EPOCHS=4 benchmarks/more_ads.sh
#        TEACHER_ONLY=1: stop after the teacher's automation
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
BASE=${BASE:-runs/bench-v}
EXTRAS=${EXTRAS:-runs/bench-v-pool}
RUN=${RUN:-runs/more-ads}
mkdir -p "$RUN"
run() { echo "$*" >> "$RUN/commands.log"; "$@"; }

[ -f "$BASE/data/train.jsonl" ] || run $ADAUDIT data make --out "$BASE/data" --n 6000 --seed 0 --generator 1
seed=0
extra_options=()
for extra in $EXTRAS; do  # runs/bench-v-pool: seed 1, runs/bench-v-pool2: seed 2, ...
  seed=$((seed + 1))
  [ -f "$extra/train.jsonl" ] || run $ADAUDIT data make --out "$extra" --n 6000 --seed "$seed" --generator 1
  extra_options+=(--extra "$extra")
done
[ -f "$RUN/data/joined.json" ] || run .venv/bin/python -m benchmarks.more_ads --data "$BASE/data" \
  "${extra_options[@]}" --out "$RUN/data"
# the base benchmark's teacher settings (preset defaults, seed 0) at its number of optimizer steps (12 epochs
# of 4,200 ads): twice the ads for 6 epochs, three times for 4
. benchmarks/teacher_and_student.sh
