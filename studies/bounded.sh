# Sourced by studies/study.sh (and tests/test_bounded_flow.py); needs PY set.
# bounded_flow LOG FLOW ARGS...: the flow in a process group of its own (its Metaflow tasks and
# their vLLM engine processes with it), its output appended to LOG. With STUDY_FLOW_UNTIL (epoch
# seconds) it is stopped then; and a task of a step named in STUDY_STEP_NEEDS ("eval_task=200
# ...": the seconds that step needs) that starts with fewer seconds left stops it at once,
# rather than spending them on a task that cannot finish. Stopping: SIGTERM to the whole group,
# SIGKILL 15 s later; exit status 124. What the finished tasks wrote is kept for `resume`.
bounded_flow() {
  local log=$1 pid stop="" left need step kv n off
  declare -A seen=()
  shift
  off=$(stat -c %s "$log" 2>/dev/null || echo 0)   # only this flow's lines count
  set -m   # job control: the background job gets a process group of its own, whose id is its pid
  "$PY" "$@" >> "$log" 2>&1 &
  pid=$!
  set +m
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    [ -n "${STUDY_FLOW_UNTIL:-}" ] || continue
    left=$(( STUDY_FLOW_UNTIL - $(date +%s) ))
    [ "$left" -le 0 ] && stop="the deadline (STUDY_FLOW_UNTIL)"
    for kv in ${STUDY_STEP_NEEDS:-}; do
      step=${kv%%=*}; need=${kv#*=}
      n=$(tail -c +"$((off + 1))" "$log" | grep -c "/$step/[0-9]* (pid [0-9]*)\] Task is starting")
      if [ "$n" -gt "${seen[$step]:-0}" ]; then   # a task of this step has just started
        seen[$step]=$n
        [ "$left" -lt "$need" ] && stop="the start of $step, which needs $need s, with $left s left"
      fi
    done
    if [ -n "$stop" ]; then
      echo "=== flow stopped at $stop; its finished tasks are kept for Metaflow's resume" | tee -a "$log"
      kill -TERM -- "-$pid" 2>/dev/null
      for _ in $(seq 15); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
      return 124
    fi
  done
  wait "$pid"
}
