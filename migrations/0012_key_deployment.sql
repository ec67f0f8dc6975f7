-- Data keys are wrapped for one deployment (issue 14, item 9): the KMS encryption context and the
-- local KEK's AAD gain `deployment`, so a wrapped key copied from one database (production) does
-- not unwrap in another deployment (staging) sharing the KEK, and IAM policies can pin
-- `kms:EncryptionContext:deployment`. This column records the deployment each key was wrapped
-- for; `etl` refuses a key whose deployment differs from its own (PIIVAULT_DEPLOYMENT, default the
-- database's name) before asking the KEK. NULL: wrapped before this migration, under the legacy
-- context {app, purpose, version}; `etl keys rewrap --to-kek <current KEK>` binds such keys.
-- The roles' table-level grants on vault.data_keys (0005, 0010) cover the new column, and
-- vault.rewrite_data_keys() copies whole rows, so neither needs a change.
ALTER TABLE vault.data_keys ADD COLUMN IF NOT EXISTS deployment text;

ALTER TABLE vault.data_keys DROP CONSTRAINT IF EXISTS data_keys_deployment_named;
ALTER TABLE vault.data_keys ADD CONSTRAINT data_keys_deployment_named
    CHECK (deployment IS NULL OR (deployment <> '' AND deployment !~ '[[:cntrl:]]'));
