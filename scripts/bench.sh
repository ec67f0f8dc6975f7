#!/usr/bin/env bash
# Benchmark: measures piivault against the physical limits of this machine, on the local stack,
# with release builds. Not a test: figures depend on the machine. In one run:
#   1. raw-COPY limit: the rows a backfill stored, COPYed (binary) into the same, freshly
#      migrated tables and indexes — the database's own ceiling for these rows;
#   2. backfill: `etl run --input` of BENCH_EVENTS (200,000) and BENCH_BIG (1,000,000) generated
#      events: events/s, ratio to raw COPY, CPU µs/event (user+sys), peak RSS;
#   3. key jobs on the backfilled rows: rewrap at BENCH_SMALL (10,000) vs BENCH_EVENTS rows,
#      reencrypt, retokenize, verify;
#   4. SQS on the emulator: an ideal consumer (receive 10 + delete 10, no processing) vs
#      `etl run --drain`, same concurrency, same BENCH_MESSAGES (20,000) messages each;
#   5. SQS at real-service speed: `etl run`'s stages fed by a modelled queue (receive and delete
#      each take BENCH_LATENCY_MS, 20) at concurrency 1, 4, 16, 64, against the bound
#      min(concurrency × 10 / latency, backfill rate), and the seeds' consumer (one receive at a
#      time, INSERT + COMMIT per row) on the same queue;
#   6. criterion micro-benchmarks: decode, token, seal, decode+protect per event.
# Prints markdown tables and writes target/bench/results.json. BENCH_PHASES picks phases
# (default: "backfill keys reveal audit sqs model micro status"); sizes as below. The reveal phase times
# `etl reveal` of one user with BENCH_REVEAL (1,000) records among BENCH_EVENTS others, end to end
# and its two statements alone (`vault.reveal_request()` + `reveal_rows()`; median of 5 runs each).
# The audit phase times `audit verify`, `checkpoint`, `verify --checkpoint`, `export` and `report`
# on a trail of BENCH_AUDIT (100,000) rows, with each command's own peak RSS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PIIVAULT_ROOT"
events=${BENCH_EVENTS:-200000}
big=${BENCH_BIG:-1000000}
small=${BENCH_SMALL:-10000}
messages=${BENCH_MESSAGES:-20000}
latency=${BENCH_LATENCY_MS:-20}
concurrency=${BENCH_CONCURRENCY:-8}
phases=" ${BENCH_PHASES:-backfill keys reveal audit sqs model micro status} "
want() { [[ $phases == *" $1 "* ]]; }
out=target/bench
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

bash scripts/stack.sh up
cargo build --release --locked --quiet
cargo bench --locked --no-run --quiet --bench pipeline --bench micro 2>/dev/null
etl=target/release/etl
bench_pipeline() { cargo bench --locked --quiet --bench pipeline -- "$@" 2>/dev/null | tail -1; }
export PIIVAULT_KEK="file:$PIIVAULT_DEV_KEK"
admin=$PIIVAULT_PG_ADMIN_URL

# fresh_db NAME: an empty, migrated database with keys; exports DATABASE_URL.
fresh_db() {
  export DATABASE_URL="${admin%/*}/$1"
  psql "$admin" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" 2>/dev/null
  $etl migrate 2>/dev/null
  $etl keys init >/dev/null 2>&1
}

# measure NAME COUNT_FIELD COMMAND...: runs it; appends one JSON object with the command's
# summary line, the count it reports in COUNT_FIELD, wall time and rusage (CPU, peak RSS).
measure() {
  python3 - "$results" "$@" <<'PY'
import json, resource, subprocess, sys, time
path, name, field, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
start = time.monotonic()
run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
wall = time.monotonic() - start
if run.returncode != 0:
    sys.exit(f"{name}: {' '.join(cmd)} exited {run.returncode}")
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
summary = json.loads(run.stdout.strip().splitlines()[-1])
n = summary[field]
row = {
    "name": name, "rows": n, "wall_s": round(wall, 2), "rows_per_s": round(n / wall),
    "cpu_us_per_row": round((usage.ru_utime + usage.ru_stime) * 1e6 / max(n, 1), 1),
    "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "summary": summary,
}
open(path, "a").write(json.dumps(row) + "\n")
PY
}

# record NAME JSON: appends a result produced by the bench program.
record() { python3 -c 'import json,sys; r=json.loads(sys.argv[3]); r["name"]=sys.argv[2]; open(sys.argv[1],"a").write(json.dumps(r)+"\n")' "$results" "$@"; }

gen() { [ -f "$2" ] || $etl seed --count "$1" --malformed-ratio 0.01 --seed 7 --output "$2" >/dev/null; }
file="$out/events-$events.jsonl"; gen "$events" "$file"
big_file="$out/events-$big.jsonl"; gen "$big" "$big_file"
small_file="$out/events-$small.jsonl"; gen "$small" "$small_file"

if want backfill; then
echo "backfill and raw COPY" >&2
fresh_db piivault_bench
measure "backfill --input ($events events)" received $etl run --input "$file"
tables="user_logins vault.login_pii etl.quarantine"
for t in $tables; do psql "$DATABASE_URL" -qc "\\copy $t TO '$out/copy-$t.bin' (FORMAT binary)"; done
fresh_db piivault_bench_copy
python3 - "$results" "$DATABASE_URL" "$out" "$events" $tables <<'PY'
import json, subprocess, sys, time
path, url, out, events, tables = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
cmd = ["psql", url, "-q", "-v", "ON_ERROR_STOP=1", "-1"]
for t in tables:
    cmd += ["-c", f"\\copy {t} FROM '{out}/copy-{t}.bin' (FORMAT binary)"]
start = time.monotonic()
subprocess.run(cmd, check=True)
wall = time.monotonic() - start
open(path, "a").write(json.dumps({"name": f"raw COPY limit ({events} events' rows)", "rows": events,
    "wall_s": round(wall, 2), "rows_per_s": round(events / wall)}) + "\n")
PY
fresh_db piivault_bench_big
measure "backfill --input ($big events)" received $etl run --input "$big_file"
fi

if want keys; then
echo "key jobs" >&2
export DATABASE_URL="${admin%/*}/piivault_bench" # the backfill phase's 200,000 rows
measure "keys rewrap file→kms ($events rows)" rewrapped $etl keys rewrap --to-kek "kms:$PIIVAULT_DEV_KMS_ALIAS"
export PIIVAULT_KEK="kms:$PIIVAULT_DEV_KMS_ALIAS"
$etl keys rotate --purpose seal >/dev/null 2>&1
$etl keys rotate --purpose token >/dev/null 2>&1
measure "keys reencrypt ($events rows)" reencrypted $etl keys reencrypt
measure "keys retokenize ($events rows)" retokenized $etl keys retokenize
measure "keys verify ($events rows)" vault_rows $etl keys verify
export PIIVAULT_KEK="file:$PIIVAULT_DEV_KEK"
fresh_db piivault_bench_small
$etl run --input "$small_file" >/dev/null 2>&1
measure "keys rewrap file→kms ($small rows)" rewrapped $etl keys rewrap --to-kek "kms:$PIIVAULT_DEV_KMS_ALIAS"
export PIIVAULT_KEK="file:$PIIVAULT_DEV_KEK"
fi

if want reveal; then
echo "reveal" >&2
reveal_n=${BENCH_REVEAL:-1000}
fresh_db piivault_bench_reveal
python3 -c 'import json,sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"user_id": "bench-reveal-user", "ip": f"10.{i>>16&255}.{i>>8&255}.{i&255}", "device_id": f"dev-{i%7}"}))' \
  "$reveal_n" >"$out/reveal-$reveal_n.jsonl"
$etl run --input "$file" >/dev/null 2>&1
$etl run --input "$out/reveal-$reveal_n.jsonl" >/dev/null 2>&1
python3 - "$results" "$etl" "$DATABASE_URL" "$reveal_n" <<'PY'
import json, statistics, subprocess, sys, time
path, etl, url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def timed(cmd):
    start = time.monotonic()
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return time.monotonic() - start, run.stdout
runs = [timed([etl, "reveal", "--purpose", "security-incident", "--user-id", "bench-reveal-user", "--reason", "benchmark reveal"]) for _ in range(5)]
assert all(len(out.splitlines()) == n for _, out in runs), "reveal did not return every record"
# The two statements of a reveal, each its own transaction: request (audit row + grant), rows.
sql = ("\\timing on\n"
       "SELECT audit_id FROM vault.reveal_request('user_id', 'bench-reveal-user', 'security-incident', 'benchmark reveal', NULL, 'bench') \\gset\n"
       "SELECT count(*) FROM vault.reveal_rows(:audit_id);\n")
statement = []
for _ in range(5):
    out = subprocess.run(["psql", url, "-At", "-v", "ON_ERROR_STOP=1"], input=sql,
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.splitlines().count(str(n)) == 1, out
    statement.append(sum(float(t.split(" ms")[0]) for t in out.split("Time: ")[1:]) / 1000)
row = {"name": f"reveal ({n} records)", "records": n,
       "etl_reveal_s": round(statistics.median(t for t, _ in runs), 3),
       "statement_s": round(statistics.median(statement), 4)}
open(path, "a").write(json.dumps(row) + "\n")
PY
fi

if want audit; then
echo "audit trail" >&2
audit_n=${BENCH_AUDIT:-100000}
fresh_db piivault_bench_audit
# The trail, appended by the server's own function (as the owner), 2,000 rows per transaction:
# one transaction that moves the head row a million times walks ever longer version chains.
for ((done = 0; done < audit_n; done += 2000)); do
  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -qAtc "SELECT count(vault.audit_record('verify', 'all', NULL,
    NULL, 'benchmark trail row', 'bench', 0, NULL, NULL, NULL, NULL, NULL))
    FROM generate_series(1, least(2000, $audit_n - $done))" >/dev/null
done
signer="$out/audit-signer.json"
rm -f "$signer"
$etl audit signer-init --output "$signer" >/dev/null
python3 - "$results" "$etl" "$audit_n" "$signer" "$out" <<'PY'
import json, os, subprocess, sys, time
path, etl, n, signer, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
env = dict(os.environ, PIIVAULT_AUDIT_SIGNER=f"file:{signer}")
def run(args, stdout_path):
    """Wall seconds and this process's own peak RSS (MiB); stdout to a file."""
    with open(stdout_path, "w") as sink:
        start = time.monotonic()
        child = subprocess.Popen([etl, *args], stdout=sink, stderr=subprocess.PIPE, env=env)
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - start
    if status != 0:
        sys.exit(f"bench audit: etl {' '.join(args)} failed ({status}): {err.decode()[-400:]}")
    return round(wall, 3), round(usage.ru_maxrss / 1024, 1)
verify_s, verify_rss = run(["audit", "verify"], f"{out}/audit-verify.json")
checkpoint_s, _ = run(["audit", "checkpoint"], f"{out}/audit-checkpoints.jsonl")
checked_s, _ = run(["audit", "verify", "--checkpoint", f"{out}/audit-checkpoints.jsonl"], f"{out}/audit-checked.json")
export_s, export_rss = run(["audit", "export"], f"{out}/audit-export.jsonl")
with open(f"{out}/audit-export.jsonl") as f:
    exported = sum(1 for _ in f)
assert exported == n, f"export wrote {exported} rows, the trail holds {n}"
report_s, _ = run(["audit", "report", "--by", "login", "--format", "json"], f"{out}/audit-report.jsonl")
row = {"name": f"audit trail ({n} rows)", "rows": n, "verify_s": verify_s, "verify_rss_mib": verify_rss,
       "checkpoint_s": checkpoint_s, "verify_checkpoint_s": checked_s, "export_s": export_s,
       "export_rows_per_s": round(n / export_s), "export_rss_mib": export_rss, "report_s": report_s}
open(path, "a").write(json.dumps(row) + "\n")
PY
fi

if want sqs; then
echo "SQS on the emulator" >&2
# moto slows as a queue deepens (docs/ARCHITECTURE.md, "The SQS/KMS emulator"): the messages go in rounds of $round, each seeded and
# then drained by both consumers in turn, so neither meets a deep queue. Times are the consumers'
# own (seeding excluded); both include one final empty long poll (1 s) per round.
fresh_db piivault_bench_sqs
round=${BENCH_ROUND:-2000}
sqs_rounds="$out/sqs-rounds.jsonl"
: >"$sqs_rounds"
export SQS_QUEUE_URL
for r in $(seq 1 $((messages / round))); do
  SQS_QUEUE_URL=$(bash scripts/stack.sh queue "piivault-bench-ideal-$r-$(date +%s)")
  $etl seed --count "$round" --malformed-ratio 0.01 --seed "$r" >/dev/null
  echo "{\"consumer\": \"ideal\", \"result\": $(bench_pipeline ideal-sqs --concurrency "$concurrency")}" >>"$sqs_rounds"
  SQS_QUEUE_URL=$(bash scripts/stack.sh queue "piivault-bench-etl-$r-$(date +%s)")
  $etl seed --count "$round" --malformed-ratio 0.01 --seed "$r" >/dev/null
  python3 - "$sqs_rounds" $etl run --drain --wait-time-secs 1 --concurrency "$concurrency" <<'PY'
import json, resource, subprocess, sys
run = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
summary = json.loads(run.stdout.strip().splitlines()[-1])
open(sys.argv[1], "a").write(json.dumps({"consumer": "etl", "result": summary,
    "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}) + "\n")
PY
done
python3 - "$sqs_rounds" "$results" "$messages" "$concurrency" <<'PY'
import json, sys
rounds = [json.loads(l) for l in open(sys.argv[1])]
path, messages, concurrency = sys.argv[2], sys.argv[3], sys.argv[4]
ideal = [r["result"] for r in rounds if r["consumer"] == "ideal"]
etl = [r for r in rounds if r["consumer"] == "etl"]
n_ideal, s_ideal = sum(r["messages"] for r in ideal), sum(r["seconds"] for r in ideal)
n_etl = sum(r["result"]["loaded"] + r["result"]["quarantined"] for r in etl)
s_etl = sum(r["result"]["seconds"] for r in etl)
with open(path, "a") as out:
    out.write(json.dumps({"name": f"ideal consumer on the emulator ({messages} messages, concurrency {concurrency})",
        "messages": n_ideal, "seconds": round(s_ideal, 2), "msgs_per_s": round(n_ideal / s_ideal)}) + "\n")
    out.write(json.dumps({"name": f"etl run --drain on the emulator ({messages} messages, concurrency {concurrency})",
        "messages": n_etl, "seconds": round(s_etl, 2), "msgs_per_s": round(n_etl / s_etl),
        "cpu_us_per_row": round(sum(r["cpu_s"] for r in etl) * 1e6 / n_etl, 1),
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in etl), 1)}) + "\n")
PY
fi

if want model; then
echo "modelled SQS" >&2
for c in 1 4 16 64; do
  n=$((c * 2500 > 40000 ? 40000 : c * 2500))
  fresh_db piivault_bench_model
  record "modelled SQS, concurrency $c" \
    "$(bench_pipeline modelled --messages "$n" --concurrency "$c" --latency-ms "$latency")"
done
fresh_db piivault_bench_model
record "seed-style consumer, modelled SQS" \
  "$(bench_pipeline seed-style --messages 2000 --latency-ms "$latency")"
fi

if want micro; then
echo "micro-benchmarks" >&2
cargo bench --locked --quiet --bench micro -- --output-format bencher 2>/dev/null \
  | python3 -c '
import json, re, sys
for line in sys.stdin:
    m = re.match(r"test (.+?) \.\.\. bench:\s+([\d,]+) ns/iter", line)
    if m:
        print(json.dumps({"name": "micro: " + m.group(1), "ns": int(m.group(2).replace(",", ""))}))
' >>"$results"
fi

if want status; then
echo "status page and metrics on a large table" >&2
# The biggest database an earlier phase left (1 M rows after backfill), else a fresh 200 k one.
db=piivault_bench_big
if ! psql "${admin%/*}/$db" -Atqc "SELECT 1 FROM user_logins LIMIT 1" >/dev/null 2>&1; then
  fresh_db piivault_bench_status
  $etl run --input "$file" >/dev/null 2>&1
  db=piivault_bench_status
fi
export DATABASE_URL="${admin%/*}/$db"
SQS_QUEUE_URL=$(bash scripts/stack.sh queue "piivault-bench-status-$(date +%s)") \
  $etl run --wait-time-secs 20 --metrics-addr 127.0.0.1:19090 >/dev/null 2>"$out/status-server.log" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' EXIT
# A view never waits for the database scans: the first one waits at most 3 s, then the figures
# arrive from a background read. Recorded: the first view, how long until the figures are in
# (the background read: two duplicate scans of user_logins, cancelled by Postgres after
# --status-timeout-secs), later views, and the parts that could not be read.
python3 - "$results" "$DATABASE_URL" <<'PY'
import json, statistics, subprocess, sys, time, urllib.request
path, url = sys.argv[1], sys.argv[2]
base = "http://127.0.0.1:19090"
rows = int(subprocess.run(["psql", url, "-Atqc", "SELECT count(*) FROM user_logins"],
                          capture_output=True, text=True, check=True).stdout)
for _ in range(150):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1).read()
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("bench: etl run --metrics-addr never answered /healthz; see target/bench/status-server.log")

def get(page):
    start = time.monotonic()
    body = urllib.request.urlopen(base + page, timeout=60).read()
    return (time.monotonic() - start) * 1000, body

def record(name, times, body, **extra):
    times = sorted(times)
    open(path, "a").write(json.dumps({"name": name, "rows": rows,
        "median_ms": round(statistics.median(times), 1), "p95_ms": round(times[max(int(len(times) * 0.95) - 1, 0)], 1),
        "bytes": len(body), "unavailable_parts": body.count(b'class="unavailable"'), **extra}) + "\n")

started = time.monotonic()
first, body = get("/")
record(f"GET /, first view ({rows} rows in user_logins)", [first], body)
while b"db-pending" in body and time.monotonic() - started < 120:
    time.sleep(0.25)
    _, body = get("/")
record(f"database figures in after ({rows} rows)", [(time.monotonic() - started) * 1000], body)
pages = [get("/") for _ in range(20)]
record(f"GET /, figures cached ({rows} rows)", [t for t, _ in pages], pages[-1][1])
for page in ["/metrics", "/readyz"]:
    got = [get(page) for _ in range(20)]
    record(f"GET {page} ({rows} rows)", [t for t, _ in got], got[-1][1])
PY
kill -TERM "$server" 2>/dev/null || true
wait "$server" || true
trap - EXIT
fi

python3 scripts/bench_report.py "$results" "$out/results.json" "$latency"
