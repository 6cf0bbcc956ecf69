//! The durable, hash-chained audit log with group commit and signed checkpoints.
//!
//! Request handlers hand a record to [`AuditLog::append`] and wait. One writer task takes
//! every record waiting at that moment, chains them, stores them in a single transaction
//! (one fsync for the whole batch) and then notifies each waiter. A waiter learns that its
//! event is durable only after the commit, so a handler that returns a secret after
//! `append` succeeded never returns one whose access went unrecorded.
//!
//! After notifying the waiters, the writer signs the chain head with the audit signing key
//! when [`CheckpointSettings::every`] events or [`CheckpointSettings::interval`] have passed
//! since the last checkpoint, and stores the checkpoint on its own. While the server is
//! sealed the key is unavailable and checkpoints wait until it is unsealed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use latchkey_core::audit::{
    AuditEvent, AuditRecord, AuditSigner, GENESIS_HASH, SigningKeyError, seal_event,
};
use latchkey_core::crypto::{self, CryptoError, Key256, aad};
use latchkey_store::{Store, StoreError, TokenRow};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::audit_sinks::Feed;
use crate::keyring::RootCell;

/// Maximum records in one batch; the rest wait for the next commit.
const MAX_BATCH: usize = 2048;
/// How often one batch is chained again after other servers moved the shared head.
const MAX_CHAIN_ATTEMPTS: u32 = 50;
/// Records waiting for the writer before `append` callers wait for room.
const QUEUE_CAPACITY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("the audit log could not be written")]
pub struct AuditUnavailable;

/// When the writer signs a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Sign after this many events since the last checkpoint.
    pub every: u64,
    /// Sign when an unsigned event is this old.
    pub interval: Duration,
}

impl Default for CheckpointSettings {
    fn default() -> CheckpointSettings {
        CheckpointSettings {
            every: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// Failures to obtain the audit signing key.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("the server is sealed, so the audit signing key is unavailable; unseal it first")]
    Sealed,
    #[error("cannot read or store the audit signing key: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the stored audit signing key does not open with the root key: {0}; restore the store from a backup"
    )]
    Open(CryptoError),
    #[error("cannot seal the new audit signing key: {0}")]
    Seal(CryptoError),
    #[error(transparent)]
    Key(#[from] SigningKeyError),
}

/// Opens the stored audit signing key with `root`, creating and storing one first when the
/// store has none (a new deployment, or one created before checkpoints existed).
///
/// # Errors
/// [`SignerError`] when the store fails or the stored key does not open.
pub async fn load_or_create_signer(
    store: &dyn Store,
    root: &Key256,
) -> Result<AuditSigner, SignerError> {
    if store.audit_signing_key().await?.is_none() {
        let (_, pkcs8) = AuditSigner::generate()?;
        let sealed = crypto::seal(root, &aad::audit_key(), &pkcs8).map_err(SignerError::Seal)?;
        if store.insert_audit_signing_key(&sealed).await? {
            tracing::info!("created the audit signing key");
        }
    }
    // Read back, so that a server that lost a creation race uses the winner's key.
    let sealed = store
        .audit_signing_key()
        .await?
        .ok_or_else(|| StoreError::Corrupt("the audit signing key vanished".into()))?;
    let pkcs8 = crypto::open(root, &aad::audit_key(), &sealed).map_err(SignerError::Open)?;
    Ok(AuditSigner::from_pkcs8(&pkcs8)?)
}

/// The signing key as loaded, shared by the writer and the API.
struct Keys {
    store: Arc<dyn Store>,
    root: RootCell,
    signer: RwLock<Option<Arc<AuditSigner>>>,
}

impl Keys {
    async fn signer(&self) -> Result<Arc<AuditSigner>, SignerError> {
        let root = self.root.read().ok().and_then(|g| g.clone());
        let Some(root) = root else {
            if let Ok(mut cached) = self.signer.write() {
                *cached = None;
            }
            return Err(SignerError::Sealed);
        };
        if let Some(signer) = self.signer.read().ok().and_then(|g| g.clone()) {
            return Ok(signer);
        }
        let signer = Arc::new(load_or_create_signer(self.store.as_ref(), &root).await?);
        if let Ok(mut cached) = self.signer.write() {
            *cached = Some(Arc::clone(&signer));
        }
        Ok(signer)
    }
}

struct Pending {
    record: AuditRecord,
    /// A token issued by the request, stored in the same transaction as its event.
    token: Option<TokenRow>,
    done: oneshot::Sender<Result<u64, AuditUnavailable>>,
}

#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Pending>,
    healthy: Arc<AtomicBool>,
    last_seq: Arc<AtomicU64>,
    keys: Arc<Keys>,
    feed: Feed,
}

impl AuditLog {
    /// Starts the writer task, continuing the chain stored in `store`. The writer signs
    /// checkpoints with the key opened through `root` while `root` contains a key.
    pub async fn start(
        store: Arc<dyn Store>,
        root: RootCell,
        checkpoints: CheckpointSettings,
    ) -> Result<AuditLog, StoreError> {
        let head = load_head(store.as_ref()).await?;
        let signed_seq = store.last_checkpoint().await?.map(|c| c.seq).unwrap_or(0);
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let healthy = Arc::new(AtomicBool::new(true));
        let last_seq = Arc::new(AtomicU64::new(head.0));
        let keys = Arc::new(Keys {
            store: Arc::clone(&store),
            root,
            signer: RwLock::new(None),
        });
        let feed = Feed::default();
        let writer = Writer {
            feed: feed.clone(),
            store,
            head,
            healthy: Arc::clone(&healthy),
            last_seq: Arc::clone(&last_seq),
            keys: Arc::clone(&keys),
            settings: checkpoints,
            signed_seq,
            unsigned_since: (head.0 > signed_seq).then(Instant::now),
        };
        tokio::spawn(writer.run(receiver));
        Ok(AuditLog {
            sender,
            healthy,
            last_seq,
            keys,
            feed,
        })
    }

    /// Appends a record and waits until it is durably stored; returns its sequence number.
    pub async fn append(&self, record: AuditRecord) -> Result<u64, AuditUnavailable> {
        self.send(record, None).await
    }

    /// Appends the event of a token's issue and stores the token in the same commit, so
    /// issuing a token costs no durable write of its own and no token exists without its
    /// event.
    pub async fn append_with_token(
        &self,
        record: AuditRecord,
        token: TokenRow,
    ) -> Result<u64, AuditUnavailable> {
        self.send(record, Some(token)).await
    }

    async fn send(
        &self,
        record: AuditRecord,
        token: Option<TokenRow>,
    ) -> Result<u64, AuditUnavailable> {
        let (done, wait) = oneshot::channel();
        self.sender
            .send(Pending {
                record,
                token,
                done,
            })
            .await
            .map_err(|_| AuditUnavailable)?;
        wait.await.map_err(|_| AuditUnavailable)?
    }

    /// False after the last commit failed (until one succeeds again) or once the writer task has stopped.
    pub fn is_healthy(&self) -> bool {
        // A writer task that has stopped can no longer record anything.
        self.healthy.load(Ordering::Relaxed) && !self.sender.is_closed()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// Returns the feed that passes committed events to the streaming sinks.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Returns the audit signing key, opening (or, the first time, creating) it.
    ///
    /// # Errors
    /// [`SignerError::Sealed`] while sealed; other [`SignerError`]s when the key cannot be
    /// read, opened or stored.
    pub async fn signer(&self) -> Result<Arc<AuditSigner>, SignerError> {
        self.keys.signer().await
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

struct Writer {
    feed: Feed,
    store: Arc<dyn Store>,
    head: (u64, [u8; 32]),
    healthy: Arc<AtomicBool>,
    last_seq: Arc<AtomicU64>,
    keys: Arc<Keys>,
    settings: CheckpointSettings,
    /// Sequence number of the last stored checkpoint.
    signed_seq: u64,
    /// When the oldest event after `signed_seq` was committed (or the writer started).
    unsigned_since: Option<Instant>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Pending>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        loop {
            let deadline = self.unsigned_since.map(|t| t + self.settings.interval);
            let received = match deadline {
                Some(deadline) => tokio::select! {
                    n = receiver.recv_many(&mut batch, MAX_BATCH) => Some(n),
                    () = tokio::time::sleep_until(deadline) => None,
                },
                None => Some(receiver.recv_many(&mut batch, MAX_BATCH).await),
            };
            match received {
                Some(0) => return,
                Some(_) => self.commit(&mut batch).await,
                None => {}
            }
            self.maybe_checkpoint().await;
        }
    }

    /// Chains the batch onto the head and stores it. When another server on the same
    /// database appended first, the store rejects the batch because it does not continue the
    /// stored head. The batch is then chained again onto the new head, so the nodes share
    /// one chain.
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        let mut attempt = 0;
        let tokens: Vec<TokenRow> = batch.iter().filter_map(|p| p.token.clone()).collect();
        let (events, seq, prev, result) = loop {
            let mut events = Vec::with_capacity(batch.len());
            let (mut seq, mut prev) = self.head;
            for pending in batch.iter() {
                seq += 1;
                let event = seal_event(seq, &prev, pending.record.clone());
                prev = decode_hash(&event);
                events.push(event);
            }
            let result = self.store.append_audit_with_tokens(&events, &tokens).await;
            attempt += 1;
            if let Err(StoreError::Concurrent(_)) = &result
                && attempt < MAX_CHAIN_ATTEMPTS
                && let Ok(stored) = load_head(self.store.as_ref()).await
            {
                self.head = stored;
                continue;
            }
            break (events, seq, prev, result);
        };

        match result {
            Ok(()) => {
                crate::metrics::METRICS.audit_batch(events.len(), started.elapsed());
                self.head = (seq, prev);
                self.last_seq.store(seq, Ordering::Relaxed);
                self.healthy.store(true, Ordering::Relaxed);
                for (pending, event) in batch.drain(..).zip(&events) {
                    let _ = pending.done.send(Ok(event.seq));
                }
                self.feed.publish(&events);
                if self.unsigned_since.is_none() {
                    self.unsigned_since = Some(Instant::now());
                }
            }
            Err(error) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(%error, events = events.len(), "audit append failed; refusing requests until it recovers");
                }
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Err(AuditUnavailable));
                }
                // The commit may have failed after it reached the disk. Continue from what
                // the store contains, so the next batch neither forks nor repeats the chain.
                if let Ok(stored) = load_head(self.store.as_ref()).await {
                    self.head = stored;
                }
            }
        }
    }

    /// Signs and stores the head when a checkpoint is due. Runs after the waiters of the
    /// last batch were notified, so it never delays them.
    async fn maybe_checkpoint(&mut self) {
        let (seq, hash) = self.head;
        if seq <= self.signed_seq {
            self.unsigned_since = None;
            return;
        }
        let due_by_count = seq - self.signed_seq >= self.settings.every;
        let due_by_time = self
            .unsigned_since
            .is_some_and(|t| t.elapsed() >= self.settings.interval);
        if !due_by_count && !due_by_time {
            return;
        }
        let signer = match self.keys.signer().await {
            Ok(signer) => signer,
            Err(SignerError::Sealed) => {
                // Retry after another interval, or when the count is reached again.
                self.unsigned_since = Some(Instant::now());
                return;
            }
            Err(error) => {
                tracing::error!(%error, "cannot sign an audit checkpoint");
                self.unsigned_since = Some(Instant::now());
                return;
            }
        };
        let checkpoint = signer.sign(seq, &hash, chrono::Utc::now());
        match self.store.append_checkpoint(&checkpoint).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {
                self.signed_seq = seq;
                self.unsigned_since = None;
            }
            Err(error) => {
                tracing::error!(%error, seq, "cannot store an audit checkpoint");
                self.unsigned_since = Some(Instant::now());
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
