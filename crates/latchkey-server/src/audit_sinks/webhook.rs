//! The `webhook` sink: each batch is POSTed as one JSON array of events, in sequence
//! order. Any 2xx status counts as delivered; any other status, or no response within
//! the sink's timeout, is retried with the same events.

use std::sync::Arc;
use std::time::Duration;

use latchkey_core::audit::AuditEvent;

pub struct WebhookSink {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl WebhookSink {
    /// Builds the HTTP client. TLS uses rustls with the ring provider and the webpki root
    /// certificates.
    ///
    /// # Errors
    /// A message when the HTTP client cannot be built.
    pub fn new(url: reqwest::Url, timeout: Duration) -> Result<WebhookSink, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(WebhookSink { url, client })
    }

    pub async fn post(&mut self, events: &[Arc<AuditEvent>]) -> Result<(), String> {
        let body: Vec<&AuditEvent> = events.iter().map(|e| e.as_ref()).collect();
        let response = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {} failed: {}", self.url, describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("POST {} returned {status}", self.url))
        }
    }
}

/// Names the cause of a failed request, which reqwest's own message leaves out.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
