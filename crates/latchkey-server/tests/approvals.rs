//! Approvals page tests: sign-in, the lists, decisions, form tokens, headers and escaping,
//! through the real router over a real SQLite store, as a browser would send them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use latchkey_core::audit::{AuditEvent, Outcome};
use latchkey_core::crypto::Key256;
use latchkey_core::token::{RawToken, TokenKind};
use latchkey_server::app::router;
use latchkey_server::state::{AppState, Settings};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{AuditFilter, SqliteStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "latchkey.test:8740";
const ORIGIN: &str = "http://latchkey.test:8740";

struct Harness {
    _dir: tempfile::TempDir,
    app: Router,
    state: Arc<AppState>,
    root: String,
    store: SqliteStore,
}

/// Devs ask for prod and staging and read prod under a grant; approvers approve prod;
/// leads approve staging.
const POLICIES: &[(&str, &str)] = &[
    (
        "devs-request",
        r#"permit(principal in Group::"devs", action == Action::"request", resource);"#,
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
        "leads-approve-staging",
        r#"permit(principal in Group::"leads", action == Action::"approve", resource in Vault::"staging");"#,
    ),
];

/// A response as a browser receives it.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Returns the `Set-Cookie` header that sets `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }

    /// Returns the value that `Set-Cookie` gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        let header = self.set_cookie(name)?;
        let value = header.split(';').next()?.split_once('=')?.1;
        Some(value.to_string())
    }

    /// Returns the form token of the first form on the page.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a form token") + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_string()
    }

    fn review_forms(&self) -> usize {
        self.body.matches("<form class=\"review\"").count()
    }
}

/// A signed-in browser: its session cookie and the form token of its pages.
struct Browser {
    session: String,
    csrf: String,
}

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
            .root("POST", "/v1/vaults", Some(json!({"name": vault})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = h
            .root(
                "PUT",
                &format!("/v1/vaults/{vault}/secrets/db"),
                Some(json!({"fields": {"password": {"text": format!("{vault}-db")}}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
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
        ("lee", vec!["leads"]),
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
    async fn api(
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
        self.api(method, uri, &self.root.clone(), body).await
    }

    /// Creates a token for `user`; returns it with its accessor.
    async fn token(&self, user: &str) -> (String, String) {
        let (status, body) = self
            .root(
                "POST",
                "/v1/tokens",
                Some(json!({"user": user, "ttl": "12h", "max_ttl": "24h"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["token"].as_str().unwrap().to_string(),
            body["accessor"].as_str().unwrap().to_string(),
        )
    }

    /// Files a request as `token`; returns its id.
    async fn ask(&self, token: &str, body: Value) -> String {
        let (status, request) = self.api("POST", "/v1/requests", token, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{request}");
        request["id"].as_str().unwrap().to_string()
    }

    async fn request(&self, id: &str) -> Value {
        let (status, body) = self.root("GET", &format!("/v1/requests/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Sends what a browser sends: the cookies, the host, an origin on posts, a form body.
    async fn send(
        &self,
        method: &str,
        uri: &str,
        cookies: &[(&str, &str)],
        origin: Option<&str>,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        self.send_with(method, uri, cookies, &headers, form).await
    }

    /// Like [`Harness::send`], with any other headers.
    async fn send_with(
        &self,
        method: &str,
        uri: &str,
        cookies: &[(&str, &str)],
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, HOST);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !cookies.is_empty() {
            let text = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header(header::COOKIE, text);
        }
        let request = match form {
            Some(fields) => {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields.iter())
                    .finish();
                request
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(body))
                    .unwrap()
            }
            None => request.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn login_page(&self) -> (Page, String) {
        let page = self.send("GET", "/approvals/login", &[], None, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let cookie = page.cookie("latchkey_login").expect("a sign-in cookie");
        (page, cookie)
    }

    /// Signs in through the form with `token`; returns the response to the form post.
    async fn post_login(&self, token: &str, next: Option<&str>) -> Page {
        let (form, cookie) = self.login_page().await;
        let csrf = form.csrf();
        let mut fields = vec![("token", token), ("csrf", csrf.as_str())];
        if let Some(next) = next {
            fields.push(("next", next));
        }
        self.send(
            "POST",
            "/approvals/login",
            &[("latchkey_login", &cookie)],
            Some(ORIGIN),
            Some(&fields),
        )
        .await
    }

    async fn sign_in(&self, token: &str) -> Browser {
        let page = self.post_login(token, None).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let session = page.cookie("latchkey_session").expect("a session cookie");
        let overview = self.get(&session, "/approvals").await;
        assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
        Browser {
            session,
            csrf: overview.csrf(),
        }
    }

    async fn get(&self, session: &str, uri: &str) -> Page {
        self.send("GET", uri, &[("latchkey_session", session)], None, None)
            .await
    }

    /// Posts a review form as `browser`, with its form token and this server's origin.
    async fn review(&self, browser: &Browser, id: &str, verdict: &str, comment: &str) -> Page {
        self.send(
            "POST",
            &format!("/approvals/requests/{id}/{verdict}"),
            &[("latchkey_session", &browser.session)],
            Some(ORIGIN),
            Some(&[("csrf", &browser.csrf), ("comment", comment)]),
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

    async fn events_on(&self, id: &str) -> Vec<AuditEvent> {
        self.events(AuditFilter {
            resource_prefix: Some(format!("AccessRequest::\"{id}\"")),
            ..AuditFilter::default()
        })
        .await
    }
}

const PROD: &str = "lk://prod/db";

#[tokio::test]
async fn sign_in_sets_strict_cookie() {
    let h = harness().await;
    let (bob, bob_accessor) = h.token("bob").await;

    // Without a session, pages send the browser to the sign-in form, and back afterwards.
    let page = h.send("GET", "/approvals", &[], None, None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/approvals/login");
    let page = h
        .send("GET", "/approvals/requests/req_abc", &[], None, None)
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.location(),
        "/approvals/login?next=%2Fapprovals%2Frequests%2Freq_abc"
    );

    let (form, _) = h.login_page().await;
    let login_cookie = form.set_cookie("latchkey_login").unwrap();
    assert!(
        login_cookie.contains("; Path=/approvals/login; HttpOnly; SameSite=Strict"),
        "{login_cookie}"
    );
    assert!(!login_cookie.contains("Secure"), "{login_cookie}");
    assert!(form.body.contains("lk token create"), "{}", form.body);
    assert!(form.body.contains("lk requests --pending"), "{}", form.body);

    let page = h.post_login(&bob, None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/approvals");
    let cookie = page.set_cookie("latchkey_session").unwrap();
    assert_eq!(
        cookie,
        format!("latchkey_session={bob}; Path=/approvals; HttpOnly; SameSite=Strict")
    );
    // The sign-in cookie is done with.
    assert!(
        page.set_cookie("latchkey_login")
            .unwrap()
            .contains("Max-Age=0")
    );

    let overview = h.get(&bob, "/approvals").await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert!(
        overview
            .body
            .contains("Signed in as <strong>User::&quot;bob&quot;</strong>"),
        "{}",
        overview.body
    );

    // Back to the page the browser came for; never off the page.
    let page = h
        .post_login(&bob, Some("/approvals/requests/req_abc"))
        .await;
    assert_eq!(page.location(), "/approvals/requests/req_abc");
    for elsewhere in [
        "https://evil.example/",
        "//evil.example",
        "/v1/requests",
        "/approvals/../v1",
    ] {
        let page = h.post_login(&bob, Some(elsewhere)).await;
        assert_eq!(page.location(), "/approvals", "{elsewhere}");
    }

    // The sign-in and the page view are audited as bob, with his token.
    let logins = h
        .events(AuditFilter {
            principal: Some("User::\"bob\"".into()),
            action: Some("login".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(logins.len(), 6, "{logins:?}");
    assert_eq!(logins[0].record.resource, "AuthMethod::\"approvals-page\"");
    assert_eq!(logins[0].record.outcome, Outcome::Allowed);
    assert_eq!(
        logins[0].record.token_id.as_deref(),
        Some(bob_accessor.as_str())
    );
    let views = h
        .events(AuditFilter {
            principal: Some("User::\"bob\"".into()),
            action: Some("list".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(views[0].record.resource, "AccessRequest::\"*\"");
    assert_eq!(views[0].record.detail["via"], "approvals_page");
    // No event contains the token.
    let all = h.events(AuditFilter::default()).await;
    assert!(
        all.iter()
            .all(|e| !serde_json::to_string(&e.record).unwrap().contains(&bob)),
        "a token reached the audit log"
    );

    // The cookie is no credential for the API.
    let response = h
        .send(
            "GET",
            "/v1/requests",
            &[("latchkey_session", &bob)],
            None,
            None,
        )
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cookies_are_secure_when_the_server_serves_tls() {
    let h = harness_with(Settings {
        tls: true,
        ..Settings::default()
    })
    .await;
    let (bob, _) = h.token("bob").await;

    let (form, cookie) = h.login_page().await;
    assert!(
        form.set_cookie("latchkey_login")
            .unwrap()
            .ends_with("; Secure")
    );
    let csrf = form.csrf();
    let fields = [("token", bob.as_str()), ("csrf", csrf.as_str())];

    // Over TLS the browser's origin is https.
    let page = h
        .send(
            "POST",
            "/approvals/login",
            &[("latchkey_login", &cookie)],
            Some(ORIGIN),
            Some(&fields),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    let page = h
        .send(
            "POST",
            "/approvals/login",
            &[("latchkey_login", &cookie)],
            Some("https://latchkey.test:8740"),
            Some(&fields),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        page.set_cookie("latchkey_session").unwrap(),
        format!("latchkey_session={bob}; Path=/approvals; HttpOnly; SameSite=Strict; Secure")
    );
}

#[tokio::test]
async fn bad_revoked_and_ended_tokens_are_refused() {
    let h = harness().await;
    let (dave, dave_accessor) = h.token("dave").await;
    let (status, body) = h
        .root("POST", &format!("/v1/tokens/{dave_accessor}/revoke"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let unknown = RawToken::generate(TokenKind::Token).unwrap();

    for (token, reason) in [
        ("not-a-token", "malformed_token"),
        (unknown.expose(), "unknown_token"),
        (dave.as_str(), "revoked_token"),
        ("", "missing_token"),
    ] {
        let page = h.post_login(token, None).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{token}: {}",
            page.body
        );
        assert!(page.set_cookie("latchkey_session").is_none(), "{token}");
        assert!(
            page.body.contains("That token was not accepted"),
            "{}",
            page.body
        );
        // The form is there to try again.
        assert!(page.body.contains("name=\"token\""));
        let failures = h
            .events(AuditFilter {
                action: Some("login".into()),
                outcome: Some(Outcome::Failed),
                ..AuditFilter::default()
            })
            .await;
        let last = &failures.last().unwrap().record;
        assert_eq!(last.reason.as_deref(), Some(reason), "{token}");
        assert_eq!(last.principal, "anonymous");
        assert_eq!(last.resource, "AuthMethod::\"approvals-page\"");
    }
    let failures = h
        .events(AuditFilter {
            action: Some("login".into()),
            outcome: Some(Outcome::Failed),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(
        failures[2].record.token_id.as_deref(),
        Some(dave_accessor.as_str())
    );

    // A sign-in form needs its cookie and its token.
    let (bob, bob_accessor) = h.token("bob").await;
    let (form, cookie) = h.login_page().await;
    let csrf = form.csrf();
    for (cookies, fields) in [
        (
            vec![],
            vec![("token", bob.as_str()), ("csrf", csrf.as_str())],
        ),
        (
            vec![("latchkey_login", cookie.as_str())],
            vec![("token", bob.as_str())],
        ),
        (
            vec![("latchkey_login", "another-value")],
            vec![("token", bob.as_str()), ("csrf", csrf.as_str())],
        ),
    ] {
        let page = h
            .send(
                "POST",
                "/approvals/login",
                &cookies,
                Some(ORIGIN),
                Some(&fields),
            )
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(
            page.body.contains("Reload the sign-in page"),
            "{}",
            page.body
        );
        assert!(page.set_cookie("latchkey_session").is_none());
    }

    // A session whose token is revoked ends at once.
    let browser = h.sign_in(&bob).await;
    let dave2 = h.token("dave").await.0;
    let id = h
        .ask(
            &dave2,
            json!({"resources": [PROD], "duration": "1h", "reason": "r"}),
        )
        .await;
    let (status, _) = h
        .root("POST", &format!("/v1/tokens/{bob_accessor}/revoke"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let page = h.get(&browser.session, "/approvals").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/approvals/login?ended=1");
    assert!(
        page.set_cookie("latchkey_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    let login = h
        .send("GET", "/approvals/login?ended=1", &[], None, None)
        .await;
    assert!(
        login.body.contains("Your session has ended"),
        "{}",
        login.body
    );
    let page = h.review(&browser, &id, "approve", "too late").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert!(page.body.contains("Sign in again"), "{}", page.body);
    assert_eq!(h.request(&id).await["approvals"], 0);
    let refused = h
        .events(AuditFilter {
            outcome: Some(Outcome::Failed),
            ..AuditFilter::default()
        })
        .await;
    let last = &refused.last().unwrap().record;
    assert_eq!(last.reason.as_deref(), Some("revoked_token"));
    assert_eq!(last.action, "http:POST /approvals/requests/{id}/approve");
}

#[tokio::test]
async fn list_shows_only_reviewable_requests() {
    let h = harness().await;
    let dave = h.token("dave").await.0;
    let alice = h.token("alice").await.0;
    let dave_prod = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "INC-7 needs prod", "ticket": "https://tickets.example.com/INC-7"}),
        )
        .await;
    // A minute apart, so the order is certain.
    h.state.clock.advance(60);
    let dave_staging = h
        .ask(
            &dave,
            json!({"resources": ["lk://staging/db"], "duration": "30m", "reason": "staging check"}),
        )
        .await;
    h.state.clock.advance(60);
    let alice_prod = h
        .ask(
            &alice,
            json!({"resources": ["lk://prod"], "duration": "2h", "reason": "migration"}),
        )
        .await;

    // bob approves prod: both prod requests, with forms, newest first; not staging.
    let bob = h.sign_in(&h.token("bob").await.0).await;
    let page = h.get(&bob.session, "/approvals").await;
    assert_eq!(page.review_forms(), 2, "{}", page.body);
    for id in [&dave_prod, &alice_prod] {
        assert!(
            page.body
                .contains(&format!("action=\"/approvals/requests/{id}/approve\"")),
            "{id}: {}",
            page.body
        );
        assert!(
            page.body
                .contains(&format!("formaction=\"/approvals/requests/{id}/deny\""))
        );
    }
    assert!(!page.body.contains(&dave_staging), "{}", page.body);
    assert!(
        page.body.find(&alice_prod).unwrap() < page.body.find(&dave_prod).unwrap(),
        "newest first"
    );
    for text in [
        "User::&quot;dave&quot;",
        "lk://prod/db",
        "1h",
        "INC-7 needs prod",
        "<a href=\"https://tickets.example.com/INC-7\"",
        "0/1",
        "Expires",
    ] {
        assert!(page.body.contains(text), "{text}: {}", page.body);
    }

    // alice reviews dave's request, and finds her own only among her requests, without a form.
    let alice_page = h.get(&h.sign_in(&alice).await.session, "/approvals").await;
    assert_eq!(alice_page.review_forms(), 1, "{}", alice_page.body);
    assert!(
        alice_page
            .body
            .contains(&format!("/approvals/requests/{dave_prod}/approve"))
    );
    assert!(
        !alice_page
            .body
            .contains(&format!("/approvals/requests/{alice_prod}/approve"))
    );
    assert!(
        alice_page
            .body
            .contains(&format!("<a href=\"/approvals/requests/{alice_prod}\">"))
    );

    // dave reviews nothing and finds his own two.
    let dave_browser = h.sign_in(&dave).await;
    let dave_page = h.get(&dave_browser.session, "/approvals").await;
    assert_eq!(dave_page.review_forms(), 0, "{}", dave_page.body);
    assert!(!dave_page.body.contains("/approve\""), "{}", dave_page.body);
    assert!(dave_page.body.contains(&dave_prod));
    assert!(dave_page.body.contains(&dave_staging));
    assert!(
        dave_page
            .body
            .contains("No pending request waits for your review")
    );

    // lee approves staging only.
    let lee_page = h
        .get(
            &h.sign_in(&h.token("lee").await.0).await.session,
            "/approvals",
        )
        .await;
    assert_eq!(lee_page.review_forms(), 1, "{}", lee_page.body);
    assert!(
        lee_page
            .body
            .contains(&format!("/approvals/requests/{dave_staging}/approve"))
    );

    // Details: a request bob may not see is the same 404 as a missing one.
    let hidden = h
        .get(&bob.session, &format!("/approvals/requests/{dave_staging}"))
        .await;
    let missing = h.get(&bob.session, "/approvals/requests/req_missing").await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let normalize = |page: &Page, id: &str| {
        let request_id = page.headers["x-request-id"].to_str().unwrap().to_string();
        page.body.replace(id, "ID").replace(&request_id, "RID")
    };
    assert_eq!(
        normalize(&hidden, &dave_staging),
        normalize(&missing, "req_missing")
    );
    assert!(hidden.body.contains("not found"), "{}", hidden.body);

    // Details of a reviewable request carry the form; one's own request does not.
    let detail = h
        .get(&bob.session, &format!("/approvals/requests/{dave_prod}"))
        .await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert_eq!(detail.review_forms(), 1);
    assert!(detail.body.contains("No reviews yet"));
    let own = h
        .get(
            &dave_browser.session,
            &format!("/approvals/requests/{dave_prod}"),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.review_forms(), 0, "{}", own.body);
    assert!(own.body.contains("You cannot review this request"));

    // Each page view is an audit event.
    let views = h
        .events(AuditFilter {
            action: Some("http:GET /approvals/requests/{id}".into()),
            ..AuditFilter::default()
        })
        .await;
    assert_eq!(views.len(), 4, "{views:?}");
    assert_eq!(views[0].record.outcome, Outcome::Failed);
    assert_eq!(views[0].record.reason.as_deref(), Some("not_found"));
    assert_eq!(views[2].record.outcome, Outcome::Allowed);
    assert_eq!(
        views[2].record.resource,
        format!("/approvals/requests/{dave_prod}")
    );
}

#[tokio::test]
async fn self_approval_is_refused() {
    let h = harness().await;
    // alice may approve prod, and requests prod herself.
    let alice = h.token("alice").await.0;
    let id = h
        .ask(
            &alice,
            json!({"resources": [PROD], "duration": "1h", "reason": "mine"}),
        )
        .await;
    let browser = h.sign_in(&alice).await;
    for verdict in ["approve", "deny"] {
        let page = h.review(&browser, &id, verdict, "self").await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(
            page.body.contains(&format!(
                "You cannot {verdict} your own access request `{id}`"
            )),
            "{}",
            page.body
        );
    }
    let request = h.request(&id).await;
    assert_eq!(request["status"], "pending");
    assert_eq!(request["approvals"], 0);
    assert_eq!(request["reviews"], json!([]));
    let (status, body) = h
        .api("GET", "/v1/read?ref=lk://prod/db/password", &alice, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The refusals are the API's events, marked as coming from the page.
    let events = h.events_on(&id).await;
    let reviews: Vec<_> = events
        .iter()
        .filter(|e| e.record.action == "approve" || e.record.action == "deny")
        .collect();
    assert_eq!(reviews.len(), 2, "{events:?}");
    for event in reviews {
        assert_eq!(event.record.outcome, Outcome::Denied);
        assert_eq!(event.record.reason.as_deref(), Some("self_approval"));
        assert_eq!(event.record.detail["refused"], "own_request");
        assert_eq!(event.record.detail["via"], "approvals_page");
    }
    assert!(
        h.events(AuditFilter {
            action: Some("grant".into()),
            ..AuditFilter::default()
        })
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn forged_forms_are_refused() {
    let h = harness().await;
    let dave = h.token("dave").await.0;
    let id = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "r"}),
        )
        .await;
    let bob = h.sign_in(&h.token("bob").await.0).await;
    let carol = h.sign_in(&h.token("carol").await.0).await;
    assert_ne!(bob.csrf, carol.csrf);
    let uri = format!("/approvals/requests/{id}/approve");
    let session = [("latchkey_session", bob.session.as_str())];

    // (case, Origin header, form fields, expected refusal code)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "no token",
            Some(ORIGIN),
            vec![("comment", "ok")],
            "csrf_failed",
        ),
        (
            "wrong token",
            Some(ORIGIN),
            vec![("csrf", "AAAA"), ("comment", "ok")],
            "csrf_failed",
        ),
        (
            "another session's token",
            Some(ORIGIN),
            vec![("csrf", &carol.csrf), ("comment", "ok")],
            "csrf_failed",
        ),
        (
            "another site",
            Some("https://evil.example"),
            vec![("csrf", &bob.csrf), ("comment", "ok")],
            "cross_origin",
        ),
        (
            "another port",
            Some("http://latchkey.test:9999"),
            vec![("csrf", &bob.csrf), ("comment", "ok")],
            "cross_origin",
        ),
        (
            "opaque origin",
            Some("null"),
            vec![("csrf", &bob.csrf), ("comment", "ok")],
            "cross_origin",
        ),
    ];
    for (case, origin, fields, code) in cases {
        let page = h.send("POST", &uri, &session, origin, Some(&fields)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{case}: {}", page.body);
        let hint = if code == "csrf_failed" {
            "Reload the page and send the form again"
        } else {
            "sent from another site"
        };
        assert!(page.body.contains(hint), "{case}: {}", page.body);
        let last = h.events_on(&id).await.pop().unwrap().record;
        assert_eq!(last.action, "approve", "{case}");
        assert_eq!(last.outcome, Outcome::Denied, "{case}");
        assert_eq!(last.reason.as_deref(), Some(code), "{case}");
        assert_eq!(last.principal, "User::\"bob\"");
    }
    // Fetch metadata, which browsers set and pages cannot, overrules the origin; the page's
    // own forms send `Origin: null` under `Referrer-Policy: no-referrer`.
    for (headers, code) in [
        (
            vec![("origin", ORIGIN), ("sec-fetch-site", "cross-site")],
            Some("cross_origin"),
        ),
        (vec![("sec-fetch-site", "same-site")], Some("cross_origin")),
        (
            vec![("origin", "null"), ("sec-fetch-site", "same-origin")],
            Some("csrf_failed"),
        ),
    ] {
        let page = h
            .send_with("POST", &uri, &session, &headers, Some(&[("csrf", "AAAA")]))
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{headers:?}");
        let last = h.events_on(&id).await.pop().unwrap().record;
        assert_eq!(last.reason.as_deref(), code, "{headers:?}");
    }
    let request = h.request(&id).await;
    assert_eq!(request["status"], "pending");
    assert_eq!(request["reviews"], json!([]));

    // Sign-out needs the token too; the session survives a forged one.
    let page = h
        .send(
            "POST",
            "/approvals/logout",
            &session,
            Some(ORIGIN),
            Some(&[]),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.set_cookie("latchkey_session").is_none());

    // The page's own form as a browser sends it is accepted; so is a form without an
    // Origin, which the token alone decides.
    let page = h
        .send_with(
            "POST",
            &uri,
            &session,
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
            Some(&[("csrf", &bob.csrf), ("comment", "ok")]),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(h.request(&id).await["status"], "approved");
    let other = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "r"}),
        )
        .await;
    let page = h
        .send(
            "POST",
            &format!("/approvals/requests/{other}/deny"),
            &session,
            None,
            Some(&[("csrf", &bob.csrf), ("comment", "no")]),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(h.request(&other).await["status"], "denied");

    let page = h
        .send(
            "POST",
            "/approvals/logout",
            &session,
            Some(ORIGIN),
            Some(&[("csrf", &bob.csrf)]),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/approvals/login?signed_out=1");
    assert!(
        page.set_cookie("latchkey_session")
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn approving_through_the_page_grants_access() {
    let h = harness().await;
    let dave = h.token("dave").await.0;
    let id = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "INC-7", "ticket": "INC-7"}),
        )
        .await;
    let (status, body) = h
        .api("GET", "/v1/read?ref=lk://prod/db/password", &dave, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let bob = h.sign_in(&h.token("bob").await.0).await;
    let page = h
        .send(
            "POST",
            &format!("/approvals/requests/{id}/approve"),
            &[("latchkey_session", &bob.session)],
            Some(ORIGIN),
            Some(&[
                ("csrf", &bob.csrf),
                ("comment", "checked INC-7"),
                ("return_to", "list"),
            ]),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/approvals");
    let flash = page.cookie("latchkey_flash").expect("a flash message");

    // The next page shows the outcome once.
    let after = h
        .send(
            "GET",
            "/approvals",
            &[
                ("latchkey_session", &bob.session),
                ("latchkey_flash", &flash),
            ],
            None,
            None,
        )
        .await;
    assert!(
        after.body.contains(&format!(
            "You approved request {id}: User::&quot;dave&quot; may use lk://prod/db for 1h."
        )),
        "{}",
        after.body
    );
    assert!(
        after
            .set_cookie("latchkey_flash")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(after.review_forms(), 0, "{}", after.body);
    // Another session cannot show it.
    let carol = h.sign_in(&h.token("carol").await.0).await;
    let other = h
        .send(
            "GET",
            "/approvals",
            &[
                ("latchkey_session", &carol.session),
                ("latchkey_flash", &flash),
            ],
            None,
            None,
        )
        .await;
    assert!(!other.body.contains("You approved"), "{}", other.body);

    // The API sees the approval, and dave reads under the grant.
    let request = h.request(&id).await;
    assert_eq!(request["status"], "approved");
    assert_eq!(request["decided_by"], "User::\"bob\"");
    assert_eq!(request["reviews"][0]["comment"], "checked INC-7");
    let grant = request["grant"].as_str().unwrap().to_string();
    let (status, body) = h
        .api("GET", "/v1/read?ref=lk://prod/db/password", &dave, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"]["text"], "prod-db");

    // The same events as an approval through the API.
    let trail = h
        .events(AuditFilter {
            grant: Some(grant),
            ..AuditFilter::default()
        })
        .await;
    let actions: Vec<&str> = trail.iter().map(|e| e.record.action.as_str()).collect();
    assert_eq!(actions, ["approve", "grant", "read"], "{trail:?}");
    assert_eq!(trail[0].record.principal, "User::\"bob\"");
    assert_eq!(trail[0].record.outcome, Outcome::Allowed);
    assert_eq!(trail[0].record.detail["comment"], "checked INC-7");
    assert_eq!(trail[0].record.detail["via"], "approvals_page");
    assert_eq!(
        trail[0].record.policies,
        vec!["approvers-approve-prod".to_string()]
    );

    // A decided request cannot be reviewed again: 409 with the API's message.
    let page = h.review(&carol, &id, "approve", "me too").await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("Access request `{id}` is already approved")),
        "{}",
        page.body
    );

    // A denial through the page.
    let other = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "again"}),
        )
        .await;
    let page = h.review(&bob, &other, "deny", "one grant is enough").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), format!("/approvals/requests/{other}"));
    let request = h.request(&other).await;
    assert_eq!(request["status"], "denied");
    assert_eq!(request["reviews"][0]["verdict"], "deny");
    let deny = h
        .events_on(&other)
        .await
        .into_iter()
        .find(|e| e.record.action == "deny")
        .unwrap();
    assert_eq!(deny.record.outcome, Outcome::Allowed);
    assert_eq!(deny.record.detail["comment"], "one grant is enough");
}

#[tokio::test]
async fn expired_request_is_refused() {
    let h = harness().await;
    let dave = h.token("dave").await.0;
    let id = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "r"}),
        )
        .await;
    let bob = h.sign_in(&h.token("bob").await.0).await;
    h.state.clock.advance(2 * 3600);
    let page = h.review(&bob, &id, "approve", "late").await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(page.body.contains("expired"), "{}", page.body);
    assert_eq!(page.review_forms(), 0);
    // And it no longer waits on the list.
    let list = h.get(&bob.session, "/approvals").await;
    assert_eq!(list.review_forms(), 0, "{}", list.body);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let h = harness().await;
    let dave = h.token("dave").await.0;
    let id = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "r"}),
        )
        .await;
    let bob = h.sign_in(&h.token("bob").await.0).await;
    let pages = vec![
        h.send("GET", "/approvals/login", &[], None, None).await,
        h.send("GET", "/approvals", &[], None, None).await,
        h.get(&bob.session, "/approvals").await,
        h.get(&bob.session, &format!("/approvals/requests/{id}"))
            .await,
        h.get(&bob.session, "/approvals/requests/req_missing").await,
        h.send(
            "POST",
            &format!("/approvals/requests/{id}/approve"),
            &[("latchkey_session", &bob.session)],
            Some(ORIGIN),
            Some(&[]),
        )
        .await,
        h.send("GET", "/approvals/style.css", &[], None, None).await,
    ];
    for page in &pages {
        let get = |name: &str| {
            page.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            get("content-security-policy"),
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        assert_eq!(get("x-frame-options"), "DENY");
        assert_eq!(get("referrer-policy"), "no-referrer");
        assert_eq!(get("cache-control"), "no-store");
        assert_eq!(get("x-content-type-options"), "nosniff");
        if page.status != StatusCode::SEE_OTHER && !page.body.starts_with("/*") {
            assert_eq!(get("content-type"), "text/html; charset=utf-8");
            // No script, no inline style, nothing loaded from elsewhere.
            for banned in [
                "<script",
                "<style",
                " style=",
                "src=",
                "http-equiv",
                "@import",
            ] {
                assert!(!page.body.contains(banned), "{banned}: {}", page.body);
            }
            assert!(
                page.body
                    .contains("<link rel=\"stylesheet\" href=\"/approvals/style.css\">")
            );
        }
    }
    let css = pages.last().unwrap();
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    assert!(!css.body.contains("url("), "the stylesheet loads nothing");

    // The API keeps its own responses.
    let (status, body) = h.api("GET", "/v1/requests", &dave, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/requests")
                .header("authorization", format!("Bearer {dave}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.headers().get("content-security-policy").is_none());
}

#[tokio::test]
async fn user_text_is_escaped() {
    let h = harness().await;
    let dave = h.token("dave").await.0;
    let reason = "<script>alert(\"x\")</script> it's \"urgent\" & <b>bold</b>";
    let scripted = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": reason, "ticket": "javascript:alert(1)"}),
        )
        .await;
    let linked = h
        .ask(
            &dave,
            json!({"resources": [PROD], "duration": "1h", "reason": "r", "ticket": "https://tickets.example.com/INC-1?a=1&b=\"2\""}),
        )
        .await;
    let bob = h.sign_in(&h.token("bob").await.0).await;
    let page = h.get(&bob.session, "/approvals").await;
    assert!(page.body.contains(&scripted));
    assert!(page.body.contains(&linked));
    assert!(
        page.body.contains(
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; it&#39;s &quot;urgent&quot; &amp; &lt;b&gt;bold&lt;/b&gt;"
        ),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(!page.body.contains("<b>"), "{}", page.body);
    assert!(!page.body.contains("href=\"javascript"), "{}", page.body);
    assert!(
        page.body.contains("<dd>javascript:alert(1)</dd>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(
            "<a href=\"https://tickets.example.com/INC-1?a=1&amp;b=%222%22\" rel=\"noreferrer noopener\">https://tickets.example.com/INC-1?a=1&amp;b=&quot;2&quot;</a>"
        ),
        "{}",
        page.body
    );

    // A comment is escaped on the detail page, and in the flash message.
    let page = h
        .review(&bob, &scripted, "deny", "<img src=x onerror=alert(1)> 'no'")
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let flash = page.cookie("latchkey_flash").unwrap();
    let detail = h
        .send(
            "GET",
            &format!("/approvals/requests/{scripted}"),
            &[
                ("latchkey_session", &bob.session),
                ("latchkey_flash", &flash),
            ],
            None,
            None,
        )
        .await;
    assert!(
        detail
            .body
            .contains("&lt;img src=x onerror=alert(1)&gt; &#39;no&#39;"),
        "{}",
        detail.body
    );
    assert!(!detail.body.contains("<img"), "{}", detail.body);
    assert!(
        detail.body.contains("You denied request"),
        "{}",
        detail.body
    );
}
