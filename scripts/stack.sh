#!/usr/bin/env bash
# Local stack for the demo and the tests: PostgreSQL + the SQS/KMS emulator (moto) + a dev KEK.
#   scripts/stack.sh up       idempotent; quiet on success; installs what is missing
#   scripts/stack.sh status   one line per component
#   scripts/stack.sh down     stops the emulator this script started (Postgres is left running)
#   scripts/stack.sh queue N  creates queue N on the emulator (idempotent) and prints its URL
#   scripts/stack.sh tools    test-only tools: Debian's chromium (the status page's test) and a
#                             virtualenv .venv-tools with the manifest validator (check_deploy.py)
# Development only. docs/ARCHITECTURE.md ("The SQS/KMS emulator") says why moto (not LocalStack) and what its two patches fix.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PIIVAULT_ROOT"

STATE=.stack
VENV=.venv-aws
PINS='moto[server]==5.2.5 waitress==3.0.2'
PG_HOST=127.0.0.1
PG_PORT=5432
mkdir -p "$STATE"

die() { echo "stack: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
emulator_ready() { python3 - "$AWS_ENDPOINT_URL" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2).read(1)
PY
}

postgres_up() {
  if port_open "$PG_HOST" "$PG_PORT"; then
    command -v psql >/dev/null || apt_install postgresql-client
    return 0
  fi
  local installed=no
  if ! command -v pg_lsclusters >/dev/null; then
    echo "stack: PostgreSQL not found on $PG_HOST:$PG_PORT; installing it (apt-get install postgresql)" >&2
    apt_install postgresql
    installed=yes
  fi
  local ver name log
  read -r ver name _ < <(pg_lsclusters --no-header | head -n1) || true
  [ -n "${name:-}" ] || die "PostgreSQL is installed but has no cluster; create one with pg_createcluster"
  log=$(as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start 2>&1) || true
  for _ in $(seq 1 30); do port_open "$PG_HOST" "$PG_PORT" && break; sleep 1; done
  port_open "$PG_HOST" "$PG_PORT" \
    || die "PostgreSQL $ver/$name did not start on $PG_HOST:$PG_PORT: ${log:-no output}; see /var/log/postgresql/"
  # A fresh Debian cluster asks TCP clients for a password: give the new superuser the dev one.
  # Only right after our own install: an existing cluster's password is never touched.
  if [ "$installed" = yes ]; then
    as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null \
      || die "could not set the postgres password; check /var/log/postgresql/"
  fi
}

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

emulator_install() {
  [ -f "$VENV/.pins" ] && [ "$(cat "$VENV/.pins")" = "$PINS" ] && return 0
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv "$VENV" || die "python3 -m venv failed"
  fi
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $PINS >"$STATE/pip.log" 2>&1 \
    || die "installing the emulator failed; see $STATE/pip.log"
  echo "$PINS" >"$VENV/.pins"
}

emulator_up() {
  emulator_install # the venv also runs the set-up scripts, even when another checkout serves the port
  emulator_ready && return 0
  local port=${AWS_ENDPOINT_URL##*:}
  port=${port%%/*}
  port_open 127.0.0.1 "$port" && die "port $port is taken by something that is not the emulator"
  nohup setsid "$VENV/bin/python" scripts/moto_server.py --port "$port" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  for _ in $(seq 1 60); do emulator_ready && return 0; sleep 0.5; done
  die "the emulator did not answer on $AWS_ENDPOINT_URL within 30 s; see $STATE/moto.log"
}

# The default queue and the dev KMS key (moto keeps state in memory: recreated after a restart).
aws_resources() {
  "$VENV/bin/python" - <<'PY' || die "creating the demo queue / dev KMS key on the emulator failed"
import os, boto3
region = os.environ["AWS_REGION"]
boto3.client("sqs", region_name=region).create_queue(QueueName="piivault-demo")
kms = boto3.client("kms", region_name=region)
alias = os.environ["PIIVAULT_DEV_KMS_ALIAS"]
if not any(a["AliasName"] == alias for a in kms.list_aliases()["Aliases"]):
    key = kms.create_key(Description="piivault dev key-encryption key")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=alias, TargetKeyId=key)
PY
}

dev_kek() {
  if [ ! -f "$PIIVAULT_DEV_KEK" ]; then
    (umask 077 && head -c 32 /dev/urandom >"$PIIVAULT_DEV_KEK")
  fi
  # Never regenerate an existing key (it would orphan every key it wrapped); only check it.
  [ "$(wc -c <"$PIIVAULT_DEV_KEK")" -eq 32 ] \
    || die "$PIIVAULT_DEV_KEK is not 32 bytes; move it away (its wrapped keys become unreadable) and rerun"
  chmod 600 "$PIIVAULT_DEV_KEK"
}

# Headless Chromium for the status-page test; Debian's package, installed once.
browser_up() {
  command -v "${PIIVAULT_CHROMIUM:-chromium}" >/dev/null && return 0
  echo "stack: installing Debian's chromium for the status-page test (apt-get install chromium)" >&2
  apt_install chromium
}

# promtool (Debian's prometheus package) checks what /metrics serves. On a machine running
# systemd the package also starts a Prometheus service on :9090; `systemctl disable --now
# prometheus` stops it (the tests start their own).
promtool_up() {
  command -v promtool >/dev/null && return 0
  echo "stack: installing Debian's prometheus for promtool (apt-get install prometheus)" >&2
  apt_install --no-install-recommends prometheus
}

# kubernetes-validate bundles the Kubernetes API schemas, so manifests validate offline.
TOOLS_VENV=.venv-tools
TOOLS_PINS='kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4'
validator_up() {
  [ -f "$TOOLS_VENV/.pins" ] && [ "$(cat "$TOOLS_VENV/.pins")" = "$TOOLS_PINS" ] && return 0
  python3 -m venv "$TOOLS_VENV" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$TOOLS_VENV"; } \
    || die "python3 -m venv failed"
  # shellcheck disable=SC2086
  "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check $TOOLS_PINS >"$STATE/pip-tools.log" 2>&1 \
    || die "installing the manifest validator failed; see $STATE/pip-tools.log"
  echo "$TOOLS_PINS" >"$TOOLS_VENV/.pins"
}

case "${1:-up}" in
  up)
    postgres_up
    emulator_up
    aws_resources
    dev_kek
    ;;
  status)
    port_open "$PG_HOST" "$PG_PORT" && echo "postgres: up ($PG_HOST:$PG_PORT)" || echo "postgres: down"
    emulator_ready && echo "emulator: up ($AWS_ENDPOINT_URL)" || echo "emulator: down"
    [ -f "$PIIVAULT_DEV_KEK" ] && echo "dev KEK: $PIIVAULT_DEV_KEK" || echo "dev KEK: absent"
    ;;
  queue)
    [ -n "${2:-}" ] || die "usage: scripts/stack.sh queue NAME"
    emulator_ready || die "the emulator is not running; run scripts/stack.sh up"
    emulator_install
    "$VENV/bin/python" - "$2" <<'PY' || die "creating queue $2 failed"
import os, sys, boto3
sqs = boto3.client("sqs", region_name=os.environ["AWS_REGION"])
print(sqs.create_queue(QueueName=sys.argv[1])["QueueUrl"])
PY
    ;;
  tools)
    browser_up
    promtool_up
    validator_up
    ;;
  down)
    if [ -f "$STATE/moto.pid" ]; then kill "$(cat "$STATE/moto.pid")" 2>/dev/null || true; rm -f "$STATE/moto.pid"; fi
    ;;
  *) die "usage: scripts/stack.sh up|status|down|tools|queue NAME" ;;
esac
