//! Audit evidence over the real router and a real SQLite store: metrics, streaming sinks,
//! the access report and retention. Receivers for the sinks are sockets and small servers
//! that each test opens on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use latchkey_core::crypto::Key256;
use latchkey_server::app::router;
use latchkey_server::state::{AppState, Settings, SharedState};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{AuditUpkeep, SqliteStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    _dir: tempfile::TempDir,
    state: SharedState,
    app: Router,
    root: String,
    store: SqliteStore,
}

/// Builds a server over a fresh SQLite store, initialized and unsealed.
async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    harness_over(dir, store).await
}

async fn harness_over(dir: tempfile::TempDir, store: SqliteStore) -> Harness {
    harness_with(dir, store, Settings::default()).await
}

async fn harness_with(dir: tempfile::TempDir, store: SqliteStore, settings: Settings) -> Harness {
    let state = Arc::new(
        AppState::new(Arc::new(store.clone()), settings)
            .await
            .unwrap(),
    );
    let initialized = initialize(&state, UnsealMethod::KeyFile(Key256::generate().unwrap()))
        .await
        .unwrap();
    state.keyring.install_root(initialized.root_key);
    Harness {
        _dir: dir,
        app: router(Arc::clone(&state)),
        state,
        root: initialized.root_token.expose().to_string(),
        store,
    }
}

impl Harness {
    async fn call_raw(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => request.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.call_raw(method, uri, token, body).await;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn root(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let root = self.root.clone();
        self.call(method, uri, Some(&root), body).await
    }

    async fn create_vault(&self, name: &str, env: &str) {
        let (status, body) = self
            .root(
                "POST",
                "/v1/vaults",
                Some(json!({"name": name, "tags": {"env": env}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn put_secret(&self, vault: &str, secret: &str) {
        let (status, body) = self
            .root(
                "PUT",
                &format!("/v1/vaults/{vault}/secrets/{secret}"),
                Some(json!({"fields": {"password": {"text": format!("{vault}-{secret}-pw")}}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn create_user(&self, name: &str, groups: &[&str]) -> String {
        let (status, body) = self
            .root(
                "POST",
                "/v1/users",
                Some(json!({"name": name, "groups": groups})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = self
            .root(
                "POST",
                "/v1/tokens",
                Some(json!({"user": name, "ttl": "15m", "max_ttl": "1h"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    async fn put_policy(&self, name: &str, text: &str) {
        let (status, body) = self
            .root(
                "PUT",
                &format!("/v1/policies/{name}"),
                Some(json!({"policy": text})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn read(&self, token: &str, reference: &str) -> StatusCode {
        let (status, _) = self
            .call(
                "GET",
                &format!("/v1/read?ref={reference}"),
                Some(token),
                None,
            )
            .await;
        status
    }

    async fn metrics(&self) -> String {
        let (status, bytes) = self.call_raw("GET", "/metrics", None, None).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(bytes).unwrap()
    }
}

/// Value of the sample whose line starts with `series` (name and labels as printed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_audit_and_cache() {
    let h = harness().await;
    let before = h.metrics().await;

    h.create_vault("prod", "prod").await;
    let (status, _) = h.root("GET", "/v1/vaults/prod", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.root("GET", "/v1/vaults/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call("GET", "/v1/no/such/route", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let after = h.metrics().await;
    let vault_ok =
        r#"latchkey_http_requests_total{method="GET",route="/v1/vaults/{vault}",status="200"}"#;
    let vault_missing =
        r#"latchkey_http_requests_total{method="GET",route="/v1/vaults/{vault}",status="404"}"#;
    let unmatched = r#"latchkey_http_requests_total{method="GET",route="unmatched",status="404"}"#;
    assert!(
        sample(&after, vault_ok) - sample(&before, vault_ok) >= 1.0,
        "{after}"
    );
    assert!(sample(&after, vault_missing) - sample(&before, vault_missing) >= 1.0);
    assert!(sample(&after, unmatched) - sample(&before, unmatched) >= 1.0);
    assert!(
        !after.contains("/v1/vaults/prod"),
        "routes are templates, never concrete paths"
    );

    let appended = "latchkey_audit_events_appended_total";
    assert!(
        sample(&after, appended) - sample(&before, appended) >= 3.0,
        "three audited requests"
    );
    assert!(sample(&after, "latchkey_audit_batch_size_count") >= 1.0);
    assert!(sample(&after, "latchkey_audit_commit_seconds_count") >= 1.0);
    let hits = r#"latchkey_token_cache_lookups_total{result="hit"}"#;
    assert!(
        sample(&after, hits) - sample(&before, hits) >= 1.0,
        "the root token was cached after its first use"
    );
    assert!(
        sample(
            &after,
            r#"latchkey_token_cache_lookups_total{result="miss"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn metrics_need_no_token_and_are_text() {
    let h = harness().await;
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let _ = (&h.state, &h.store);
}

// ---------------------------------------------------------------------------------------
// Streaming sinks
// ---------------------------------------------------------------------------------------

use latchkey_core::audit::AuditEvent;
use latchkey_server::audit_sinks::{self, SinkConfig, SinkHealth};
use std::time::Duration;

fn sink_spec(text: &str) -> audit_sinks::SinkSpec {
    toml::from_str::<SinkConfig>(text).unwrap().check().unwrap()
}

impl Harness {
    fn start_sink(&self, text: &str, node: &str) {
        audit_sinks::start(
            Arc::clone(&self.state.store),
            self.state.audit.feed(),
            vec![sink_spec(text)],
            node,
        )
        .unwrap();
    }

    async fn sink_health(&self, name: &str) -> SinkHealth {
        let (status, body) = self.call("GET", "/v1/sys/health", None, None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a sink never makes health fail: {body}"
        );
        let sinks: Vec<SinkHealth> = serde_json::from_value(body["audit_sinks"].clone()).unwrap();
        sinks.into_iter().find(|s| s.name == name).unwrap()
    }

    /// Polls health until `accept` holds for the sink, failing after 60 seconds.
    async fn wait_for_sink(
        &self,
        name: &str,
        what: &str,
        accept: impl Fn(&SinkHealth) -> bool,
    ) -> SinkHealth {
        for _ in 0..1200 {
            let health = self.sink_health(name).await;
            if accept(&health) {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "sink `{name}` never became {what}: {:?}",
            self.sink_health(name).await
        );
    }

    async fn head_seq(&self) -> u64 {
        self.store.audit_head().await.unwrap().unwrap().0
    }

    async fn stored_seqs(&self) -> Vec<u64> {
        self.store
            .audit_events(0, 1_000_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    /// Creates a vault, a secret in it, and a user whose policy lets them read it; returns
    /// the user's token.
    async fn readable_secret(&self) -> String {
        self.create_vault("staging", "staging").await;
        self.put_secret("staging", "db").await;
        let token = self.create_user("alice", &["devs"]).await;
        self.put_policy(
            "devs-staging",
            r#"permit(principal in Group::"devs", action == Action::"read", resource)
               when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "staging" };"#,
        )
        .await;
        token
    }
}

#[tokio::test]
async fn hanging_webhook_never_blocks_reads() {
    let h = harness().await;
    let alice = h.readable_secret().await;
    // Accepts connections and never reads from them, so every POST hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    h.start_sink(
        &format!("name = \"hang\"\ntype = \"webhook\"\nurl = \"http://{address}/\"\ntimeout = \"1s\"\nqueue = 8"),
        "node-a",
    );

    for _ in 0..50 {
        assert_eq!(
            h.read(&alice, "lk://staging/db/password").await,
            StatusCode::OK
        );
    }
    let health = h
        .wait_for_sink("hang", "degraded", |s| s.state == "degraded")
        .await;
    assert_eq!(health.kind, "webhook");
    assert!(
        health.last_error.as_deref().unwrap().contains("timed out"),
        "{health:?}"
    );
    assert_eq!(health.cursor, 0, "nothing was delivered");
    for _ in 0..20 {
        assert_eq!(
            h.read(&alice, "lk://staging/db/password").await,
            StatusCode::OK
        );
    }
    let metrics = h.metrics().await;
    assert!(
        sample(
            &metrics,
            r#"latchkey_audit_sink_failures_total{sink="hang"}"#
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            r#"latchkey_audit_sink_events_dropped_total{sink="hang"}"#
        ) >= 1.0,
        "the queue of 8 overflowed"
    );
    assert_eq!(
        sample(&metrics, r#"latchkey_audit_sink_degraded{sink="hang"}"#),
        1.0
    );
    assert!(!held.lock().unwrap().is_empty(), "the sink did connect");
}

/// Starts a receiver on `listener` that records every POSTed batch.
fn webhook_receiver(
    listener: tokio::net::TcpListener,
) -> Arc<std::sync::Mutex<Vec<Vec<AuditEvent>>>> {
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    let app = Router::new().route(
        "/ingest",
        axum::routing::post(move |axum::Json(batch): axum::Json<Vec<AuditEvent>>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(batch);
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    batches
}

#[tokio::test]
async fn webhook_catches_up_after_being_down() {
    let h = harness().await;
    // Find a free port, then close it, so the first deliveries are refused.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    h.start_sink(
        &format!("name = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/ingest\"\ntimeout = \"2s\"\nbatch = 7\nqueue = 4"),
        "node-a",
    );
    for i in 0..30 {
        h.create_vault(&format!("v{i}"), "dev").await;
    }
    let health = h
        .wait_for_sink("siem", "degraded", |s| s.state == "degraded")
        .await;
    assert!(
        health
            .last_error
            .unwrap()
            .contains(&format!("127.0.0.1:{port}"))
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let batches = webhook_receiver(listener);
    let head = h.head_seq().await;
    h.wait_for_sink("siem", "caught up", |s| s.state == "ok" && s.cursor >= head)
        .await;

    let batches = batches.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 7),
        "batches respect `batch`"
    );
    let received: Vec<u64> = batches.iter().flatten().map(|e| e.seq).collect();
    let stored = h.stored_seqs().await;
    assert_eq!(
        &received[..],
        &stored[..received.len()],
        "in order, no gap, no duplicate"
    );
    assert!(received.len() as u64 >= head);
    let first = &batches[0][0];
    assert_eq!(
        first,
        &h.store.audit_events(0, 1).await.unwrap()[0],
        "events arrive exactly as stored"
    );
}

/// Reads every line of `NAME` and its rotated `NAME.LAST_SEQ` files, oldest first.
fn file_seqs(dir: &std::path::Path, name: &str) -> (Vec<u64>, usize) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.starts_with(name))
        .collect();
    files.sort();
    // The current file contains the newest events, so it is read last.
    files.rotate_left(1);
    let mut seqs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in text.lines() {
            seqs.push(serde_json::from_str::<AuditEvent>(line).unwrap().seq);
        }
    }
    (seqs, files.len())
}

#[tokio::test]
async fn file_rotation_under_load_loses_nothing() {
    let h = Arc::new(harness().await);
    let alice = h.readable_secret().await;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.jsonl");
    h.start_sink(
        &format!("name = \"local\"\ntype = \"file\"\npath = \"{}\"\nmax_bytes = 16384\nqueue = 32\nbatch = 25", path.display()),
        "node-a",
    );

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h = Arc::clone(&h);
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                assert_eq!(
                    h.read(&alice, "lk://staging/db/password").await,
                    StatusCode::OK
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let head = h.head_seq().await;
    assert!(head > 800);
    h.wait_for_sink("local", "caught up", |s| s.cursor >= head)
        .await;

    let (seqs, files) = file_seqs(out.path(), "audit.jsonl");
    assert!(files > 5, "the file rotated: {files} files");
    assert_eq!(
        seqs,
        h.stored_seqs().await,
        "every stored event once, in order"
    );
}

#[tokio::test]
async fn syslog_udp_and_tcp_lines_are_rfc5424() {
    let h = harness().await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    h.start_sink(
        &format!("name = \"syslog-udp\"\ntype = \"syslog\"\nprotocol = \"udp\"\naddress = \"{}\"\nhostname = \"lk-test\"", udp.local_addr().unwrap()),
        "node-a",
    );
    h.start_sink(
        &format!("name = \"syslog-tcp\"\ntype = \"syslog\"\nprotocol = \"tcp\"\naddress = \"{}\"\nfacility = 4", tcp.local_addr().unwrap()),
        "node-a",
    );
    h.create_vault("prod", "prod").await;
    let (status, _) = h
        .call("GET", "/v1/vaults", Some("lkt_not_a_token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let head = h.head_seq().await;
    let stored = h.store.audit_events(0, 100).await.unwrap();

    let mut datagrams = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    while datagrams.len() < head as usize {
        let n = tokio::time::timeout(Duration::from_secs(30), udp.recv(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        datagrams.push(String::from_utf8(buffer[..n].to_vec()).unwrap());
    }
    for (message, event) in datagrams.iter().zip(&stored) {
        assert_rfc5424(message, event, 10, "lk-test");
    }

    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(30), tcp.accept())
        .await
        .unwrap()
        .unwrap();
    let mut frames = Vec::new();
    let mut pending = Vec::new();
    while frames.len() < head as usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read(&mut stream, &mut chunk),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(n > 0, "the sink closed the stream early");
        pending.extend_from_slice(&chunk[..n]);
        // Octet counting: decimal length, one space, then exactly that many bytes.
        while let Some(space) = pending.iter().position(|b| *b == b' ') {
            let length: usize = std::str::from_utf8(&pending[..space])
                .unwrap()
                .parse()
                .unwrap();
            if pending.len() < space + 1 + length {
                break;
            }
            frames
                .push(String::from_utf8(pending[space + 1..space + 1 + length].to_vec()).unwrap());
            pending.drain(..space + 1 + length);
        }
    }
    for (message, event) in frames.iter().zip(&stored) {
        assert_rfc5424(message, event, 4, "-");
    }
}

/// Checks the header fields of an RFC 5424 message and that its MSG is the stored event.
fn assert_rfc5424(message: &str, event: &AuditEvent, facility: u16, hostname: &str) {
    let rest = message.strip_prefix('<').unwrap();
    let (priority, rest) = rest.split_once('>').unwrap();
    let severity = match event.record.outcome {
        latchkey_core::audit::Outcome::Allowed => 6,
        latchkey_core::audit::Outcome::Denied => 5,
        latchkey_core::audit::Outcome::Failed => 4,
    };
    assert_eq!(
        priority.parse::<u16>().unwrap(),
        facility * 8 + severity,
        "{message}"
    );
    let fields: Vec<&str> = rest.splitn(8, ' ').collect();
    assert_eq!(fields[0], "1", "VERSION");
    assert_eq!(fields[1], event.record.time, "TIMESTAMP");
    assert!(chrono::DateTime::parse_from_rfc3339(fields[1]).is_ok());
    assert_eq!(fields[2], hostname, "HOSTNAME");
    assert_eq!(fields[3], "latchkey", "APP-NAME");
    assert!(fields[4].parse::<u32>().is_ok(), "PROCID");
    assert_eq!(fields[5], "audit", "MSGID");
    assert_eq!(fields[6], "-", "STRUCTURED-DATA");
    let body: AuditEvent = serde_json::from_str(fields[7]).unwrap();
    assert_eq!(&body, event, "MSG is the stored event");
}

#[tokio::test]
async fn two_nodes_ship_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("latchkey.db");
    let first = SqliteStore::open(&db).await.unwrap();
    let a = harness_over(dir, first).await;
    // A second node over the same database, as with PostgreSQL behind a load balancer.
    let second = SqliteStore::open(&db).await.unwrap();
    let state_b = Arc::new(
        AppState::new(Arc::new(second), Settings::default())
            .await
            .unwrap(),
    );
    let out = tempfile::tempdir().unwrap();
    let sink = |file: &str| {
        format!(
            "name = \"shared\"\ntype = \"file\"\npath = \"{}\"",
            out.path().join(file).display()
        )
    };
    a.start_sink(&sink("a.jsonl"), "node-a");
    h_wait_owner(&a).await;
    audit_sinks::start(
        Arc::clone(&state_b.store),
        state_b.audit.feed(),
        vec![sink_spec(&sink("b.jsonl"))],
        "node-b",
    )
    .unwrap();
    let b_health = || {
        state_b
            .audit
            .feed()
            .health()
            .into_iter()
            .find(|s| s.name == "shared")
            .unwrap()
    };
    for _ in 0..200 {
        if b_health().state == "standby" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b_health().state,
        "standby",
        "node b waits while node a holds the lease"
    );

    for i in 0..20 {
        a.create_vault(&format!("v{i}"), "dev").await;
    }
    let head = a.head_seq().await;
    a.wait_for_sink("shared", "caught up", |s| s.cursor >= head)
        .await;
    let (from_a, _) = file_seqs(out.path(), "a.jsonl");
    assert_eq!(from_a, a.stored_seqs().await);
    assert!(
        !out.path().join("b.jsonl").exists(),
        "node b shipped nothing"
    );
}

async fn h_wait_owner(h: &Harness) {
    h.wait_for_sink("shared", "owned", |s| s.state == "ok")
        .await;
}

// ---------------------------------------------------------------------------------------
// Access report
// ---------------------------------------------------------------------------------------

use latchkey_core::audit::{AuditRecord, Outcome, seal_event};
use latchkey_server::access_report::{self, InventoryItem, ReportInput};
use std::collections::BTreeMap;

/// Compares `actual` with the checked-in file `tests/fixtures/NAME`. With
/// `UPDATE_SNAPSHOTS=1` it rewrites the file instead; review the diff before committing.
fn assert_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from the output:\n{actual}",
        path.display()
    );
}

fn fixture_event(
    seq: u64,
    minute: u32,
    principal: &str,
    resource: &str,
    outcome: Outcome,
    detail: &[(&str, &str)],
    policies: &[&str],
) -> AuditEvent {
    let record = AuditRecord {
        time: format!("2026-11-30T09:{minute:02}:00.000000Z"),
        request_id: format!("req-{seq}"),
        principal: principal.into(),
        action: "read".into(),
        resource: resource.into(),
        outcome,
        reason: (outcome == Outcome::Denied).then(|| "permission_denied".into()),
        policies: policies.iter().map(|p| p.to_string()).collect(),
        client_addr: Some("127.0.0.1".into()),
        token_id: None,
        detail: detail
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    seal_event(seq, &latchkey_core::audit::GENESIS_HASH, record)
}

fn fixture_principal(name: &str, groups: &[&str], active: bool) -> latchkey_store::PrincipalRow {
    latchkey_store::PrincipalRow {
        id: format!("prn_{name}"),
        kind: "user".into(),
        name: name.into(),
        active,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        created_at: 0,
    }
}

fn item(vault: &str, env: &str, secret: &str) -> InventoryItem {
    InventoryItem {
        vault: vault.into(),
        vault_tags: BTreeMap::from([("env".to_string(), env.to_string())]),
        secret: secret.into(),
        tags: BTreeMap::new(),
    }
}

#[test]
fn access_report_matches_snapshot() {
    let engine = latchkey_core::policy::PolicyEngine::new([
        (
            "devs-staging",
            r#"permit(principal in Group::"devs", action == Action::"read", resource)
               when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "staging" };"#,
        ),
        (
            "ops-prod",
            r#"permit(principal in Group::"ops", action == Action::"read", resource)
               when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "prod" };"#,
        ),
    ])
    .unwrap();
    let alice = r#"User::"alice""#;
    let bob = r#"User::"bob""#;
    let staging_db = r#"Secret::"staging/db""#;
    let prod_db = r#"Secret::"prod/db""#;
    let grant = [
        ("grant", "grt_01"),
        ("approved_by", r#"User::"dave""#),
        ("approval_reason", "INC-4211 failover"),
    ];
    let break_glass = [
        ("grant", "grt_02"),
        ("approved_by", ""),
        ("approval_reason", "outage, approver unreachable"),
        ("break_glass", "true"),
    ];
    let events = vec![
        fixture_event(
            11,
            0,
            alice,
            staging_db,
            Outcome::Allowed,
            &[("field", "password")],
            &["devs-staging"],
        ),
        fixture_event(
            12,
            5,
            alice,
            staging_db,
            Outcome::Allowed,
            &[("field", "password")],
            &["devs-staging"],
        ),
        fixture_event(13, 6, alice, prod_db, Outcome::Denied, &[], &[]),
        fixture_event(14, 7, alice, prod_db, Outcome::Denied, &[], &[]),
        fixture_event(
            15,
            10,
            bob,
            prod_db,
            Outcome::Allowed,
            &grant,
            &["ops-prod"],
        ),
        fixture_event(
            16,
            11,
            bob,
            prod_db,
            Outcome::Allowed,
            &grant,
            &["ops-prod"],
        ),
        fixture_event(
            17,
            12,
            bob,
            prod_db,
            Outcome::Allowed,
            &break_glass,
            &["ops-prod"],
        ),
        fixture_event(
            18,
            20,
            bob,
            r#"Secret::"old/key""#,
            Outcome::Allowed,
            &[],
            &["ops-prod"],
        ),
        fixture_event(
            19,
            30,
            alice,
            staging_db,
            Outcome::Allowed,
            &[("field", "username")],
            &["devs-staging"],
        ),
    ];
    let inventory = vec![
        item("prod", "prod", "api"),
        item("prod", "prod", "db"),
        item("staging", "staging", "cache"),
        item("staging", "staging", "db"),
    ];
    let principals = vec![
        fixture_principal("root", &[], true),
        fixture_principal("alice", &["devs"], true),
        fixture_principal("bob", &["ops"], true),
        fixture_principal("carol", &["devs"], false),
    ];
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
        .unwrap()
        .to_utc();
    let report = access_report::build(&ReportInput {
        since: "2026-11-27T12:00:00.000000Z".into(),
        until: "2026-12-04T12:00:00.000000Z".into(),
        now,
        events: &events,
        inventory: &inventory,
        principals: &principals,
        engine: &engine,
    });

    assert_eq!(
        report.unused_access.len(),
        2,
        "alice never read staging/cache, bob never read prod/api"
    );
    let staging = report
        .secrets
        .iter()
        .find(|s| s.resource == staging_db)
        .unwrap();
    assert_eq!(staging.reads[0].count, 3);
    let prod = report
        .secrets
        .iter()
        .find(|s| s.resource == prod_db)
        .unwrap();
    assert_eq!(prod.denied[0].count, 2);
    assert_eq!(prod.break_glass.len(), 1);
    let text = serde_json::to_string_pretty(&report).unwrap() + "\n";
    assert_snapshot("access_report.json", &text);
}

#[tokio::test]
async fn access_report_endpoint_lists_reads() {
    let h = harness().await;
    let alice = h.readable_secret().await;
    h.put_secret("staging", "cache").await;
    assert_eq!(
        h.read(&alice, "lk://staging/db/password").await,
        StatusCode::OK
    );
    assert_eq!(
        h.read(&alice, "lk://staging/db/password").await,
        StatusCode::OK
    );

    let (status, body) = h
        .call("GET", "/v1/reports/access?since=1h", Some(&alice), None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only admins see the report: {body}"
    );

    let (status, report) = h.root("GET", "/v1/reports/access?since=1h", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let db = report["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["secret"] == "db")
        .unwrap();
    assert_eq!(db["reads"][0]["principal"], r#"User::"alice""#);
    assert_eq!(db["reads"][0]["count"], 2);
    assert_eq!(db["reads"][0]["grant"], "");
    let unused: Vec<&str> = report["unused_access"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["resource"].as_str().unwrap())
        .collect();
    assert_eq!(unused, vec![r#"Secret::"staging/cache""#]);

    let (status, body) = h.root("GET", "/v1/reports/access?since=soon", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`since`: invalid time `soon`"),
        "{body}"
    );
    let (status, body) = h
        .root("GET", "/v1/reports/access?since=1h&until=2h", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not before `until`"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

use latchkey_core::audit::{AuditVerifier, ChainVerifier};

/// Builds a server that signs a checkpoint every 5 events and keeps events for one second.
async fn retention_harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let settings = Settings {
        audit_checkpoints: latchkey_server::audit_log::CheckpointSettings {
            every: 5,
            interval: Duration::from_secs(3600),
        },
        audit_retention: Some(("1s".into(), Duration::from_secs(1))),
        ..Settings::default()
    };
    harness_with(dir, store, settings).await
}

impl Harness {
    async fn record_export(&self, first: u64, last: u64) -> (StatusCode, Value) {
        let events = self
            .store
            .audit_events(first - 1, (last - first + 1) as u32)
            .await
            .unwrap();
        self.root(
            "POST",
            "/v1/audit/exports",
            Some(json!({
                "first_seq": first, "last_seq": last, "events": last - first + 1,
                "sha256": "0".repeat(64), "file_name": "audit.jsonl",
                "first_hash": events.first().unwrap().hash, "last_hash": events.last().unwrap().hash,
            })),
        )
        .await
    }

    async fn verify_live(
        &self,
    ) -> Result<latchkey_core::audit::AuditSummary, latchkey_core::audit::AuditBreak> {
        let events = self.store.audit_events(0, 1_000_000).await.unwrap();
        let checkpoints = self.store.checkpoints(0, 10_000).await.unwrap();
        let signer = self.state.audit.signer().await.unwrap();
        let mut verifier = AuditVerifier::new(
            signer.public_key(),
            ChainVerifier::continuing(&events[0]),
            checkpoints,
        )?;
        for event in &events {
            verifier.push(event)?;
        }
        verifier.finish()
    }
}

#[tokio::test]
async fn purge_stops_at_checkpoint_anchor() {
    let h = retention_harness().await;
    for i in 0..23 {
        h.create_vault(&format!("v{i}"), "dev").await;
    }
    let exported_to = h.head_seq().await;
    // Checkpoints are signed after the batch that reaches each multiple of 5.
    let mut checkpoints = Vec::new();
    for _ in 0..200 {
        checkpoints = h.store.checkpoints(0, 100).await.unwrap();
        if checkpoints.last().is_some_and(|c| c.seq >= 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(checkpoints.iter().any(|c| c.seq >= 20), "{checkpoints:?}");
    // Let every event so far age past the one-second retention.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let (status, plan) = h.root("POST", "/v1/audit/purge", Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["dry_run"], true, "a dry run unless asked otherwise");
    assert_eq!(plan["events"], 0, "no export recorded yet: {plan}");
    assert!(
        plan["limited_by"].as_str().unwrap().starts_with("exports"),
        "{plan}"
    );

    let (status, body) = h.record_export(1, exported_to).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, plan) = h
        .root("POST", "/v1/audit/purge", Some(json!({"dry_run": true})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let anchor = plan["purge_before"].as_u64().unwrap();
    // Events below the anchor are deleted, so the export must cover up to `anchor - 1`.
    assert!(anchor > 1, "{plan}");
    assert!(anchor - 1 <= exported_to, "{plan}");
    let signed: Vec<u64> = h
        .store
        .checkpoints(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert!(
        signed.contains(&anchor),
        "the purge stops at a checkpoint: {anchor} not in {signed:?}"
    );
    assert_eq!(plan["events"].as_u64().unwrap(), anchor - 1);
    assert_eq!(
        h.store.audit_first_seq().await.unwrap(),
        Some(1),
        "a dry run deletes nothing"
    );

    let (status, done) = h
        .root("POST", "/v1/audit/purge", Some(json!({"dry_run": false})))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["events"].as_u64().unwrap(), anchor - 1);
    assert_eq!(h.store.audit_first_seq().await.unwrap(), Some(anchor));
    let summary = h.verify_live().await.unwrap();
    assert!(
        summary.checkpoints >= 1,
        "the anchor checkpoint was matched: {summary:?}"
    );

    let purge_events = h
        .store
        .search_audit(&latchkey_store::AuditFilter {
            limit: 10,
            action: Some("audit_purge".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let executed = purge_events
        .iter()
        .find(|e| e.record.detail["dry_run"] == "false")
        .unwrap();
    assert_eq!(
        executed.record.detail["purge_before"],
        anchor.to_string(),
        "the purge is itself audited"
    );

    // Editing the kept first event breaks the anchor.
    sqlx::query("UPDATE audit_events SET principal = 'User::\"mallory\"' WHERE seq = ?")
        .bind(anchor as i64)
        .execute(h.store.pool())
        .await
        .unwrap();
    let broken = h.verify_live().await.unwrap_err();
    assert_eq!(broken.seq(), anchor);
}

#[tokio::test]
async fn export_record_rejects_bad_ranges_and_hashes() {
    let h = retention_harness().await;
    for i in 0..4 {
        h.create_vault(&format!("v{i}"), "dev").await;
    }
    let (status, body) = h.record_export(1, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["recorded_by"], r#"User::"root""#);

    let base = json!({"first_seq": 1, "last_seq": 3, "events": 3, "sha256": "a".repeat(64),
        "file_name": "x.jsonl", "first_hash": "00", "last_hash": "00"});
    let cases = [
        (
            json!({"events": 2}),
            StatusCode::BAD_REQUEST,
            "`events` 2 does not match the range 1..3, which holds 3 events; an export has no gaps",
        ),
        (
            json!({"first_seq": 0}),
            StatusCode::BAD_REQUEST,
            "the range 0..3 is invalid: `first_seq` must be at least 1 and at most `last_seq`",
        ),
        (
            json!({"sha256": "xyz"}),
            StatusCode::BAD_REQUEST,
            "`sha256` must be 64 hex characters: the SHA-256 of the export file",
        ),
        (
            json!({}),
            StatusCode::BAD_REQUEST,
            "`first_hash` does not match stored audit event 1; the file is not an export of this log",
        ),
        (
            json!({"first_seq": 900, "last_seq": 901, "events": 2}),
            StatusCode::CONFLICT,
            "audit event 900 is not in the store (purged or not yet written), so this export cannot be checked",
        ),
    ];
    for (change, status, message) in cases {
        let mut body = base.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let (got, response) = h.root("POST", "/v1/audit/exports", Some(body)).await;
        assert_eq!(got, status, "{response}");
        assert_eq!(response["error"]["message"], message);
    }
    let (status, list) = h.root("GET", "/v1/audit/exports", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["exports"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn purge_needs_retention_configured() {
    let h = harness().await;
    let (status, body) = h
        .root("POST", "/v1/audit/purge", Some(json!({"dry_run": false})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "retention_off");
    assert_eq!(h.store.audit_first_seq().await.unwrap(), Some(1));
}
