#!/usr/bin/env bash
# Key rotation runbook as one script: rotate the seal and token keys, move every row to the new
# versions, verify, then retire (crypto-shred) the old versions.
#
#   DATABASE_URL=<admin login> PIIVAULT_KEK=<kms:... | file:...> scripts/rotate-keys.sh
#
# Safe to re-run after a failure at any step: when a rotation is already in progress (an old
# version not yet retired, or a pending token key) it does not rotate again, it finishes that
# one. Exits non-zero on the first failing step. Running `etl run` instances need no restart:
# they switch to the new keys at their next batch. ETL=<path> selects the binary (default: `etl`
# on PATH, else target/release/etl).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
etl=${ETL:-$(command -v etl || echo target/release/etl)}
[ -x "$etl" ] || { echo "rotate-keys: no etl binary at $etl (set ETL=...)" >&2; exit 69; }
: "${DATABASE_URL:?rotate-keys: set DATABASE_URL to an admin login}"
: "${PIIVAULT_KEK:?rotate-keys: set PIIVAULT_KEK}"

say() { echo "rotate-keys: $*" >&2; }
# `keys status --format json`: one JSON object per key and line.
status() { "$etl" keys status --format json; }
# "purpose version" of each key in $keys whose purpose is $1 (or any, for "*") and whose state is
# one of the |-separated $2; parsed as JSON, so field order and spacing do not matter.
keys_in() {
  python3 -c '
import json, sys
purpose, states = sys.argv[1], sys.argv[2].split("|")
for line in sys.stdin:
    if line.strip():
        key = json.loads(line)
        if purpose in ("*", key["purpose"]) and key["state"] in states:
            print(key["purpose"], key["version"])
' "$1" "$2" <<<"$keys"
}
# Exits on a parse failure itself: errexit does not apply inside an `if` condition.
has() {
  local found
  found=$(keys_in "$1" "$2") || { say "cannot parse etl keys status --format json"; exit 1; }
  [ -n "$found" ]
}

# A purpose whose old version is not retired yet (or whose token key is pending) is mid-rotation:
# finish it instead of rotating again. Decided per purpose, so a failure between the two
# rotations is completed by the re-run.
keys=$(status)
say "1/5 rotate"
if has seal previous; then say "seal: a rotation is in progress; finishing it"
else "$etl" keys rotate --purpose seal; fi
if has token 'previous|pending'; then say "token: a rotation is in progress; finishing it"
else "$etl" keys rotate --purpose token; fi
say "2/5 reencrypt (vault and quarantine to the active seal key)"
"$etl" keys reencrypt
say "3/5 retokenize (stage new tokens, then swap them in at once)"
"$etl" keys retokenize
say "4/5 verify"
"$etl" keys verify
say "5/5 retire old versions"
keys=$(status)
keys_in '*' previous | while read -r purpose version; do
  "$etl" keys retire --purpose "$purpose" --version "$version"
done
keys=$(status)
if has '*' 'previous|pending'; then
  say "old or pending versions are still present:"; echo "$keys" >&2; exit 1
fi
"$etl" keys status
say "done"
