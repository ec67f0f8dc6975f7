//! piivault: SQS login events into Postgres, with `ip`/`device_id` tokenised for analysts and the
//! originals sealed in an audited vault.
//!
//! Modules in data-flow order (source → decode → protect → store → ack):
//! - [`aws`]: the AWS SDK configuration shared by SQS and KMS.
//! - [`config`]: flags and environment turned into typed settings.
//! - [`source`]: where messages come from (SQS, or a file for backfills) and how they are acked.
//! - [`event`]: a message body decoded into a [`event::LoginEvent`] or a PII-free [`event::Rejection`].
//! - [`crypto`]: deterministic tokens and sealed values; keys that zeroize. No I/O, no SQL.
//! - [`kek`]: key-encryption keys (local file or AWS KMS) that wrap the data keys.
//! - [`keystore`]: the keyring loaded from stored wrapped keys through the KEK.
//! - [`key_lifecycle`]: the rules of rotation, retirement and the token swap.
//! - [`protect`]: a decoded event turned into the rows to store (tokens + sealed originals).
//! - [`user_ids`]: every `user_id` a raw body names, found leniently (erasure tags).
//! - [`store`]: Postgres: migrations, batch writes, vault reads, audit, data-key rows. No crypto.
//! - [`pipeline`]: supervised stages: receive, protect, write in one transaction, delete after
//!   commit; one retry policy.
//! - [`audit`]: the server-written, hash-chained trail (append, verify, reason and actor checks).
//! - [`governance`]: reveal purposes (the database enforces them, the quotas and the two-person rule).
//! - [`synth`]: synthetic login events for the demo and benchmarks.
//! - [`serve`]: the metrics server and status page.
//! - [`commands`]: one file per `etl` subcommand.
//! - [`error`]: the error a command returns, and its exit code.

pub mod audit;
pub mod aws;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod error;
pub mod event;
pub mod governance;
pub mod kek;
pub mod key_lifecycle;
pub mod keystore;
pub mod pipeline;
pub mod protect;
pub mod serve;
pub mod source;
pub mod store;
pub mod synth;
pub mod user_ids;
