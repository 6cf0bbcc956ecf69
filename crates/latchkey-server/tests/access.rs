//! Just-in-time access tests: requests, reviews, grants and their expiry, through the real
//! router over a real SQLite store, with the server clock moved forward instead of slept
//! through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use latchkey_core::audit::AuditEvent;
use latchkey_core::crypto::Key256;
use latchkey_server::app::router;
use latchkey_server::state::{AppState, Settings};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{AuditFilter, SqliteStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    _dir: tempfile::TempDir,
    app: Router,
    state: Arc<AppState>,
    root: String,
    store: SqliteStore,
}

/// Policies of the tests: devs may ask for prod and read it under a grant; approvers may
/// approve prod requests; on-call may have short staging requests approved by policy;
/// sre may break glass on prod.
const POLICIES: &[(&str, &str)] = &[
    (
        "devs-request-prod",
        r#"permit(principal in Group::"devs", action == Action::"request", resource in Vault::"prod");"#,
    ),
    (
        "devs-read-prod-under-grant",
        r#"permit(principal in Group::"devs", action == Action::"read", resource in Vault::"prod") when { context.grant };"#,
    ),
    (
        "approvers-approve-prod",
        r#"permit(principal in Group::"approvers", action == Action::"approve", resource in Vault::"prod");"#,
    ),
    (
        "oncall-staging",
        r#"permit(principal in Group::"oncall", action in [Action::"request", Action::"read"], resource in Vault::"staging") when { action != Action::"read" || context.grant };"#,
    ),
    (
        "oncall-auto-approve-staging",
        r#"permit(principal in Group::"oncall", action == Action::"auto_approve", resource in Vault::"staging") when { context.duration <= 900 };"#,
    ),
    (
        "sre-break-glass-prod",
        r#"permit(principal in Group::"sre", action in [Action::"break_glass", Action::"read"], resource in Vault::"prod") when { action != Action::"read" || context.grant };"#,
    ),
];

async fn harness() -> Harness {
    harness_with(Settings::default()).await
}

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
    let h = Harness {
        _dir: dir,
        app: router(Arc::clone(&state)),
        state,
        root: initialized.root_token.expose().to_string(),
        store,
    };
    for vault in ["prod", "staging"] {
        let (status, body) = h
            .root(
                "POST",
                "/v1/vaults",
                Some(json!({"name": vault, "tags": {"env": vault}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for secret in ["db", "api"] {
            let (status, body) = h
                .root(
                    "PUT",
                    &format!("/v1/vaults/{vault}/secrets/{secret}"),
                    Some(json!({"fields": {"password": {"text": format!("{vault}-{secret}")}}})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    for (name, text) in POLICIES {
        let (status, body) = h
            .root(
                "PUT",
                &format!("/v1/policies/{name}"),
                Some(json!({"policy": text})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for (user, groups) in [
        ("alice", vec!["devs", "approvers"]),
        ("bob", vec!["approvers"]),
        ("carol", vec!["approvers"]),
        ("dave", vec!["devs"]),
        ("olive", vec!["oncall"]),
        ("sam", vec!["sre"]),
    ] {
        let (status, body) = h
            .root(
                "POST",
                "/v1/users",
                Some(json!({"name": user, "groups": groups})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    h
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        let request = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                request.body(Body::from(body.to_string())).unwrap()
            }
            None => request.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn root(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, uri, &self.root.clone(), body).await
    }

    async fn token(&self, user: &str) -> String {
        let (status, body) = self
            .root(
                "POST",
                "/v1/tokens",
                Some(json!({"user": user, "ttl": "12h", "max_ttl": "24h"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    async fn read(&self, token: &str, reference: &str) -> (StatusCode, Value) {
        self.call("GET", &format!("/v1/read?ref={reference}"), token, None)
            .await
    }

    async fn ask(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", "/v1/requests", token, Some(body)).await
    }

    async fn review(
        &self,
        token: &str,
        id: &str,
        verdict: &str,
        comment: &str,
    ) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/v1/requests/{id}/{verdict}"),
            token,
            Some(json!({"comment": comment})),
        )
        .await
    }

    async fn events(&self, filter: AuditFilter) -> Vec<AuditEvent> {
        self.store
            .search_audit(&AuditFilter {
                limit: 10_000,
                ..filter
            })
            .await
            .unwrap()
    }

    async fn sweep(&self) -> usize {
        latchkey_server::access::expiry::sweep_once(&self.state)
            .await
            .unwrap()
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

const PROD_DB: &str = "lk://prod/db/password";

#[tokio::test]
async fn read_needs_grant_then_approval_by_another_allows_it() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;

    let (status, body) = h.read(&dave, PROD_DB).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "grant_required");
    assert!(
        message(&body).contains("lk request lk://prod/db --for 1h"),
        "{body}"
    );

    let (status, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "INC-4211", "ticket": "https://tickets.example.com/INC-4211"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert_eq!(request["status"], "pending");
    assert_eq!(request["approvals_required"], 1);
    let id = request["id"].as_str().unwrap();

    // Still refused while pending.
    let (status, _) = h.read(&dave, PROD_DB).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The approver sees it as reviewable.
    let (status, list) = h
        .call("GET", "/v1/requests?status=pending", &bob, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["can_review"], true);

    let (status, approved) = h.review(&bob, id, "approve", "checked INC-4211").await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["status"], "approved");
    let grant = approved["grant"].as_str().unwrap().to_string();

    let (status, body) = h.read(&dave, PROD_DB).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"]["text"], "prod-db");
    // The grant covers the secret, not other secrets of the vault.
    let (status, body) = h.read(&dave, "lk://prod/api/password").await;
    assert_eq!(code(&body), "grant_required", "{status} {body}");

    // One query answers who approved this access and why.
    let trail = h
        .events(AuditFilter {
            grant: Some(grant.clone()),
            ..AuditFilter::default()
        })
        .await;
    let actions: Vec<&str> = trail.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(actions, ["approve", "grant", "read"], "{trail:?}");
    let approve = &trail[0].record;
    assert_eq!(approve.principal, r#"User::"bob""#);
    assert_eq!(approve.detail["comment"], "checked INC-4211");
    assert_eq!(approve.detail["request_reason"], "INC-4211");
    let read = &trail[2].record;
    assert_eq!(read.principal, r#"User::"dave""#);
    assert_eq!(read.detail["approved_by"], r#"User::"bob""#);
    assert_eq!(read.detail["approval_reason"], "INC-4211");
    assert_eq!(read.detail["access_request"], id);
    assert_eq!(
        read.policies,
        vec!["devs-read-prod-under-grant".to_string()]
    );
}

#[tokio::test]
async fn requester_never_approves_own_request() {
    let h = harness().await;
    // alice may approve prod requests, and asks for prod herself.
    let alice = h.token("alice").await;
    let (status, request) = h
        .ask(
            &alice,
            json!({"resources": ["lk://prod/db"], "duration": "30m", "reason": "debug"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    let id = request["id"].as_str().unwrap();
    assert_eq!(request["can_review"], false);

    for verdict in ["approve", "deny"] {
        let (status, body) = h.review(&alice, id, verdict, "mine").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(code(&body), "self_approval");
    }
    // Not even the root token's principal approves a request it made.
    let (status, own) = h
        .root(
            "POST",
            "/v1/requests",
            Some(json!({"resources": ["lk://prod"], "duration": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    let (status, body) = h
        .root(
            "POST",
            &format!("/v1/requests/{}/approve", own["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "self_approval");

    let (_, shown) = h
        .call("GET", &format!("/v1/requests/{id}"), &alice, None)
        .await;
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["approvals"], 0);
    let refused = h
        .events(AuditFilter {
            action: Some("approve".into()),
            ..AuditFilter::default()
        })
        .await;
    assert!(
        refused
            .iter()
            .any(|e| e.record.detail.get("refused").map(String::as_str) == Some("own_request"))
    );
}

#[tokio::test]
async fn two_approvals_needed_and_requester_vote_does_not_count() {
    let h = harness().await;
    let (status, body) = h
        .root(
            "PATCH",
            "/v1/vaults/prod/access",
            Some(json!({"approvals": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = h.token("alice").await;
    let bob = h.token("bob").await;
    let carol = h.token("carol").await;
    let (_, request) = h
        .ask(
            &alice,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "migration"}),
        )
        .await;
    let id = request["id"].as_str().unwrap();
    assert_eq!(request["approvals_required"], 2);

    let (status, _) = h.review(&alice, id, "approve", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, first) = h.review(&bob, id, "approve", "ok").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["approvals"], 1);
    let (status, body) = h.read(&alice, PROD_DB).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, again) = h.review(&bob, id, "approve", "twice").await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(message(&again).contains("already reviewed"));

    let (status, second) = h.review(&carol, id, "approve", "ok too").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["status"], "approved");
    let (status, grant) = h
        .call(
            "GET",
            &format!("/v1/grants/{}", second["grant"].as_str().unwrap()),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    assert_eq!(
        grant["approved_by"],
        json!([r#"User::"bob""#, r#"User::"carol""#])
    );
    let (status, _) = h.read(&alice, PROD_DB).await;
    assert_eq!(status, StatusCode::OK);

    // Every step of the request, in one query.
    let steps = h
        .events(AuditFilter {
            access_request: Some(id.to_string()),
            ..AuditFilter::default()
        })
        .await;
    let steps: Vec<(String, String, String)> = steps
        .iter()
        .map(|e| {
            (
                e.record.action.clone(),
                e.record.principal.clone(),
                format!("{:?}", e.record.outcome),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("request", "alice", "Allowed"),
        ("approve", "alice", "Denied"),
        ("approve", "bob", "Allowed"),
        ("approve", "bob", "Failed"),
        ("approve", "carol", "Allowed"),
        ("grant", "carol", "Allowed"),
        ("read", "alice", "Allowed"),
    ]
    .iter()
    .map(|(a, p, o)| (a.to_string(), format!("User::\"{p}\""), o.to_string()))
    .collect();
    assert_eq!(steps, expected);

    // A decided request cannot be reviewed again.
    let dave = h.token("dave").await;
    let (status, _) = h.review(&dave, id, "deny", "late").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "dave may not review it, so he may not see it"
    );
}

#[tokio::test]
async fn expired_request_cannot_be_approved_and_expiry_is_recorded() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "r"}),
        )
        .await;
    let id = request["id"].as_str().unwrap();

    // Request expiry (1 h by default) is separate from the grant's duration.
    h.state.clock.advance(3600);
    let (status, body) = h.review(&bob, id, "approve", "too late").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains("expired"), "{body}");
    let (_, shown) = h
        .call("GET", &format!("/v1/requests/{id}"), &dave, None)
        .await;
    assert_eq!(shown["status"], "expired");

    assert_eq!(h.sweep().await, 1);
    assert_eq!(h.sweep().await, 0);
    let expired = h
        .events(AuditFilter {
            action: Some("request.expire".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].record.detail["access_request"], id);
    assert_eq!(expired[0].record.principal, "system");
    let (status, body) = h.review(&bob, id, "approve", "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message(&body).contains("expired at"), "{body}");
}

#[tokio::test]
async fn grant_ends_at_its_expiry_and_at_revocation() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod"], "duration": "30m", "reason": "r"}),
        )
        .await;
    let id = request["id"].as_str().unwrap();
    let (_, approved) = h.review(&bob, id, "approve", "").await;
    let grant = approved["grant"].as_str().unwrap().to_string();

    // A vault-wide grant covers every secret in it.
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::OK);
    assert_eq!(
        h.read(&dave, "lk://prod/api/password").await.0,
        StatusCode::OK
    );

    // The clock starts at approval: 29 minutes later it still works, at 30 it does not.
    h.state.clock.advance(29 * 60);
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::OK);
    h.state.clock.advance(60);
    let (status, body) = h.read(&dave, PROD_DB).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "grant_required");
    assert_eq!(h.sweep().await, 1);
    let expired = h
        .events(AuditFilter {
            grant: Some(grant.clone()),
            action: Some("grant.expire".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(expired.len(), 1);
    let (_, shown) = h
        .call("GET", &format!("/v1/grants/{grant}"), &dave, None)
        .await;
    assert_eq!(shown["status"], "expired");

    // A second grant, revoked by an approver: reads stop on the next request.
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "again"}),
        )
        .await;
    let (_, approved) = h
        .review(&bob, request["id"].as_str().unwrap(), "approve", "")
        .await;
    let second = approved["grant"].as_str().unwrap().to_string();
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::OK);
    let (status, revoked) = h
        .call(
            "POST",
            &format!("/v1/grants/{second}/revoke"),
            &bob,
            Some(json!({"reason": "incident closed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoke_reason"], "incident closed");
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call(
            "POST",
            &format!("/v1/grants/{second}/revoke"),
            &dave,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A revoked grant's expiry is not recorded again as an expiry.
    h.state.clock.advance(7200);
    h.sweep().await;
    let expiries = h
        .events(AuditFilter {
            grant: Some(second),
            action: Some("grant.expire".into()),
            ..AuditFilter::default()
        })
        .await;
    assert!(expiries.is_empty());
}

#[tokio::test]
async fn requester_ends_own_grant_early_and_cancels_own_request() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "r"}),
        )
        .await;
    let (_, approved) = h
        .review(&bob, request["id"].as_str().unwrap(), "approve", "")
        .await;
    let grant = approved["grant"].as_str().unwrap();
    let (status, _) = h
        .call(
            "POST",
            &format!("/v1/grants/{grant}/revoke"),
            &dave,
            Some(json!({"reason": "done early"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::FORBIDDEN);

    let (_, pending) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/api"], "duration": "1h", "reason": "r"}),
        )
        .await;
    let id = pending["id"].as_str().unwrap();
    // Someone else cannot cancel it.
    let (status, _) = h
        .call("POST", &format!("/v1/requests/{id}/cancel"), &bob, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, cancelled) = h
        .call("POST", &format!("/v1/requests/{id}/cancel"), &dave, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (status, _) = h.review(&bob, id, "approve", "").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn denied_request_stays_denied() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let carol = h.token("carol").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "curious"}),
        )
        .await;
    let id = request["id"].as_str().unwrap();
    let (status, denied) = h.review(&bob, id, "deny", "not a reason").await;
    assert_eq!(status, StatusCode::OK, "{denied}");
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["reviews"][0]["comment"], "not a reason");
    let (status, body) = h.review(&carol, id, "approve", "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message(&body).contains("already denied"), "{body}");
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn policy_decides_who_asks_and_who_approves() {
    let h = harness().await;
    let bob = h.token("bob").await;
    let dave = h.token("dave").await;
    let olive = h.token("olive").await;
    // bob is no dev: he may not ask for prod.
    let (status, body) = h
        .ask(
            &bob,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "permission_denied");
    // olive is no approver of prod: she may neither review nor see dave's request.
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "r"}),
        )
        .await;
    let id = request["id"].as_str().unwrap();
    let (status, body) = h.review(&olive, id, "approve", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!message(&body).contains("prod"), "{body}");
    let (_, list) = h.call("GET", "/v1/requests", &olive, None).await;
    assert_eq!(list["requests"].as_array().unwrap().len(), 0);
    let (status, _) = h
        .call("GET", &format!("/v1/requests/{id}"), &olive, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.review(&dave, "req_missing", "approve", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn vault_settings_bound_requests() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let (status, body) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "9h", "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).contains("vault `prod` allows (at most 8h)"),
        "{body}"
    );

    let (status, settings) = h
        .root(
            "PATCH",
            "/v1/vaults/prod/access",
            Some(json!({"max_grant": "2h", "require_reason": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    assert_eq!(settings["max_grant"], "2h");
    assert_eq!(settings["approvals"], 1);
    let (status, body) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "3h", "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("at most 2h"), "{body}");
    let (status, body) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("requires a reason"), "{body}");

    for (body, needle) in [
        (json!({"approvals": 0}), "`approvals` = 0"),
        (json!({"approvals": 11}), "`approvals` = 11"),
        (json!({"max_grant": "forever"}), "`max_grant`"),
        (json!({"request_expiry": "0s"}), "`request_expiry`"),
    ] {
        let (status, reply) = h.root("PATCH", "/v1/vaults/prod/access", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(message(&reply).contains(needle), "{reply}");
    }
    // Only an administrator changes them.
    let (status, _) = h
        .call(
            "PATCH",
            "/v1/vaults/prod/access",
            &dave,
            Some(json!({"approvals": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    for (body, needle) in [
        (json!({"resources": [], "duration": "1h"}), "at least one"),
        (
            json!({"resources": ["prod/db"], "duration": "1h"}),
            "`prod/db`",
        ),
        (
            json!({"resources": ["lk://prod/db"], "duration": "soon"}),
            "`duration` = `soon`",
        ),
        (
            json!({"resources": ["lk://prod/db"], "duration": "0s"}),
            "longer than 0s",
        ),
    ] {
        let (status, reply) = h.ask(&dave, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(message(&reply).contains(needle), "{reply}");
    }
    let (status, reply) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/nope"], "duration": "1h", "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    let nothing = h.store.list_access_requests(&Default::default()).await;
    assert!(nothing.unwrap().is_empty(), "no refused request is stored");
}

#[tokio::test]
async fn policy_approves_short_oncall_requests_at_once() {
    let h = harness().await;
    let olive = h.token("olive").await;
    let (status, request) = h
        .ask(
            &olive,
            json!({"resources": ["lk://staging/db"], "duration": "15m", "reason": "page"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert_eq!(request["status"], "approved");
    assert_eq!(request["kind"], "auto");
    assert_eq!(request["decided_by"], "policy:oncall-auto-approve-staging");
    let (status, body) = h.read(&olive, "lk://staging/db/password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let auto = h
        .events(AuditFilter {
            action: Some("auto_approve".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(auto.len(), 1);
    assert_eq!(
        auto[0].record.policies,
        vec!["oncall-auto-approve-staging".to_string()]
    );
    // Longer than the policy allows: it waits for a reviewer like any other.
    let (_, longer) = h
        .ask(
            &olive,
            json!({"resources": ["lk://staging/api"], "duration": "30m", "reason": "page"}),
        )
        .await;
    assert_eq!(longer["status"], "pending");
    assert_eq!(longer["kind"], "review");
}

#[tokio::test]
async fn break_glass_gives_short_flagged_access() {
    let h = harness().await;
    let sam = h.token("sam").await;
    let dave = h.token("dave").await;
    let (status, body) = h
        .ask(
            &sam,
            json!({"resources": ["lk://prod/db"], "duration": "2h", "reason": "outage", "break_glass": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("at most 1h"), "{body}");
    let (status, body) = h
        .ask(
            &sam,
            json!({"resources": ["lk://prod/db"], "duration": "30m", "break_glass": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("needs a reason"), "{body}");
    // Without a break-glass policy it is refused.
    let (status, _) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "30m", "reason": "x", "break_glass": true}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, request) = h
        .ask(
            &sam,
            json!({"resources": ["lk://prod/db"], "duration": "30m", "reason": "outage", "break_glass": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert_eq!(request["kind"], "break_glass");
    assert_eq!(request["status"], "approved");
    assert_eq!(h.read(&sam, PROD_DB).await.0, StatusCode::OK);
    let flagged = h
        .events(AuditFilter {
            grant: Some(request["grant"].as_str().unwrap().to_string()),
            ..AuditFilter::default()
        })
        .await;
    let actions: Vec<&str> = flagged.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(actions, ["break_glass", "read"]);
    assert!(
        flagged
            .iter()
            .all(|e| e.record.detail.get("break_glass").map(String::as_str) == Some("true"))
    );
}

#[tokio::test]
async fn leaving_the_group_ends_access_under_a_grant_that_policy_ties_to_it() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "r"}),
        )
        .await;
    h.review(&bob, request["id"].as_str().unwrap(), "approve", "")
        .await;
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::OK);
    let (status, _) = h
        .root("PUT", "/v1/users/dave/groups", Some(json!({"groups": []})))
        .await;
    assert_eq!(status, StatusCode::OK);
    // The grant is live, but the read policy needs `devs` as well as the grant.
    let (status, body) = h.read(&dave, PROD_DB).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "permission_denied");
}

/// A webhook endpoint on 127.0.0.1 that keeps the bodies it receives.
async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let kept = Arc::clone(&bodies);
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, bodies)
}

#[tokio::test]
async fn webhooks_hear_every_step() {
    let (url, bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("webhook.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let notify = serde_json::from_value(json!({
        "public_url": "https://latchkey.example.com",
        "webhooks": [{"name": "approvers", "url": url, "secret_file": key}],
    }))
    .unwrap();
    let h = harness_with(Settings {
        notify,
        ..Settings::default()
    })
    .await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let sam = h.token("sam").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "INC-7"}),
        )
        .await;
    let id = request["id"].as_str().unwrap();
    let (_, approved) = h.review(&bob, id, "approve", "go").await;
    let grant = approved["grant"].as_str().unwrap();
    h.call(
        "POST",
        &format!("/v1/grants/{grant}/revoke"),
        &bob,
        Some(json!({"reason": "done"})),
    )
    .await;
    let (_, denied) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/api"], "duration": "1h", "reason": "again"}),
        )
        .await;
    h.review(&bob, denied["id"].as_str().unwrap(), "deny", "no")
        .await;
    h.ask(
        &dave,
        json!({"resources": ["lk://prod/api"], "duration": "1h", "reason": "later"}),
    )
    .await;
    h.ask(
        &sam,
        json!({"resources": ["lk://prod/db"], "duration": "10m", "reason": "outage", "break_glass": true}),
    )
    .await;
    h.state.clock.advance(3600);
    h.sweep().await;

    let expected = [
        "request.created",
        "request.approved",
        "grant.revoked",
        "request.created",
        "request.denied",
        "request.created",
        "break_glass",
        "request.expired",
    ];
    // Delivery is in the background: wait until every event arrived.
    for _ in 0..200 {
        if bodies.lock().unwrap().len() >= expected.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bodies = bodies.lock().unwrap().clone();
    let kinds: Vec<&str> = bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, expected);
    assert_eq!(bodies[0]["request_id"], id);
    assert_eq!(bodies[0]["reason"], "INC-7");
    assert_eq!(bodies[1]["actor"], r#"User::"bob""#);
    assert_eq!(bodies[1]["comment"], "go");
    assert_eq!(bodies[1]["grant_id"], grant);
    assert_eq!(
        bodies[0]["link"],
        format!("https://latchkey.example.com/approvals/requests/{id}")
    );
}

#[tokio::test]
async fn read_hint_fits_what_the_caller_may_do() {
    let h = harness().await;
    let sam = h.token("sam").await;
    let olive = h.token("olive").await;
    let dave = h.token("dave").await;
    // sam may break glass on prod but not ask for it.
    let (status, body) = h.read(&sam, PROD_DB).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "grant_required");
    assert!(message(&body).contains("--break-glass"), "{body}");
    // olive may do neither: a plain refusal.
    let (_, body) = h.read(&olive, PROD_DB).await;
    assert_eq!(code(&body), "permission_denied", "{body}");
    // dave's hint asks for no more than the vault allows.
    h.root(
        "PATCH",
        "/v1/vaults/prod/access",
        Some(json!({"max_grant": "30m"})),
    )
    .await;
    let (_, body) = h.read(&dave, PROD_DB).await;
    assert!(
        message(&body).contains("lk request lk://prod/db --for 30m"),
        "{body}"
    );
    let (status, request) = h
        .ask(&dave, json!({"resources": ["lk://prod/db"], "reason": "r"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert_eq!(request["duration"], "30m");
}

#[tokio::test]
async fn waiting_call_returns_once_the_request_changes() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let (_, request) = h
        .ask(
            &dave,
            json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "r"}),
        )
        .await;
    let id = request["id"].as_str().unwrap().to_string();
    let uri = format!("/v1/requests/{id}?wait=30");
    let waiting = h.call("GET", &uri, &dave, None);
    let approving = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        h.review(&bob, &id, "approve", "").await
    };
    let ((status, seen), (approved, _)) = tokio::join!(waiting, approving);
    assert_eq!(approved, StatusCode::OK);
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["status"], "approved");
}

#[tokio::test]
async fn read_names_the_most_specific_grant() {
    let h = harness().await;
    let dave = h.token("dave").await;
    let bob = h.token("bob").await;
    let mut grants = Vec::new();
    for (resource, duration) in [("lk://prod", "2h"), ("lk://prod/db", "30m")] {
        let (_, request) = h
            .ask(
                &dave,
                json!({"resources": [resource], "duration": duration, "reason": resource}),
            )
            .await;
        let (_, approved) = h
            .review(&bob, request["id"].as_str().unwrap(), "approve", "")
            .await;
        grants.push(approved["grant"].as_str().unwrap().to_string());
    }
    assert_eq!(h.read(&dave, PROD_DB).await.0, StatusCode::OK);
    let reads = h
        .events(AuditFilter {
            action: Some("read".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(reads.last().unwrap().record.detail["grant"], grants[1]);
}
