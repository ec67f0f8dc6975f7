#!/usr/bin/env bash
# The whole test suite: starts the local stack (Postgres + SQS/KMS emulator) if needed, then runs
# formatting and lint checks and every unit and integration test against the real services.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PIIVAULT_ROOT"

bash scripts/stack.sh up
# Databases left behind by an interrupted earlier run (each test creates its own pv_test_*).
psql "$PIIVAULT_PG_ADMIN_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'pv\_test\_%'" |
  while read -r db; do psql "$PIIVAULT_PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
