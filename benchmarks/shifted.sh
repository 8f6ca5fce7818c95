#!/usr/bin/env bash
# The shifted-split benchmark (issue 30's goals): a `base` teacher trained on generator-2 ads (varied
# canvases, layouts, JPEG quality, clean copy with hard negatives), its student from the packaged default
# recipe, both scored on the test split and on test_shifted.jsonl (layouts and phrasings no training ad
# uses) by benchmarks/shifted.py. Recombined pairs (one ad's copy over another's picture) are on, as for
# the demo teacher: without them a teacher learns little about image-text mismatch.
# Steps whose output exists are skipped, so an interrupted run continues (--resume).
# Usage: benchmarks/shifted.sh     (about an hour on two CPU cores: data, teacher, compression)
#        PRETRAINED=1 benchmarks/shifted.sh   also the pretrained teacher on the same data and its student from
#        the packaged pretrained recipe (about 80 min more)
#        REAL_COPY=0.5 RUN=runs/shifted-real benchmarks/shifted.sh   teachers trained with real-copy rows (copy
#        holding a clause of real writing, training/real_copy.py) as a fraction of the training ads
#        REFRAMED=0.5   teachers trained with that share of each batch's pictures re-framed (another aspect,
#        zoom, shift and light: training/reframing.py)
#        WEIGHT_AVERAGE=0.999   teachers written as the moving average of their weights with that decay
#        (training/averaging.py); each teacher's last-step weights are scored beside it (NAME-last)
#        STEM=NAME   the results' file name in benchmarks/results (default: shifted, or shifted-real-copy)
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
RUN=${RUN:-runs/shifted}
mkdir -p "$RUN"
run() { echo "$*" >> "$RUN/commands.log"; "$@"; }

[ -f "$RUN/data/train.jsonl" ] || run $ADAUDIT data make --out "$RUN/data" --n 6000 --seed 0 --generator 2 > "$RUN/data.json"
[ -f "$RUN/teacher/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/teacher" \
  --preset base --recombined 0.5 --real-copy "${REAL_COPY:-0}" --reframed "${REFRAMED:-0}" \
  --weight-average "${WEIGHT_AVERAGE:-0}" --resume
[ -f "$RUN/student/report.json" ] || run $ADAUDIT compress --teacher "$RUN/teacher" --data "$RUN/data" --out "$RUN/student"
models=(--model "teacher=$RUN/teacher" --model "student=$RUN/student")
[ -d "$RUN/teacher/unaveraged" ] && models+=(--model "teacher-last=$RUN/teacher/unaveraged")
if [ "${PRETRAINED:-0}" = 1 ]; then
  [ -f "$RUN/pretrained/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/pretrained" \
    --preset pretrained --real-copy "${REAL_COPY:-0}" --reframed "${REFRAMED:-0}" \
    --weight-average "${WEIGHT_AVERAGE:-0}" --resume
  [ -f "$RUN/pretrained-student/report.json" ] || run $ADAUDIT compress --teacher "$RUN/pretrained" --data "$RUN/data" \
    --out "$RUN/pretrained-student"
  models+=(--model "pretrained=$RUN/pretrained" --model "pretrained-student=$RUN/pretrained-student")
fi
run .venv/bin/python -m benchmarks.shifted "${models[@]}" --test-data "$RUN/data" --shifted-data "$RUN/data" \
  --out benchmarks/results --stem "${STEM:-$([ "${REAL_COPY:-0}" = 0 ] && echo shifted || echo shifted-real-copy)}"
