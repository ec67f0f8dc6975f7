//! Decode/protect → one transaction per chunk of messages, with the keys of the moment.
//!
//! [`flow`] runs the stages (receive → write → delete); [`Pipeline::store`] is the write: a chunk
//! is committed whole or not at all, and nothing is deleted before its commit, so on any error
//! the queue redelivers. Redeliveries are absorbed by `ON CONFLICT (message_id) DO NOTHING` and
//! counted as `duplicates`. A chunk the database refuses is retried row by row; a refused row is
//! quarantined. Outages (Postgres, SQS, KMS unreachable) are waited out with backoff ([`retry`]).

pub mod flow;
pub mod summary;

pub use flow::{FlowOptions, QueueOptions, run_file, run_queue};
pub use summary::Counters;
pub use summary::Summary;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::Retryable;

use chrono::Utc;
use sqlx::PgPool;

use crate::crypto::{Keyring, Purpose};
use crate::error::Error;
use crate::kek::Kek;
use crate::protect::{self, Record, WriteKeys};
use crate::source::Received;
use crate::store::writer::{self, BatchCounts};
use crate::store::{self, StoreError};
use crate::{keystore, retry};

/// Attempts for a batch transaction that deadlocks, fails to serialise, or meets a key rotation
/// (nothing was committed by the failed attempts).
const WRITE_ATTEMPTS: u32 = 4;

/// Decodes, protects and stores chunks of messages; shared by every writer.
pub struct Pipeline {
    pool: PgPool,
    kek: Kek,
    keys: RwLock<Arc<Loaded>>,
    max_outage: Duration,
}

/// Default bound on how long an outage is waited out before `etl run` gives up (exit 69).
pub const DEFAULT_MAX_OUTAGE: Duration = Duration::from_secs(300);

/// A keyring and the key states it was loaded under.
struct Loaded {
    keys: Keyring,
    fingerprint: String,
}

impl Pipeline {
    /// A pipeline writing with the active seal and token keys, unwrapped by `kek`.
    pub async fn load(pool: PgPool, kek: Kek) -> Result<Pipeline, Error> {
        let loaded = Self::load_keys(&pool, &kek).await?;
        Ok(Pipeline {
            pool,
            kek,
            keys: RwLock::new(Arc::new(loaded)),
            max_outage: DEFAULT_MAX_OUTAGE,
        })
    }

    async fn load_keys(pool: &PgPool, kek: &Kek) -> Result<Loaded, Error> {
        // Fingerprint first: a change that lands while the keys load is noticed at the next batch.
        let fingerprint = store::keys::fingerprint(pool).await?;
        let keys = keystore::load(pool, kek).await?;
        keys.active_seal().ok_or(Error::NoKeys(Purpose::Seal))?;
        keys.active_token().ok_or(Error::NoKeys(Purpose::Token))?;
        Ok(Loaded { keys, fingerprint })
    }

    /// Waits out outages of Postgres, SQS or KMS up to this long before failing.
    pub fn with_max_outage(mut self, max_outage: Duration) -> Pipeline {
        self.max_outage = max_outage;
        self
    }

    /// The retry policy for this pipeline's outage bound.
    pub fn retry_policy(&self) -> backon::ExponentialBuilder {
        retry::policy(self.max_outage)
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.keys.read().expect("keyring lock poisoned").clone()
    }

    /// Reloads the keyring after a key change (rotation, token swap, retirement: a retired key
    /// also leaves this process's memory).
    async fn reload(&self) -> Result<(), Error> {
        let loaded = Self::load_keys(&self.pool, &self.kek).await?;
        tracing::info!("data keys changed; reloaded the keyring");
        *self.keys.write().expect("keyring lock poisoned") = Arc::new(loaded);
        Ok(())
    }

    /// Stores one batch in one transaction and commits; the caller acks afterwards. Returns the
    /// counts and the index of the newest delivery of each distinct message (the ones to delete).
    pub async fn store(&self, batch: &[Received]) -> Result<(BatchCounts, Vec<usize>), Error> {
        (|| self.store_once(batch))
            .retry(self.retry_policy())
            .when(Error::is_transient)
            .notify(retry::notify)
            .await
    }

    async fn store_once(&self, batch: &[Received]) -> Result<(BatchCounts, Vec<usize>), Error> {
        let newest = newest_deliveries(batch);
        let mut attempt = 1;
        loop {
            let loaded = self.loaded();
            let write_keys = WriteKeys {
                seal: loaded.keys.active_seal().expect("checked on load"),
                token: loaded.keys.active_token().expect("checked on load"),
            };
            let now = Utc::now();
            let records: Vec<Record> = newest
                .iter()
                .map(|&i| protect::protect(write_keys, &batch[i], now))
                .collect();
            let written = match self.write(&records, &loaded.fingerprint).await {
                Err(StoreError::Rejected { .. }) => {
                    self.isolate(batch, &newest, records, write_keys, &loaded.fingerprint)
                        .await
                }
                other => other,
            };
            match written {
                Ok(Some(counts)) => return Ok((counts, newest)),
                Ok(None) if attempt < WRITE_ATTEMPTS => self.reload().await?,
                Err(StoreError::Conflict { .. }) if attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(attempt, "batch transaction conflicted; retrying");
                }
                Ok(None) => return Err(Error::KeysChanging),
                Err(e) => return Err(e.into()),
            }
            attempt += 1;
        }
    }

    /// A batch the database refused: each record alone, so one poison row cannot hold back the
    /// others; a refused row goes to quarantine with a PII-free reason instead.
    async fn isolate(
        &self,
        batch: &[Received],
        newest: &[usize],
        records: Vec<Record>,
        keys: WriteKeys<'_>,
        fingerprint: &str,
    ) -> Result<Option<BatchCounts>, StoreError> {
        let mut total = BatchCounts::default();
        for (record, &i) in records.into_iter().zip(newest) {
            let counts = match self.write(std::slice::from_ref(&record), fingerprint).await {
                Err(StoreError::Rejected { code, .. }) => {
                    tracing::warn!(message_id = %batch[i].message_id, %code, "row refused by the database; quarantined");
                    let reason = format!(
                        "the database refused the row ({})",
                        store::describe_sqlstate(&code)
                    );
                    let entry =
                        protect::quarantine_with_reason(keys, &batch[i], reason, Utc::now());
                    self.write(&[Record::Quarantine(entry)], fingerprint).await
                }
                other => other,
            };
            let Some(counts) = counts? else {
                return Ok(None); // keys changed: the caller reloads and redoes the whole batch
            };
            total.loaded += counts.loaded;
            total.quarantined += counts.quarantined;
            total.duplicates += counts.duplicates;
        }
        Ok(Some(total))
    }

    /// Writes and commits, unless the key states changed since the keyring was loaded (`Ok(None)`:
    /// rolled back). The check runs after the inserts: a rotation locks the tables written here,
    /// so it either waits for this commit (and then sees these rows) or commits first (and then
    /// this check fails).
    async fn write(
        &self,
        records: &[Record],
        fingerprint: &str,
    ) -> Result<Option<BatchCounts>, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::during("starting a transaction"))?;
        let counts = writer::write_batch(&mut tx, records).await?;
        if store::keys::fingerprint(&mut *tx).await? != fingerprint {
            return Ok(None);
        }
        tx.commit()
            .await
            .map_err(StoreError::during("committing a batch"))?;
        Ok(Some(counts))
    }
}

/// Index of the last delivery of each distinct message id, in first-seen order. The last
/// delivery carries the newest receipt handle, the only one real SQS honours for the delete.
fn newest_deliveries(batch: &[Received]) -> Vec<usize> {
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let mut order = Vec::with_capacity(batch.len());
    for (i, message) in batch.iter().enumerate() {
        match position.get(message.message_id.as_str()) {
            Some(&slot) => order[slot] = i,
            None => {
                position.insert(&message.message_id, order.len());
                order.push(i);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, handle: &str) -> Received {
        Received {
            message_id: id.into(),
            receipt_handle: Some(handle.into()),
            sent_at: Utc::now(),
            body: String::new(),
        }
    }

    #[test]
    fn repeated_deliveries_keep_the_newest_handle() {
        let batch = [message("a", "h1"), message("b", "h2"), message("a", "h3")];
        let newest = newest_deliveries(&batch);
        assert_eq!(newest, vec![2, 1]);
        assert_eq!(batch[newest[0]].receipt_handle.as_deref(), Some("h3"));
    }
}
