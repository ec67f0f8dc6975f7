#!/usr/bin/env bash
# Benchmark (baseline; issue 8 extends it with the raw-COPY limit, the modelled-SQS source and
# criterion micro-benchmarks). Measures, on the local stack, with the release binary:
#   1. backfill: `etl run --input` of BENCH_EVENTS generated events (default 200,000)
#   2. key rotation on those rows: `keys reencrypt`, `keys retokenize`, and `keys rewrap` at
#      BENCH_SMALL (default 10,000) vs BENCH_EVENTS rows (its cost should not grow with rows)
#   3. SQS drain on the emulator: `etl run --drain` of BENCH_MESSAGES messages (default 5,000)
# For each: rows/s, CPU µs per row (user+sys from rusage), peak RSS. Prints a markdown table and
# writes target/bench/results.json. Not a test: figures depend on the machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PIIVAULT_ROOT"
events=${BENCH_EVENTS:-200000}
small=${BENCH_SMALL:-10000}
messages=${BENCH_MESSAGES:-5000}
out=target/bench
mkdir -p "$out"

bash scripts/stack.sh up
cargo build --release --locked --quiet
etl=target/release/etl
export PIIVAULT_KEK="file:$PIIVAULT_DEV_KEK"
# fresh_db NAME: an empty, migrated database with keys; exports DATABASE_URL.
fresh_db() {
  export DATABASE_URL="${PIIVAULT_PG_ADMIN_URL%/*}/$1"
  psql "$PIIVAULT_PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" 2>/dev/null
  $etl migrate 2>/dev/null
  $etl keys init >/dev/null 2>&1
}

# measure NAME COUNT_FIELD COMMAND...: runs it, prints one JSON object with the command's summary
# line, the row count it reports in COUNT_FIELD, and rusage.
measure() {
  python3 - "$@" <<'PY'
import json, resource, subprocess, sys, time
name, field, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
start = time.monotonic()
run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
wall = time.monotonic() - start
if run.returncode != 0:
    sys.exit(f"{name}: {' '.join(cmd)} exited {run.returncode}")
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
summary = json.loads(run.stdout.strip().splitlines()[-1])
n = summary[field]
print(json.dumps({
    "name": name, "rows": n, "wall_s": round(wall, 2),
    "rows_per_s": round(n / wall),
    "cpu_us_per_row": round((usage.ru_utime + usage.ru_stime) * 1e6 / max(n, 1), 1),
    "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    "summary": summary,
}))
PY
}

file="$out/events-$events.jsonl"
[ -f "$file" ] || $etl seed --count "$events" --malformed-ratio 0.01 --seed 7 --output "$file" >/dev/null
small_file="$out/events-$small.jsonl"
[ -f "$small_file" ] || $etl seed --count "$small" --malformed-ratio 0.01 --seed 7 --output "$small_file" >/dev/null

results=()
fresh_db piivault_bench_small
$etl run --input "$small_file" >/dev/null 2>&1
results+=("$(measure "keys rewrap file→kms ($small rows)" rewrapped $etl keys rewrap --to-kek "kms:$PIIVAULT_DEV_KMS_ALIAS")")

fresh_db piivault_bench
results+=("$(measure "backfill --input ($events events)" received $etl run --input "$file")")
results+=("$(measure "keys rewrap file→kms ($events rows)" rewrapped $etl keys rewrap --to-kek "kms:$PIIVAULT_DEV_KMS_ALIAS")")
export PIIVAULT_KEK="kms:$PIIVAULT_DEV_KMS_ALIAS"
$etl keys rotate --purpose seal >/dev/null 2>&1
$etl keys rotate --purpose token >/dev/null 2>&1
results+=("$(measure "keys reencrypt ($events rows)" reencrypted $etl keys reencrypt)")
results+=("$(measure "keys retokenize ($events rows)" retokenized $etl keys retokenize)")
results+=("$(measure "keys verify ($events rows)" vault_rows $etl keys verify)")

export SQS_QUEUE_URL
SQS_QUEUE_URL=$(bash scripts/stack.sh queue "piivault-bench-$(date +%s)")
$etl seed --count "$messages" --malformed-ratio 0.01 --seed 8 >/dev/null
# The drain's wall time includes one final empty long poll (--wait-time-secs 1).
results+=("$(measure "SQS drain on the emulator ($messages messages)" received $etl run --drain --wait-time-secs 1 --concurrency 8)")

python3 - "$out/results.json" "${results[@]}" <<'PY'
import json, sys, platform, os
path, rows = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
json.dump({"machine": f"{platform.machine()} {os.cpu_count()} cpus", "results": rows}, open(path, "w"), indent=2)
print("| run | rows | wall s | rows/s | CPU µs/row | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['name']} | {r['rows']} | {r['wall_s']} | {r['rows_per_s']} | {r['cpu_us_per_row']} | {r['peak_rss_mib']} |")
print(f"\nwritten to {path}")
PY
