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
use latchkey_store::{SqliteStore, Store};
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
    let state = Arc::new(
        AppState::new(Arc::new(store.clone()), Settings::default())
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
