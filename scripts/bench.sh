#!/usr/bin/env bash
# Baseline benchmark (issue 4 slice; issue 8 extends it with the raw-COPY limit, the modelled-SQS
# source and criterion micro-benchmarks). Measures, on the local stack, with the release binary:
#   1. backfill: `etl run --input` of BENCH_EVENTS generated events (default 200,000)
#   2. SQS drain on the emulator: `etl run --drain` of BENCH_MESSAGES messages (default 5,000)
# For each: events/s, CPU µs per event (user+sys from rusage), peak RSS. Prints a markdown table
# and writes target/bench/results.json. Not a test: figures depend on the machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PIIVAULT_ROOT"
events=${BENCH_EVENTS:-200000}
messages=${BENCH_MESSAGES:-5000}
out=target/bench
mkdir -p "$out"

bash scripts/stack.sh up
cargo build --release --locked --quiet
etl=target/release/etl
export DATABASE_URL="${PIIVAULT_PG_ADMIN_URL%/*}/piivault_bench"
export PIIVAULT_KEK="file:$PIIVAULT_DEV_KEK"
psql "$PIIVAULT_PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS piivault_bench WITH (FORCE)" -c "CREATE DATABASE piivault_bench"
$etl migrate 2>/dev/null
$etl keys init >/dev/null 2>&1

# measure NAME COMMAND...: runs it, prints one JSON object with the command's summary and rusage.
measure() {
  python3 - "$@" <<'PY'
import json, resource, subprocess, sys, time
name, cmd = sys.argv[1], sys.argv[2:]
start = time.monotonic()
run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
wall = time.monotonic() - start
if run.returncode != 0:
    sys.exit(f"{name}: {' '.join(cmd)} exited {run.returncode}")
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
summary = json.loads(run.stdout.strip().splitlines()[-1])
n = summary["received"]
print(json.dumps({
    "name": name, "events": n, "wall_s": round(wall, 2),
    "events_per_s": round(n / wall),
    "cpu_us_per_event": round((usage.ru_utime + usage.ru_stime) * 1e6 / n, 1),
    "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    "summary": summary,
}))
PY
}

file="$out/events-$events.jsonl"
[ -f "$file" ] || $etl seed --count "$events" --malformed-ratio 0.01 --seed 7 --output "$file" >/dev/null
backfill=$(measure "backfill --input ($events events)" $etl run --input "$file")

export SQS_QUEUE_URL
SQS_QUEUE_URL=$(bash scripts/stack.sh queue "piivault-bench-$(date +%s)")
$etl seed --count "$messages" --malformed-ratio 0.01 --seed 8 >/dev/null
# The drain's wall time includes one final empty long poll (--wait-time-secs 1).
drain=$(measure "SQS drain on the emulator ($messages messages)" $etl run --drain --wait-time-secs 1 --concurrency 8)

python3 - "$out/results.json" "$backfill" "$drain" <<'PY'
import json, sys, platform, os
path, rows = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
json.dump({"machine": f"{platform.machine()} {os.cpu_count()} cpus", "results": rows}, open(path, "w"), indent=2)
print("| run | events | wall s | events/s | CPU µs/event | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['name']} | {r['events']} | {r['wall_s']} | {r['events_per_s']} | {r['cpu_us_per_event']} | {r['peak_rss_mib']} |")
print(f"\nwritten to {path}")
PY
