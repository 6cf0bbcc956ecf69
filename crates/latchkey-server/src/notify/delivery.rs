//! One webhook's worker: takes events from its queue in order, and POSTs each with retries.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::sync::mpsc;

use super::config::{WebhookFormat, WebhookSpec};
use super::{AccessEvent, Status, payload};

/// The result of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth another attempt, after at least `retry_after` when the response set it.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The endpoint rejected the event, and another attempt would get the same status.
    Rejected(String),
}

pub(super) struct Worker {
    spec: WebhookSpec,
    public_url: Option<Arc<reqwest::Url>>,
    client: reqwest::Client,
    queue: mpsc::Receiver<Arc<AccessEvent>>,
    status: Arc<Status>,
}

impl Worker {
    /// Builds the HTTP client: rustls with the ring provider and the webpki roots, the
    /// webhook's timeout, and no redirects, so a redirect cannot lead the signed event to
    /// another host.
    pub(super) fn new(
        spec: WebhookSpec,
        public_url: Option<Arc<reqwest::Url>>,
        queue: mpsc::Receiver<Arc<AccessEvent>>,
        status: Arc<Status>,
    ) -> Result<Worker, String> {
        let client = reqwest::Client::builder()
            .timeout(spec.timeout)
            .connect_timeout(spec.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                format!(
                    "notification webhook `{}`: cannot build the HTTP client: {e}",
                    spec.name
                )
            })?;
        Ok(Worker {
            spec,
            public_url,
            client,
            queue,
            status,
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.spec.name
    }

    /// Delivers events until every [`super::Notifier`] holding this queue is dropped.
    pub(super) async fn run(mut self) {
        while let Some(event) = self.queue.recv().await {
            self.status.set_queue_depth(self.queue.len() as u64);
            self.deliver(&event).await;
        }
        tracing::debug!(webhook = %self.spec.name, "notification webhook stopped");
    }

    async fn deliver(&self, event: &AccessEvent) {
        let delivery = uuid::Uuid::new_v4().to_string();
        let link = payload::request_link(self.public_url.as_deref(), &event.request_id);
        let body = match self.spec.format {
            WebhookFormat::Json => payload::json_payload(event, &delivery, link.as_deref()),
            WebhookFormat::Slack => payload::slack_payload(event, link.as_deref()),
        };
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(error) => {
                let error = format!("cannot encode the event: {error}");
                self.status.attempt_failed(&error);
                self.give_up(event, &delivery, &error);
                return;
            }
        };
        let mut attempt = 1;
        let error = loop {
            let (error, retry_after) = match self.attempt(event, &delivery, &body).await {
                Attempt::Delivered => {
                    if self.status.delivered() {
                        tracing::info!(webhook = %self.spec.name, "notification webhook recovered");
                    }
                    return;
                }
                Attempt::Rejected(error) => {
                    self.status.attempt_failed(&error);
                    break error;
                }
                Attempt::Retry { error, retry_after } => (error, retry_after),
            };
            self.status.attempt_failed(&error);
            if attempt >= self.spec.max_attempts {
                break format!("{error} (after {attempt} attempts)");
            }
            let delay = retry_delay(
                attempt,
                self.spec.retry_base,
                self.spec.retry_max,
                retry_after,
                jitter(),
            );
            tracing::debug!(webhook = %self.spec.name, request_id = %event.request_id, %delivery, attempt, %error, ?delay, "notification attempt failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        };
        self.give_up(event, &delivery, &error);
    }

    /// Counts `event` as failed and logs why.
    fn give_up(&self, event: &AccessEvent, delivery: &str, error: &str) {
        self.status.given_up(error);
        tracing::warn!(
            webhook = %self.spec.name,
            event = event.kind.as_str(),
            request_id = %event.request_id,
            %delivery,
            %error,
            "notification not delivered"
        );
    }

    async fn attempt(&self, event: &AccessEvent, delivery: &str, body: &[u8]) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.spec.secret.sign(timestamp, body);
        let response = self
            .client
            .post(self.spec.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-latchkey-event", event.kind.as_str())
            .header("x-latchkey-delivery", delivery)
            .header("x-latchkey-timestamp", timestamp.to_string())
            .header("x-latchkey-signature", signature)
            .body(body.to_vec())
            .send()
            .await;
        match response {
            Ok(response) => classify(response.status(), response.headers().get(RETRY_AFTER)),
            Err(error) => Attempt::Retry {
                error: describe(error),
                retry_after: None,
            },
        }
    }
}

/// Classifies a response status: 2xx delivers, 408, 429 and 5xx are retried, and any
/// other status is final.
fn classify(status: StatusCode, retry_after: Option<&HeaderValue>) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered;
    }
    let error = format!("the endpoint returned {status}");
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Attempt::Retry {
            error,
            retry_after: retry_after.and_then(parse_retry_after),
        };
    }
    if status.is_redirection() {
        return Attempt::Rejected(format!(
            "{error}; redirects are not followed, so configure the final URL"
        ));
    }
    Attempt::Rejected(error)
}

/// `Retry-After` in seconds. The HTTP-date form is ignored, and the backoff applies.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// Computes the wait after failed attempt number `attempt` (1 for the first): `base`
/// doubled for each earlier attempt, then lowered by up to half by `jitter` (0 to 1), so
/// webhooks failing together do not retry together. `Retry-After` raises it, `max` caps it.
fn retry_delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let backoff = base.saturating_mul(1 << doublings).min(max);
    let jittered = backoff.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0);
    retry_after
        .map_or(jittered, |wait| wait.max(jittered))
        .min(max)
}

/// Returns a number from 0 to 1 from the system's random generator, or 0 when it fails.
fn jitter() -> f64 {
    latchkey_core::crypto::random_bytes::<4>()
        .map(|bytes| f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX))
        .unwrap_or(0.0)
}

/// Describes a failed request by its cause, without the URL, which may carry a credential.
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "the request timed out".to_owned();
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<u64> = (1..=11)
            .map(|n| retry_delay(n, BASE, MAX, None, 0.0).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(1000, BASE, MAX, None, 0.0), MAX);
    }

    #[test]
    fn jitter_takes_off_at_most_half() {
        assert_eq!(retry_delay(3, BASE, MAX, None, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(3, BASE, MAX, None, 0.5), Duration::from_secs(3));
        for _ in 0..100 {
            let delay = retry_delay(3, BASE, MAX, None, jitter());
            assert!(delay >= Duration::from_secs(2), "{delay:?}");
            assert!(delay <= Duration::from_secs(4), "{delay:?}");
        }
    }

    #[test]
    fn retry_after_raises_wait_within_cap() {
        let ask = |seconds| Some(Duration::from_secs(seconds));
        assert_eq!(
            retry_delay(1, BASE, MAX, ask(30), 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(retry_delay(1, BASE, MAX, ask(3600), 0.0), MAX);
        assert_eq!(
            retry_delay(4, BASE, MAX, ask(2), 0.0),
            Duration::from_secs(8),
            "the backoff wins when it is longer"
        );
    }

    #[test]
    fn statuses_classify_into_three_outcomes() {
        let retry_after = HeaderValue::from_static("7");
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Attempt::Delivered);
        for status in [
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(
                classify(status, Some(&retry_after)),
                Attempt::Retry {
                    error: format!("the endpoint returned {status}"),
                    retry_after: Some(Duration::from_secs(7)),
                }
            );
        }
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::NOT_FOUND,
            StatusCode::GONE,
        ] {
            assert_eq!(
                classify(status, None),
                Attempt::Rejected(format!("the endpoint returned {status}"))
            );
        }
        assert!(matches!(
            classify(StatusCode::FOUND, None),
            Attempt::Rejected(error) if error.contains("redirects are not followed")
        ));
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static(" 12 ")),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("-1")), None);
    }
}
