# The steps benchmarks/more_ads.sh and benchmarks/pasted_ads.sh share, sourced by both once RUN/data is made:
# the `base` teacher on RUN/data (EPOCHS, default 6), its automation beside the base benchmark's teacher
# (BASE), then (unless TEACHER_ONLY=1) its student and the student's automation at 99% on the base splits,
# one threshold pair for all classes and one per class (per-class/). The student is RUN/student, compressed
# with the recipe packaged for the teacher's preset, results in benchmarks/results/<RUN's name>/; with
# RECIPE=NAME (a packaged recipe such as more-ads, or a file) RUN/STUDENT (default student-NAME), results in
# benchmarks/results/<RUN's name>/STUDENT/. Needs ADAUDIT, BASE, RUN and `run` from the sourcing script; the
# training steps are skipped when their output exists, the measurements always run.
[ -f "$RUN/teacher/metrics.json" ] || run $ADAUDIT teacher train --data "$RUN/data" --out "$RUN/teacher" --preset base \
  --epochs "${EPOCHS:-6}" --resume
# the teacher's automation beside the base benchmark's teacher's (its row is labelled "student" there)
[ -f "$RUN/teacher-decisions/decisions.json" ] || run .venv/bin/python -m benchmarks.decisions \
  --model "$RUN/teacher" --teacher "$BASE/teacher" --data "$BASE/data" --out "$RUN/teacher-decisions"
[ "${TEACHER_ONLY:-0}" = 1 ] && exit 0
RECIPE_OPTION=()
[ -n "${RECIPE:-}" ] && RECIPE_OPTION=(--recipe "$RECIPE")
STUDENT=${STUDENT:-student${RECIPE:+-$(basename "$RECIPE" .yaml)}}
RESULTS="benchmarks/results/$(basename "$RUN")"
[ "$STUDENT" = student ] || RESULTS="$RESULTS/$STUDENT"
[ -f "$RUN/$STUDENT/report.json" ] || run $ADAUDIT compress --teacher "$RUN/teacher" --data "$RUN/data" \
  --out "$RUN/$STUDENT" "${RECIPE_OPTION[@]}"
run .venv/bin/python -m benchmarks.decisions --model "$RUN/$STUDENT" --teacher "$RUN/teacher" --data "$BASE/data" \
  --out "$RESULTS"
run .venv/bin/python -m benchmarks.decisions --model "$RUN/$STUDENT" --teacher "$RUN/teacher" --data "$BASE/data" \
  --per-class --out "$RESULTS/per-class"
