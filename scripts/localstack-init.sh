#!/usr/bin/env bash
# Run by LocalStack (docker-compose.yml) when ready: the demo queue and the dev KMS key.
set -euo pipefail
awslocal sqs create-queue --queue-name piivault-demo >/dev/null
if ! awslocal kms list-aliases --query 'Aliases[].AliasName' --output text | grep -qw alias/piivault-dev; then
  key=$(awslocal kms create-key --description "piivault dev key-encryption key" --query KeyMetadata.KeyId --output text)
  awslocal kms create-alias --alias-name alias/piivault-dev --target-key-id "$key"
fi
