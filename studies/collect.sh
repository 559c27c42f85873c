# Sourced by studies/study.sh and studies/realmath.sh (needs PY, STUDY_DIR and OUT set).
# collect: the small results of a study into $OUT: summary.json rebuilt from the run rows
# ($STUDY_DIR/rows/*.json, sorted by date), mlflow.db, the run logs (logs.tgz) and the MLflow
# artifacts (mlartifacts.tgz). Safe to call after every run: lanes take turns through a lock.
collect() {
  (
    command -v flock >/dev/null && flock 9
    "$PY" - "$STUDY_DIR" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
rows = [json.load(open(f)) for f in glob.glob(os.path.join(d, "rows", "*.json"))]
json.dump(sorted(rows, key=lambda r: r["date"]), open(os.path.join(d, "summary.json"), "w"), indent=1)
PY
    cp "$STUDY_DIR/mlflow.db" "$STUDY_DIR/summary.json" "$OUT/" 2>/dev/null
    tar czf "$OUT/logs.tgz" -C "$STUDY_DIR" logs 2>/dev/null
    [ -d "$STUDY_DIR/mlartifacts" ] && tar czf "$OUT/mlartifacts.tgz" -C "$STUDY_DIR" mlartifacts 2>/dev/null
    true
  ) 9>"$STUDY_DIR/.collect.lock"
}
