//! Streaming copies of the audit log: JSON Lines files, syslog and webhooks.
//!
//! The primary record is the store. A sink only copies it, so a sink that fails or hangs
//! never blocks a request, and the events it has not delivered stay in the store for it:
//!
//! - After each batch commits, the audit writer offers every event to each sink's bounded
//!   queue without waiting ([`Feed::publish`]). A full queue drops the event and counts the
//!   drop in `latchkey_audit_sink_events_dropped_total`.
//! - Each sink keeps a cursor, the last sequence number it delivered, in the store
//!   (`audit_sink_cursors`). It delivers from its queue while the queue continues its
//!   cursor without a gap. After a drop, a restart, or events written by another node, it
//!   reads the missing events from the store by sequence number instead.
//! - A delivery that fails or exceeds the sink's `timeout` is retried with exponential
//!   backoff (0.2 s doubling to 30 s) until it succeeds. Meanwhile the sink shows as
//!   degraded in `/v1/sys/health` with its last error.
//!
//! Several nodes on one database: each sink name has one lease row. Only the node holding
//! the lease ships that sink, and it renews the lease every [`LEASE_RENEW`]. When a node
//! stops, another takes the sink over once the lease ([`LEASE`]) has expired, starting from
//! the stored cursor. The cursor moves only after a delivery succeeded, so a takeover may
//! send the events of the one batch that was in flight again, once. No event is shipped
//! twice by two live nodes, because a node that lost the lease stops at its next renewal.
//! A `file` sink writes on whichever node holds its lease: give each node its own sink
//! name when every node should keep a local file.

mod config;
mod file;
mod syslog;
mod webhook;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use latchkey_core::audit::AuditEvent;
use latchkey_store::Store;
use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::ToSchema;

pub use config::{SinkConfig, SinkSpec, SinkType, SyslogProtocol, Target, check_all};

use crate::metrics::METRICS;

/// How long a node's claim on a sink lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the owner renews its lease; also how often a stand-by node tries to claim it.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often a sink looks in the store for events its queue did not bring, such as those
/// written by other nodes.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The committed events on their way to the sinks' queues.
#[derive(Clone, Default)]
pub struct Feed {
    queues: Arc<RwLock<Vec<Queue>>>,
    statuses: Arc<RwLock<Vec<Arc<SinkStatus>>>>,
}

struct Queue {
    name: String,
    sender: mpsc::Sender<Arc<AuditEvent>>,
}

impl Feed {
    /// Offers committed events to every sink's queue without waiting; a full queue drops
    /// the event, and its sink reads it from the store later.
    pub fn publish(&self, events: &[AuditEvent]) {
        let Ok(queues) = self.queues.read() else {
            return;
        };
        if queues.is_empty() {
            return;
        }
        for event in events {
            let event = Arc::new(event.clone());
            for queue in queues.iter() {
                if queue.sender.try_send(Arc::clone(&event)).is_err() {
                    METRICS.sink_dropped.with_label_values(&[&queue.name]).inc();
                }
            }
        }
    }

    fn register(
        &self,
        name: &str,
        capacity: usize,
        status: Arc<SinkStatus>,
    ) -> mpsc::Receiver<Arc<AuditEvent>> {
        let (sender, receiver) = mpsc::channel(capacity);
        if let Ok(mut queues) = self.queues.write() {
            queues.push(Queue {
                name: name.to_owned(),
                sender,
            });
        }
        if let Ok(mut statuses) = self.statuses.write() {
            statuses.push(status);
        }
        receiver
    }

    /// Returns the health of every sink, in configuration order.
    pub fn health(&self) -> Vec<SinkHealth> {
        self.statuses
            .read()
            .map(|statuses| statuses.iter().map(|s| s.snapshot()).collect())
            .unwrap_or_default()
    }
}

/// A sink's state as `/v1/sys/health` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct SinkHealth {
    pub name: String,
    /// `file`, `syslog` or `webhook`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ok`, `degraded` (its last delivery failed), `standby` (another node holds its lease)
    /// or `starting`.
    pub state: String,
    /// The last delivery error while degraded.
    pub last_error: Option<String>,
    /// Last sequence number delivered.
    pub cursor: u64,
    /// Events stored but not yet delivered, as of the sink's last check.
    pub lag: u64,
}

struct SinkStatus {
    name: String,
    kind: &'static str,
    state: Mutex<(&'static str, Option<String>)>,
    cursor: AtomicU64,
    lag: AtomicU64,
    degraded: AtomicBool,
}

impl SinkStatus {
    fn snapshot(&self) -> SinkHealth {
        let (state, last_error) = self
            .state
            .lock()
            .map(|s| (s.0, s.1.clone()))
            .unwrap_or(("degraded", Some("status unavailable".into())));
        SinkHealth {
            name: self.name.clone(),
            kind: self.kind.to_owned(),
            state: state.to_owned(),
            last_error,
            cursor: self.cursor.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
        }
    }

    fn set(&self, state: &'static str, error: Option<String>) {
        let degraded = state == "degraded";
        if let Ok(mut current) = self.state.lock() {
            *current = (state, error);
        }
        self.degraded.store(degraded, Ordering::Relaxed);
        METRICS
            .sink_degraded
            .with_label_values(&[&self.name])
            .set(i64::from(degraded));
    }
}

/// A destination that accepts batches of events in sequence order.
enum Destination {
    File(file::FileSink),
    Syslog(syslog::SyslogSink),
    Webhook(webhook::WebhookSink),
}

impl Destination {
    fn open(target: &Target, timeout: Duration) -> Result<Destination, String> {
        Ok(match target {
            Target::File { path, max_bytes } => {
                Destination::File(file::FileSink::open(path.clone(), *max_bytes)?)
            }
            Target::Syslog {
                address,
                protocol,
                facility,
                hostname,
            } => Destination::Syslog(syslog::SyslogSink::new(
                *address,
                *protocol,
                *facility,
                hostname.clone(),
            )),
            Target::Webhook { url } => {
                Destination::Webhook(webhook::WebhookSink::new(url.clone(), timeout)?)
            }
        })
    }

    async fn deliver(&mut self, events: &[Arc<AuditEvent>]) -> Result<(), String> {
        match self {
            Destination::File(sink) => sink.write(events).await,
            Destination::Syslog(sink) => sink.send(events).await,
            Destination::Webhook(sink) => sink.post(events).await,
        }
    }

    /// Forgets any connection, so the next delivery starts a fresh one.
    fn reset(&mut self) {
        if let Destination::Syslog(sink) = self {
            sink.disconnect();
        }
    }
}

/// Starts one task per sink. `node` identifies this server among the nodes that share
/// the database.
///
/// # Errors
/// A message naming the sink whose destination cannot be opened (such as a file in a
/// missing directory).
pub fn start(
    store: Arc<dyn Store>,
    feed: &Feed,
    specs: Vec<SinkSpec>,
    node: &str,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut workers = Vec::with_capacity(specs.len());
    for spec in specs {
        let destination = Destination::open(&spec.target, spec.timeout)
            .map_err(|e| format!("audit sink `{}`: {e}", spec.name))?;
        let status = Arc::new(SinkStatus {
            name: spec.name.clone(),
            kind: spec.target.kind(),
            state: Mutex::new(("starting", None)),
            cursor: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
        });
        let queue = feed.register(&spec.name, spec.queue, Arc::clone(&status));
        workers.push(Worker {
            spec,
            destination,
            store: Arc::clone(&store),
            queue,
            status,
            node: node.to_owned(),
            cursor: None,
            pending: Vec::new(),
        });
    }
    let mut handles = Vec::with_capacity(workers.len());
    for worker in workers {
        tracing::info!(sink = %worker.spec.name, kind = worker.spec.target.kind(), node = %worker.node, "starting audit sink");
        handles.push(tokio::spawn(worker.run()));
    }
    Ok(handles)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn lease_until() -> i64 {
    unix_now() + LEASE.as_secs() as i64
}

struct Worker {
    spec: SinkSpec,
    destination: Destination,
    store: Arc<dyn Store>,
    queue: mpsc::Receiver<Arc<AuditEvent>>,
    status: Arc<SinkStatus>,
    node: String,
    /// Last delivered sequence number while this node holds the lease.
    cursor: Option<u64>,
    /// Events taken from the queue that continue the cursor, not yet delivered.
    pending: Vec<Arc<AuditEvent>>,
}

impl Worker {
    async fn run(mut self) {
        let mut renewed = tokio::time::Instant::now();
        loop {
            let Some(cursor) = self.cursor else {
                self.claim().await;
                if self.cursor.is_none() {
                    self.wait_as_standby().await;
                }
                renewed = tokio::time::Instant::now();
                continue;
            };

            let batch = match self.next_batch(cursor).await {
                Ok(batch) => batch,
                Err(error) => {
                    self.fail(&format!("cannot read the audit log: {error}"));
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if renewed.elapsed() >= LEASE_RENEW {
                    self.renew(cursor).await;
                    renewed = tokio::time::Instant::now();
                }
                self.wait_for_events().await;
                continue;
            }

            if !self.deliver_with_retry(&batch, cursor, &mut renewed).await {
                continue;
            }
            let last = batch.last().map_or(cursor, |e| e.seq);
            METRICS
                .sink_shipped
                .with_label_values(&[&self.spec.name])
                .inc_by(batch.len() as u64);
            self.advance(last).await;
            renewed = tokio::time::Instant::now();
        }
    }

    /// Takes the lease if it is free. A sink without a stored cursor starts before the
    /// first stored event, so it copies the whole log.
    async fn claim(&mut self) {
        let initial = match self.store.audit_first_seq().await {
            Ok(first) => first.map_or(0, |seq| seq - 1),
            Err(error) => {
                self.fail(&format!("cannot read the audit log: {error}"));
                return;
            }
        };
        match self
            .store
            .claim_sink(
                &self.spec.name,
                &self.node,
                unix_now(),
                lease_until(),
                initial,
            )
            .await
        {
            Ok(Some(cursor)) => {
                tracing::info!(sink = %self.spec.name, cursor, "took the audit sink lease");
                self.cursor = Some(cursor);
                self.pending.clear();
                self.status.cursor.store(cursor, Ordering::Relaxed);
                self.status.set("ok", None);
            }
            Ok(None) => self.status.set("standby", None),
            Err(error) => self.fail(&format!("cannot claim the sink's cursor: {error}")),
        }
    }

    /// Waits for the next claim attempt, emptying the queue: the lease holder delivers
    /// these events, reading them from the store.
    async fn wait_as_standby(&mut self) {
        let deadline = tokio::time::sleep(LEASE_RENEW);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                event = self.queue.recv() => if event.is_none() { return },
            }
        }
    }

    async fn wait_for_events(&mut self) {
        let Ok(Some(event)) = tokio::time::timeout(POLL, self.queue.recv()).await else {
            return;
        };
        self.pending.push(event);
    }

    /// Renews the lease without moving the cursor.
    async fn renew(&mut self, cursor: u64) {
        self.advance(cursor).await;
    }

    async fn advance(&mut self, seq: u64) {
        match self
            .store
            .advance_sink(&self.spec.name, &self.node, seq, unix_now(), lease_until())
            .await
        {
            Ok(true) => {
                self.cursor = Some(seq);
                self.status.cursor.store(seq, Ordering::Relaxed);
            }
            Ok(false) => {
                tracing::warn!(sink = %self.spec.name, "another node took over the audit sink");
                self.cursor = None;
                self.pending.clear();
                self.status.set("standby", None);
            }
            Err(error) => {
                // The events were delivered; on restart they are sent again from the
                // stored cursor.
                self.cursor = Some(seq);
                self.fail(&format!("cannot store the sink's cursor: {error}"));
            }
        }
    }

    /// Collects up to `batch` events after `cursor`: from the queue while it continues the
    /// cursor without a gap, otherwise from the store.
    async fn next_batch(
        &mut self,
        cursor: u64,
    ) -> Result<Vec<Arc<AuditEvent>>, latchkey_store::StoreError> {
        let max = self.spec.batch;
        while self.pending.len() < max {
            match self.queue.try_recv() {
                Ok(event) => self.pending.push(event),
                Err(_) => break,
            }
        }
        self.pending.retain(|e| e.seq > cursor);
        let contiguous = self
            .pending
            .iter()
            .enumerate()
            .take_while(|(i, e)| e.seq == cursor + 1 + *i as u64)
            .count();
        if contiguous > 0 {
            let newest_seen = self.pending.last().map_or(cursor, |e| e.seq);
            self.set_lag(newest_seen.saturating_sub(cursor));
            return Ok(self.pending.drain(..contiguous.min(max)).collect());
        }

        // The queue is empty or starts after a gap: the store has the missing events.
        let limit = u32::try_from(max).unwrap_or(u32::MAX);
        let events = self.store.audit_events(cursor, limit).await?;
        if let Some(first) = events.first()
            && first.seq > cursor + 1
        {
            tracing::warn!(sink = %self.spec.name, cursor, first = first.seq,
                "events after the sink's cursor were purged before it delivered them");
        }
        let stored_head = self.store.audit_head().await?.map_or(0, |(seq, _)| seq);
        self.set_lag(stored_head.saturating_sub(cursor));
        Ok(events.into_iter().map(Arc::new).collect())
    }

    fn set_lag(&self, lag: u64) {
        self.status.lag.store(lag, Ordering::Relaxed);
        METRICS
            .sink_lag
            .with_label_values(&[&self.spec.name])
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Delivers `batch`, retrying with backoff until it succeeds. Returns false when the
    /// lease was lost meanwhile, so the batch is left to the new owner.
    async fn deliver_with_retry(
        &mut self,
        batch: &[Arc<AuditEvent>],
        cursor: u64,
        renewed: &mut tokio::time::Instant,
    ) -> bool {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let outcome =
                tokio::time::timeout(self.spec.timeout, self.destination.deliver(batch)).await;
            let error = match outcome {
                Ok(Ok(())) => {
                    if self.status.degraded.load(Ordering::Relaxed) {
                        tracing::info!(sink = %self.spec.name, "audit sink recovered");
                    }
                    self.status.set("ok", None);
                    return true;
                }
                Ok(Err(error)) => error,
                Err(_) => format!("delivery timed out after {:?}", self.spec.timeout),
            };
            self.destination.reset();
            METRICS
                .sink_failures
                .with_label_values(&[&self.spec.name])
                .inc();
            self.fail(&error);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // Keep the lease while retrying, so no other node sends this batch meanwhile.
            if renewed.elapsed() >= LEASE_RENEW {
                self.renew(cursor).await;
                *renewed = tokio::time::Instant::now();
                if self.cursor.is_none() {
                    return false;
                }
            }
        }
    }

    fn fail(&self, error: &str) {
        // Logged once per outage, not once per retry.
        if !self.status.degraded.load(Ordering::Relaxed) {
            tracing::warn!(sink = %self.spec.name, %error, "audit sink degraded; the primary log is unaffected");
        }
        self.status.set("degraded", Some(error.to_owned()));
    }
}
