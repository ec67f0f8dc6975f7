#!/usr/bin/env bash
# Benchmark: the driver is scripts/bench.py (its header says what each phase measures and why);
# this wrapper sets up the local-stack environment and runs it. For example:
#   bash scripts/bench.sh                                   every phase, default sizes
#   BENCH_PHASES="backfill status" bash scripts/bench.sh    some phases
#   BENCH_EVENTS=20000 BENCH_BIG=100000 bash scripts/bench.sh
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
exec python3 "$here/bench.py" "$@"
