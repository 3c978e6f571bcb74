//! The storage writer: one task that owns every write of the request path
//! and every reload of the in-memory snapshot.
//!
//! Settled requests are grouped and written in one transaction every
//! `flush_interval_ms` or `flush_max_batch` requests, whichever comes
//! first. Reloads and balance refreshes run between batches, so a value read
//! from the database never misses a commit of this process, and wallets
//! stay exact (see `billing::Wallet`).
//!
//! A hard crash can lose at most the batch being collected (a few
//! milliseconds of requests): those requests were served but are neither
//! logged nor charged. Nothing is ever charged twice.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use billing::Wallet;
use storage::{LogRecord, Store};
use tokio::sync::{mpsc, oneshot};

use crate::cache::{self, Snapshot, Wallets};

/// A request whose cost was settled in memory and must be written.
pub struct Settled {
    pub log: LogRecord,
    pub user: Arc<Wallet>,
    pub key: Option<Arc<Wallet>>,
}

pub enum WriteMsg {
    Settled(Box<Settled>),
    /// Rebuild the snapshot from the database.
    Reload(Option<oneshot::Sender<storage::Result<()>>>),
    /// Re-read one user's balance (another process may have credited it).
    RefreshUser(i64, oneshot::Sender<()>),
    /// Write everything queued so far, then answer.
    Flush(oneshot::Sender<()>),
}

pub struct Writer {
    pub store: Store,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub wallets: Arc<Wallets>,
    pub flush_interval: Duration,
    pub max_batch: usize,
    pub cfg: crate::RelayConfig,
}

impl Writer {
    /// Runs until every sender is dropped, writing what is queued first.
    pub async fn run(self, mut rx: mpsc::Receiver<WriteMsg>) {
        let mut batch: Vec<Settled> = Vec::with_capacity(self.max_batch);
        let mut deferred: Vec<WriteMsg> = Vec::new();
        loop {
            let Some(first) = rx.recv().await else { break };
            match first {
                WriteMsg::Settled(s) => batch.push(*s),
                other => deferred.push(other),
            }
            // Collect for at most one flush interval, or until the batch is full.
            if !batch.is_empty() {
                let deadline = tokio::time::Instant::now() + self.flush_interval;
                while batch.len() < self.max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(WriteMsg::Settled(s))) => batch.push(*s),
                        Ok(Some(other)) => {
                            deferred.push(other);
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            self.write_batch(&mut batch).await;
            for msg in deferred.drain(..) {
                self.control(msg).await;
            }
        }
        self.write_batch(&mut batch).await;
        tracing::info!("storage writer stopped");
    }

    /// Writes the batch, retrying until the database takes it: dropping it
    /// would serve requests without charging them.
    async fn write_batch(&self, batch: &mut Vec<Settled>) {
        if batch.is_empty() {
            return;
        }
        let logs: Vec<LogRecord> = batch
            .iter_mut()
            .map(|s| std::mem::take(&mut s.log))
            .collect();
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.settle_batch(&logs).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, rows = logs.len(), "writing settled requests failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for (s, log) in batch.drain(..).zip(&logs) {
            s.user.committed(log.cost);
            if let Some(k) = &s.key {
                k.committed(log.cost);
            }
        }
    }

    async fn control(&self, msg: WriteMsg) {
        match msg {
            WriteMsg::Settled(_) => {}
            WriteMsg::Reload(reply) => {
                let r = self.reload().await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "reloading the cache failed");
                }
                if let Some(tx) = reply {
                    let _ = tx.send(r);
                }
            }
            WriteMsg::RefreshUser(id, reply) => {
                if let (Some(w), Ok(u)) = (self.wallets.user(id), self.store.user_fresh(id).await) {
                    w.refresh(u.balance);
                }
                let _ = reply.send(());
            }
            WriteMsg::Flush(reply) => {
                let _ = reply.send(());
            }
        }
    }

    async fn reload(&self) -> storage::Result<()> {
        let snap = cache::load(&self.store, &self.wallets, &self.cfg).await?;
        self.snapshot.store(Arc::new(snap));
        Ok(())
    }
}
