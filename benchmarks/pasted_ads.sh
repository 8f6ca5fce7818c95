#!/usr/bin/env bash
# Issue 28: a `base` teacher and its student trained with pasted ads (data/pasting.py): clean training ads'
# pictures with the generator's gambling imagery pasted on, labelled gambling, added to a data set's training
# ads. Scored on the base benchmark's own validation and test splits. Steps whose output exists are skipped.
# Usage: benchmarks/pasted_ads.sh     the more-ads data (benchmarks/more_ads.sh) plus 10% pasted ads
#        DATA=runs/bench-v/data RUN=runs/pasted-4200 EPOCHS=12 benchmarks/pasted_ads.sh   the base ads only
#        RUN=runs/pasted-ads-20 SHARE=0.2 benchmarks/pasted_ads.sh   twice the pasted ads (results/pasted-ads-20)
#        RUN=runs/pasted-ads-20 SHARE=0.2 RECIPE=more-ads STUDENT=student-4000 benchmarks/pasted_ads.sh   its student
#          distilled on 4,000 ads (results/pasted-ads-20/student-4000)
#        TEACHER_ONLY=1: stop after the teacher's automation
set -euo pipefail
cd "$(dirname "$0")/.."
ADAUDIT=.venv/bin/adaudit
BASE=${BASE:-runs/bench-v}
DATA=${DATA:-runs/more-ads/data}
RUN=${RUN:-runs/pasted-ads}
mkdir -p "$RUN"
run() { echo "$*" >> "$RUN/commands.log"; "$@"; }

[ -f "$DATA/train.jsonl" ] || TEACHER_ONLY=1 benchmarks/more_ads.sh  # makes the more-ads data (and teacher)
[ -f "$RUN/library/library.json" ] || run $ADAUDIT data library --out "$RUN/library" --count 600 --seed 7
[ -f "$RUN/data/pasted.json" ] || run $ADAUDIT data paste --data "$DATA" --library "$RUN/library" \
  --out "$RUN/data" --share "${SHARE:-0.1}"
. benchmarks/teacher_and_student.sh
