#!/usr/bin/env bash
# The compression benchmark behind the README's table: 6,000 MAAD-like ads, the `base`
# teacher, the default AntGMM recipe, and single-modality ablations (`small` preset).
# Steps whose output exists are skipped, so an interrupted run continues.
# Usage: benchmarks/compression.sh            (about an hour on two CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
RUN=${RUN:-runs/bench}
mkdir -p "$RUN"

[ -f "$RUN/data/train.jsonl" ] || $ADAUDIT data make --out "$RUN/data" --n 6000 --seed 0 > "$RUN/data.json"
[ -f "$RUN/teacher/metrics.json" ] || $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/teacher" --preset base --resume
[ -f "$RUN/student/report.json" ] || $ADAUDIT compress --teacher "$RUN/teacher" --data "$RUN/data" --out "$RUN/student"
for modality in both text image; do
  [ -f "$RUN/ablation-$modality/metrics.json" ] || $ADAUDIT teacher train --data "$RUN/data" \
    --out "$RUN/ablation-$modality" --preset small --modality "$modality" --resume
done
.venv/bin/python benchmarks/summarize.py "$RUN" benchmarks/results
