//! Integration tests against real Postgres and the SQS/KMS emulator, through the real `etl`
//! binary. Each test has its own database, queue and key-encryption key.

mod support;

mod access;
mod audit_report;
mod checkpoint;
mod commands;
mod deploy;
mod deployment;
mod errors;
mod failover;
mod faults;
mod governance;
mod hostile;
mod kms;
mod liveness;
mod load;
mod metrics;
mod migrate;
mod output_safety;
mod privacy;
mod redelivery;
mod report;
mod reveal;
mod rotation;
mod shutdown;
mod status_page;
mod token_slots;
mod vault_rules;
