//! Access-request notifications: signed webhooks that tell approvers about requests,
//! decisions, revoked grants and break-glass access.
//!
//! Handlers call [`Notifier::notify`] after the change is stored. Delivery never holds up
//! a request:
//!
//! - Each webhook has its own bounded queue and one worker task, so a slow or failing
//!   endpoint delays only its own events. `notify` offers the event to each subscribed
//!   queue without waiting. A full queue drops it, counts the drop and logs a warning.
//! - The worker POSTs one event at a time, in queue order, signed with the webhook's key
//!   (see [`WebhookSecret::sign`]). A 2xx response delivers it. A 408, 429 or 5xx
//!   response, a connection error or a timeout is retried with exponential backoff and
//!   jitter, waiting at least the `Retry-After` seconds, up to `retry_max`. Any other
//!   status (redirects and other 4xx included) fails the event at once. After
//!   `max_attempts` the event is given up and counted as failed.
//! - A webhook is `failing` from the moment it gives up an event until it next delivers
//!   one. `/v1/sys/health` then reports `notify_degraded`, still with HTTP 200.
//!
//! Queues live in memory: events still queued when the server stops are not sent. Each
//! node of a cluster sends the events of the requests it handles.

mod config;
mod delivery;
mod payload;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

pub use config::{
    NotifyConfig, NotifySpec, WebhookConfig, WebhookFormat, WebhookSecret, WebhookSpec,
};
pub use payload::{json_payload, request_link, slack_payload};

use crate::metrics::METRICS;

/// The change to an access request or grant that an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum AccessEventKind {
    /// A request was made and waits for approval.
    #[serde(rename = "request.created")]
    Created,
    /// An approver approved a request.
    #[serde(rename = "request.approved")]
    Approved,
    /// An approver denied a request.
    #[serde(rename = "request.denied")]
    Denied,
    /// A request was neither approved nor denied in time.
    #[serde(rename = "request.expired")]
    Expired,
    /// A grant was revoked before it ended.
    #[serde(rename = "grant.revoked")]
    Revoked,
    /// Someone used break-glass access, without approval.
    #[serde(rename = "break_glass")]
    BreakGlass,
    /// A request was approved by policy, without an approver.
    #[serde(rename = "request.auto_approved")]
    AutoApproved,
}

impl AccessEventKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [AccessEventKind; 7] = [
        AccessEventKind::Created,
        AccessEventKind::Approved,
        AccessEventKind::Denied,
        AccessEventKind::Expired,
        AccessEventKind::Revoked,
        AccessEventKind::BreakGlass,
        AccessEventKind::AutoApproved,
    ];

    /// Returns the name used in config files, payloads and the `x-latchkey-event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessEventKind::Created => "request.created",
            AccessEventKind::Approved => "request.approved",
            AccessEventKind::Denied => "request.denied",
            AccessEventKind::Expired => "request.expired",
            AccessEventKind::Revoked => "grant.revoked",
            AccessEventKind::BreakGlass => "break_glass",
            AccessEventKind::AutoApproved => "request.auto_approved",
        }
    }

    /// Parses a name written by [`AccessEventKind::as_str`]; None for an unknown name.
    pub fn parse(text: &str) -> Option<AccessEventKind> {
        AccessEventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One notification: a request and the principal who acted on it. Every field is sent to
/// the webhooks as it is, so it must never carry a secret value or a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessEvent {
    pub kind: AccessEventKind,
    pub request_id: String,
    /// The requester's Cedar uid, such as `User::"alice"`.
    pub requester: String,
    /// `lk://` references the request covers, such as `lk://prod/db`.
    pub resources: Vec<String>,
    /// Length of the access asked for or granted, in seconds.
    pub duration_secs: u64,
    pub reason: String,
    pub ticket: Option<String>,
    /// The approver, denier or revoker, as a Cedar uid.
    pub actor: Option<String>,
    pub comment: Option<String>,
    pub grant_id: Option<String>,
    pub approvals: u32,
    pub approvals_required: u32,
    /// When it happened, RFC 3339 as [`latchkey_core::audit::format_time`] writes it.
    pub time: String,
}

/// A webhook's state as `/v1/sys/health` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookHealth {
    pub name: String,
    /// `json` or `slack`.
    pub format: String,
    /// `ok`, or `failing` from the moment an event is given up until one is delivered.
    pub state: String,
    /// Failed attempts since the last delivery.
    pub consecutive_failures: u64,
    /// The last attempt's error, until a delivery succeeds. It names a status or a
    /// connection problem, never the URL or the key.
    pub last_error: Option<String>,
    /// Events delivered.
    pub delivered: u64,
    /// Events given up: rejected by the endpoint, or out of attempts.
    pub failed: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events waiting in the queue.
    pub queued: u64,
}

/// Sends access events to the configured webhooks. Cloning shares the queues.
#[derive(Clone, Default)]
pub struct Notifier {
    webhooks: Arc<Vec<Webhook>>,
}

/// The sending side of one webhook.
struct Webhook {
    events: Vec<AccessEventKind>,
    sender: mpsc::Sender<Arc<AccessEvent>>,
    status: Arc<Status>,
}

impl Notifier {
    /// Checks `config`, reads the signing keys and starts one delivery worker per webhook.
    /// An empty config delivers nothing and starts no task.
    ///
    /// # Errors
    /// A bad config (the message names the webhook and the field), or webhooks configured
    /// outside a tokio runtime.
    pub fn start(config: &NotifyConfig) -> anyhow::Result<Notifier> {
        let spec = config.check().map_err(anyhow::Error::msg)?;
        Notifier::start_checked(spec)
    }

    /// Starts delivery for an already checked configuration.
    ///
    /// # Errors
    /// When the HTTP client cannot be built, or there is no tokio runtime.
    pub fn start_checked(spec: NotifySpec) -> anyhow::Result<Notifier> {
        if spec.webhooks.is_empty() {
            return Ok(Notifier::default());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            anyhow::anyhow!("notification webhooks need a tokio runtime to deliver from")
        })?;
        let public_url = spec.public_url.map(Arc::new);
        let mut webhooks = Vec::with_capacity(spec.webhooks.len());
        let mut workers = Vec::with_capacity(spec.webhooks.len());
        for hook in spec.webhooks {
            let status = Arc::new(Status::new(&hook.name, hook.format));
            let (sender, receiver) = mpsc::channel(spec.queue);
            webhooks.push(Webhook {
                events: hook.events.clone(),
                sender,
                status: Arc::clone(&status),
            });
            let worker = delivery::Worker::new(hook, public_url.clone(), receiver, status)
                .map_err(anyhow::Error::msg)?;
            workers.push(worker);
        }
        for worker in workers {
            tracing::info!(webhook = %worker.name(), "starting notification webhook");
            runtime.spawn(worker.run());
        }
        Ok(Notifier {
            webhooks: Arc::new(webhooks),
        })
    }

    /// Queues `event` for every webhook subscribed to its kind. It uses `try_send` only, so
    /// it never waits: a full queue drops the event, counts it and logs a warning.
    pub fn notify(&self, event: AccessEvent) {
        if self.webhooks.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for webhook in self.webhooks.iter() {
            if !webhook.events.contains(&event.kind) {
                continue;
            }
            let reason = match webhook.sender.try_send(Arc::clone(&event)) {
                Ok(()) => {
                    webhook.status.set_queued(&webhook.sender);
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(_)) => "its queue is full",
                Err(mpsc::error::TrySendError::Closed(_)) => "its worker has stopped",
            };
            webhook.status.dropped.fetch_add(1, Ordering::Relaxed);
            METRICS
                .notify_dropped
                .with_label_values(&[&webhook.status.name])
                .inc();
            tracing::warn!(
                webhook = %webhook.status.name,
                event = event.kind.as_str(),
                request_id = %event.request_id,
                "notification dropped: {reason}"
            );
        }
    }

    /// Returns one entry per webhook, in configuration order.
    pub fn health(&self) -> Vec<WebhookHealth> {
        self.webhooks
            .iter()
            .map(|webhook| webhook.status.snapshot(queued(&webhook.sender)))
            .collect()
    }
}

fn queued<T>(sender: &mpsc::Sender<T>) -> u64 {
    (sender.max_capacity() - sender.capacity()) as u64
}

/// Counters and state of one webhook, shared by its sender and its worker.
struct Status {
    name: String,
    format: WebhookFormat,
    state: Mutex<State>,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    failing: bool,
    consecutive_failures: u64,
    last_error: Option<String>,
}

impl Status {
    fn new(name: &str, format: WebhookFormat) -> Status {
        // Every series exists from the start, so a dashboard shows 0 rather than nothing.
        let labels = &[name];
        METRICS.notify_delivered.with_label_values(labels);
        METRICS.notify_failed.with_label_values(labels);
        METRICS.notify_dropped.with_label_values(labels);
        METRICS.notify_attempt_failures.with_label_values(labels);
        METRICS.notify_failing.with_label_values(labels).set(0);
        METRICS.notify_queued.with_label_values(labels).set(0);
        Status {
            name: name.to_owned(),
            format,
            state: Mutex::new(State::default()),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn snapshot(&self, queued: u64) -> WebhookHealth {
        let (failing, consecutive_failures, last_error) = self
            .state
            .lock()
            .map(|s| (s.failing, s.consecutive_failures, s.last_error.clone()))
            .unwrap_or((true, 0, Some("status unavailable".into())));
        WebhookHealth {
            name: self.name.clone(),
            format: self.format.as_str().to_owned(),
            state: if failing { "failing" } else { "ok" }.to_owned(),
            consecutive_failures,
            last_error,
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued,
        }
    }

    fn set_queued<T>(&self, sender: &mpsc::Sender<T>) {
        self.set_queue_depth(queued(sender));
    }

    fn set_queue_depth(&self, depth: u64) {
        METRICS
            .notify_queued
            .with_label_values(&[&self.name])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Records a delivered event; returns true when the webhook was failing until now.
    fn delivered(&self) -> bool {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        METRICS
            .notify_delivered
            .with_label_values(&[&self.name])
            .inc();
        let recovered = self.update(|state| {
            let was_failing = state.failing;
            *state = State::default();
            was_failing
        });
        self.set_failing_gauge(false);
        recovered
    }

    /// Records one failed attempt.
    fn attempt_failed(&self, error: &str) {
        METRICS
            .notify_attempt_failures
            .with_label_values(&[&self.name])
            .inc();
        self.update(|state| {
            state.consecutive_failures += 1;
            state.last_error = Some(error.to_owned());
        });
    }

    /// Records an event given up, and why.
    fn given_up(&self, error: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        METRICS.notify_failed.with_label_values(&[&self.name]).inc();
        self.update(|state| {
            state.failing = true;
            state.last_error = Some(error.to_owned());
        });
        self.set_failing_gauge(true);
    }

    fn set_failing_gauge(&self, failing: bool) {
        METRICS
            .notify_failing
            .with_label_values(&[&self.name])
            .set(i64::from(failing));
    }

    fn update<T: Default>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        self.state
            .lock()
            .map(|mut state| change(&mut state))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn kinds_round_trip_names() {
        for kind in AccessEventKind::ALL {
            assert_eq!(AccessEventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().into())
            );
        }
        assert_eq!(AccessEventKind::parse("request.opened"), None);
    }

    #[test]
    fn empty_config_needs_no_runtime() {
        let notifier = Notifier::start(&NotifyConfig::default()).unwrap();
        notifier.notify(AccessEvent {
            kind: AccessEventKind::Created,
            request_id: "req_1".into(),
            requester: "User::\"alice\"".into(),
            resources: vec!["lk://prod/db".into()],
            duration_secs: 3600,
            reason: "incident".into(),
            ticket: None,
            actor: None,
            comment: None,
            grant_id: None,
            approvals: 0,
            approvals_required: 1,
            time: "2026-01-01T00:00:00.000000Z".into(),
        });
        assert!(notifier.health().is_empty());
    }
}
