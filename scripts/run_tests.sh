#!/bin/sh
# `make test`: every test, in two processes. The dashboard's UI tests (fakes only, CPU-bound,
# about a minute) run at the lowest priority beside the rest, which spend most of their time
# waiting on the Incus daemon; the real-daemon tests keep the CPU they need. Usage:
# scripts/run_tests.sh VENV_BIN [pytest args for the rest...]
set -u
bin=$1
shift
log=$(mktemp /tmp/coi-ui-tests.XXXXXX)
base=$(mktemp -d /tmp/coi-ui-basetemp.XXXXXX)  # its own tmp_path tree, apart from the rest
nice -n 19 "$bin/python" -m pytest -q -p no:cacheprovider --basetemp="$base" tests/ui \
    >"$log" 2>&1 &
ui=$!
"$bin/python" -m pytest -q --durations=25 --ignore=tests/ui "$@"
rest=$?
wait "$ui"
ui_status=$?
echo "== tests/ui (run beside the others at low priority)"
cat "$log"
rm -rf "$log" "$base"
[ "$rest" -eq 0 ] && [ "$ui_status" -eq 0 ]
