//! The write stage: decode and protect a chunk of messages with the keys of the moment, then
//! store it in one transaction. A chunk is committed whole or not at all, and nothing is deleted
//! before its commit, so on any error the queue redelivers. Redeliveries are absorbed by
//! `ON CONFLICT (message_id) DO NOTHING` and counted as `duplicates`. A chunk the database refuses
//! is retried row by row; a refused row is quarantined.
//!
//! One call is one attempt: retrying (outages, conflicts, a key change) is the flow's one retry
//! layer ([`super::retry`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::Utc;
use sqlx::PgPool;

use crate::error::Error;
use crate::kek::Kek;
use crate::keystore::WriterKeys;
use crate::protect::{self, Record, WriteKeys};
use crate::source::Received;
use crate::store::writer::{self, BatchCounts};
use crate::store::{self, StoreError};

use super::{Stored, WriteStage};

/// Decodes, protects and stores chunks of messages; shared by every writer.
pub struct Pipeline {
    pool: PgPool,
    kek: Kek,
    keys: RwLock<Arc<WriterKeys>>,
}

impl Pipeline {
    /// A pipeline writing with the active seal and token keys, unwrapped by `kek`.
    pub async fn load(pool: PgPool, kek: Kek) -> Result<Pipeline, Error> {
        let loaded = WriterKeys::load(&pool, &kek).await?;
        Ok(Pipeline {
            pool,
            kek,
            keys: RwLock::new(Arc::new(loaded)),
        })
    }

    fn loaded(&self) -> Arc<WriterKeys> {
        self.keys.read().expect("keyring lock poisoned").clone()
    }

    /// Reloads the keyring after a key change (rotation, token swap, retirement: a retired key
    /// also leaves this process's memory).
    async fn reload(&self) -> Result<(), Error> {
        let loaded = WriterKeys::load(&self.pool, &self.kek).await?;
        tracing::info!("data keys changed; reloaded the keyring");
        *self.keys.write().expect("keyring lock poisoned") = Arc::new(loaded);
        Ok(())
    }

    /// Stores one chunk in one transaction and commits (one attempt); the caller deletes
    /// afterwards. A key change noticed at commit rolls back, reloads the keyring and fails with
    /// [`Error::KeysChanging`], which the flow retries like a conflict.
    pub async fn store(&self, chunk: &[Received]) -> Result<Stored, Error> {
        let newest = newest_deliveries(chunk);
        let loaded = self.loaded();
        let write_keys = loaded.write_keys();
        let now = Utc::now();
        let records: Vec<Record> = newest
            .iter()
            .map(|&i| protect::protect(write_keys, &chunk[i], now))
            .collect();
        let written = match self.write(&records, &loaded).await {
            Err(StoreError::Rejected { .. }) => {
                self.isolate(chunk, &newest, records, write_keys, &loaded)
                    .await
            }
            other => other,
        };
        match written? {
            Some(counts) => Ok(Stored { counts, newest }),
            None => {
                self.reload().await?;
                Err(Error::KeysChanging)
            }
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
        loaded: &WriterKeys,
    ) -> Result<Option<BatchCounts>, StoreError> {
        let mut total = BatchCounts::default();
        for (record, &i) in records.into_iter().zip(newest) {
            let counts = match self.write(std::slice::from_ref(&record), loaded).await {
                Err(StoreError::Rejected { code, .. }) => {
                    tracing::warn!(message_id = %batch[i].message_id, %code, "row refused by the database; quarantined");
                    let reason = format!(
                        "the database refused the row ({})",
                        store::describe_sqlstate(&code)
                    );
                    let entry =
                        protect::quarantine_with_reason(keys, &batch[i], reason, Utc::now());
                    self.write(&[Record::Quarantine(entry)], loaded).await
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
        loaded: &WriterKeys,
    ) -> Result<Option<BatchCounts>, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::during("starting a transaction"))?;
        let counts = writer::write_batch(&mut tx, records, loaded.slot).await?;
        if !loaded.still_current(&mut tx).await? {
            return Ok(None);
        }
        tx.commit()
            .await
            .map_err(StoreError::during("committing a batch"))?;
        Ok(Some(counts))
    }
}

impl WriteStage for Pipeline {
    async fn store(&self, chunk: &[Received]) -> Result<Stored, Error> {
        Pipeline::store(self, chunk).await
    }
}

/// Index of the last delivery of each distinct message id, in first-seen order. The last
/// delivery carries the newest receipt handle, the only one real SQS honours for the delete.
pub(super) fn newest_deliveries(batch: &[Received]) -> Vec<usize> {
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
            body: String::new().into(),
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
