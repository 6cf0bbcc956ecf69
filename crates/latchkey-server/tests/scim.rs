//! SCIM service tests: the real router over a real SQLite store, driven with `oneshot`,
//! with the requests that Okta and Microsoft Entra ID send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use latchkey_core::crypto::Key256;
use latchkey_server::app::router;
use latchkey_server::state::{AppState, Settings};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{AuditFilter, SqliteStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

struct Harness {
    _dir: tempfile::TempDir,
    app: Router,
    root: String,
    scim: String,
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
    let mut harness = Harness {
        _dir: dir,
        app: router(state),
        root: initialized.root_token.expose().to_string(),
        scim: String::new(),
        store,
    };
    let (status, body) = harness
        .call(
            "POST",
            "/v1/scim/tokens",
            &harness.root.clone(),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    harness.scim = body["token"].as_str().unwrap().to_string();
    harness
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:8740")
            .header("authorization", format!("Bearer {token}"));
        let request = match body {
            Some(body) => request
                .header("content-type", "application/scim+json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => request.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn scim(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, uri, &self.scim.clone(), body).await
    }

    async fn create_user(&self, name: &str) -> String {
        let (status, body) = self
            .scim(
                "POST",
                "/scim/v2/Users",
                Some(json!({
                    "schemas": [USER],
                    "userName": name,
                    "externalId": format!("ext-{name}"),
                    "active": true,
                    "emails": [{"value": format!("{name}@example.com"), "type": "work", "primary": "True"}]
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn user_token(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/tokens",
                &self.root.clone(),
                Some(json!({"user": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    async fn whoami(&self, token: &str) -> StatusCode {
        self.call("GET", "/v1/tokens/self", token, None).await.0
    }

    async fn patch(&self, uri: &str, operations: Value) -> (StatusCode, Value) {
        self.scim(
            "PATCH",
            uri,
            Some(json!({"schemas": [PATCH], "Operations": operations})),
        )
        .await
    }

    async fn groups_of(&self, name: &str) -> Vec<String> {
        let (_, body) = self
            .call(
                "GET",
                &format!("/v1/users/{name}"),
                &self.root.clone(),
                None,
            )
            .await;
        serde_json::from_value(body["groups"].clone()).unwrap()
    }

    async fn revocation_events(&self, accessor_prefix: &str) -> usize {
        let filter = AuditFilter {
            limit: 1000,
            action: Some("revoke_token".into()),
            resource_prefix: Some(format!("Token::\"{accessor_prefix}")),
            ..AuditFilter::default()
        };
        self.store.search_audit(&filter).await.unwrap().len()
    }
}

#[tokio::test]
async fn scim_token_works_only_on_scim() {
    let h = harness().await;
    let (status, body) = h.scim("GET", "/scim/v2/Users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["totalResults"], json!(0));

    assert_eq!(h.whoami(&h.scim.clone()).await, StatusCode::UNAUTHORIZED);
    let (status, body) = h.call("GET", "/scim/v2/Users", &h.root.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["schemas"][0],
        json!("urn:ietf:params:scim:api:messages:2.0:Error")
    );
    assert_eq!(body["status"], json!("401"));
}

#[tokio::test]
async fn scim_token_create_is_admin_only() {
    let h = harness().await;
    h.create_user("ann").await;
    let ann = h.user_token("ann").await;
    let (status, _) = h
        .call("POST", "/v1/scim/tokens", &ann, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn revoked_scim_token_is_refused() {
    let h = harness().await;
    let (_, list) = h
        .call("GET", "/v1/scim/tokens", &h.root.clone(), None)
        .await;
    let accessor = list["tokens"][0]["accessor"].as_str().unwrap().to_string();
    let (status, _) = h
        .call(
            "POST",
            &format!("/v1/scim/tokens/{accessor}/revoke"),
            &h.root.clone(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.scim("GET", "/scim/v2/Users", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn patch_op_in_any_case_deactivates() {
    for op in ["replace", "Replace", "REPLACE"] {
        let h = harness().await;
        let id = h.create_user("ann").await;
        let token = h.user_token("ann").await;
        let (status, body) = h
            .patch(
                &format!("/scim/v2/Users/{id}"),
                json!([{"op": op, "path": "active", "value": false}]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{op}: {body}");
        assert_eq!(body["active"], json!(false), "{op}");
        assert_eq!(h.whoami(&token).await, StatusCode::UNAUTHORIZED, "{op}");
    }
}

#[tokio::test]
async fn no_path_replace_with_string_boolean_offboards() {
    let h = harness().await;
    let id = h.create_user("ann").await;
    let first = h.user_token("ann").await;
    let second = h.user_token("ann").await;
    assert_eq!(h.whoami(&first).await, StatusCode::OK);

    let (status, body) = h
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!([{"op": "Replace", "value": {"active": "False"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], json!(false));
    assert_eq!(h.whoami(&first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.whoami(&second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.revocation_events("tok_").await,
        2,
        "one audit event per revoked token"
    );
    for token in h.store.list_tokens(Some(&id)).await.unwrap() {
        assert!(
            token.revoked_at.is_some(),
            "{} is not revoked",
            token.accessor
        );
    }

    // Reactivation restores the account but none of the revoked tokens.
    let (status, body) = h
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!([{"op": "replace", "value": {"active": "True"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], json!(true));
    assert_eq!(h.whoami(&first).await, StatusCode::UNAUTHORIZED);
    let fresh = h.user_token("ann").await;
    assert_eq!(h.whoami(&fresh).await, StatusCode::OK);
}

#[tokio::test]
async fn put_inactive_offboards() {
    let h = harness().await;
    let id = h.create_user("ann").await;
    let token = h.user_token("ann").await;
    let (status, body) = h
        .scim(
            "PUT",
            &format!("/scim/v2/Users/{id}"),
            Some(json!({"schemas": [USER], "userName": "ann", "active": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.whoami(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.revocation_events("tok_").await, 1);
}

#[tokio::test]
async fn delete_offboards_and_forgets_user() {
    let h = harness().await;
    let id = h.create_user("ann").await;
    let token = h.user_token("ann").await;
    let (status, _) = h
        .scim("DELETE", &format!("/scim/v2/Users/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.whoami(&token).await, StatusCode::UNAUTHORIZED);
    let (status, body) = h.scim("GET", &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], json!("404"));
}

async fn group_with(h: &Harness, members: &[&str]) -> String {
    let members: Vec<Value> = members.iter().map(|id| json!({"value": id})).collect();
    let (status, body) = h
        .scim(
            "POST",
            "/scim/v2/Groups",
            Some(json!({"schemas": [GROUP], "displayName": "ops", "members": members})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn member_ids(body: &Value) -> Vec<String> {
    body["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn group_membership_sets_cedar_groups() {
    let h = harness().await;
    let ann = h.create_user("ann").await;
    let bob = h.create_user("bob").await;
    let group = group_with(&h, &[&ann, &bob]).await;
    assert_eq!(h.groups_of("ann").await, ["ops"]);

    let (status, body) = h
        .patch(
            &format!("/scim/v2/Groups/{group}"),
            json!([{"op": "remove", "path": format!("members[value eq \"{ann}\"]")}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(member_ids(&body), std::slice::from_ref(&bob));
    assert!(h.groups_of("ann").await.is_empty());
    assert_eq!(h.groups_of("bob").await, ["ops"]);
}

#[tokio::test]
async fn member_removal_by_value_list() {
    let h = harness().await;
    let ann = h.create_user("ann").await;
    let bob = h.create_user("bob").await;
    let cat = h.create_user("cat").await;
    let group = group_with(&h, &[&ann, &bob, &cat]).await;
    let (status, body) = h
        .patch(
            &format!("/scim/v2/Groups/{group}"),
            json!([{"op": "Remove", "path": "members", "value": [{"value": ann}, {"value": cat}]}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(member_ids(&body), [bob]);
}

#[tokio::test]
async fn removing_non_member_succeeds() {
    let h = harness().await;
    let ann = h.create_user("ann").await;
    let bob = h.create_user("bob").await;
    let group = group_with(&h, &[&ann]).await;
    for operation in [
        json!({"op": "remove", "path": format!("members[value eq \"{bob}\"]")}),
        json!({"op": "remove", "path": "members", "value": [{"value": bob}]}),
    ] {
        let (status, body) = h
            .patch(&format!("/scim/v2/Groups/{group}"), json!([operation]))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(member_ids(&body), std::slice::from_ref(&ann));
    }
}

#[tokio::test]
async fn unsupported_filter_is_400() {
    let h = harness().await;
    h.create_user("ann").await;
    for filter in [
        "userName%20xx%20%22ann%22",
        "userName%20eq",
        "active%20gt%20true",
    ] {
        let (status, body) = h
            .scim("GET", &format!("/scim/v2/Users?filter={filter}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}");
        assert_eq!(body["scimType"], json!("invalidFilter"), "{filter}");
    }
}

#[tokio::test]
async fn unsupported_op_is_400() {
    let h = harness().await;
    let id = h.create_user("ann").await;
    let (status, body) = h
        .patch(
            &format!("/scim/v2/Users/{id}"),
            json!([{"op": "move", "path": "active", "value": false}]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["scimType"], json!("invalidSyntax"));
    let (_, body) = h.scim("GET", &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(
        body["active"],
        json!(true),
        "a refused PATCH changes nothing"
    );
}

#[tokio::test]
async fn filter_and_pagination() {
    let h = harness().await;
    for name in ["ann", "bob", "cat"] {
        h.create_user(name).await;
    }
    let (status, body) = h
        .scim("GET", "/scim/v2/Users?filter=emails%5Btype%20eq%20%22work%22%5D.value%20pr%20or%20userName%20sw%20%22b%22", None)
        .await;
    // `emails[...].value` is a PATCH path, not filter syntax.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (_, body) = h
        .scim(
            "GET",
            "/scim/v2/Users?filter=userName%20sw%20%22b%22%20or%20externalId%20eq%20%22ext-cat%22",
            None,
        )
        .await;
    assert_eq!(body["totalResults"], json!(2));

    let (_, body) = h
        .scim(
            "GET",
            "/scim/v2/Users?startIndex=2&count=1&attributes=userName",
            None,
        )
        .await;
    assert_eq!(body["totalResults"], json!(3));
    assert_eq!(body["itemsPerPage"], json!(1));
    assert!(body["Resources"][0].get("emails").is_none());
    let second = body["Resources"][0]["userName"].clone();
    let (_, body) = h
        .scim("GET", "/scim/v2/Users?startIndex=1&count=1", None)
        .await;
    assert_ne!(
        body["Resources"][0]["userName"], second,
        "pages do not overlap"
    );
}

#[tokio::test]
async fn deactivation_revokes_token_grant_and_pending_request_at_once() {
    let h = harness().await;
    let root = h.root.clone();
    let ann_id = h.create_user("ann").await;
    let bob_id = h.create_user("bob").await;
    // Group `ops` (ann and bob): ops may ask for prod, read it under a grant, and approve.
    group_with(&h, &[&ann_id, &bob_id]).await;
    let (status, body) = h
        .call("POST", "/v1/vaults", &root, Some(json!({"name": "prod"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for secret in ["db", "api"] {
        let (status, body) = h
            .call(
                "PUT",
                &format!("/v1/vaults/prod/secrets/{secret}"),
                &root,
                Some(json!({"fields": {"password": {"text": "s3cret"}}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let policy = r#"permit(principal in Group::"ops", action in [Action::"request", Action::"approve"], resource in Vault::"prod");
permit(principal in Group::"ops", action == Action::"read", resource in Vault::"prod") when { context.grant };"#;
    let (status, body) = h
        .call(
            "PUT",
            "/v1/policies/ops",
            &root,
            Some(json!({"policy": policy})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ann = h.user_token("ann").await;
    let bob = h.user_token("bob").await;

    // ann holds a token, a live grant on prod/db and a pending request for prod/api.
    let (status, request) = h
        .call(
            "POST",
            "/v1/requests",
            &ann,
            Some(json!({"resources": ["lk://prod/db"], "duration": "1h", "reason": "INC-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    let (status, approved) = h
        .call(
            "POST",
            &format!("/v1/requests/{}/approve", request["id"].as_str().unwrap()),
            &bob,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    let grant = approved["grant"].as_str().unwrap().to_string();
    let (status, pending) = h
        .call(
            "POST",
            "/v1/requests",
            &ann,
            Some(json!({"resources": ["lk://prod/api"], "duration": "1h", "reason": "INC-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pending}");
    let pending = pending["id"].as_str().unwrap().to_string();
    let read = |token: String| {
        let h = &h;
        async move {
            h.call("GET", "/v1/read?ref=lk://prod/db/password", &token, None)
                .await
                .0
        }
    };
    assert_eq!(read(ann.clone()).await, StatusCode::OK);

    let (status, body) = h
        .patch(
            &format!("/scim/v2/Users/{ann_id}"),
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Right after: the token is refused, the grant revoked, the request cancelled.
    assert_eq!(read(ann.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.whoami(&ann).await, StatusCode::UNAUTHORIZED);
    let (_, shown) = h
        .call("GET", &format!("/v1/grants/{grant}"), &root, None)
        .await;
    assert_eq!(shown["status"], "revoked", "{shown}");
    assert_eq!(shown["revoke_reason"], "offboarded");
    let (_, shown) = h
        .call("GET", &format!("/v1/requests/{pending}"), &root, None)
        .await;
    assert_eq!(shown["status"], "cancelled", "{shown}");
    let (status, body) = h
        .call(
            "POST",
            &format!("/v1/requests/{pending}/approve"),
            &bob,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // One audit event per revocation.
    let count = |action: &str| {
        let filter = AuditFilter {
            limit: 1000,
            action: Some(action.into()),
            ..AuditFilter::default()
        };
        let store = h.store.clone();
        async move {
            store
                .search_audit(&filter)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| {
                    e.record.detail.get("operation").map(String::as_str) == Some("offboard")
                })
                .count()
        }
    };
    assert_eq!(count("revoke_token").await, 1);
    assert_eq!(count("revoke_grant").await, 1);
    assert_eq!(count("cancel").await, 1);

    // Reactivation restores the account, not what was revoked.
    let (status, _) = h
        .patch(
            &format!("/scim/v2/Users/{ann_id}"),
            json!([{"op": "replace", "path": "active", "value": true}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.whoami(&ann).await, StatusCode::UNAUTHORIZED);
    let fresh = h.user_token("ann").await;
    let (status, body) = h
        .call("GET", "/v1/read?ref=lk://prod/db/password", &fresh, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "grant_required");
}
