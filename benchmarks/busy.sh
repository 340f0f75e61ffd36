#!/usr/bin/env bash
# Run pytest with CPU-burning processes beside it: the tests must hold on a busy machine (issue 18), asserting what a
# user sees (labels, order, "did not wait for ...") rather than frame positions, rates or milliseconds.
#
#   benchmarks/busy.sh [pytest args...]          e.g. benchmarks/busy.sh -x -q tests/test_serve.py
#   BURNERS=4 PYTHON=.venv/bin/python benchmarks/busy.sh -m "not slow"
#
# BURNERS (default 2) busy-looping Python processes run for exactly as long as pytest does; they are ended on exit,
# Ctrl-C included. The exit code is pytest's.
set -u
PY=${PYTHON:-python}
BURNERS=${BURNERS:-2}
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait "${pids[@]}" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$BURNERS"); do
    "$PY" -c 'while True: pass' &
    pids+=("$!")
done
echo "busy.sh: $BURNERS CPU burner(s) running (pids ${pids[*]}) beside: pytest $*" >&2
"$PY" -m pytest "$@"
