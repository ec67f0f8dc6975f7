# Local-stack settings, sourced by scripts/*.sh. Every value but PIIVAULT_ROOT can be overridden from the
# environment. Development only: the credentials are dummies the emulator accepts.
# Always this checkout: a PIIVAULT_ROOT inherited from a shell that sourced another checkout's
# env.sh would send this checkout's scripts (and its tests) to run over there.
PIIVAULT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PIIVAULT_ROOT
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
# A credential chain must never try the instance-metadata address on a developer machine.
export AWS_EC2_METADATA_DISABLED=true
# Superuser URL used to create the demo and test databases (trust auth or the password below).
export PIIVAULT_PG_ADMIN_URL="${PIIVAULT_PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
# The queue scripts/stack.sh up creates, for trying etl by hand (the demo and tests make their own).
export SQS_QUEUE_URL="${SQS_QUEUE_URL:-${AWS_ENDPOINT_URL%/}/123456789012/piivault-demo}"
export PIIVAULT_DEV_KEK="${PIIVAULT_DEV_KEK:-$PIIVAULT_ROOT/keys-dev/kek.bin}"
export PIIVAULT_DEV_KMS_ALIAS="${PIIVAULT_DEV_KMS_ALIAS:-alias/piivault-dev}"
