# The steps benchmarks/more_ads.sh and benchmarks/pasted_ads.sh share, sourced by both once RUN/data is made:
# the `base` teacher on RUN/data (EPOCHS, default 6), its automation beside the base benchmark's teacher
# (BASE), then (unless TEACHER_ONLY=1) its default-recipe student and the student's automation, written to
# benchmarks/results/<RUN's name>/. Needs ADAUDIT, BASE, RUN and `run` from the sourcing script; steps whose
# output exists are skipped.
[ -f "$RUN/teacher/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/teacher" --preset base \
  --epochs "${EPOCHS:-6}" --resume
# the teacher's automation beside the base benchmark's teacher's (its row is labelled "student" there)
[ -f "$RUN/teacher-decisions/decisions.json" ] || run .venv/bin/python -m benchmarks.decisions \
  --model "$RUN/teacher" --teacher "$BASE/teacher" --data "$BASE/data" --out "$RUN/teacher-decisions"
[ "${TEACHER_ONLY:-0}" = 1 ] && exit 0
RECIPE=${RECIPE:-default}
if [ "$RECIPE" = default ]; then STUDENT=${STUDENT:-student}; RESULTS="benchmarks/results/$(basename "$RUN")"
else STUDENT=${STUDENT:-student-$RECIPE}; RESULTS="benchmarks/results/$(basename "$RUN")/$STUDENT"; fi
[ -f "$RUN/$STUDENT/report.json" ] || run $ADAUDIT compress --teacher "$RUN/teacher" --data "$RUN/data" \
  --out "$RUN/$STUDENT" --recipe "$RECIPE"
run .venv/bin/python -m benchmarks.decisions --model "$RUN/$STUDENT" --teacher "$RUN/teacher" --data "$BASE/data" \
  --out "$RESULTS"
run .venv/bin/python -m benchmarks.decisions --model "$RUN/$STUDENT" --teacher "$RUN/teacher" --data "$BASE/data" \
  --per-class --out "$RESULTS/per-class"
