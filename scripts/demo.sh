#!/usr/bin/env bash
# End-to-end demo on the local stack: stack up → build → migrate → keys init → seed 1,000 events
# (2 % malformed) → run --drain → show user_logins rows as an analyst login, a duplicate-device
# query, quarantine, the analyst refused by the vault, and one audited reveal as an auditor login.
# Uses a fresh database (piivault_demo), fresh logins and a fresh queue every time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PIIVAULT_ROOT"

step() { printf '\n== %s\n' "$*"; }

step "local stack (Postgres, SQS/KMS emulator, dev KEK)"
bash scripts/stack.sh up
bash scripts/stack.sh status

step "build (release)"
cargo build --release --locked --quiet
etl=target/release/etl

export DATABASE_URL="${PIIVAULT_PG_ADMIN_URL%/*}/piivault_demo"
export PIIVAULT_KEK="file:$PIIVAULT_DEV_KEK"
export SQS_QUEUE_URL
SQS_QUEUE_URL=$(bash scripts/stack.sh queue "piivault-demo-$(date +%s)")
psql "$PIIVAULT_PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS piivault_demo WITH (FORCE)" \
  -c "DROP ROLE IF EXISTS piivault_demo_analyst" -c "DROP ROLE IF EXISTS piivault_demo_auditor" \
  -c "CREATE DATABASE piivault_demo"
sql() { psql "$DATABASE_URL" -P pager=off "$@"; }
# A login URL for the demo database: the admin URL's host and port with another user.
host_port=${PIIVAULT_PG_ADMIN_URL#*@}
host_port=${host_port%%/*}
# The password goes through the environment, never a command line (ps shows those).
export PGPASSWORD=demo-password
login_url() { echo "postgres://$1@$host_port/piivault_demo"; }

step "etl migrate"
$etl migrate
step "logins: one analyst, one auditor (each holding only its piivault role)"
sql -q <<SQL
CREATE ROLE piivault_demo_analyst LOGIN PASSWORD '$PGPASSWORD' IN ROLE piivault_analyst;
CREATE ROLE piivault_demo_auditor LOGIN PASSWORD '$PGPASSWORD' IN ROLE piivault_auditor;
SQL
analyst_url=$(login_url piivault_demo_analyst)
echo "analyst: piivault_demo_analyst (piivault_analyst); auditor: piivault_demo_auditor (piivault_auditor)"
step "etl keys init / status"
$etl keys init
$etl keys status
step "etl seed --count 1000 --malformed-ratio 0.02 --seed 42"
$etl seed --count 1000 --malformed-ratio 0.02 --seed 42
step "etl run --drain (summary line on stdout)"
$etl run --drain --wait-time-secs 2

step "user_logins: what the analyst login sees (tokens, never originals)"
psql "$analyst_url" -P pager=off -c "SELECT user_id, device_type, masked_ip, masked_device_id, locale, app_version, app_version_text, create_date
        FROM user_logins ORDER BY received_at, message_id LIMIT 5"
step "etl report duplicates --by device --limit 5 (one device token shared by several users)"
$etl report duplicates --by device --limit 5
step "quarantine: rejected messages, body sealed, reason in clear"
sql -c "SELECT reason, count(*) FROM etl.quarantine GROUP BY 1 ORDER BY 2 DESC"

user=$(sql -Atc "SELECT user_id FROM user_logins WHERE masked_device_id =
         (SELECT masked_device_id FROM user_logins GROUP BY 1 ORDER BY count(DISTINCT user_id) DESC LIMIT 1)
       ORDER BY user_id LIMIT 1")
step "the analyst login cannot read the vault (the database refuses it, not etl)"
if refused=$(psql "$analyst_url" -X -q -v ON_ERROR_STOP=1 -c "SELECT count(*) FROM vault.login_pii" 2>&1); then
  echo "demo: the analyst login could read vault.login_pii; the roles are wrong" >&2
  exit 1
fi
echo "$refused"
step "auditor login: etl reveal --user-id $user --purpose fraud-investigation --reason 'demo: duplicate device investigation'"
PIIVAULT_REVEAL_DATABASE_URL="postgres://piivault_demo_auditor:$PGPASSWORD@$host_port/piivault_demo" \
  $etl reveal --user-id "$user" --purpose fraud-investigation --reason "demo: duplicate device investigation" --format table
step "the audit row the reveal left (committed before the output above)"
sql -c "SELECT id, at, db_role, actor, action, purpose, user_id, reason, records FROM vault.reveal_audit ORDER BY id"
