#!/usr/bin/env bash
# Re-framed pictures (training/reframing.py), measured: two `small` teachers on the shifted benchmark's
# generator-2 data, the same seed, recombined pairs and real-copy rows, one with half of each batch's
# pictures re-framed (another aspect, zoom, shift, light) and one without; both scored on the test split
# and on test_shifted.jsonl by benchmarks/shifted.py. `small` (a quarter of the base layout) keeps the
# pair to about 20 minutes on two CPU cores; the base teacher takes an hour each.
# Steps whose output exists are skipped, so an interrupted run continues (--resume).
# Usage: benchmarks/reframing.sh     (needs runs/shifted/data, made by benchmarks/shifted.sh, or makes it)
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
DATA=${DATA:-runs/shifted/data}
RUN=${RUN:-runs/reframing}
mkdir -p "$RUN"
run() { echo "$*" >> "$RUN/commands.log"; "$@"; }

[ -f "$DATA/train.jsonl" ] || run $ADAUDIT data make --out "$DATA" --n 6000 --seed 0 --generator 2
for share in 0 0.5; do
  [ -f "$RUN/small-$share/metrics.json" ] || run $ADAUDIT teacher train --data "$DATA" --out "$RUN/small-$share" \
    --preset small --recombined 0.5 --real-copy 0.5 --reframed "$share" --resume
done
run .venv/bin/python -m benchmarks.shifted --model "small=$RUN/small-0" --model "small-reframed=$RUN/small-0.5" \
  --test-data "$DATA" --shifted-data "$DATA" --out benchmarks/results --stem reframing-small
run .venv/bin/python -m benchmarks.false_rejects --model "small=$RUN/small-0" --model "small-reframed=$RUN/small-0.5" \
  --data "$DATA" --out benchmarks/results --stem reframing-small-false-rejects
