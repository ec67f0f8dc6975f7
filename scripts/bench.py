"""Benchmark: measures piivault against the physical limits of this machine, on the local stack,
with release builds. Not a test: figures depend on the machine. In one run:
  1. raw-COPY limit: the rows a backfill stored, COPYed (binary) into the same, freshly
     migrated tables and indexes — the database's own ceiling for these rows;
  2. backfill: `etl run --input` of BENCH_EVENTS (200,000) and BENCH_BIG (1,000,000) generated
     events: events/s, ratio to raw COPY, CPU µs/event (user+sys), peak RSS;
  3. key jobs on the backfilled rows: rewrap at BENCH_SMALL (10,000) vs BENCH_EVENTS rows,
     reencrypt, retokenize, verify;
  4. SQS on the emulator: an ideal consumer (receive 10 + delete 10, no processing) vs
     `etl run --drain`, same concurrency (BENCH_CONCURRENCY, 8), same BENCH_MESSAGES (20,000)
     messages each, sent in rounds of BENCH_ROUND (2,000);
  5. SQS at real-service speed: `etl run`'s stages fed by a modelled queue (receive and delete
     each take BENCH_LATENCY_MS, 20) at concurrency 1, 4, 16, 64, against the bound
     min(concurrency × 10 / latency, backfill rate), and the seeds' consumer (one receive at a
     time, INSERT + COMMIT per row) on the same queue;
  6. criterion micro-benchmarks: decode, token, seal, decode+protect per event.
The reveal phase times `etl reveal` of one user with BENCH_REVEAL (1,000) records among
BENCH_EVENTS others, end to end and its two statements alone (`vault.reveal_request()` +
`reveal_rows()`; median of 5 runs each). The audit phase times `audit verify`, `checkpoint`,
`verify --checkpoint`, `export` and `report` on a trail of BENCH_AUDIT (100,000) rows, with each
command's own peak RSS. The status phase times the status page, /metrics and /readyz of
`etl run --metrics-addr` on the biggest table an earlier phase left. The indexes phase COPYs the
BENCH_BIG backfill's rows into schemas with one index less (or the dropped rotation-only ones
back): what each index costs a load. Every raw COPY is the best of BENCH_COPY_RUNS (3). The
scale phase (issue 19; only when named, e.g. BENCH_PHASES=scale) backfills BENCH_SCALE
(10,000,000) events and times report refresh and duplicates, the status page, reveals of a user and of a
token shared by 10,000 users, the raw-COPY limit of its rows, and a full rotation of both keys
under live load: the key jobs' rates and the longest writer stall (see phase_scale). The
scale-queries and scale-rotation phases (only when named) run the scale phase's reads, or its
rotation, again on the table it left.

BENCH_PG=sized runs every phase on a Postgres cluster of the benchmark's own (initdb'd once into
target/bench/pg, started on BENCH_PG_PORT (5499) for the run and stopped after it) with a
production server's memory and checkpoint settings for this machine (see sized_settings) instead
of the shared stack's Debian defaults; the scale figures in the README come from it.

BENCH_PHASES picks phases (default: "backfill keys reveal audit sqs model micro status indexes"; "scale"
only when named); they run in that order. Rows go to target/bench/results.jsonl; scripts/bench_report.py then prints
markdown tables, checks the goals and writes target/bench/results.json.

Any failed step stops the run: the message names the step, the command, its exit code and the
tail of its stderr. Commands' stderr always reaches the terminal as it comes. Generated inputs
(target/bench/events-N.jsonl, reveal-N.jsonl, shared-device-N.jsonl) have a manifest beside them (FILE.json: the
parameters, size in bytes and sha256); a file is reused only when its manifest matches, else it
is regenerated (written to a temporary name and renamed).

Run it as `bash scripts/bench.sh` (which sources scripts/env.sh); stdlib only.
"""

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("target/bench")  # relative to ROOT, like every path below
RESULTS = OUT / "results.jsonl"
ETL = "target/release/etl"
PHASES = ("backfill", "keys", "reveal", "audit", "sqs", "model", "micro", "status", "indexes", "scale",
          "scale-queries", "scale-rotation")
# The phases a plain run runs; scale (over an hour at 10 M events) and scale-queries and
# scale-rotation (on the table scale left) only when named.
DEFAULT_PHASES = PHASES[:-3]
# BENCH_PG=sized: a cluster of the benchmark's own (the shared one is never reconfigured), its data
# kept in SIZED_DIR between runs so scale-queries and scale-rotation find the table scale left.
SIZED_DIR = OUT / "pg"
SIZED_PORT = int(os.environ.get("BENCH_PG_PORT") or 5499)
STATUS_ADDR = "127.0.0.1:19090"
REVEAL_USER = "bench-reveal-user"
SHARED_DEVICE = "bench-shared-device"
STDERR_TAIL = 25  # lines of a failed command's stderr repeated in the failure message
PIPE, DEVNULL = subprocess.PIPE, subprocess.DEVNULL


class StepFailed(Exception):
    """A step failed; main() prints the message and exits 1."""

    def __init__(self, step: str, detail: str, cmd: list[str] | None = None, stderr_tail: str = ""):
        lines = [f"bench: FAILED: {step}"]
        if cmd:
            lines.append(f"  command: {shlex.join(cmd)}")
        lines.append(f"  {detail}")
        if stderr_tail.strip():
            lines.append("  its stderr ended with:")
            lines += [f"    | {line}" for line in stderr_tail.rstrip("\n").splitlines()]
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Config:
    phases: tuple[str, ...]
    events: int
    big: int
    small: int
    messages: int
    latency_ms: int
    concurrency: int
    reveal: int
    audit: int
    round: int
    scale: int
    copy_runs: int
    admin_url: str  # creates and drops the bench databases (PIIVAULT_PG_ADMIN_URL, or the sized cluster's)
    pg: str  # BENCH_PG: "shared" or "sized"
    file_kek: str  # file:$PIIVAULT_DEV_KEK
    kms_kek: str  # kms:$PIIVAULT_DEV_KMS_ALIAS

    def db_url(self, name: str) -> str:
        return f"{self.admin_url.rsplit('/', 1)[0]}/{name}"


def config() -> Config:
    def required(name: str) -> str:
        value = os.environ.get(name)
        if not value:
            sys.exit(f"bench: {name} is not set; run `bash scripts/bench.sh` (it sources scripts/env.sh)")
        return value

    def size(name: str, default: int) -> int:
        raw = os.environ.get(name) or str(default)
        if not raw.isdigit() or int(raw) == 0:
            sys.exit(f"bench: {name}={raw!r} is not a positive whole number")
        return int(raw)

    pg = os.environ.get("BENCH_PG") or "shared"
    if pg not in ("shared", "sized"):
        sys.exit(f"bench: BENCH_PG={pg!r}: shared (the stack's Postgres, the default) or sized "
                 "(a cluster of the benchmark's own, sized like a production server)")
    phases = tuple((os.environ.get("BENCH_PHASES") or " ".join(DEFAULT_PHASES)).split())
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        sys.exit(f"bench: unknown phase(s) {' '.join(unknown)} in BENCH_PHASES; phases: {' '.join(PHASES)}")
    cfg = Config(
        phases=phases,
        events=size("BENCH_EVENTS", 200_000),
        big=size("BENCH_BIG", 1_000_000),
        small=size("BENCH_SMALL", 10_000),
        messages=size("BENCH_MESSAGES", 20_000),
        latency_ms=size("BENCH_LATENCY_MS", 20),
        concurrency=size("BENCH_CONCURRENCY", 8),
        reveal=size("BENCH_REVEAL", 1_000),
        audit=size("BENCH_AUDIT", 100_000),
        round=size("BENCH_ROUND", 2_000),
        scale=size("BENCH_SCALE", 10_000_000),
        copy_runs=size("BENCH_COPY_RUNS", 3),
        admin_url=(required("PIIVAULT_PG_ADMIN_URL") if pg == "shared"
                   else f"postgres://postgres@127.0.0.1:{SIZED_PORT}/postgres"),
        pg=pg,
        file_kek=f"file:{required('PIIVAULT_DEV_KEK')}",
        kms_kek=f"kms:{required('PIIVAULT_DEV_KMS_ALIAS')}",
    )
    if "sqs" in phases and cfg.messages < cfg.round:
        sys.exit(f"bench: BENCH_MESSAGES ({cfg.messages}) is less than one round (BENCH_ROUND, {cfg.round})")
    return cfg


# ---------------------------------------------------------------------------------------------
# Running commands


@dataclasses.dataclass
class Finished:
    code: int  # negative: killed by that signal
    stdout: str | None  # when captured
    stderr_tail: str
    wall_s: float
    cpu_s: float  # user + system, the command's own (and its children's)
    peak_rss_mib: float


# Runs a command for run() and writes its wall time, wait status and rusage to the file
# descriptor argv[1]. The command is measured from this small interpreter (-I -S, ~8 MiB), not
# from the driver: on Linux a child's ru_maxrss starts at its parent's peak RSS (carried across
# exec), and the driver's (~23 MiB) would hide the smaller commands' own peaks.
LAUNCHER = """
import os, sys, time
report = int(sys.argv[1])
os.set_inheritable(report, False)
start = time.monotonic()
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
except OSError as e:
    sys.exit(f"cannot run {sys.argv[2]}: {e}")
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except KeyboardInterrupt:  # the command got the same SIGINT: report how it ended
        pass
wall = time.monotonic() - start
os.write(report, f"{wall} {status} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}".encode())
"""


def run(step: str, cmd: list, *, env: dict | None = None, stdout=DEVNULL, input: str | None = None,
        check: bool = True, echo_stderr: bool = True) -> Finished:
    """Runs cmd to completion with os.environ plus env, measured (wall, CPU, peak RSS). Its
    stderr is copied to ours as it comes (unless echo_stderr is false) and its tail kept; stdout
    is captured (PIPE), written to an open file, inherited (None) or discarded (DEVNULL). A
    non-zero exit raises StepFailed naming the step, the command, the exit code and stderr's tail
    (unless check is false)."""
    cmd = [str(c) for c in cmd]
    print(f"bench: {step}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    report_r, report_w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(report_w), *cmd],
                                 stdin=DEVNULL if input is None else PIPE, stdout=stdout, stderr=PIPE,
                                 pass_fds=(report_w,), env=dict(os.environ, **(env or {})))
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    tee = threading.Thread(target=copy_stderr, args=(child.stderr, tail, echo_stderr), daemon=True)
    tee.start()
    if input is not None:
        try:
            child.stdin.write(input.encode())
            child.stdin.close()
        except BrokenPipeError:  # it stopped reading: its exit code and stderr say why
            pass
    out = child.stdout.read().decode() if stdout is PIPE else None
    child.wait()
    tee.join()
    with open(report_r, "rb") as report:
        measured = report.read().split()
    if not measured:  # the launcher could not start the command; it said why on stderr
        raise StepFailed(step, "could not start the command", cmd, "".join(tail))
    wall, status, cpu, maxrss = float(measured[0]), int(measured[1]), float(measured[2]), int(measured[3])
    done = Finished(os.waitstatus_to_exitcode(status), out, "".join(tail), wall, cpu, maxrss / 1024)
    if check and done.code != 0:
        raise StepFailed(step, exit_description(done.code), cmd, done.stderr_tail)
    return done


def copy_stderr(pipe, tail: collections.deque, echo: bool) -> None:
    for raw in iter(pipe.readline, b""):
        if echo:
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()
        tail.append(raw.decode(errors="replace"))
    pipe.close()


def exit_description(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


def last_json(step: str, done: Finished) -> dict:
    """The JSON object on the last non-empty line of a command's stdout (its summary)."""
    lines = [line for line in (done.stdout or "").splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        shown = "\n".join(f"    | {line}" for line in lines[-5:])
        raise StepFailed(step, f"no JSON summary on the last line of its stdout ({e}); it ended with:\n"
                         + shown) from None


def etl(step: str, *args, db: str | None = None, env: dict | None = None, **kwargs) -> Finished:
    env = dict(env or {}, **({"DATABASE_URL": db} if db else {}))
    return run(step, [ETL, *args], env=env, **kwargs)


def bench_pipeline(step: str, *args, env: dict) -> dict:
    """One run of benches/pipeline.rs; its JSON line."""
    done = run(step, ["cargo", "bench", "--locked", "--quiet", "--bench", "pipeline", "--", *args],
               env=env, stdout=PIPE)
    return last_json(step, done)


def record(row: dict) -> None:
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


def measure(name: str, field: str, *args, db: str, env: dict | None = None) -> None:
    """Runs `etl ARGS`; records its summary line, the count it reports in field, wall time and
    the command's own rusage (CPU, peak RSS)."""
    done = etl(name, *args, db=db, env=env, stdout=PIPE)
    summary = last_json(name, done)
    if field not in summary:
        raise StepFailed(name, f"its summary has no {field!r}: {json.dumps(summary)}")
    n = summary[field]
    record({
        "name": name, "rows": n, "wall_s": round(done.wall_s, 2), "rows_per_s": round(n / done.wall_s),
        "cpu_us_per_row": round(done.cpu_s * 1e6 / max(n, 1), 1),
        "peak_rss_mib": round(done.peak_rss_mib, 1), "summary": summary,
    })


def psql(step: str, url: str, *commands: str, stdout=DEVNULL, **kwargs) -> Finished:
    """psql -qAt (quiet, bare values), stopping at the first error, running each command in turn."""
    cmd = ["psql", url, "-qAt", "-v", "ON_ERROR_STOP=1"]
    for c in commands:
        cmd += ["-c", c]
    return run(step, cmd, stdout=stdout, **kwargs)


def fresh_db(cfg: Config, name: str) -> str:
    """An empty, migrated database with keys (under the file KEK); its URL."""
    # client_min_messages: no NOTICE that the database to drop does not exist yet.
    psql(f"fresh_db {name}", cfg.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
         f"CREATE DATABASE {name}", env={"PGOPTIONS": "-c client_min_messages=warning"})
    url = cfg.db_url(name)
    etl(f"fresh_db {name}", "migrate", db=url)
    etl(f"fresh_db {name}", "keys", "init", db=url)
    return url


def new_queue(name: str) -> str:
    """Creates a queue on the emulator; its URL."""
    done = run(f"create queue {name}", ["bash", "scripts/stack.sh", "queue", name], stdout=PIPE)
    return done.stdout.strip()


def phase(title: str) -> None:
    print(f"\nbench: === {title}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Generated inputs, reused only when their manifest matches


def generated(path: Path, params: dict, make: Callable[[Path], None]) -> Path:
    """path, reused when its manifest (path + ".json") records these params and the file's
    current size and sha256; otherwise make(path) writes it anew (atomically) and the manifest
    is rewritten."""
    manifest = path.with_name(path.name + ".json")
    why = stale(path, manifest, params)
    if why is None:
        print(f"bench: reusing {path} (manifest {manifest.name} matches its size and sha256)",
              file=sys.stderr, flush=True)
        return path
    print(f"bench: generating {path}: {why}", file=sys.stderr, flush=True)
    manifest.unlink(missing_ok=True)
    make(path)
    facts = {**params, "bytes": path.stat().st_size, "sha256": sha256(path)}
    write_atomically(manifest, json.dumps(facts, indent=2) + "\n")
    return path


def stale(path: Path, manifest: Path, params: dict) -> str | None:
    """Why path cannot be reused, or None."""
    if not manifest.exists():
        return "no manifest" + ("" if path.exists() else " and no file")
    try:
        facts = json.loads(manifest.read_text())
        recorded = {k: facts[k] for k in params}
        size, digest = facts["bytes"], facts["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"manifest {manifest} is unreadable ({e!r})"
    if recorded != params:
        return f"manifest records {recorded}, this run wants {params}"
    if not path.exists():
        return "the file is missing"
    if path.stat().st_size != size:
        return f"the file has {path.stat().st_size} bytes, its manifest says {size} (truncated or changed)"
    if sha256(path) != digest:
        return "the file's sha256 differs from its manifest's (changed)"
    return None


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@functools.cache
def etl_version() -> str:
    return run("etl --version", [ETL, "--version"], stdout=PIPE).stdout.strip()


def seeded_events(count: int, seed: int = 7) -> Path:
    """target/bench/events-COUNT.jsonl (events-COUNT-sSEED.jsonl for another seed): `etl seed`,
    1 % malformed (seed writes atomically)."""
    params = {"generator": etl_version() + " seed", "count": count, "seed": seed, "malformed_ratio": 0.01}

    def make(path: Path) -> None:
        step = f"generate {path}"
        done = etl(step, "seed", "--count", count, "--malformed-ratio", params["malformed_ratio"],
                   "--seed", params["seed"], "--output", path, stdout=PIPE)
        written = last_json(step, done).get("written")
        if written != count:
            raise StepFailed(step, f"etl seed wrote {written} events, not {count}")

    name = f"events-{count}.jsonl" if seed == 7 else f"events-{count}-s{seed}.jsonl"
    return generated(OUT / name, params, make)


def reveal_records(n: int) -> Path:
    """target/bench/reveal-N.jsonl: N logins of one user."""
    params = {"generator": "bench.py reveal records", "count": n, "user_id": REVEAL_USER}

    def make(path: Path) -> None:
        write_atomically(path, "".join(
            json.dumps({"user_id": REVEAL_USER, "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                        "device_id": f"dev-{i % 7}"}) + "\n" for i in range(n)))

    return generated(OUT / f"reveal-{n}.jsonl", params, make)


def shared_device_records(n: int) -> Path:
    """target/bench/shared-device-N.jsonl: N logins of N users on one device (one token)."""
    params = {"generator": "bench.py shared device records", "count": n, "device_id": SHARED_DEVICE}

    def make(path: Path) -> None:
        write_atomically(path, "".join(
            json.dumps({"user_id": f"bench-shared-{i}", "ip": f"10.200.{i >> 8 & 255}.{i & 255}",
                        "device_id": SHARED_DEVICE}) + "\n" for i in range(n)))

    return generated(OUT / f"shared-device-{n}.jsonl", params, make)


# ---------------------------------------------------------------------------------------------
# Phases


def phase_backfill(cfg: Config) -> None:
    """Header items 1 and 2: backfills of BENCH_EVENTS and BENCH_BIG events, and the raw-COPY
    limit for the first one's rows. Leaves piivault_bench (for keys) and piivault_bench_big (for
    status)."""
    phase("backfill and raw COPY")
    events, big = seeded_events(cfg.events), seeded_events(cfg.big)
    db = fresh_db(cfg, "piivault_bench")
    measure(f"backfill --input ({cfg.events} events)", "received", "run", "--input", events, db=db)
    raw_copy_limit(cfg, db, f"raw COPY limit ({cfg.events} events' rows)", cfg.events)
    big_db = fresh_db(cfg, "piivault_bench_big")
    measure(f"backfill --input ({cfg.big} events)", "received", "run", "--input", big, db=big_db)
    raw_copy_limit(cfg, big_db, f"raw COPY limit ({cfg.big} events' rows)", cfg.big)


# The tables a backfill writes, as COPY names them (user_logins is the analysts' view of the
# first).
COPIED_TABLES = ["etl.logins", "vault.login_pii", "etl.quarantine"]


def raw_copy_limit(cfg: Config, db: str, name: str, rows: int) -> None:
    """The rows a backfill stored in db, COPYed (binary, all three tables in one transaction)
    into freshly migrated tables, best of BENCH_COPY_RUNS (3): the database's own ceiling for
    these rows with the indexes the schema carries (only those analysts, idempotency and
    reveal need since migration 0015)."""
    dump_tables(db)
    walls = copy_best_of(cfg, name)
    best = min(walls)
    record({"name": name, "rows": rows, "wall_s": round(best, 2),
            "rows_per_s": round(rows / best), "runs_s": [round(w, 2) for w in walls]})
    drop_dumps()


def dump_tables(db: str) -> None:
    """target/bench/copy-TABLE.bin: each table a backfill writes, in COPY's binary format."""
    for t in COPIED_TABLES:
        psql(f"raw COPY: dump {t}", db, f"\\copy {t} TO '{OUT}/copy-{t}.bin' (FORMAT binary)")


def drop_dumps() -> None:
    for t in COPIED_TABLES:
        (OUT / f"copy-{t}.bin").unlink()


def copy_best_of(cfg: Config, label: str, prepare: str | None = None) -> list[float]:
    """BENCH_COPY_RUNS COPYs of the dumped tables (all three in one transaction, -1) into a
    fresh, migrated database each, after running prepare there; their wall times."""
    loads = [f"\\copy {t} FROM '{OUT}/copy-{t}.bin' (FORMAT binary)" for t in COPIED_TABLES]
    walls = []
    for i in range(1, cfg.copy_runs + 1):
        copy_db = fresh_db(cfg, "piivault_bench_copy")
        if prepare:
            psql(f"raw COPY ({label}): prepare", copy_db, prepare)
        done = run(f"raw COPY ({label}), run {i} of {cfg.copy_runs}",
                   ["psql", copy_db, "-q", "-v", "ON_ERROR_STOP=1", "-1",
                    *[arg for load in loads for arg in ("-c", load)]])
        walls.append(done.wall_s)
    return walls


def phase_keys(cfg: Config) -> None:
    """Header item 3: the key jobs on the backfill phase's BENCH_EVENTS rows (piivault_bench, as
    that phase left it: run the two together, since this one leaves its keys under KMS), and
    rewrap again on BENCH_SMALL rows: rewrap touches only the key rows, so both should cost the
    same."""
    phase("key jobs")
    db = cfg.db_url("piivault_bench")  # the backfill phase's BENCH_EVENTS rows
    kms = {"PIIVAULT_KEK": cfg.kms_kek}
    measure(f"keys rewrap file→kms ({cfg.events} rows)", "rewrapped",
            "keys", "rewrap", "--to-kek", cfg.kms_kek, db=db)
    etl("keys: rotate seal", "keys", "rotate", "--purpose", "seal", db=db, env=kms)
    etl("keys: rotate token", "keys", "rotate", "--purpose", "token", db=db, env=kms)
    measure(f"keys reencrypt ({cfg.events} rows)", "reencrypted", "keys", "reencrypt", db=db, env=kms)
    measure(f"keys retokenize ({cfg.events} rows)", "retokenized", "keys", "retokenize", db=db, env=kms)
    measure(f"keys verify ({cfg.events} rows)", "vault_rows", "keys", "verify", db=db, env=kms)
    small = seeded_events(cfg.small)
    small_db = fresh_db(cfg, "piivault_bench_small")
    etl(f"keys: load {cfg.small} events", "run", "--input", small, db=small_db)
    measure(f"keys rewrap file→kms ({cfg.small} rows)", "rewrapped",
            "keys", "rewrap", "--to-kek", cfg.kms_kek, db=small_db)


# The two statements of a reveal, each its own transaction: request (audit row + grant), rows.
REVEAL_SQL = (
    "\\timing on\n"
    f"SELECT audit_id FROM vault.reveal_request('user_id', '{REVEAL_USER}', 'security-incident', "
    "'benchmark reveal', NULL, 'bench') \\gset\n"
    "SELECT count(*) FROM vault.reveal_rows(:audit_id);\n"
)


def phase_reveal(cfg: Config) -> None:
    """`etl reveal` of one user's BENCH_REVEAL records among BENCH_EVENTS others, end to end and
    its two statements alone; median of 5 runs each."""
    phase("reveal")
    n = cfg.reveal
    events, records = seeded_events(cfg.events), reveal_records(n)
    db = fresh_db(cfg, "piivault_bench_reveal")
    etl(f"reveal: load {cfg.events} other events", "run", "--input", events, db=db)
    etl(f"reveal: load {n} records of {REVEAL_USER}", "run", "--input", records, db=db)
    reveals = []
    for i in range(1, 6):
        step = f"reveal: etl reveal, run {i} of 5"
        done = etl(step, "reveal", "--purpose", "security-incident", "--user-id", REVEAL_USER,
                   "--reason", "benchmark reveal", db=db, stdout=PIPE)
        got = len(done.stdout.splitlines())
        if got != n:
            raise StepFailed(step, f"etl reveal printed {got} records, not {n}")
        reveals.append(done.wall_s)
    statements = []
    for i in range(1, 6):
        step = f"reveal: reveal_request + reveal_rows, run {i} of 5"
        done = run(step, ["psql", db, "-At", "-v", "ON_ERROR_STOP=1"], input=REVEAL_SQL, stdout=PIPE)
        if done.stdout.splitlines().count(str(n)) != 1:
            raise StepFailed(step, f"reveal_rows did not count {n} rows; psql printed:\n{done.stdout}")
        statements.append(sum(float(t.split(" ms")[0]) for t in done.stdout.split("Time: ")[1:]) / 1000)
    record({"name": f"reveal ({n} records)", "records": n,
            "etl_reveal_s": round(statistics.median(reveals), 3),
            "statement_s": round(statistics.median(statements), 4)})


def phase_audit(cfg: Config) -> None:
    """The audit commands on a trail of BENCH_AUDIT rows, each with its own peak RSS."""
    phase("audit trail")
    n = cfg.audit
    db = fresh_db(cfg, "piivault_bench_audit")
    # The trail, appended by the server's own function (as the owner), 2,000 rows per transaction:
    # one transaction that moves the head row a million times walks ever longer version chains.
    for first in range(0, n, 2000):
        psql(f"audit: append trail rows {first + 1}–{min(first + 2000, n)}", db,
             "SELECT count(vault.audit_record('verify', 'all', NULL, NULL, 'benchmark trail row', 'bench', "
             f"0, NULL, NULL, NULL, NULL, NULL)) FROM generate_series(1, {min(2000, n - first)})")
    signer = OUT / "audit-signer.json"
    signer.unlink(missing_ok=True)
    etl("audit: signer-init", "audit", "signer-init", "--output", signer, db=db)
    env = {"PIIVAULT_AUDIT_SIGNER": f"file:{signer}"}

    def timed(output: str, *args) -> Finished:
        """`etl audit ARGS` with stdout to target/bench/OUTPUT."""
        with open(OUT / output, "w") as sink:
            step = f"audit: etl audit {' '.join(map(str, args))}"
            return etl(step, "audit", *args, db=db, env=env, stdout=sink)

    verify = timed("audit-verify.json", "verify")
    checkpoint = timed("audit-checkpoints.jsonl", "checkpoint")
    checked = timed("audit-checked.json", "verify", "--checkpoint", OUT / "audit-checkpoints.jsonl")
    export = timed("audit-export.jsonl", "export")
    with open(OUT / "audit-export.jsonl") as f:
        exported = sum(1 for _ in f)
    if exported != n:
        raise StepFailed("audit: export", f"export wrote {exported} rows, the trail holds {n}")
    report = timed("audit-report.jsonl", "report", "--by", "login", "--format", "json")
    export_s = round(export.wall_s, 3)
    record({"name": f"audit trail ({n} rows)", "rows": n,
            "verify_s": round(verify.wall_s, 3), "verify_rss_mib": round(verify.peak_rss_mib, 1),
            "checkpoint_s": round(checkpoint.wall_s, 3), "verify_checkpoint_s": round(checked.wall_s, 3),
            "export_s": export_s, "export_rows_per_s": round(n / export_s),
            "export_rss_mib": round(export.peak_rss_mib, 1), "report_s": round(report.wall_s, 3)})


def phase_sqs(cfg: Config) -> None:
    """Header item 4. moto slows as a queue deepens (docs/ARCHITECTURE.md, "The SQS/KMS
    emulator"): the messages go in rounds of BENCH_ROUND, each seeded and then drained by both
    consumers in turn, so neither meets a deep queue. Times are the consumers' own (seeding
    excluded); both include one final empty long poll (1 s) per round. etl's CPU is split into
    start-up (the median CPU of three drains of an empty queue) and steady state (each round's
    CPU less one start-up, per message)."""
    phase("SQS on the emulator")
    db = fresh_db(cfg, "piivault_bench_sqs")
    c = cfg.concurrency

    def seeded_queue(consumer: str, r: int) -> dict:
        """A new queue holding round r's messages; the environment that points at it."""
        queue = new_queue(f"piivault-bench-{consumer}-{r}-{int(time.time())}")
        env = {"DATABASE_URL": db, "SQS_QUEUE_URL": queue}
        run(f"sqs round {r}: seed {cfg.round} messages for the {consumer} consumer",
            [ETL, "seed", "--count", cfg.round, "--malformed-ratio", "0.01", "--seed", r], env=env)
        return env

    # Start-up, measured apart: `etl run --drain` on an empty queue (process start, pool, keys,
    # the queue check and one empty 1 s long poll per receiver), median of 3. What a round costs
    # beyond that is the steady state, per message.
    startups = []
    for r in range(1, 4):
        queue = new_queue(f"piivault-bench-empty-{r}-{int(time.time())}")
        step = f"sqs start-up {r}: etl run --drain on an empty queue"
        done = run(step, [ETL, "run", "--drain", "--wait-time-secs", "1", "--concurrency", c],
                   env={"DATABASE_URL": db, "SQS_QUEUE_URL": queue}, stdout=PIPE)
        if last_json(step, done)["received"] != 0:
            raise StepFailed(step, "the empty queue was not empty")
        startups.append(done.cpu_s)
    startup_s = statistics.median(startups)

    ideal, drains = [], []
    with open(OUT / "sqs-rounds.jsonl", "w") as rounds:  # each round's figures, for a closer look
        for r in range(1, cfg.messages // cfg.round + 1):
            env = seeded_queue("ideal", r)
            ideal.append(bench_pipeline(f"sqs round {r}: ideal consumer", "ideal-sqs", "--concurrency", c,
                                        env=env))
            rounds.write(json.dumps({"consumer": "ideal", "result": ideal[-1]}) + "\n")
            env = seeded_queue("etl", r)
            step = f"sqs round {r}: etl run --drain"
            done = run(step, [ETL, "run", "--drain", "--wait-time-secs", "1", "--concurrency", c],
                       env=env, stdout=PIPE)
            drains.append({"consumer": "etl", "result": last_json(step, done),
                           "cpu_s": done.cpu_s, "peak_rss_mib": done.peak_rss_mib})
            rounds.write(json.dumps(drains[-1]) + "\n")
    n_ideal, s_ideal = sum(r["messages"] for r in ideal), sum(r["seconds"] for r in ideal)
    n_etl = sum(r["result"]["loaded"] + r["result"]["quarantined"] for r in drains)
    s_etl = sum(r["result"]["seconds"] for r in drains)
    record({"name": f"ideal consumer on the emulator ({cfg.messages} messages, concurrency {c})",
            "messages": n_ideal, "seconds": round(s_ideal, 2), "msgs_per_s": round(n_ideal / s_ideal)})
    record({"name": f"etl run --drain on the emulator ({cfg.messages} messages, concurrency {c})",
            "messages": n_etl, "seconds": round(s_etl, 2), "msgs_per_s": round(n_etl / s_etl),
            "cpu_us_per_row": round(sum(r["cpu_s"] for r in drains) * 1e6 / n_etl, 1),
            "startup_cpu_ms": round(startup_s * 1e3, 1),
            "steady_cpu_us_per_row": round((sum(r["cpu_s"] for r in drains) - len(drains) * startup_s)
                                           * 1e6 / n_etl, 1),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in drains), 1)})


def phase_model(cfg: Config) -> None:
    """Header item 5: benches/pipeline.rs's modelled queue (2,500 messages per unit of
    concurrency, at most 40,000), then the seed-style consumer on 2,000 messages."""
    phase("modelled SQS")
    latency = ["--latency-ms", cfg.latency_ms]
    for c in (1, 4, 16, 64):
        db = fresh_db(cfg, "piivault_bench_model")
        messages = min(c * 2500, 40_000)
        result = bench_pipeline(f"modelled SQS, concurrency {c}", "modelled", "--messages", messages,
                                "--concurrency", c, *latency, env={"DATABASE_URL": db})
        record({**result, "name": f"modelled SQS, concurrency {c}"})
    db = fresh_db(cfg, "piivault_bench_model")
    result = bench_pipeline("seed-style consumer, modelled SQS", "seed-style", "--messages", 2000,
                            *latency, env={"DATABASE_URL": db})
    record({**result, "name": "seed-style consumer, modelled SQS"})


def phase_micro(cfg: Config) -> None:
    """Header item 6: benches/micro.rs (criterion), one row per benchmark."""
    phase("micro-benchmarks")
    step = "micro-benchmarks"
    done = run(step, ["cargo", "bench", "--locked", "--quiet", "--bench", "micro",
                      "--", "--output-format", "bencher"], stdout=PIPE)
    found = 0
    for line in done.stdout.splitlines():
        m = re.match(r"test (.+?) \.\.\. bench:\s+([\d,]+) ns/iter", line)
        if m:
            record({"name": "micro: " + m.group(1), "ns": int(m.group(2).replace(",", ""))})
            found += 1
    if not found:
        raise StepFailed(step, "no `test NAME ... bench: N ns/iter` line in its output")


def phase_status(cfg: Config) -> None:
    """The status page and metrics on a large table. A view never waits for the database scans:
    the first one waits at most 3 s, then the figures arrive from a background read. Recorded:
    the first view, how long until the figures are in (the background read: two duplicate scans
    of user_logins, cancelled by Postgres after --status-timeout-secs), later views, and the
    parts that could not be read."""
    phase("status page and metrics on a large table")
    # The biggest database an earlier phase left (BENCH_BIG rows after backfill), else a fresh one.
    db = cfg.db_url("piivault_bench_big")
    probe = psql("status: rows left by the backfill phase?", db, "SELECT 1 FROM user_logins LIMIT 1",
                 stdout=PIPE, check=False, echo_stderr=False)
    if probe.code != 0 or probe.stdout.strip() != "1":
        why = probe.stderr_tail.strip() or "user_logins is empty"
        print(f"bench: piivault_bench_big has no rows ({why}); "
              f"loading {cfg.events} events into piivault_bench_status", file=sys.stderr, flush=True)
        events = seeded_events(cfg.events)
        db = fresh_db(cfg, "piivault_bench_status")
        etl(f"status: load {cfg.events} events", "run", "--input", events, db=db)
    status_views(db, "")


def status_views(db: str, label: str) -> None:
    """Serves db's status page with `etl run --metrics-addr` and times its views; rows are named
    `label` + the usual names."""
    rows = int(psql("status: count user_logins", db, "SELECT count(*) FROM user_logins", stdout=PIPE).stdout)
    queue = new_queue(f"piivault-bench-status-{int(time.time())}")
    env = dict(os.environ, DATABASE_URL=db, SQS_QUEUE_URL=queue)
    log_path = OUT / "status-server.log"
    cmd = [ETL, "run", "--wait-time-secs", "20", "--metrics-addr", STATUS_ADDR]
    print(f"bench: status server: {shlex.join(cmd)} (stderr to {log_path})", file=sys.stderr, flush=True)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, stdin=DEVNULL, stdout=DEVNULL, stderr=log, env=env)
    try:
        status_pages(rows, server, cmd, log_path, label)
    finally:
        code, how = stop(server)
    if code != 0:
        raise StepFailed("status: stop the server", f"after SIGTERM it {how}", cmd, log_tail(log_path))


def status_pages(rows: int, server: subprocess.Popen, cmd: list, log_path: Path, label: str) -> None:
    base = f"http://{STATUS_ADDR}"

    def failed(what: str) -> StepFailed:
        return StepFailed("status pages", what, cmd, log_tail(log_path))

    for _ in range(150):
        if server.poll() is not None:
            how = exit_description(server.returncode)
            raise failed(f"the server stopped before answering /healthz ({how})")
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)
    else:
        raise failed("etl run --metrics-addr never answered /healthz")

    def get(page: str) -> tuple[float, bytes]:
        start = time.monotonic()
        try:
            body = urllib.request.urlopen(base + page, timeout=60).read()
        except OSError as e:  # HTTPError (a status other than 2xx) included
            raise failed(f"GET {page}: {e}") from None
        return (time.monotonic() - start) * 1000, body

    def page_row(name: str, times: list[float], body: bytes) -> None:
        times = sorted(times)
        record({"name": label + name, "rows": rows, "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[max(int(len(times) * 0.95) - 1, 0)], 1), "bytes": len(body),
                "unavailable_parts": body.count(b'class="unavailable"')})

    started = time.monotonic()
    first, body = get("/")
    page_row(f"GET /, first view ({rows} rows in user_logins)", [first], body)
    while b"db-pending" in body and time.monotonic() - started < 120:
        time.sleep(0.25)
        _, body = get("/")
    page_row(f"database figures in after ({rows} rows)", [(time.monotonic() - started) * 1000], body)
    pages = [get("/") for _ in range(20)]
    page_row(f"GET /, figures cached ({rows} rows)", [t for t, _ in pages], pages[-1][1])
    for page in ["/metrics", "/readyz"]:
        got = [get(page) for _ in range(20)]
        page_row(f"GET {page} ({rows} rows)", [t for t, _ in got], got[-1][1])


def stop(server: subprocess.Popen, grace_s: float = 30) -> tuple[int, str]:
    """SIGTERM, then SIGKILL after grace_s; the exit code and how it ended."""
    if server.poll() is not None:
        return server.returncode, f"had already exited ({exit_description(server.returncode)})"
    server.terminate()
    try:
        return server.wait(grace_s), f"exited ({exit_description(server.returncode)})"
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait(), f"was still running after {grace_s:g} s and was killed"


def log_tail(path: Path) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-STDERR_TAIL:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------



def phase_scale(cfg: Config) -> None:
    """Issue 19's scale run, only when named (BENCH_PHASES=scale; BENCH_SCALE events, 10,000,000):
    backfills BENCH_SCALE events from files of at most 1,000,000 (one seed each, so generation
    never holds more than a million), adds one user with BENCH_REVEAL records and one device
    shared by 10,000 users, then times on that table: the backfill (rate of the first and the
    last file too: a rate that falls as the table grows is an index or plan to fix), `report
    duplicates`, the status page first and cached, reveal of the user and of the device's token,
    the raw-COPY limit for the table's rows (best of BENCH_COPY_RUNS), and a full rotation of
    both keys under live load: the key jobs' rates and the longest writer stall."""
    phase(f"scale: {cfg.scale} events")
    label = f"scale {cfg.scale}: "
    db = fresh_db(cfg, "piivault_bench_scale")
    per_file = min(cfg.scale, 1_000_000)
    files = (cfg.scale + per_file - 1) // per_file
    wall = cpu = peak = 0.0
    rates = []
    for k in range(files):
        n = min(per_file, cfg.scale - k * per_file)
        step = f"scale: backfill file {k + 1} of {files} ({n} events)"
        done = etl(step, "run", "--input", seeded_events(n, seed=100 + k), db=db, stdout=PIPE)
        received = last_json(step, done)["received"]
        wall, cpu, peak = wall + done.wall_s, cpu + done.cpu_s, max(peak, done.peak_rss_mib)
        rates.append(round(received / done.wall_s))
    record({"name": f"{label}backfill --input ({files} files)", "rows": cfg.scale,
            "wall_s": round(wall, 1), "rows_per_s": round(cfg.scale / wall),
            "cpu_us_per_row": round(cpu * 1e6 / cfg.scale, 1), "peak_rss_mib": round(peak, 1),
            "first_file_rows_per_s": rates[0], "last_file_rows_per_s": rates[-1]})
    shared = 10_000
    etl("scale: load the reveal user", "run", "--input", reveal_records(cfg.reveal), db=db)
    etl("scale: load the shared device", "run", "--input", shared_device_records(shared), db=db)
    rows = scale_queries(db, label, cfg.reveal)
    raw_copy_limit(cfg, db, f"{label}raw COPY limit ({rows} rows)", rows)
    rotation_under_load(db, label, rows)


def phase_scale_queries(cfg: Config) -> None:
    """The scale phase's reads again (report duplicates, reveals, status page) on the table an
    earlier scale run left in piivault_bench_scale (after its rotation), without loading it
    again: for re-measuring a read path at 10 M rows in minutes rather than an hour."""
    phase("scale queries on the table a scale run left")
    scale_queries(cfg.db_url("piivault_bench_scale"), "scale, after its rotation: ", cfg.reveal)


def phase_scale_rotation(cfg: Config) -> None:
    """The scale phase's last step alone, on the table an earlier scale run left in
    piivault_bench_scale: a full rotation of both keys under live load (a second rotation if
    that run finished its own)."""
    phase("scale rotation on the table a scale run left")
    db = cfg.db_url("piivault_bench_scale")
    rows = int(psql("scale-rotation: count user_logins", db, "SELECT count(*) FROM user_logins",
                    stdout=PIPE).stdout)
    psql("scale-rotation: ANALYZE", db, "ANALYZE")
    rotation_under_load(db, f"scale {rows}: ", rows)


def scale_queries(db: str, label: str, reveal: int) -> int:
    """`report refresh` and `report duplicates`, reveals of the scale phase's user and shared
    device, the status page; returns the rows of user_logins."""
    shared = 10_000
    rows = int(psql("scale: count user_logins", db, "SELECT count(*) FROM user_logins", stdout=PIPE).stdout)
    psql("scale: ANALYZE", db, "ANALYZE")

    def timed(name: str, want_lines: int | None, *args) -> None:
        times = []
        for i in range(1, 4):
            step = f"{name}, run {i} of 3"
            done = etl(step, *args, db=db, stdout=PIPE)
            if want_lines is not None and len(done.stdout.splitlines()) != want_lines:
                raise StepFailed(step, f"printed {len(done.stdout.splitlines())} lines, not {want_lines}")
            times.append(done.wall_s)
        record({"name": f"{label}{name}", "rows": rows, "median_s": round(statistics.median(times), 3),
                "max_s": round(max(times), 3)})

    # The shared-token summary's rebuild (the CronJob's run, a scan of every row), then the
    # report, which reads the summary.
    timed(f"report refresh ({rows} rows)", 1, "report", "refresh")
    timed(f"report duplicates --by device ({rows} rows)", 10,
          "report", "duplicates", "--by", "device", "--limit", "10", "--format", "json")
    # One investigation may reveal a token shared by 10,000 users: the default policy allows 50
    # distinct users a day, so the benchmark's deployment raises it, audited like any change.
    etl("scale: policy for a 10,000-user reveal", "policy", "set", "--users-per-window", "1000000",
        "--reason", "benchmark: one reveal of a device shared by 10,000 users", db=db)
    timed(f"reveal --user-id ({reveal} records)", reveal, "reveal", "--purpose",
          "security-incident", "--user-id", REVEAL_USER, "--reason", "benchmark reveal")
    token = psql("scale: the shared device's token", db,
                 "SELECT masked_device_id FROM user_logins WHERE user_id = 'bench-shared-0'",
                 stdout=PIPE).stdout.strip()
    timed(f"reveal --token ({shared} records)", shared, "reveal", "--purpose", "fraud-investigation",
          "--token", token, "--reason", "benchmark reveal of a shared device")
    status_views(db, label)
    return rows


# What each index costs a load (issue 19, item 4): the indexes migration 0015 dropped, and each
# index the schema keeps, as (name, SQL run on the fresh copy database before the COPY).
INDEX_VARIANTS = [
    ("+ token_version (dropped in 0015)",
     "CREATE INDEX ON etl.logins (token_version_a); CREATE INDEX ON vault.login_pii (key_version); "
     "CREATE INDEX ON etl.quarantine (key_version)"),
    ("- logins_message_id_key (idempotency)", "DROP INDEX etl.logins_message_id_key"),
    ("- logins_ip_token_a_idx (analysts)", "DROP INDEX etl.logins_ip_token_a_idx"),
    ("- logins_device_token_a_idx (analysts)", "DROP INDEX etl.logins_device_token_a_idx"),
    ("- login_pii_pkey (idempotency, reveal)",
     "ALTER TABLE vault.login_pii DROP CONSTRAINT login_pii_pkey"),
    ("- login_pii_user_id_idx (reveal, erase)", "DROP INDEX vault.login_pii_user_id_idx"),
]


def phase_indexes(cfg: Config) -> None:
    """Each index's cost on a load: the BENCH_BIG backfill's rows (piivault_bench_big, left by
    the backfill phase) COPYed into a fresh schema with all its indexes, then with one index
    dropped (or the dropped rotation-only ones added), best of BENCH_COPY_RUNS each."""
    phase("index costs")
    db = cfg.db_url("piivault_bench_big")
    rows = int(psql("indexes: count etl.logins", db, "SELECT count(*) FROM etl.logins", stdout=PIPE).stdout)
    dump_tables(db)
    for name, sql in [("all indexes of the schema", None), *INDEX_VARIANTS]:
        walls = copy_best_of(cfg, f"index cost: {name}", sql)
        best = min(walls)
        record({"name": f"index cost: COPY with {name}", "rows": rows, "wall_s": round(best, 2),
                "rows_per_s": round(rows / best), "runs_s": [round(w, 2) for w in walls]})
    drop_dumps()


def rotation_under_load(db: str, label: str, rows: int) -> None:
    """A full rotation of both keys (rotate, reencrypt, retokenize, verify, retire the old
    versions) while a loader keeps writing and a probe times what a writer waits for: the
    longest probe is the longest writer stall any key job caused, reported with the step that
    was running when it started."""
    probe = WriterProbe(db)
    loader = Loader(db)
    steps: list[tuple[float, str]] = []

    def step(name: str) -> None:
        steps.append((time.monotonic(), name))

    try:
        previous = {}
        for purpose in ("seal", "token"):
            step(f"rotate {purpose}")
            done = etl(f"scale: rotate {purpose}", "keys", "rotate", "--purpose", purpose, db=db,
                       stdout=PIPE)
            previous[purpose] = last_json(f"scale: rotate {purpose}", done)["previous"]
        for job, field in (("reencrypt", "reencrypted"), ("retokenize", "retokenized"),
                           ("verify", "vault_rows")):
            step(job)
            measure(f"{label}keys {job} ({rows} rows)", field, "keys", job, db=db)
        for purpose in ("seal", "token"):
            step(f"retire {purpose} v{previous[purpose]}")
            etl(f"scale: retire {purpose} v{previous[purpose]}", "keys", "retire", "--purpose",
                purpose, "--version", str(previous[purpose]), db=db)
        step("done")
    finally:
        loaded = loader.stop()
        probes = probe.stop()
    waits = sorted(w for _, w in probes)
    worst_at, worst = max(probes, key=lambda p: p[1])
    during = next((name for t, name in reversed(steps) if t <= worst_at), "before the first step")
    record({"name": f"{label}writer stall during a full rotation", "rows": rows,
            "probes": len(waits), "max_ms": round(worst * 1000, 1), "max_during": during,
            "p99_ms": round(waits[int(len(waits) * 0.99)] * 1000, 1),
            "median_ms": round(statistics.median(waits) * 1000, 1), "loaded_meanwhile": loaded})


class WriterProbe:
    """Every PROBE_EVERY_S, one transaction that takes what a batch write takes — an insert into
    etl.logins and vault.login_pii, a read of the key states — and rolls back, on a psql session
    of its own, timed from sending it to its answer."""

    PROBE_EVERY_S = 0.05
    SQL = ("BEGIN;\n"
           "INSERT INTO etl.logins (message_id, user_id) VALUES ('bench-probe', 'bench-probe');\n"
           "INSERT INTO vault.login_pii (message_id, user_id, key_version) "
           "VALUES ('bench-probe', 'bench-probe', 1);\n"
           "SELECT count(*) FROM vault.data_keys;\n"
           "ROLLBACK;\n"
           "\\echo probe-done\n")

    def __init__(self, db: str):
        self.psql = subprocess.Popen(["psql", db, "-qAt", "-v", "ON_ERROR_STOP=1"], stdin=PIPE,
                                     stdout=PIPE, stderr=PIPE, text=True, bufsize=1)
        self.waits: list[tuple[float, float]] = []  # (started, seconds)
        self.failure: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            self.psql.stdin.write(self.SQL)
            self.psql.stdin.flush()
            while True:
                line = self.psql.stdout.readline()
                if not line:
                    self.failure = self.psql.stderr.read()
                    return
                if line.strip() == "probe-done":
                    break
            self.waits.append((started, time.monotonic() - started))
            self.done.wait(self.PROBE_EVERY_S)

    def stop(self) -> list[tuple[float, float]]:
        self.done.set()
        self.thread.join()
        self.psql.stdin.close()
        self.psql.wait()
        if self.failure is not None or not self.waits:
            raise StepFailed("writer probe", f"psql stopped: {self.failure}")
        return self.waits


class Loader:
    """Live load: `etl run --input` of LOADER_EVENTS new events at a time (a new seed each),
    LOADER_PAUSE_S apart, until stopped; returns the rows it loaded."""

    # About 2,000 rows/s: a busy deployment's ingest (170 M a day) that still leaves a 10 M-row
    # rotation the table it started with, not twice that.
    LOADER_EVENTS = 10_000
    LOADER_PAUSE_S = 5.0

    def __init__(self, db: str):
        self.db = db
        self.loaded = 0
        self.failure: StepFailed | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        seed = 900
        while not self.done.is_set():
            step = f"scale: live load (seed {seed})"
            try:
                events = seeded_events(self.LOADER_EVENTS, seed=seed)
                done = etl(step, "run", "--input", events, db=self.db, stdout=PIPE, echo_stderr=False)
                self.loaded += last_json(step, done)["loaded"]
            except StepFailed as e:
                self.failure = e
                return
            seed += 1
            self.done.wait(self.LOADER_PAUSE_S)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        if self.failure is not None:
            raise self.failure
        return self.loaded


def sized_settings() -> dict[str, str]:
    """What a production server of this machine's size would run with, instead of Debian's
    defaults (shared_buffers 128 MB, max_wal_size 1 GB: at 10 M rows every key job then waits
    on reads of evicted index pages and on checkpoints forced every few seconds). Durability is
    kept: fsync and synchronous_commit stay on."""
    ram_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return {
        "shared_buffers": f"{min(ram_mib // 4, 8192)}MB",
        "effective_cache_size": f"{ram_mib // 2}MB",
        "maintenance_work_mem": f"{min(ram_mib // 16, 2048)}MB",
        "max_wal_size": "16GB",
        "min_wal_size": "2GB",
        "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9",
        "wal_buffers": "64MB",
        "random_page_cost": "1.1",  # SSD
    }


def postgres_bin() -> Path:
    """The newest server binaries Debian installed (scripts/stack.sh up installs them)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not versions:
        raise StepFailed("sized cluster", "no Postgres server binaries in /usr/lib/postgresql: "
                         "run `scripts/stack.sh up`")
    return versions[-1].parent


def pg_tool(name: str) -> list:
    """A server tool's command line: as the postgres user when the bench runs as root (which
    initdb and postgres refuse)."""
    tool = postgres_bin() / name
    return ["runuser", "-u", "postgres", "--", tool] if os.geteuid() == 0 else [tool]


def start_sized_cluster() -> None:
    """initdb (first time only) and start the BENCH_PG=sized cluster on 127.0.0.1:SIZED_PORT."""
    data = (ROOT / SIZED_DIR).resolve()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            run("sized cluster: chown", ["chown", "postgres:postgres", data])
        run("sized cluster: initdb", [*pg_tool("initdb"), "-D", data, "-U", "postgres",
                                      "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"])
    options = " ".join(f"-c {k}={v}" for k, v in sized_settings().items())
    options += f" -c port={SIZED_PORT} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data}"
    print(f"bench: sized cluster settings: {options}", file=sys.stderr, flush=True)
    run("sized cluster: start", [*pg_tool("pg_ctl"), "-D", data, "-l", data / "server.log", "-w",
                                 "-t", "120", "-o", options, "start"])


def stop_sized_cluster() -> None:
    data = (ROOT / SIZED_DIR).resolve()
    if (data / "postmaster.pid").exists():
        run("sized cluster: stop", [*pg_tool("pg_ctl"), "-D", data, "-m", "fast", "-w",
                                    "-t", "300", "stop"], check=False)


PHASE_FUNCTIONS = {
    "backfill": phase_backfill, "keys": phase_keys, "reveal": phase_reveal, "audit": phase_audit,
    "sqs": phase_sqs, "model": phase_model, "micro": phase_micro, "status": phase_status,
    "scale": phase_scale, "scale-queries": phase_scale_queries,
    "scale-rotation": phase_scale_rotation, "indexes": phase_indexes,
}


def main() -> None:
    # No options (the environment variables above choose); --help prints the header.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    os.chdir(ROOT)
    cfg = config()
    os.environ["PIIVAULT_KEK"] = cfg.file_kek  # every command's KEK unless a phase says otherwise
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("")
    try:
        run("stack up", ["bash", "scripts/stack.sh", "up"])
        if cfg.pg == "sized":
            start_sized_cluster()
        run("build etl", ["cargo", "build", "--release", "--locked", "--quiet"])
        run("build the benches", ["cargo", "bench", "--locked", "--no-run", "--quiet",
                                  "--bench", "pipeline", "--bench", "micro"])
        for name in PHASES:
            if name in cfg.phases:
                PHASE_FUNCTIONS[name](cfg)
        report = [sys.executable, "scripts/bench_report.py", RESULTS, OUT / "results.json", cfg.latency_ms]
        run("report", report, stdout=None)
    except StepFailed as e:
        sys.exit(str(e))
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")
    finally:
        if cfg.pg == "sized":
            stop_sized_cluster()


if __name__ == "__main__":
    main()
