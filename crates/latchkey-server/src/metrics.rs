//! Prometheus metrics, served in the text exposition format at `GET /metrics`.
//!
//! The metrics live in one process-wide registry, so every `AppState` in a process adds to
//! the same counters. A server runs one `AppState`, and tests compare counts before and
//! after an action instead of expecting absolute values.
//!
//! `/metrics` needs no token, like `/v1/sys/health`: it exposes counts, routes, and sink
//! and webhook names, never a principal, a resource name or a secret. Restrict it at the
//! proxy when those counts are sensitive for you.

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template, method and status code.
    pub http_requests: IntCounterVec,
    /// Audit events durably stored by this process.
    pub audit_events: IntCounter,
    /// Events per group-commit batch.
    pub audit_batch_size: HistogramVec,
    /// Seconds from the start of a batch's store transaction to its commit.
    pub audit_commit_seconds: HistogramVec,
    /// Token lookups served from the cache (`hit`) or read from the store (`miss`).
    pub token_cache: IntCounterVec,
    /// Events each sink delivered.
    pub sink_shipped: IntCounterVec,
    /// Events a sink's full queue dropped. The sink reads them from the store later.
    pub sink_dropped: IntCounterVec,
    /// Failed delivery attempts per sink (errors and timeouts).
    pub sink_failures: IntCounterVec,
    /// Events stored but not yet delivered, per sink, as of the sink's last check.
    pub sink_lag: IntGaugeVec,
    /// 1 while a sink is degraded (its last delivery failed), else 0.
    pub sink_degraded: IntGaugeVec,
    /// Access notifications each webhook delivered.
    pub notify_delivered: IntCounterVec,
    /// Access notifications a webhook gave up: rejected, or out of attempts.
    pub notify_failed: IntCounterVec,
    /// Access notifications dropped because the webhook's queue was full.
    pub notify_dropped: IntCounterVec,
    /// Failed delivery attempts per webhook, retried ones included.
    pub notify_attempt_failures: IntCounterVec,
    /// 1 while a webhook is failing (it gave up an event and delivered none since), else 0.
    pub notify_failing: IntGaugeVec,
    /// Access notifications waiting in each webhook's queue.
    pub notify_queued: IntGaugeVec,
}

/// Route label of requests that matched no route template, so that scans of random paths
/// cannot grow the label set without bound.
const UNMATCHED_ROUTE: &str = "unmatched";

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|error| {
        unreachable!("metric `{name}` has a fixed, valid definition: {error}")
    });
    register(registry, name, Box::new(metric.clone()));
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|error| {
        unreachable!("metric `{name}` has a fixed, valid definition: {error}")
    });
    register(registry, name, Box::new(metric.clone()));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[])
        .unwrap_or_else(|error| {
            unreachable!("metric `{name}` has a fixed, valid definition: {error}")
        });
    register(registry, name, Box::new(metric.clone()));
    metric
}

fn register(registry: &Registry, name: &str, metric: Box<dyn prometheus::core::Collector>) {
    if let Err(error) = registry.register(metric) {
        // Only a duplicate name fails here, and every name below is distinct.
        tracing::error!(%error, name, "cannot register a metric");
    }
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("latchkey".into()), None).unwrap_or_default();
        let audit_events = IntCounter::new(
            "audit_events_appended_total",
            "Audit events durably stored by this process.",
        )
        .unwrap_or_else(|error| unreachable!("fixed metric definition: {error}"));
        register(
            &registry,
            "audit_events_appended_total",
            Box::new(audit_events.clone()),
        );
        let sink = &["sink"];
        let webhook = &["webhook"];
        Metrics {
            http_requests: counter_vec(
                &registry,
                "http_requests_total",
                "HTTP requests by route template, method and status code.",
                &["route", "method", "status"],
            ),
            audit_events,
            audit_batch_size: histogram(
                &registry,
                "audit_batch_size",
                "Audit events per group-commit batch.",
                prometheus::exponential_buckets(1.0, 2.0, 12)
                    .unwrap_or_else(|_| vec![1.0, 16.0, 256.0, 2048.0]),
            ),
            audit_commit_seconds: histogram(
                &registry,
                "audit_commit_seconds",
                "Seconds to store one audit batch durably.",
                prometheus::exponential_buckets(0.0001, 2.0, 16)
                    .unwrap_or_else(|_| vec![0.001, 0.01, 0.1, 1.0]),
            ),
            token_cache: counter_vec(
                &registry,
                "token_cache_lookups_total",
                "Token lookups served from the cache (hit) or read from the store (miss).",
                &["result"],
            ),
            sink_shipped: counter_vec(
                &registry,
                "audit_sink_events_shipped_total",
                "Audit events each streaming sink delivered.",
                sink,
            ),
            sink_dropped: counter_vec(
                &registry,
                "audit_sink_events_dropped_total",
                "Audit events a sink's full queue dropped; the sink reads them from the store when it catches up.",
                sink,
            ),
            sink_failures: counter_vec(
                &registry,
                "audit_sink_failures_total",
                "Failed delivery attempts per sink, timeouts included.",
                sink,
            ),
            sink_lag: gauge_vec(
                &registry,
                "audit_sink_lag_events",
                "Audit events stored but not yet delivered by the sink.",
                sink,
            ),
            sink_degraded: gauge_vec(
                &registry,
                "audit_sink_degraded",
                "1 while the sink's last delivery failed, else 0.",
                sink,
            ),
            notify_delivered: counter_vec(
                &registry,
                "notify_events_delivered_total",
                "Access notifications each webhook delivered.",
                webhook,
            ),
            notify_failed: counter_vec(
                &registry,
                "notify_events_failed_total",
                "Access notifications a webhook gave up: rejected by the endpoint, or out of attempts.",
                webhook,
            ),
            notify_dropped: counter_vec(
                &registry,
                "notify_events_dropped_total",
                "Access notifications dropped because the webhook's queue was full.",
                webhook,
            ),
            notify_attempt_failures: counter_vec(
                &registry,
                "notify_attempt_failures_total",
                "Failed delivery attempts per webhook, retried ones and timeouts included.",
                webhook,
            ),
            notify_failing: gauge_vec(
                &registry,
                "notify_webhook_failing",
                "1 while the webhook has given up an event and delivered none since, else 0.",
                webhook,
            ),
            notify_queued: gauge_vec(
                &registry,
                "notify_queue_events",
                "Access notifications waiting in the webhook's queue.",
                webhook,
            ),
            registry,
        }
    }

    /// Records one committed audit batch.
    pub fn audit_batch(&self, events: usize, elapsed: Duration) {
        self.audit_events.inc_by(events as u64);
        self.audit_batch_size
            .with_label_values::<&str>(&[])
            .observe(events as f64);
        self.audit_commit_seconds
            .with_label_values::<&str>(&[])
            .observe(elapsed.as_secs_f64());
    }

    /// Records a token lookup: `hit` when the cache contained the token.
    pub fn token_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.token_cache.with_label_values(&[result]).inc();
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Counts every request by its route template (`/v1/vaults/{vault}`, never the concrete
/// path), method and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    METRICS
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    response
}

/// `GET /metrics`: every metric in the Prometheus text format (unauthenticated).
pub async fn serve_metrics() -> Response {
    match METRICS.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
