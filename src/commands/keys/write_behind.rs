//! One batch write in flight while the next page is read and processed: the database and the
//! cryptography work at the same time. Each write is its own transaction, so a kill loses at most
//! the batch in flight, which a re-run redoes.

use std::future::Future;

use tokio::task::JoinHandle;

use crate::error::Error;
use crate::store::StoreError;

/// Rows written so far, and the write in flight.
#[derive(Default)]
pub struct WriteBehind {
    inflight: Option<JoinHandle<Result<u64, StoreError>>>,
    written: u64,
}

impl WriteBehind {
    /// Waits for the previous write, then starts this one.
    pub async fn submit<F>(&mut self, write: F) -> Result<(), Error>
    where
        F: Future<Output = Result<u64, StoreError>> + Send + 'static,
    {
        self.finish().await?;
        self.inflight = Some(tokio::spawn(write));
        Ok(())
    }

    /// Waits for the write in flight; returns the rows written in all.
    pub async fn finish(&mut self) -> Result<u64, Error> {
        if let Some(write) = self.inflight.take() {
            self.written += write.await.expect("a batch write task panicked")?;
        }
        Ok(self.written)
    }
}
