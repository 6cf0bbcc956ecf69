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
    harness_with(Settings::default()).await
}

/// Builds a dev-mode server over a fresh SQLite store, initialized and unsealed.
async fn harness_with(settings: Settings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
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
async fn missing_secret_status_follows_access() {
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

/// Overlapping policy writes each build their engine from the policies stored before them.
/// Once all have returned, every written policy decides and the deleted one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_policy_writes_all_apply() {
    let h = Arc::new(harness().await);
    h.seed().await;
    let (status, _) = h
        .root(
            "PUT",
            "/v1/policies/gone",
            Some(json!({
                "policy": r#"forbid(principal in Group::"team0", action, resource in Vault::"prod");"#
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..12 {
        let h = Arc::clone(&h);
        writes.spawn(async move {
            let (status, body) = h
                .root(
                    "POST",
                    "/v1/users",
                    Some(json!({"name": format!("user{n}"), "groups": [format!("team{n}")]})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let policy = format!(
                r#"permit(principal in Group::"team{n}", action == Action::"read", resource in Vault::"prod");"#
            );
            let (status, body) = h
                .root(
                    "PUT",
                    &format!("/v1/policies/team{n}"),
                    Some(json!({"policy": policy})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        });
    }
    let remover = Arc::clone(&h);
    writes.spawn(async move {
        let (status, body) = remover.root("DELETE", "/v1/policies/gone", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    });
    while let Some(write) = writes.join_next().await {
        write.unwrap();
    }
    for n in 0..12 {
        let (status, body) = h
            .root(
                "POST",
                "/v1/tokens",
                Some(json!({"user": format!("user{n}"), "ttl": "15m"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().unwrap().to_string();
        let (status, body) = h
            .call(
                "GET",
                "/v1/read?ref=lk://prod/db/password",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "user{n}: {body}");
    }
}

#[tokio::test]
async fn unauthenticated_request_is_audited_tokenless() {
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
async fn token_renewal_bounds_increments() {
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

/// Creates alice, whose policy lets her read and write only `team=a` secrets, and returns her token.
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
async fn token_manages_only_itself() {
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

// Signed checkpoints, the audit key, ranges and search.

/// Builds a harness whose audit writer signs a checkpoint every `every` events.
async fn checkpoint_harness(every: u64) -> Harness {
    harness_with(Settings {
        audit_checkpoints: latchkey_server::audit_log::CheckpointSettings {
            every,
            interval: std::time::Duration::from_secs(3600),
        },
        ..Settings::default()
    })
    .await
}

impl Harness {
    /// Waits until a checkpoint at or above `seq` is stored (they are written after the
    /// batch commit, off the request path).
    async fn wait_for_checkpoint(&self, seq: u64) -> u64 {
        for _ in 0..200 {
            if let Some(cp) = self.store.last_checkpoint().await.unwrap()
                && cp.seq >= seq
            {
                return cp.seq;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("no checkpoint at or above {seq} was written");
    }

    async fn audit_public_key(&self) -> Vec<u8> {
        use base64::Engine;
        let (status, body) = self.root("GET", "/v1/audit/key", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        base64::engine::general_purpose::STANDARD
            .decode(body["public_key"].as_str().unwrap())
            .unwrap()
    }

    /// Verifies the stored chain and checkpoints, as `lk audit verify` does live.
    /// Takes the key fetched before any tampering: once the store is edited, the writer
    /// can no longer append, so audited requests fail.
    async fn verify_signed(
        &self,
        key: &[u8],
    ) -> Result<latchkey_core::audit::AuditSummary, latchkey_core::audit::AuditBreak> {
        let checkpoints = self.store.checkpoints(0, 100_000).await.unwrap();
        let events = self.events().await;
        let mut v =
            latchkey_core::audit::AuditVerifier::new(key, ChainVerifier::new(), checkpoints)?;
        for event in &events {
            v.push(event)?;
        }
        v.finish()
    }
}

fn checkpoint_fault(
    result: Result<latchkey_core::audit::AuditSummary, latchkey_core::audit::AuditBreak>,
) -> (u64, latchkey_core::audit::CheckpointFault) {
    match result {
        Err(latchkey_core::audit::AuditBreak::Checkpoint(b)) => (b.seq, b.fault),
        other => panic!("expected a checkpoint failure, got {other:?}"),
    }
}

#[tokio::test]
async fn audit_key_verifies_checkpoints() {
    let h = checkpoint_harness(5).await;
    let alice = h.seed().await;
    let (status, body) = h.call("GET", "/v1/audit/key", Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["algorithm"], "ed25519");
    let key = h.audit_public_key().await;
    assert_eq!(key.len(), 32);
    assert_eq!(
        body["key_id"].as_str().unwrap(),
        latchkey_core::audit::key_id(&key)
    );
    let (status, _) = h.call("GET", "/v1/audit/key", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let signed = h.wait_for_checkpoint(5).await;
    let summary = h.verify_signed(&key).await.unwrap();
    assert!(summary.checkpoints >= 1);
    assert!(summary.last_checkpoint_seq >= signed);

    let (status, body) = h.root("GET", "/v1/audit/checkpoints?limit=1", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checkpoints"].as_array().unwrap().len(), 1);
    assert_eq!(
        body["checkpoints"][0]["key_id"],
        latchkey_core::audit::key_id(&key)
    );
    let (status, _) = h
        .call("GET", "/v1/audit/checkpoints", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn signing_key_survives_restart() {
    let h = checkpoint_harness(5).await;
    h.seed().await;
    let first = h.audit_public_key().await;
    // An older deployment has no key: delete it; the next load creates one.
    sqlx::query("DELETE FROM meta WHERE key = 'audit_signing_key'")
        .execute(h.store.pool())
        .await
        .unwrap();
    let state = Arc::new(
        AppState::new(Arc::new(h.store.clone()), Settings::default())
            .await
            .unwrap(),
    );
    let root = Key256::generate().unwrap();
    state.keyring.install_root(root);
    let created = state.audit.signer().await.unwrap();
    assert_ne!(created.public_key(), first.as_slice());
    let stored = h.store.audit_signing_key().await.unwrap().unwrap();
    // Loading again with the same root key gives the same key.
    let again =
        latchkey_server::audit_log::load_or_create_signer(&h.store, &state.keyring.root().unwrap())
            .await
            .unwrap();
    assert_eq!(again.public_key(), created.public_key());
    assert_eq!(h.store.audit_signing_key().await.unwrap().unwrap(), stored);
    // A wrong root key does not open it.
    let wrong =
        latchkey_server::audit_log::load_or_create_signer(&h.store, &Key256::generate().unwrap())
            .await;
    assert!(
        matches!(wrong, Err(latchkey_server::audit_log::SignerError::Open(_))),
        "{:?}",
        wrong.err().map(|e| e.to_string())
    );
}

#[tokio::test]
async fn forged_checkpoint_signature_is_found_in_the_store() {
    let h = checkpoint_harness(5).await;
    h.seed().await;
    let key = h.audit_public_key().await;
    let seq = h.wait_for_checkpoint(5).await;
    sqlx::query("UPDATE audit_checkpoints SET signature = ? WHERE seq = ?")
        .bind("00".repeat(64))
        .bind(i64::try_from(seq).unwrap())
        .execute(h.store.pool())
        .await
        .unwrap();
    assert_eq!(
        checkpoint_fault(h.verify_signed(&key).await),
        (seq, latchkey_core::audit::CheckpointFault::BadSignature)
    );
}

#[tokio::test]
async fn rebuilt_chain_fails_the_checkpoint_head_in_the_store() {
    let h = checkpoint_harness(5).await;
    h.seed().await;
    let key = h.audit_public_key().await;
    let seq = h.wait_for_checkpoint(5).await;
    // Edit event 2 and rebuild every hash after it, so the chain alone looks intact.
    let events = h.events().await;
    let mut prev = latchkey_core::audit::GENESIS_HASH;
    for event in &events {
        let mut record = event.record.clone();
        if event.seq == 2 {
            record.principal = "User::\"mallory\"".into();
        }
        let sealed = latchkey_core::audit::seal_event(event.seq, &prev, record);
        hex::decode_to_slice(&sealed.hash, &mut prev).unwrap();
        sqlx::query("UPDATE audit_events SET principal = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&sealed.record.principal)
            .bind(&sealed.prev_hash)
            .bind(&sealed.hash)
            .bind(i64::try_from(event.seq).unwrap())
            .execute(h.store.pool())
            .await
            .unwrap();
    }
    let mut chain = ChainVerifier::new();
    for event in h.events().await {
        chain.push(&event).unwrap();
    }
    let first = h.store.checkpoints(0, 1).await.unwrap()[0].seq;
    assert!(first <= seq);
    assert_eq!(
        checkpoint_fault(h.verify_signed(&key).await),
        (first, latchkey_core::audit::CheckpointFault::HeadMismatch)
    );
}

#[tokio::test]
async fn truncation_after_a_checkpoint_is_found_in_the_store() {
    let h = checkpoint_harness(5).await;
    h.seed().await;
    let key = h.audit_public_key().await;
    let seq = h.wait_for_checkpoint(5).await;
    sqlx::query("DELETE FROM audit_events WHERE seq >= ?")
        .bind(i64::try_from(seq).unwrap())
        .execute(h.store.pool())
        .await
        .unwrap();
    let (at, fault) = checkpoint_fault(h.verify_signed(&key).await);
    let first_cut = h
        .store
        .checkpoints(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .find(|&s| s >= seq)
        .unwrap();
    assert_eq!(at, first_cut);
    assert_eq!(
        fault,
        latchkey_core::audit::CheckpointFault::Truncated { last_seq: seq - 1 }
    );
}

#[tokio::test]
async fn deleted_and_reordered_events_break_the_signed_check() {
    let h = checkpoint_harness(5).await;
    h.seed().await;
    let key = h.audit_public_key().await;
    h.wait_for_checkpoint(5).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = 3")
        .execute(h.store.pool())
        .await
        .unwrap();
    assert_eq!(h.verify_signed(&key).await.unwrap_err().seq(), 3);

    let h = checkpoint_harness(5).await;
    h.seed().await;
    let key = h.audit_public_key().await;
    h.wait_for_checkpoint(5).await;
    // Swap the contents of events 3 and 4.
    sqlx::query("UPDATE audit_events SET seq = -1 WHERE seq = 3")
        .execute(h.store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET seq = 3 WHERE seq = 4")
        .execute(h.store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET seq = 4 WHERE seq = -1")
        .execute(h.store.pool())
        .await
        .unwrap();
    assert_eq!(h.verify_signed(&key).await.unwrap_err().seq(), 3);
}

#[tokio::test]
async fn audit_events_filter_by_principal_action_outcome_resource_and_time() {
    let h = harness().await;
    let alice = h.seed().await;
    let (status, _) = h
        .call(
            "GET",
            "/v1/read?ref=lk://prod/db/password",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = h
        .root(
            "GET",
            "/v1/audit/events?principal=User::%22alice%22&outcome=denied",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["events"].as_array().unwrap();
    assert!(!events.is_empty());
    for e in events {
        assert_eq!(e["principal"], "User::\"alice\"");
        assert_eq!(e["outcome"], "denied");
    }
    let (status, body) = h
        .root(
            "GET",
            "/v1/audit/events?resource=Secret::%22prod&action=read",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for e in body["events"].as_array().unwrap() {
        assert!(
            e["resource"]
                .as_str()
                .unwrap()
                .starts_with("Secret::\"prod"),
            "{e}"
        );
    }
    let (_, all) = h.root("GET", "/v1/audit/events?since=1h", None).await;
    assert!(!all["events"].as_array().unwrap().is_empty());
    let (_, none) = h
        .root("GET", "/v1/audit/events?until=2000-01-01T00:00:00Z", None)
        .await;
    assert!(none["events"].as_array().unwrap().is_empty());
    let (status, body) = h.root("GET", "/v1/audit/events?since=lately", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`lately`"),
        "{body}"
    );
    let (status, _) = h.root("GET", "/v1/audit/events?outcome=maybe", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn quiet_log_is_signed_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let settings = Settings {
        audit_checkpoints: latchkey_server::audit_log::CheckpointSettings {
            every: 1_000_000,
            interval: std::time::Duration::from_millis(300),
        },
        ..Settings::default()
    };
    let state = Arc::new(
        AppState::new(Arc::new(store.clone()), settings)
            .await
            .unwrap(),
    );
    let initialized = initialize(&state, UnsealMethod::KeyFile(Key256::generate().unwrap()))
        .await
        .unwrap();
    state.keyring.install_root(initialized.root_key);
    assert_eq!(store.last_checkpoint().await.unwrap(), None);
    let head = store.audit_head().await.unwrap().unwrap().0;
    let mut signed = None;
    for _ in 0..100 {
        signed = store.last_checkpoint().await.unwrap();
        if signed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let signed = signed.expect("no checkpoint after the interval");
    assert_eq!(signed.seq, head);
    let key = state.audit.signer().await.unwrap();
    latchkey_core::audit::verify_checkpoint(key.public_key(), &signed).unwrap();

    // Sealing drops the key, so the signer reports the seal.
    state.keyring.seal();
    assert!(matches!(
        state.audit.signer().await,
        Err(latchkey_server::audit_log::SignerError::Sealed)
    ));
}

#[tokio::test]
async fn shamir_shares_are_each_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let state = Arc::new(
        AppState::new(Arc::new(store.clone()), Settings::default())
            .await
            .unwrap(),
    );
    let app = router(state);
    let (_, init) = post(
        &app,
        "/v1/sys/init",
        json!({"shares": 3, "threshold": 2}),
        None,
    )
    .await;
    let share = init["shares"][0].as_str().unwrap().to_string();
    let (status, _) = post(&app, "/v1/sys/unseal", json!({"key": share}), None).await;
    assert_eq!(status, StatusCode::OK);
    let events = store.audit_events(0, 100).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(actions, vec!["init", "unseal_share"]);
    assert_eq!(
        events[1].record.detail.get("progress").map(String::as_str),
        Some("1/2")
    );
    assert!(
        !serde_json::to_string(&events).unwrap().contains(&share),
        "no share in the log"
    );
}

#[tokio::test]
async fn init_is_recorded_before_it_happens() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let state = Arc::new(
        AppState::new(Arc::new(store.clone()), Settings::default())
            .await
            .unwrap(),
    );
    let app = router(state);
    sqlx::query("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        .execute(store.pool())
        .await
        .unwrap();
    let (status, _) = post(
        &app,
        "/v1/sys/init",
        json!({"shares": 3, "threshold": 2}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        store.seal_config().await.unwrap().is_none(),
        "an unrecorded init initialized nothing"
    );
}
