//! Access-request notifications delivered to receivers started on 127.0.0.1: signatures,
//! payloads, retries, refusals, dropped events, health and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use latchkey_core::crypto::Key256;
use latchkey_server::app::router;
use latchkey_server::config::ServerConfig;
use latchkey_server::metrics::METRICS;
use latchkey_server::notify::{
    AccessEvent, AccessEventKind, Notifier, NotifyConfig, WebhookHealth,
};
use latchkey_server::state::{AppState, Settings};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::SqliteStore;
use ring::hmac;
use serde_json::Value;
use tower::ServiceExt;

const KEY: &str = "f3b1c0ffee5eed0123456789abcdef42";

// ---------------------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------------------

/// One request as the receiver saw it.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A response of the receiver: a status and, optionally, `Retry-After`.
#[derive(Clone, Copy)]
struct Reply(u16, Option<&'static str>);

/// A webhook endpoint on 127.0.0.1 that records every request. It responds with the
/// planned replies in order, then with the default reply.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    plan: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Reply>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let receiver = Receiver {
            url: format!("http://{address}/hook"),
            received: Arc::default(),
            plan: Arc::default(),
            default: Arc::new(Mutex::new(Reply(204, None))),
        };
        let state = receiver.clone();
        let app = Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    state.received.lock().unwrap().push(Received {
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    let planned = state.plan.lock().unwrap().pop_front();
                    let Reply(status, retry_after) =
                        planned.unwrap_or(*state.default.lock().unwrap());
                    let mut response = axum::response::Response::new(Body::empty());
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some(value) = retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", value.parse().unwrap());
                    }
                    response
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// Sets the status of the next `count` responses.
    fn fail_next(&self, count: usize, status: u16, retry_after: Option<&'static str>) {
        let mut plan = self.plan.lock().unwrap();
        for _ in 0..count {
            plan.push_back(Reply(status, retry_after));
        }
    }

    /// Sets the status of every response after the planned ones.
    fn always(&self, status: u16) {
        *self.default.lock().unwrap() = Reply(status, None);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Starts an endpoint that accepts connections and never responds.
async fn hanging_endpoint() -> (String, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    (format!("http://{address}/hook"), held)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Builds a `[notify]` section with one webhook whose key is in a file. `extra` adds
/// fields to the webhook.
fn config(dir: &tempfile::TempDir, name: &str, url: &str, extra: &str) -> NotifyConfig {
    let key_file = dir.path().join(format!("{name}.key"));
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let text = format!(
        "public_url = \"https://latchkey.example.com\"\n\
         [[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_file = \"{}\"\nretry_base = \"10ms\"\n{extra}\n",
        key_file.display()
    );
    toml::from_str(&text).unwrap()
}

fn start(dir: &tempfile::TempDir, name: &str, url: &str, extra: &str) -> Notifier {
    Notifier::start(&config(dir, name, url, extra)).unwrap()
}

fn event(kind: AccessEventKind, request_id: &str) -> AccessEvent {
    AccessEvent {
        kind,
        request_id: request_id.into(),
        requester: "User::\"alice\"".into(),
        resources: vec!["lk://prod/db".into()],
        duration_secs: 3600,
        reason: "rotate the replica password".into(),
        ticket: Some("OPS-12".into()),
        actor: Some("User::\"bob\"".into()),
        comment: Some("one hour only".into()),
        grant_id: Some("grt_1".into()),
        approvals: 1,
        approvals_required: 1,
        time: "2026-03-01T10:00:00.000000Z".into(),
    }
}

fn health(notifier: &Notifier, name: &str) -> WebhookHealth {
    notifier
        .health()
        .into_iter()
        .find(|h| h.name == name)
        .unwrap()
}

/// Polls the webhook's health until `accept` holds, failing after 60 seconds.
async fn wait_for(
    notifier: &Notifier,
    name: &str,
    what: &str,
    accept: impl Fn(&WebhookHealth) -> bool,
) -> WebhookHealth {
    for _ in 0..3000 {
        let current = health(notifier, name);
        if accept(&current) {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "webhook `{name}` never became {what}: {:?}",
        health(notifier, name)
    );
}

fn verify(key: &[u8], request: &Received) -> bool {
    let timestamp = request.header("x-latchkey-timestamp");
    let Some(hex_mac) = request
        .header("x-latchkey-signature")
        .strip_prefix("sha256=")
    else {
        return false;
    };
    let Ok(mac) = hex::decode(hex_mac) else {
        return false;
    };
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(&request.body);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &message, &mac).is_ok()
}

/// Returns the value of one series in Prometheus text, such as `name{label="x"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn json_delivery_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let notifier = start(&dir, "signed", &receiver.url, "");
    let sent = event(AccessEventKind::Created, "req_1");
    notifier.notify(sent.clone());
    wait_for(&notifier, "signed", "delivered", |h| h.delivered == 1).await;

    let requests = receiver.received();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-latchkey-event"), "request.created");
    let delivery = request.header("x-latchkey-delivery");
    assert!(uuid::Uuid::parse_str(delivery).is_ok(), "{delivery}");
    request
        .header("x-latchkey-timestamp")
        .parse::<i64>()
        .unwrap();
    assert!(
        verify(KEY.as_bytes(), request),
        "the configured key verifies"
    );
    assert!(
        !verify(b"another key, 32 bytes long......", request),
        "another key does not"
    );
    let mut tampered = request.clone();
    tampered.body = Bytes::from(request.body.to_vec().repeat(2));
    assert!(
        !verify(KEY.as_bytes(), &tampered),
        "a changed body does not"
    );

    let body = request.json();
    assert_eq!(body["event"], "request.created");
    assert_eq!(body["delivery"], delivery);
    assert_eq!(
        body["link"],
        "https://latchkey.example.com/approvals/requests/req_1"
    );
    let mut fields = body.clone();
    for extra in ["event", "delivery", "link"] {
        fields.as_object_mut().unwrap().remove(extra);
    }
    let received: AccessEvent = serde_json::from_value(fields).unwrap();
    assert_eq!(received, sent, "every event field arrives unchanged");

    let health = health(&notifier, "signed");
    assert_eq!(health.state, "ok");
    assert_eq!(health.format, "json");
    assert_eq!((health.failed, health.dropped, health.queued), (0, 0, 0));
}

#[tokio::test]
async fn slack_delivery_has_text_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let notifier = start(&dir, "chat", &receiver.url, "format = \"slack\"");
    notifier.notify(event(AccessEventKind::BreakGlass, "req_bg"));
    wait_for(&notifier, "chat", "delivered", |h| h.delivered == 1).await;

    let request = &receiver.received()[0];
    assert_eq!(request.header("x-latchkey-event"), "break_glass");
    assert!(verify(KEY.as_bytes(), request));
    let body = request.json();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("BREAK-GLASS"), "{text}");
    assert!(text.contains("User::\"alice\""), "{text}");
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let rendered = serde_json::to_string(blocks).unwrap();
    for expected in [
        "*Requester*",
        "lk://prod/db",
        "*Duration*\\n1h",
        "rotate the replica password",
        "OPS-12",
        "User::\\\"bob\\\"",
        "one hour only",
    ] {
        assert!(rendered.contains(expected), "{expected} in {rendered}");
    }
    let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
    assert_eq!(
        actions["elements"][0]["url"],
        "https://latchkey.example.com/approvals/requests/req_bg"
    );
    assert!(body.get("request_id").is_none(), "only Slack's fields");
}

#[tokio::test]
async fn retries_keep_delivery_id() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.fail_next(1, 503, None);
    receiver.fail_next(1, 500, None);
    receiver.fail_next(1, 429, None);
    receiver.fail_next(1, 408, None);
    let notifier = start(&dir, "retrying", &receiver.url, "max_attempts = 6");
    notifier.notify(event(AccessEventKind::Approved, "req_2"));
    let health = wait_for(&notifier, "retrying", "delivered", |h| h.delivered == 1).await;

    let requests = receiver.received();
    assert_eq!(requests.len(), 5, "four failures, then the delivery");
    let delivery = requests[0].header("x-latchkey-delivery");
    for request in &requests {
        assert_eq!(request.header("x-latchkey-delivery"), delivery);
        assert!(verify(KEY.as_bytes(), request), "each attempt is signed");
    }
    assert_eq!(health.state, "ok");
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.last_error, None);
    assert_eq!(health.failed, 0);
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.fail_next(1, 503, Some("1"));
    let notifier = start(&dir, "patient", &receiver.url, "");
    notifier.notify(event(AccessEventKind::Created, "req_3"));
    wait_for(&notifier, "patient", "delivered", |h| h.delivered == 1).await;
    let requests = receiver.received();
    assert_eq!(requests.len(), 2);
    // The backoff alone would wait at most 10 ms.
    assert!(
        requests[1].at - requests[0].at >= Duration::from_secs(1),
        "the second attempt came {:?} after the first",
        requests[1].at - requests[0].at
    );
}

#[tokio::test]
async fn retry_after_capped_by_retry_max() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.fail_next(1, 429, Some("3600"));
    let notifier = start(&dir, "capped", &receiver.url, "retry_max = \"50ms\"");
    notifier.notify(event(AccessEventKind::Created, "req_4"));
    // Without the cap the retry would wait an hour, far past this wait's limit.
    wait_for(&notifier, "capped", "delivered", |h| h.delivered == 1).await;
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn client_errors_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.fail_next(1, 404, None);
    let notifier = start(&dir, "refused", &receiver.url, "");
    notifier.notify(event(AccessEventKind::Denied, "req_5"));
    let health = wait_for(&notifier, "refused", "failed", |h| h.failed == 1).await;
    assert_eq!(health.state, "failing");
    assert_eq!(health.consecutive_failures, 1);
    assert_eq!(
        health.last_error.as_deref(),
        Some("the endpoint returned 404 Not Found")
    );

    // The worker sends in order, so a retry of the rejected event would come before this.
    notifier.notify(event(AccessEventKind::Denied, "req_6"));
    let health = wait_for(&notifier, "refused", "delivered", |h| h.delivered == 1).await;
    let requests = receiver.received();
    assert_eq!(requests.len(), 2, "the 404 was not retried");
    assert_ne!(
        requests[0].header("x-latchkey-delivery"),
        requests[1].header("x-latchkey-delivery")
    );
    assert_eq!(health.state, "ok");
}

#[tokio::test]
async fn exhausted_attempts_fail_then_recover() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.always(500);
    let url = format!("{}?token=not-for-logs", receiver.url);
    let notifier = start(&dir, "exhausted", &url, "max_attempts = 3");
    notifier.notify(event(AccessEventKind::Expired, "req_7"));
    let health = wait_for(&notifier, "exhausted", "failed", |h| h.failed == 1).await;
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(health.state, "failing");
    assert_eq!(health.consecutive_failures, 3);
    assert_eq!(health.delivered, 0);
    let error = health.last_error.unwrap();
    assert_eq!(
        error,
        "the endpoint returned 500 Internal Server Error (after 3 attempts)"
    );
    let metrics = METRICS.render().unwrap();
    assert_eq!(
        sample(
            &metrics,
            r#"latchkey_notify_events_failed_total{webhook="exhausted"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"latchkey_notify_attempt_failures_total{webhook="exhausted"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"latchkey_notify_webhook_failing{webhook="exhausted"}"#
        ),
        Some(1.0)
    );

    receiver.always(200);
    notifier.notify(event(AccessEventKind::Revoked, "req_8"));
    let health = wait_for(&notifier, "exhausted", "delivered", |h| h.delivered == 1).await;
    assert_eq!(health.state, "ok");
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.last_error, None);
    assert_eq!(health.failed, 1, "the count of failed events stays");
    let metrics = METRICS.render().unwrap();
    assert_eq!(
        sample(
            &metrics,
            r#"latchkey_notify_webhook_failing{webhook="exhausted"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"latchkey_notify_events_delivered_total{webhook="exhausted"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn connection_errors_retried_without_url() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: connecting is refused.
    let url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "http://{}/hook?token=not-for-logs",
            listener.local_addr().unwrap()
        )
    };
    let notifier = start(&dir, "unreachable", &url, "max_attempts = 2");
    notifier.notify(event(AccessEventKind::Created, "req_9"));
    let health = wait_for(&notifier, "unreachable", "failed", |h| h.failed == 1).await;
    assert_eq!(health.consecutive_failures, 2);
    let error = health.last_error.unwrap();
    assert!(error.ends_with("(after 2 attempts)"), "{error}");
    assert!(!error.contains("token"), "{error}");
    assert!(!error.contains("127.0.0.1"), "{error}");
}

#[tokio::test]
async fn full_queue_drops_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (url, held) = hanging_endpoint().await;
    let mut config = config(&dir, "stuck", &url, "timeout = \"1m\"");
    config.queue = Some(2);
    let notifier = Notifier::start(&config).unwrap();

    let sender = notifier.clone();
    let calls = tokio::task::spawn_blocking(move || {
        for n in 0..10 {
            sender.notify(event(AccessEventKind::Created, &format!("req_{n}")));
        }
    });
    tokio::time::timeout(Duration::from_secs(30), calls)
        .await
        .expect("notify returns while the endpoint hangs")
        .unwrap();

    let health = health(&notifier, "stuck");
    // Two wait in the queue, and the worker may have taken one out already.
    assert!(health.queued <= 2, "{health:?}");
    assert!(
        (7..=8).contains(&health.dropped) && health.dropped + health.queued >= 9,
        "{health:?}"
    );
    assert_eq!((health.delivered, health.failed), (0, 0));
    let metrics = METRICS.render().unwrap();
    assert_eq!(
        sample(
            &metrics,
            r#"latchkey_notify_events_dropped_total{webhook="stuck"}"#
        ),
        Some(health.dropped as f64)
    );
    for _ in 0..3000 {
        if !held.lock().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the worker never connected to the endpoint");
}

#[tokio::test]
async fn webhooks_receive_only_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let notifier = start(
        &dir,
        "filtered",
        &receiver.url,
        "events = [\"break_glass\", \"grant.revoked\"]",
    );
    notifier.notify(event(AccessEventKind::Created, "req_10"));
    notifier.notify(event(AccessEventKind::Approved, "req_10"));
    notifier.notify(event(AccessEventKind::BreakGlass, "req_11"));
    wait_for(&notifier, "filtered", "delivered", |h| h.delivered == 1).await;
    let requests = receiver.received();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("x-latchkey-event"), "break_glass");
    assert_eq!(requests[0].json()["request_id"], "req_11");
    assert_eq!(health(&notifier, "filtered").dropped, 0);
}

#[tokio::test]
async fn slow_webhook_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (hanging, _held) = hanging_endpoint().await;
    let receiver = Receiver::start().await;
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let text = format!(
        "[[webhooks]]\nname = \"slow\"\nurl = \"{hanging}\"\nsecret_file = \"{key}\"\ntimeout = \"1m\"\n\
         [[webhooks]]\nname = \"fast\"\nurl = \"{}\"\nsecret_file = \"{key}\"\n",
        receiver.url,
        key = key_file.display()
    );
    let notifier = Notifier::start(&toml::from_str(&text).unwrap()).unwrap();
    for n in 0..3 {
        notifier.notify(event(AccessEventKind::Created, &format!("req_{n}")));
    }
    wait_for(&notifier, "fast", "delivered", |h| h.delivered == 3).await;
    let slow = health(&notifier, "slow");
    assert_eq!(slow.delivered, 0);
    assert_eq!(receiver.received().len(), 3);
    assert!(
        receiver.received()[0].json().get("link").is_none(),
        "no public_url, no link"
    );
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_config_stops_server_start() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let load = |webhook: &str| {
        let path = dir.path().join("latchkey.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n[tls]\ndisable = true\n[notify]\n[[notify.webhooks]]\n{webhook}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        ServerConfig::load(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let key = format!("secret_file = \"{}\"", key_file.display());
    assert_eq!(
        load(&format!(
            "name = \"ok\"\nurl = \"https://hooks.example.com/x\"\n{key}"
        )),
        Ok(())
    );
    let cases = [
        (
            format!("name = \"a\"\nurl = \"https://h.example/x\"\nformat = \"teams\"\n{key}"),
            "`notify.webhooks` `a`: `format` `teams` is unknown; use `json` or `slack`",
        ),
        (
            format!("name = \"b\"\nurl = \"http://hooks.example.com/x\"\n{key}"),
            "`notify.webhooks` `b`: `url` uses http to `hooks.example.com`; use https",
        ),
        (
            "name = \"c\"\nurl = \"https://h.example/x\"".to_owned(),
            "`notify.webhooks` `c`: the signing key is missing",
        ),
        (
            "name = \"d\"\nurl = \"https://h.example/x\"\nsecret_env = \"LATCHKEY_TEST_NOTIFY_KEY_UNSET\"".to_owned(),
            "`notify.webhooks` `d`: `secret_env`: the environment variable `LATCHKEY_TEST_NOTIFY_KEY_UNSET` is not set",
        ),
        (
            format!(
                "name = \"e\"\nurl = \"https://h.example/x\"\n{key}\n[[notify.webhooks]]\nname = \"e\"\nurl = \"https://h.example/y\"\n{key}"
            ),
            "`notify.webhooks` name `e` is used twice",
        ),
        (
            format!("name = \"f\"\nurl = \"https://h.example/x\"\nevents = [\"request.created\", \"request.escalated\"]\n{key}"),
            "`notify.webhooks` `f`: `events` has the unknown kind `request.escalated`",
        ),
        (
            format!("name = \"g\"\nurl = \"https://h.example/x\"\n{key}\nretries = 3"),
            "unknown field `retries`",
        ),
    ];
    for (webhook, expected) in cases {
        let error = load(&webhook).unwrap_err();
        assert!(error.contains(expected), "{expected} in {error}");
    }

    // The same checks stop `AppState::new`, which starts the notifier.
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let settings = Settings {
        notify: toml::from_str("[[webhooks]]\nname = \"c\"\nurl = \"https://h.example/x\"")
            .unwrap(),
        ..Settings::default()
    };
    let error = AppState::new(Arc::new(store), settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("`notify.webhooks` `c`: the signing key is missing"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Health and metrics through the router
// ---------------------------------------------------------------------------------------

async fn get(app: &Router, uri: &str) -> (StatusCode, Bytes) {
    let response = app
        .clone()
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn health_and_metrics_show_failing_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.always(500);
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let settings = Settings {
        notify: config(&dir, "approvers-health", &receiver.url, "max_attempts = 1"),
        ..Settings::default()
    };
    let state = Arc::new(AppState::new(Arc::new(store), settings).await.unwrap());
    let initialized = initialize(&state, UnsealMethod::KeyFile(Key256::generate().unwrap()))
        .await
        .unwrap();
    state.keyring.install_root(initialized.root_key);
    let app = router(Arc::clone(&state));

    let (status, body) = get(&app, "/v1/sys/health").await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["notify"][0]["name"], "approvers-health");
    assert_eq!(body["notify"][0]["state"], "ok");

    state
        .notifier
        .notify(event(AccessEventKind::Created, "req_h"));
    wait_for(&state.notifier, "approvers-health", "failed", |h| {
        h.failed == 1
    })
    .await;
    let (status, body) = get(&app, "/v1/sys/health").await;
    assert_eq!(status, StatusCode::OK, "a failing webhook keeps HTTP 200");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "notify_degraded");
    let webhook: WebhookHealth = serde_json::from_value(body["notify"][0].clone()).unwrap();
    assert_eq!(webhook.state, "failing");
    assert_eq!(webhook.failed, 1);
    assert_eq!(webhook.consecutive_failures, 1);

    let (status, metrics) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    for (series, value) in [
        ("latchkey_notify_webhook_failing", 1.0),
        ("latchkey_notify_events_failed_total", 1.0),
        ("latchkey_notify_events_delivered_total", 0.0),
        ("latchkey_notify_events_dropped_total", 0.0),
        ("latchkey_notify_queue_events", 0.0),
    ] {
        assert_eq!(
            sample(
                &metrics,
                &format!(r#"{series}{{webhook="approvers-health"}}"#)
            ),
            Some(value),
            "{series}"
        );
    }

    receiver.always(204);
    state
        .notifier
        .notify(event(AccessEventKind::Approved, "req_h"));
    wait_for(&state.notifier, "approvers-health", "delivered", |h| {
        h.delivered == 1
    })
    .await;
    let (_, body) = get(&app, "/v1/sys/health").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "ok");
}
