#!/usr/bin/env bash
# `make test`: the whole suite on the local profile and, beside it from the start, the data-plane
# tests again on the s3 profile (PostgreSQL + SeaweedFS). The two passes share only the machine:
# each session starts its own stack on free ports in its own DFP_HOME and its own pytest base
# temp, and the s3 pass writes no pytest cache. Running them together keeps both cores busy while
# either waits on a server, a JVM or a subprocess. The s3 pass's output is printed when both end.
# Arguments go to the local pass (e.g. `-k training`).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTEST=.venv/bin/pytest
mkdir -p build
s3_log=build/test-s3-pass.log
started=$(date +%s)
DFP_TEST_STACK_PROFILE=s3 "$PYTEST" -p no:cacheprovider --basetemp="$(mktemp -d /tmp/dfp-s3-pass.XXXXXX)" \
  -m 'both_profiles or s3_profile' >"$s3_log" 2>&1 &
s3_pid=$!
trap 'kill "$s3_pid" 2>/dev/null' EXIT
"$PYTEST" "$@"
local_rc=$?
echo "make test: local pass done in $(( $(date +%s) - started ))s; waiting for the s3 pass (log: $s3_log)" >&2
wait "$s3_pid"
s3_rc=$?
trap - EXIT
echo "===================== s3 pass (DFP_TEST_STACK_PROFILE=s3), rc $s3_rc ====================="
cat "$s3_log"
echo "make test: both passes done in $(( $(date +%s) - started ))s (local rc $local_rc, s3 rc $s3_rc)" >&2
[ "$local_rc" = 0 ] && [ "$s3_rc" = 0 ]
