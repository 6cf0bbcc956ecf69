//! HTTP API tests: the real router over a real SQLite store, driven with `oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use latchkey_core::audit::ChainVerifier;
use latchkey_core::crypto::Key256;
use latchkey_server::app::router;
use latchkey_server::state::{AppState, Settings};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{SqliteStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    dir: tempfile::TempDir,
    app: Router,
    root: String,
    store: SqliteStore,
}

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
        dir,
        app: router(state),
        root: initialized.root_token.expose().to_string(),
        store,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self
            .call_raw(method, uri, token, body.map(|b| b.to_string()))
            .await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, value)
    }

    async fn call_raw(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body))
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

    async fn root(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, uri, Some(&self.root.clone()), body).await
    }

    /// Creates vaults `prod` (env=prod) and `staging` (env=staging) with a `db` secret each,
    /// user alice in group devs, a policy letting devs read staging, and a token for alice.
    async fn seed(&self) -> String {
        for (vault, env) in [("prod", "prod"), ("staging", "staging")] {
            let (status, _) = self
                .root(
                    "POST",
                    "/v1/vaults",
                    Some(json!({"name": vault, "tags": {"env": env}})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
            let (status, _) = self
                .root(
                    "PUT",
                    &format!("/v1/vaults/{vault}/secrets/db"),
                    Some(json!({"fields": {"password": {"text": format!("{vault}-pw")}}})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, _) = self
            .root(
                "POST",
                "/v1/users",
                Some(json!({"name": "alice", "groups": ["devs"]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let policy = r#"permit(principal in Group::"devs", action == Action::"read", resource)
when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "staging" };"#;
        let (status, body) = self
            .root(
                "PUT",
                "/v1/policies/devs-staging",
                Some(json!({"policy": policy})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = self
            .root(
                "POST",
                "/v1/tokens",
                Some(json!({"user": "alice", "ttl": "15m", "max_ttl": "1h"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    async fn events(&self) -> Vec<latchkey_core::audit::AuditEvent> {
        self.store.audit_events(0, 100_000).await.unwrap()
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn health_reports_ok() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/sys/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["sealed"], false);
}

#[tokio::test]
async fn policy_allows_staging_and_denies_prod() {
    let h = harness().await;
    let alice = h.seed().await;

    let (status, body) = h
        .call(
            "GET",
            "/v1/read?ref=lk://staging/db/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"]["text"], "staging-pw");

    let (status, body) = h
        .call(
            "GET",
            "/v1/read?ref=lk://prod/db/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "permission_denied");
    assert_eq!(
        body["error"]["message"],
        r#"permission denied: User::"alice" may not `read` Secret::"prod/db""#
    );
    assert!(!body["error"]["request_id"].as_str().unwrap().is_empty());
    assert!(!body.to_string().contains("prod-pw"));

    let events = h.events().await;
    let allowed = events
        .iter()
        .find(|e| e.record.resource == r#"Secret::"staging/db""# && e.record.action == "read")
        .unwrap();
    assert_eq!(allowed.record.policies, vec!["devs-staging".to_string()]);
    assert_eq!(allowed.record.principal, r#"User::"alice""#);
    assert!(
        allowed
            .record
            .token_id
            .as_deref()
            .unwrap()
            .starts_with("tok_")
    );
    let denied = events
        .iter()
        .find(|e| e.record.resource == r#"Secret::"prod/db""# && e.record.action == "read")
        .unwrap();
    assert_eq!(
        serde_json::to_value(denied.record.outcome).unwrap(),
        "denied"
    );
}

#[tokio::test]
async fn missing_secret_is_403_for_the_unauthorized_and_404_for_others() {
    let h = harness().await;
    let alice = h.seed().await;
    let (status, _) = h
        .call(
            "GET",
            "/v1/read?ref=lk://prod/nope/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = h
        .call(
            "GET",
            "/v1/read?ref=lk://staging/nope/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}

#[tokio::test]
async fn versions_stay_readable() {
    let h = harness().await;
    for value in ["one", "two", "three"] {
        h.root("POST", "/v1/vaults", Some(json!({"name": "v"})))
            .await;
        let (status, _) = h
            .root(
                "PUT",
                "/v1/vaults/v/secrets/s",
                Some(json!({"fields": {"f": {"text": value}}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, body) = h
        .root("GET", "/v1/read?ref=lk://v/s/f?version=2", None)
        .await;
    assert_eq!(body["value"]["text"], "two");
    assert_eq!(body["version"], 2);
    let (_, body) = h.root("GET", "/v1/read?ref=lk://v/s/f", None).await;
    assert_eq!(body["value"]["text"], "three");
    let (_, body) = h.root("GET", "/v1/vaults/v/secrets/s/versions", None).await;
    assert_eq!(body["versions"].as_array().unwrap().len(), 3);
    let (status, body) = h
        .root("GET", "/v1/read?ref=lk://v/s/f?version=9", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the latest is 3")
    );
}

#[tokio::test]
async fn merge_keeps_other_fields() {
    let h = harness().await;
    h.root("POST", "/v1/vaults", Some(json!({"name": "v"})))
        .await;
    h.root(
        "PUT",
        "/v1/vaults/v/secrets/s",
        Some(json!({"fields": {"user": {"text": "u"}, "pass": {"text": "p"}}})),
    )
    .await;
    h.root(
        "PUT",
        "/v1/vaults/v/secrets/s",
        Some(json!({"fields": {"pass": {"text": "p2"}}, "merge": true})),
    )
    .await;
    let (_, body) = h.root("GET", "/v1/vaults/v/secrets/s", None).await;
    assert_eq!(body["fields"]["user"]["text"], "u");
    assert_eq!(body["fields"]["pass"]["text"], "p2");
    h.root(
        "PUT",
        "/v1/vaults/v/secrets/s",
        Some(json!({"fields": {"pass": {"text": "p3"}}})),
    )
    .await;
    let (_, body) = h.root("GET", "/v1/vaults/v/secrets/s", None).await;
    assert!(body["fields"].get("user").is_none());
}

#[tokio::test]
async fn names_with_spaces_unicode_and_slashes_work() {
    let h = harness().await;
    let (status, _) = h
        .root("POST", "/v1/vaults", Some(json!({"name": "équipe a&b"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = h
        .root(
            "PUT",
            "/v1/vaults/%C3%A9quipe%20a&b/secrets/my%20db.conf%2Fmain",
            Some(json!({"fields": {"mot de passe": {"base64": "AP8="}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reference"], "lk://équipe a&b/my db.conf%2Fmain");
    let reference = "lk://%C3%A9quipe%20a%26b/my%20db.conf%252Fmain/mot%20de%20passe";
    let (status, body) = h
        .root("GET", &format!("/v1/read?ref={reference}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"]["base64"], "AP8=");
    assert!(body["value"].get("text").is_none());
}

#[tokio::test]
async fn malformed_reference_is_400_naming_the_part() {
    let h = harness().await;
    let (status, body) = h
        .root("GET", "/v1/read?ref=lk://prod//password", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret"),
        "{body}"
    );
    let (status, body) = h.root("GET", "/v1/read?ref=lk://prod/db", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("field"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_json_and_unknown_fields_are_rejected() {
    let h = harness().await;
    let (status, body) = h
        .root(
            "POST",
            "/v1/vaults",
            Some(json!({"name": "v", "colour": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );

    let (status, bytes) = h
        .call_raw(
            "POST",
            "/v1/vaults",
            Some(&h.root.clone()),
            Some("{\"name\":".into()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&bytes).contains("invalid_json"));

    let big = "x".repeat(2 * 1024 * 1024);
    let (status, body) = h
        .root(
            "PUT",
            "/v1/vaults/v/secrets/s",
            Some(json!({"fields": {"f": {"text": big}}})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "payload_too_large");

    let (status, _) = h.root("GET", "/v1/vaults", None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = h.root("GET", "/v1/vaults", None).await;
    assert_eq!(
        body["vaults"].as_array().unwrap().len(),
        0,
        "nothing half-written"
    );
}

#[tokio::test]
async fn invalid_policy_names_line_and_column() {
    let h = harness().await;
    let policy = "permit(\n  principal,\n  action == Action::\"read\"\n  resource\n);";
    let (status, body) = h
        .root(
            "PUT",
            "/v1/policies/broken",
            Some(json!({"policy": policy})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_policy");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 4"),
        "{body}"
    );

    let (status, body) = h
        .root(
            "PUT",
            "/v1/policies/typo",
            Some(json!({"policy": "permit(principal == Usr::\"a\", action, resource);"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );
    let (_, body) = h.root("GET", "/v1/policies", None).await;
    assert_eq!(body["policies"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn unauthenticated_requests_are_401_and_audited_without_the_token() {
    let h = harness().await;
    let alice = h.seed().await;
    let (status, body) = h.call("GET", "/v1/vaults", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthenticated");
    let (status, _) = h
        .call("GET", "/v1/vaults", Some("lkt_notatoken"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = h.root("POST", "/v1/tokens/self/revoke", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = h.root("GET", "/v1/vaults", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "revoked root token refused at once: {body}"
    );

    let events = h.events().await;
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e.record.principal == "anonymous" && e.record.action.starts_with("http:"))
        .collect();
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0].record.reason.as_deref(), Some("missing_token"));
    assert_eq!(
        failures[1].record.reason.as_deref(),
        Some("malformed_token")
    );
    assert_eq!(failures[2].record.reason.as_deref(), Some("revoked_token"));
    let everything = serde_json::to_string(&events).unwrap();
    assert!(!everything.contains(&alice));
    assert!(!everything.contains(&h.root));
    assert!(!everything.contains("staging-pw"));
}

#[tokio::test]
async fn token_renewal_rejects_bad_increments_and_caps_at_max() {
    let h = harness().await;
    let alice = h.seed().await;
    for bad in ["-5m", "0s", "0", "999999999999h", "soon"] {
        let (status, body) = h
            .call(
                "POST",
                "/v1/tokens/self/renew",
                Some(&alice),
                Some(json!({"increment": bad})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "increment {bad}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("increment"),
            "{body}"
        );
    }
    let (status, body) = h
        .call(
            "POST",
            "/v1/tokens/self/renew",
            Some(&alice),
            Some(json!({"increment": "30m"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["warnings"].as_array().unwrap().is_empty());
    let (status, body) = h
        .call(
            "POST",
            "/v1/tokens/self/renew",
            Some(&alice),
            Some(json!({"increment": "5h"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expires_at"], body["max_expires_at"]);
    assert!(body["warnings"][0].as_str().unwrap().contains("capped"));
    let (status, body) = h
        .call(
            "POST",
            "/v1/tokens/self/renew",
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max TTL")
    );
}

#[tokio::test]
async fn token_create_checks_ttls() {
    let h = harness().await;
    h.seed().await;
    let (status, body) = h
        .root(
            "POST",
            "/v1/tokens",
            Some(json!({"user": "alice", "ttl": "2h", "max_ttl": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than `max_ttl`")
    );
    let (status, _) = h
        .root(
            "POST",
            "/v1/tokens",
            Some(json!({"user": "alice", "max_ttl": "30d"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h
        .root("POST", "/v1/tokens", Some(json!({"user": "nobody"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expired_token_is_401() {
    let h = harness().await;
    let alice = h.seed().await;
    sqlx::query("UPDATE tokens SET expires_at = 1 WHERE kind = 'user'")
        .execute(h.store.pool())
        .await
        .unwrap();
    // The token cache keeps the row. Revocation and renewal clear it, but expiry is checked on every request.
    let (status, _) = h.call("GET", "/v1/tokens/self", Some(&alice), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn group_change_applies_on_next_request() {
    let h = harness().await;
    let alice = h.seed().await;
    let (status, _) = h
        .call(
            "GET",
            "/v1/read?ref=lk://staging/db/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .root("PUT", "/v1/users/alice/groups", Some(json!({"groups": []})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(
            "GET",
            "/v1/read?ref=lk://staging/db/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn audit_failure_fails_reads_closed() {
    let h = harness().await;
    h.seed().await;
    sqlx::query("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        .execute(h.store.pool())
        .await
        .unwrap();
    let (status, bytes) = h
        .call_raw(
            "GET",
            "/v1/read?ref=lk://prod/db/password",
            Some(&h.root.clone()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("audit_unavailable"), "{text}");
    assert!(!text.contains("prod-pw"));
    let (status, body) = h.call("GET", "/v1/sys/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "degraded");

    let (status, _) = h
        .root(
            "PUT",
            "/v1/vaults/prod/secrets/db",
            Some(json!({"fields": {"password": {"text": "new"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    sqlx::query("DROP TRIGGER refuse_audit")
        .execute(h.store.pool())
        .await
        .unwrap();
    let (_, body) = h
        .root("GET", "/v1/read?ref=lk://prod/db/password", None)
        .await;
    assert_eq!(
        body["value"]["text"], "prod-pw",
        "the refused write changed nothing"
    );
    let mut verifier = ChainVerifier::new();
    for event in h.events().await {
        verifier.push(&event).unwrap();
    }
}

#[tokio::test]
async fn audit_chain_detects_an_edited_row() {
    let h = harness().await;
    h.seed().await;
    let mut verifier = ChainVerifier::new();
    for event in h.events().await {
        verifier.push(&event).unwrap();
    }
    sqlx::query("UPDATE audit_events SET principal = 'User::\"mallory\"' WHERE seq = 5")
        .execute(h.store.pool())
        .await
        .unwrap();
    let mut verifier = ChainVerifier::new();
    let first_break = h
        .events()
        .await
        .iter()
        .find_map(|e| verifier.push(e).err())
        .unwrap();
    assert_eq!(first_break.seq, 5);
}

#[tokio::test]
async fn secret_values_are_not_stored_in_plaintext() {
    let h = harness().await;
    let marker = "MARKER-7f3c9e1d-plaintext-must-not-persist";
    h.root("POST", "/v1/vaults", Some(json!({"name": "v"})))
        .await;
    for i in 0..20 {
        let (status, _) = h
            .root(
                "PUT",
                "/v1/vaults/v/secrets/s",
                Some(json!({"fields": {"f": {"text": format!("{marker}-{i}")}}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, body) = h.root("GET", "/v1/read?ref=lk://v/s/f", None).await;
    assert!(body["value"]["text"].as_str().unwrap().starts_with(marker));
    let mut files = 0;
    for entry in std::fs::read_dir(h.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()));
    }
    assert!(files >= 2, "the database and its WAL were scanned");
}

#[tokio::test]
async fn copied_ciphertext_fails_to_open() {
    let h = harness().await;
    h.seed().await;
    sqlx::query(
        "UPDATE secret_versions SET ciphertext = (SELECT v.ciphertext FROM secret_versions v JOIN secrets s ON s.id = v.secret_id \
         JOIN vaults w ON w.id = s.vault_id WHERE w.name = 'prod') \
         WHERE secret_id = (SELECT s.id FROM secrets s JOIN vaults w ON w.id = s.vault_id WHERE w.name = 'staging')",
    )
    .execute(h.store.pool())
    .await
    .unwrap();
    let (status, bytes) = h
        .call_raw(
            "GET",
            "/v1/read?ref=lk://staging/db/password",
            Some(&h.root.clone()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!String::from_utf8_lossy(&bytes).contains("prod-pw"));
}

#[tokio::test]
async fn openapi_lists_the_routes() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/read",
        "/v1/vaults/{vault}/secrets/{secret}",
        "/v1/policies/{name}",
        "/v1/tokens/self/renew",
        "/v1/sys/unseal",
    ] {
        assert!(body["paths"].get(path).is_some(), "{path} missing");
    }
}

#[tokio::test]
async fn unknown_route_uses_the_error_format() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}

async fn production_harness() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let state = Arc::new(
        AppState::new(Arc::new(store), Settings::default())
            .await
            .unwrap(),
    );
    (dir, router(state))
}

async fn post(app: &Router, uri: &str, body: Value, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn shamir_init_and_unseal() {
    let (_dir, app) = production_harness().await;
    let (status, init) = post(
        &app,
        "/v1/sys/init",
        json!({"shares": 5, "threshold": 3}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{init}");
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 5);
    let root = init["root_token"].as_str().unwrap().to_string();

    let (status, body) = post(&app, "/v1/vaults", json!({"name": "x"}), Some(&root)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "sealed");

    let (status, _) = post(
        &app,
        "/v1/sys/init",
        json!({"shares": 5, "threshold": 3}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (_, progress) = post(&app, "/v1/sys/unseal", json!({"key": shares[4]}), None).await;
    assert_eq!(progress["progress"], 1);
    let (status, _) = post(&app, "/v1/sys/unseal", json!({"key": shares[4]}), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the same share twice");
    post(&app, "/v1/sys/unseal", json!({"key": shares[0]}), None).await;
    let (_, progress) = post(&app, "/v1/sys/unseal", json!({"key": shares[2]}), None).await;
    assert_eq!(progress["sealed"], false);

    let (status, _) = post(&app, "/v1/vaults", json!({"name": "x"}), Some(&root)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = post(&app, "/v1/sys/seal", json!({}), Some(&root)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = post(&app, "/v1/vaults", json!({"name": "y"}), Some(&root)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn passphrase_init_and_wrong_passphrase() {
    let (_dir, app) = production_harness().await;
    let (status, body) = post(&app, "/v1/sys/init", json!({"passphrase": "short"}), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = post(
        &app,
        "/v1/sys/init",
        json!({"passphrase": "correct horse battery staple"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post(
        &app,
        "/v1/sys/unseal",
        json!({"key": "wrong horse battery staple"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unseal failed")
    );
    let (status, body) = post(
        &app,
        "/v1/sys/unseal",
        json!({"key": "correct horse battery staple"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sealed"], false);
}

/// A team-a writer whose policy reads and writes only `team=a` secrets.
async fn team_a_writer(h: &Harness) -> String {
    h.root("POST", "/v1/vaults", Some(json!({"name": "prod"})))
        .await;
    let (status, _) = h
        .root(
            "PUT",
            "/v1/vaults/prod/secrets/db",
            Some(json!({"fields": {"password": {"text": "TOPSECRET-b"}}, "tags": {"team": "b"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.root(
        "POST",
        "/v1/users",
        Some(json!({"name": "alice", "groups": ["team-a"]})),
    )
    .await;
    let policy = r#"permit(principal in Group::"team-a", action in [Action::"read", Action::"write"], resource)
when { resource.hasTag("team") && resource.getTag("team") == "a" };"#;
    let (status, _) = h
        .root(
            "PUT",
            "/v1/policies/team-a",
            Some(json!({"policy": policy})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, body) = h
        .root("POST", "/v1/tokens", Some(json!({"user": "alice"})))
        .await;
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn retagging_cannot_bring_a_secret_into_reach() {
    let h = harness().await;
    let alice = team_a_writer(&h).await;
    for merge in [false, true] {
        let body =
            json!({"fields": {"dummy": {"text": "x"}}, "tags": {"team": "a"}, "merge": merge});
        let (status, response) = h
            .call(
                "PUT",
                "/v1/vaults/prod/secrets/db",
                Some(&alice),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "merge={merge}: {response}");
    }
    for reference in ["lk://prod/db/password", "lk://prod/db/password?version=1"] {
        let (status, _) = h
            .call(
                "GET",
                &format!("/v1/read?ref={reference}"),
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (_, body) = h
        .root("GET", "/v1/vaults/prod/secrets/db/versions", None)
        .await;
    assert_eq!(
        body["versions"].as_array().unwrap().len(),
        1,
        "nothing was written"
    );

    // Writing within reach still works, and the event records tags, merge and version.
    let (status, body) = h
        .call(
            "PUT",
            "/v1/vaults/prod/secrets/mine",
            Some(&alice),
            Some(json!({"fields": {"k": {"text": "v"}}, "tags": {"team": "a"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = h.events().await;
    let write = events
        .iter()
        .rev()
        .find(|e| e.record.action == "write" && e.record.resource == r#"Secret::"prod/mine""#)
        .unwrap();
    assert_eq!(
        write.record.detail.get("tags").map(String::as_str),
        Some("team=a")
    );
    assert_eq!(
        write.record.detail.get("merge").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        write.record.detail.get("version").map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn missing_vault_reads_like_an_existing_one() {
    let h = harness().await;
    let alice = team_a_writer(&h).await;
    let (status, missing) = h
        .call("GET", "/v1/read?ref=lk://nosuch/db/pw", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, existing) = h
        .call(
            "GET",
            "/v1/read?ref=lk://prod/nosuch/pw",
            Some(&alice),
            None,
        )
        .await;
    let missing = missing["error"]["message"].as_str().unwrap();
    let existing = existing["error"]["message"].as_str().unwrap();
    assert!(
        missing.contains(r#"`read` Secret::"nosuch/db""#),
        "{missing}"
    );
    assert!(
        existing.contains(r#"`read` Secret::"prod/nosuch""#),
        "{existing}"
    );
}

#[tokio::test]
async fn a_token_manages_only_itself() {
    let h = harness().await;
    let alice = team_a_writer(&h).await;
    let (_, other) = h
        .root("POST", "/v1/tokens", Some(json!({"user": "alice"})))
        .await;
    let other_accessor = other["accessor"].as_str().unwrap();
    let (status, _) = h
        .call(
            "POST",
            &format!("/v1/tokens/{other_accessor}/revoke"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a sibling token is not the caller's own"
    );
    let (status, _) = h
        .call(
            "POST",
            &format!("/v1/tokens/{other_accessor}/renew"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call("POST", "/v1/tokens/self/revoke", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn json_errors_do_not_echo_values() {
    let h = harness().await;
    h.root("POST", "/v1/vaults", Some(json!({"name": "v"})))
        .await;
    let (status, body) = h
        .root(
            "PUT",
            "/v1/vaults/v/secrets/s",
            Some(json!({"fields": {"pw": "hunter2-VALUE"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("fields.pw"), "{message}");
}
