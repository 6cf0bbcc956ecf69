//! The durable, hash-chained audit log with group commit.
//!
//! Request handlers hand a record to [`AuditLog::append`] and wait. One writer task takes
//! every record waiting at that moment, chains them, stores them in a single transaction
//! (one fsync for the whole batch) and then notifies each waiter. A waiter learns that its
//! event is durable only after the commit, so a handler that returns a secret after
//! `append` succeeded never returns one whose access went unrecorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use latchkey_core::audit::{AuditEvent, AuditRecord, GENESIS_HASH, seal_event};
use latchkey_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Maximum records in one batch; the rest wait for the next commit.
const MAX_BATCH: usize = 2048;
/// Records waiting for the writer before `append` callers wait for room.
const QUEUE_CAPACITY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("the audit log could not be written")]
pub struct AuditUnavailable;

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<u64, AuditUnavailable>>,
}

#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Pending>,
    healthy: Arc<AtomicBool>,
    last_seq: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task, continuing the chain stored in `store`.
    pub async fn start(store: Arc<dyn Store>) -> Result<AuditLog, StoreError> {
        let head = load_head(store.as_ref()).await?;
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let healthy = Arc::new(AtomicBool::new(true));
        let last_seq = Arc::new(AtomicU64::new(head.0));
        tokio::spawn(run_writer(
            store,
            receiver,
            head,
            Arc::clone(&healthy),
            Arc::clone(&last_seq),
        ));
        Ok(AuditLog {
            sender,
            healthy,
            last_seq,
        })
    }

    /// Appends a record and waits until it is durably stored; returns its sequence number.
    pub async fn append(&self, record: AuditRecord) -> Result<u64, AuditUnavailable> {
        let (done, wait) = oneshot::channel();
        self.sender
            .send(Pending { record, done })
            .await
            .map_err(|_| AuditUnavailable)?;
        wait.await.map_err(|_| AuditUnavailable)?
    }

    /// False after the last commit failed, until one succeeds again.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }
}

async fn load_head(store: &dyn Store) -> Result<(u64, [u8; 32]), StoreError> {
    match store.audit_head().await? {
        None => Ok((0, GENESIS_HASH)),
        Some((seq, hash)) => {
            let bytes = hex::decode(&hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("audit event {seq} has a malformed hash"))
                })?;
            Ok((seq, bytes))
        }
    }
}

async fn run_writer(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Pending>,
    mut head: (u64, [u8; 32]),
    healthy: Arc<AtomicBool>,
    last_seq: Arc<AtomicU64>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }

        let mut events = Vec::with_capacity(batch.len());
        let (mut seq, mut prev) = head;
        for pending in &batch {
            seq += 1;
            let event = seal_event(seq, &prev, pending.record.clone());
            prev = decode_hash(&event);
            events.push(event);
        }

        match store.append_audit(&events).await {
            Ok(()) => {
                head = (seq, prev);
                last_seq.store(seq, Ordering::Relaxed);
                healthy.store(true, Ordering::Relaxed);
                for (pending, event) in batch.drain(..).zip(&events) {
                    let _ = pending.done.send(Ok(event.seq));
                }
            }
            Err(error) => {
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(%error, events = events.len(), "audit append failed; refusing requests until it recovers");
                }
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Err(AuditUnavailable));
                }
                // The commit may have failed after it reached the disk; continue from what
                // the store contains, so the next batch neither forks nor repeats the chain.
                if let Ok(stored) = load_head(store.as_ref()).await {
                    head = stored;
                }
            }
        }
    }
}

fn decode_hash(event: &AuditEvent) -> [u8; 32] {
    hex::decode(&event.hash)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .unwrap_or(GENESIS_HASH)
}
