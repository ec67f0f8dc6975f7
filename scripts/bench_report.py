"""Turns scripts/bench.py's results (one JSON object per line) into markdown tables, checks the
goals of the throughput issue, and writes everything to one JSON file."""

import json
import os
import platform
import sys

results_path, json_path, latency_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(results_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]


def find(prefix):
    return [r for r in rows if r["name"].startswith(prefix)]


def one(prefix):
    found = find(prefix)
    return found[0] if found else None


def fmt(value, digits=0):
    return "" if value is None else f"{value:,.{digits}f}"


goals = []


def goal(text, ok):
    goals.append({"goal": text, "met": bool(ok)})


copies = [r for r in rows if "raw COPY limit" in r["name"]]
backfills = find("backfill --input")


def copy_for(rows_):
    """The raw-COPY limit measured for the same number of rows, if any."""
    return next((c for c in copies if c["rows"] == rows_), None)


if copies or backfills:
    print("### Backfill against the raw-COPY limit (best of the COPY runs, same rows, same indexes)\n")
    print("| run | events | wall s | events/s | × raw COPY | CPU µs/event | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
for c in copies:
    if not c["name"].startswith("scale "):
        print(f"| {c['name']} | {c['rows']:,} | {c['wall_s']} | {fmt(c['rows_per_s'])} | 1.00 | | |")
for r in backfills:
    copy = copy_for(r["rows"])
    ratio = r["rows_per_s"] / copy["rows_per_s"] if copy else None
    r["ratio_to_copy"] = ratio
    print(f"| {r['name']} | {r['rows']:,} | {r['wall_s']} | {fmt(r['rows_per_s'])} | {fmt(ratio, 2)} "
          f"| {r['cpu_us_per_row']} | {r['peak_rss_mib']} |")
    if ratio is not None:
        goal(f"backfill of {r['rows']:,} events ≥ 0.9× raw COPY", ratio >= 0.9)
if backfills:
    goal("≤ 25 µs CPU per event (whole process)", all(r["cpu_us_per_row"] <= 25 for r in backfills))
    goal("peak RSS ≤ 64 MiB", all(r["peak_rss_mib"] <= 64 for r in backfills))
if len(backfills) >= 2:
    a, b = backfills[0], backfills[1]
    goal("1 M events within 10 % of 200 k (RSS)", b["peak_rss_mib"] <= a["peak_rss_mib"] * 1.1)
    goal("1 M events within 10 % of 200 k (events/s)", b["rows_per_s"] >= a["rows_per_s"] * 0.9)

if find("keys "):
    print("\n### Key jobs\n")
    print("| run | rows | wall s | rows/s | CPU µs/row | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
for r in find("keys "):
    print(f"| {r['name']} | {r['rows']:,} | {r['wall_s']} | {fmt(r['rows_per_s'])} | {r['cpu_us_per_row']} | {r['peak_rss_mib']} |")

for r in find("reveal ("):
    print("\n### Reveal through the database\n")
    print("| run | records | `etl reveal` wall s (median of 5) | `reveal_request` + `reveal_rows` s (median of 5) |")
    print("|---|---:|---:|---:|")
    print(f"| {r['name']} | {r['records']:,} | {r['etl_reveal_s']} | {r['statement_s']} |")

for r in find("audit trail ("):
    print("\n### Audit trail\n")
    print("| trail rows | `audit verify` s | its RSS MiB | `audit checkpoint` s | `verify --checkpoint` s "
          "| `audit export` s | rows/s | its RSS MiB | `audit report` s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {r['rows']:,} | {r['verify_s']} | {r['verify_rss_mib']} | {r['checkpoint_s']} | "
          f"{r['verify_checkpoint_s']} | {r['export_s']} | {fmt(r['export_rows_per_s'])} | "
          f"{r['export_rss_mib']} | {r['report_s']} |")

ideal, drain = one("ideal consumer"), one("etl run --drain")
if ideal or drain:
    print("\n### SQS on the emulator (bounded by the emulator, see docs/ARCHITECTURE.md)\n")
    print("| consumer | messages | wall s | msgs/s | × ideal | CPU µs/msg | steady CPU µs/msg | start-up CPU ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
if ideal:
    print(f"| {ideal['name']} | {ideal['messages']:,} | {ideal['seconds']} | {fmt(ideal['msgs_per_s'])} | 1.00 | | | |")
if drain:
    ratio = drain["msgs_per_s"] / ideal["msgs_per_s"] if ideal else None
    drain["ratio_to_ideal"] = ratio
    print(f"| {drain['name']} | {drain['messages']:,} | {drain['seconds']} | {fmt(drain['msgs_per_s'])} | {fmt(ratio, 2)} | {drain['cpu_us_per_row']} | {fmt(drain.get('steady_cpu_us_per_row'), 1)} | {fmt(drain.get('startup_cpu_ms'), 1)} |")
    if ideal:
        goal("SQS drain on the emulator ≥ 0.8× the ideal consumer", ratio >= 0.8)

backfill_rate = backfills[0]["rows_per_s"] if backfills else None
if find("modelled SQS") or find("seed-style"):
    print(f"\n### SQS at real-service speed (modelled queue, {latency_ms} ms per receive and per delete)\n")
    print("| consumer | concurrency | messages | msgs/s | bound | × bound |")
    print("|---|---:|---:|---:|---:|---:|")
at16 = None
for r in find("modelled SQS"):
    bound = r["concurrency"] * 10 * 1000 / latency_ms
    if backfill_rate:
        bound = min(bound, backfill_rate)
    r["bound"], r["ratio_to_bound"] = bound, r["msgs_per_s"] / bound
    if r["concurrency"] == 16:
        at16 = r
    print(f"| etl run stages | {r['concurrency']} | {r['messages']:,} | {fmt(r['msgs_per_s'])} | {fmt(bound)} | {fmt(r['ratio_to_bound'], 2)} |")
seed = one("seed-style")
if seed:
    print(f"| seed-style (1 receive at a time, INSERT + COMMIT per row) | 1 | {seed['messages']:,} | {fmt(seed['msgs_per_s'])} | | |")
if at16:
    goal("modelled SQS at concurrency 16 ≥ 0.8× the bound", at16["ratio_to_bound"] >= 0.8)
    if seed:
        goal("modelled SQS at concurrency 16 ≥ 10× the seed-style consumer",
             at16["msgs_per_s"] >= 10 * seed["msgs_per_s"])

micro = find("micro: ")
if micro:
    print("\n### Micro-benchmarks (criterion, median per call)\n")
    print("| what | µs |")
    print("|---|---:|")
    for r in micro:
        print(f"| {r['name'][7:]} | {r['ns'] / 1000:.2f} |")
    dp = one("micro: decode+protect")
    if dp:
        goal("≤ 5 µs CPU for decode+protect per event", dp["ns"] <= 5000)

pages = find("GET ") + find("database figures in")
if pages:
    print("\n### Operator endpoints (20 requests each)\n")
    print("| request | median ms | p95 ms | bytes | parts unavailable |")
    print("|---|---:|---:|---:|---:|")
    for r in pages:
        print(f"| {r['name']} | {r['median_ms']} | {r['p95_ms']} | {r['bytes']:,} | {r['unavailable_parts']} |")

index_costs = find("index cost: ")
if index_costs:
    base = index_costs[0]
    print(f"\n### What each index costs a load (COPY of {base['rows']:,} rows, best of the runs)\n")
    print("| schema | rows/s | wall s | wall vs all indexes |")
    print("|---|---:|---:|---:|")
    for r in index_costs:
        change = (r["wall_s"] - base["wall_s"]) / base["wall_s"] * 100
        print(f"| {r['name'].split('COPY with ', 1)[1]} | {fmt(r['rows_per_s'])} | {r['wall_s']} | {change:+.0f} % |")

scale = find("scale ")
if scale:
    print("\n### Scale (issue 19; `BENCH_PHASES=scale`)\n")
    print("| run | rows | figure |")
    print("|---|---:|---|")
    for r in scale:
        if "probes" in r:
            figure = (f"longest {r['max_ms']} ms (during {r.get('max_during', '?')}), p99 {r['p99_ms']} ms, "
                      f"median {r['median_ms']} ms "
                      f"({r['probes']:,} probes; {r['loaded_meanwhile']:,} rows loaded meanwhile)")
        elif "runs_s" in r:
            figure = f"{fmt(r['rows_per_s'])} rows/s, best of {r['runs_s']} s"
        elif "median_s" in r:
            figure = f"median {r['median_s']} s, max {r['max_s']} s (3 runs)"
        elif "median_ms" in r:
            figure = f"median {r['median_ms']} ms, p95 {r['p95_ms']} ms"
        else:
            figure = (f"{fmt(r['rows_per_s'])} rows/s, {r['wall_s']} s, {r['cpu_us_per_row']} µs CPU/row, "
                      f"peak RSS {r['peak_rss_mib']} MiB")
            if "first_file_rows_per_s" in r:
                figure += (f"; first file {fmt(r['first_file_rows_per_s'])}/s, "
                           f"last {fmt(r['last_file_rows_per_s'])}/s")
        print(f"| {r['name']} | {r['rows']:,} | {figure} |")
    for r in scale:
        if "backfill" in r["name"]:
            goal("scale: backfill peak RSS ≤ 64 MiB", r["peak_rss_mib"] <= 64)
            copy = next((c for c in scale if "raw COPY limit" in c["name"]), None)
            if copy:
                ratio = r["rows_per_s"] / copy["rows_per_s"]
                print(f"\nscale backfill × raw COPY of its rows: {ratio:.2f}")
                goal("scale: backfill ≥ 0.9× raw COPY", ratio >= 0.9)
        elif "probes" in r:
            goal("scale: writer stall during a full rotation ≤ 1 s", r["max_ms"] <= 1000)
        elif "reveal --user-id" in r["name"]:
            goal("scale: reveal of a user's 1,000 records < 100 ms", r["median_s"] < 0.1)
        elif "report duplicates" in r["name"]:
            goal("scale: report duplicates < 2 s", r["median_s"] < 2)
        elif "keys " in r["name"]:
            goal(f"scale: {r['name'].split(': ', 1)[1].split(' (')[0]} ≥ 20 k rows/s", r["rows_per_s"] >= 20_000)

print("\n### Goals\n")
for g in goals:
    print(f"- [{'x' if g['met'] else ' '}] {g['goal']}")
with open(json_path, "w") as f:
    json.dump({"machine": f"{platform.machine()} {os.cpu_count()} cpus", "results": rows, "goals": goals},
              f, indent=2)
print(f"\nwritten to {json_path}")
