//! JWT role logins against a key set served on 127.0.0.1: signature, algorithm, claims,
//! key rotation and refetch limits, failures that read the same, and rate limiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use latchkey_core::crypto::Key256;
use latchkey_server::app::router;
use latchkey_server::identity::{AuthConfig, JwtRoleSettings};
use latchkey_server::state::{AppState, Settings, SharedState};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{AuditFilter, SqliteStore, Store};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

/// An ES256 signing key and its public JWK.
struct Signer {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = pair.public_key().as_ref();
        Signer {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&public[33..65])}),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A key set endpoint on 127.0.0.1 that counts its fetches and can rotate its keys.
struct KeyServer {
    url: String,
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicU64>,
}

async fn key_server(initial: &[&Signer]) -> KeyServer {
    let keys = Arc::new(Mutex::new(
        initial.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>(),
    ));
    let fetches = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (served, counted) = (Arc::clone(&keys), Arc::clone(&fetches));
    let app = Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let keys = served.lock().unwrap().clone();
                (
                    [("cache-control", "public, max-age=3600")],
                    axum::Json(json!({ "keys": keys })),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    KeyServer {
        url: format!("http://{addr}/jwks"),
        issuer: format!("http://{addr}"),
        keys,
        fetches,
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    app: Router,
    root: String,
    store: SqliteStore,
    state: SharedState,
}

async fn harness(auth: AuthConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let settings = Settings {
        auth,
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
    Harness {
        _dir: dir,
        app: router(Arc::clone(&state)),
        root: initialized.root_token.expose().to_string(),
        store,
        state,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        client: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .extension(ConnectInfo(client.parse::<SocketAddr>().unwrap()));
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
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn root(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let root = self.root.clone();
        self.call(method, uri, Some(&root), body, "127.0.0.1:1000")
            .await
    }

    async fn login(&self, role: &str, jwt: &str) -> (StatusCode, Value) {
        self.login_from(role, jwt, "127.0.0.1:1000").await
    }

    async fn login_from(&self, role: &str, jwt: &str, client: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/v1/auth/jwt/login",
            None,
            Some(json!({"role": role, "jwt": jwt})),
            client,
        )
        .await
    }

    async fn login_events(&self) -> Vec<latchkey_core::audit::AuditEvent> {
        self.store
            .search_audit(&AuditFilter {
                limit: 1000,
                action: Some("login".into()),
                ..AuditFilter::default()
            })
            .await
            .unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "aud": "latchkey",
        "sub": "repo:acme/api:ref:refs/heads/main",
        "repository": "acme/api",
        "ref": "refs/heads/main",
        "iat": now(),
        "nbf": now(),
        "exp": now() + 300,
    })
}

fn ci_role(keys: &KeyServer) -> Value {
    json!({
        "issuer": keys.issuer,
        "jwks_url": keys.url,
        "bound_audiences": ["latchkey"],
        "bound_claims": {"repository": "acme/*", "ref": "refs/heads/main"},
        "groups": ["ci"],
        "ttl": "10m",
    })
}

#[tokio::test]
async fn jwt_login_reads_by_policy() {
    let signer = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let h = harness(AuthConfig::default()).await;
    let (status, body) = h
        .root("PUT", "/v1/auth/jwt/roles/ci", Some(ci_role(&keys)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["ttl"], "10m");

    // A vault tagged env=staging, and the shipped example policy for CI jobs.
    let (status, _) = h
        .root(
            "POST",
            "/v1/vaults",
            Some(json!({"name": "staging", "tags": {"env": "staging"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = h
        .root(
            "PUT",
            "/v1/vaults/staging/secrets/db",
            Some(json!({"fields": {"password": {"text": "s3cret"}}})),
        )
        .await;
    assert!(status.is_success());
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/policies/ci-reads-staging.cedar"
    ))
    .unwrap();
    let (status, body) = h
        .root("PUT", "/v1/policies/ci", Some(json!({"policy": policy})))
        .await;
    assert!(status.is_success(), "{body}");

    let (status, body) = h.login("ci", &signer.sign(&claims(&keys.issuer))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["principal"],
        "Workload::\"repo:acme/api:ref:refs/heads/main\""
    );
    assert_eq!(body["groups"], json!(["ci"]));
    assert_eq!(body["method"], "jwt:ci");
    let token = body["token"].as_str().unwrap().to_string();

    let (status, me) = h
        .call(
            "GET",
            "/v1/tokens/self",
            Some(&token),
            None,
            "127.0.0.1:1000",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["kind"], "workload");
    assert_eq!(me["token"]["created_by"], "jwt:ci");
    let (status, read) = h
        .call(
            "GET",
            "/v1/read?ref=lk://staging/db/password",
            Some(&token),
            None,
            "127.0.0.1:1000",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");

    let events = h.login_events().await;
    let event = events.last().unwrap();
    assert_eq!(
        event.record.principal,
        "Workload::\"repo:acme/api:ref:refs/heads/main\""
    );
    assert_eq!(event.record.resource, "AuthMethod::\"jwt:ci\"");
    assert_eq!(event.record.outcome, latchkey_core::audit::Outcome::Allowed);
    assert_eq!(event.record.token_id.as_deref(), body["accessor"].as_str());
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jwt_login_failures_look_alike() {
    let signer = Signer::new("k1");
    let forger = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let h = harness(AuthConfig::default()).await;
    h.root("PUT", "/v1/auth/jwt/roles/ci", Some(ci_role(&keys)))
        .await;
    let good = claims(&keys.issuer);
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    let header_b64 = |text: &str| URL_SAFE_NO_PAD.encode(text);
    let body_b64 = URL_SAFE_NO_PAD.encode(good.to_string());
    let hmac = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_secret(signer.jwk.to_string().as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("ci", forger.sign(&good), "bad_signature", "signature"),
        (
            "ci",
            format!("{}.{body_b64}.", header_b64(r#"{"alg":"none","kid":"k1"}"#)),
            "algorithm_not_accepted",
            "`none`",
        ),
        ("ci", hmac, "algorithm_not_accepted", "`HS256`"),
        (
            "ci",
            signer.sign(&with("aud", json!("someone-else"))),
            "claim_rejected",
            "claim `aud`",
        ),
        (
            "ci",
            signer.sign(&with("aud", json!(["a", "b"]))),
            "claim_rejected",
            "claim `aud`",
        ),
        (
            "ci",
            signer.sign(&with("repository", json!("evil/api"))),
            "claim_rejected",
            "claim `repository`",
        ),
        (
            "ci",
            signer.sign(&with("ref", json!("refs/heads/dev"))),
            "claim_rejected",
            "claim `ref`",
        ),
        (
            "ci",
            signer.sign(&with("iss", json!("https://elsewhere.example"))),
            "claim_rejected",
            "claim `iss`",
        ),
        (
            "ci",
            signer.sign(&with("exp", json!(now() - 3600))),
            "claim_rejected",
            "claim `exp`",
        ),
        (
            "ci",
            signer.sign(&with("iat", json!(now() + 120))),
            "claim_rejected",
            "claim `iat`",
        ),
        (
            "ci",
            signer.sign(&with("nbf", json!(now() + 120))),
            "claim_rejected",
            "claim `nbf`",
        ),
        (
            "ci",
            "not-a-jwt".into(),
            "malformed_jwt",
            "not a well-formed JWT",
        ),
        (
            "nope",
            signer.sign(&good),
            "unknown_role",
            "no JWT role `nope`",
        ),
    ];
    // Each case from its own address, so the rate limit stays out of the way.
    for (i, (role, jwt, reason, detail)) in cases.iter().enumerate() {
        let client = format!("127.0.0.{}:1000", i + 10);
        let (status, body) = h.login_from(role, jwt, &client).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {body}");
        assert_eq!(body["error"]["code"], "login_failed", "{reason}");
        let message = body["error"]["message"].as_str().unwrap();
        let request_id = body["error"]["request_id"].as_str().unwrap();
        assert_eq!(
            message.replace(request_id, "ID"),
            "login failed; an administrator can find the reason in the server log or the audit log under request id ID",
            "{reason}"
        );
        let events = h.login_events().await;
        let event = events.last().unwrap();
        assert_eq!(event.record.outcome, latchkey_core::audit::Outcome::Failed);
        assert_eq!(event.record.reason.as_deref(), Some(*reason));
        assert_eq!(event.record.request_id, request_id);
        assert_eq!(
            event.record.client_addr.as_deref(),
            Some(&client[..client.len() - 5])
        );
        let error = &event.record.detail["error"];
        assert!(error.contains(detail), "{reason}: {error}");
        // The token itself never reaches the audit log.
        assert!(
            !serde_json::to_string(&event.record)
                .unwrap()
                .contains(jwt.as_str())
                || jwt.len() < 12
        );
    }
    // 30 s in the future passes within the default leeway.
    let (status, body) = h
        .login("ci", &signer.sign(&with("iat", json!(now() + 30))))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn jwt_role_without_audience_rejects_aud() {
    let signer = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let h = harness(AuthConfig::default()).await;
    let mut role = ci_role(&keys);
    role["bound_audiences"] = json!([]);
    h.root("PUT", "/v1/auth/jwt/roles/open", Some(role)).await;
    for aud in [json!("latchkey"), json!(["latchkey"])] {
        let mut c = claims(&keys.issuer);
        c["aud"] = aud;
        let (status, _) = h.login("open", &signer.sign(&c)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let events = h.login_events().await;
        assert!(events.last().unwrap().record.detail["error"].contains("binds no audience"));
    }
    let mut c = claims(&keys.issuer);
    c.as_object_mut().unwrap().remove("aud");
    let (status, body) = h.login("open", &signer.sign(&c)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn key_set_refetch_is_bounded() {
    let old = Signer::new("old");
    let keys = key_server(&[&old]).await;
    let h = harness(AuthConfig::default()).await;
    h.root("PUT", "/v1/auth/jwt/roles/ci", Some(ci_role(&keys)))
        .await;
    let (status, _) = h.login("ci", &old.sign(&claims(&keys.issuer))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 1);

    // The provider rotates: a token signed by the new key triggers exactly one refetch.
    let new = Signer::new("new");
    keys.keys.lock().unwrap().push(new.jwk.clone());
    let (status, body) = h.login("ci", &new.sign(&claims(&keys.issuer))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 2);

    // A burst of tokens naming keys that no key set contains: no more fetches inside the
    // window.
    for i in 0..20 {
        let stranger = Signer::new(&format!("forged-{i}"));
        let client = format!("127.0.1.{i}:1000");
        let (status, _) = h
            .login_from("ci", &stranger.sign(&claims(&keys.issuer)), &client)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 2);
    let events = h.login_events().await;
    assert_eq!(
        events.last().unwrap().record.reason.as_deref(),
        Some("unknown_key")
    );
    // Known keys keep working from the cache.
    let (status, _) = h.login("ci", &old.sign(&claims(&keys.issuer))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn jwt_login_provider_and_groups_failures() {
    let signer = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let h = harness(AuthConfig::default()).await;
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut role = ci_role(&keys);
    role["jwks_url"] = json!(format!("http://{closed}/jwks"));
    h.root("PUT", "/v1/auth/jwt/roles/down", Some(role)).await;
    let (status, body) = h.login("down", &signer.sign(&claims(&keys.issuer))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "login_failed");
    let event = h.login_events().await.pop().unwrap();
    assert_eq!(event.record.reason.as_deref(), Some("provider_unreachable"));
    assert!(
        event.record.detail["error"].contains("cannot reach"),
        "{:?}",
        event.record.detail
    );

    let mut role = ci_role(&keys);
    role["groups_claim"] = json!("groups");
    h.root("PUT", "/v1/auth/jwt/roles/grouped", Some(role))
        .await;
    let (status, _) = h
        .login("grouped", &signer.sign(&claims(&keys.issuer)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let event = h.login_events().await.pop().unwrap();
    assert!(event.record.detail["error"].contains("claim `groups`"));
    let mut c = claims(&keys.issuer);
    c["groups"] = json!("deployers");
    let (status, _) = h.login("grouped", &signer.sign(&c)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    c["groups"] = json!(["deployers"]);
    let (status, body) = h.login("grouped", &signer.sign(&c)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["groups"], json!(["ci", "deployers"]));
}

#[tokio::test]
async fn jwt_login_rate_limits_failures() {
    let signer = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let h = harness(AuthConfig {
        failed_logins_per_minute: Some(3),
        ..AuthConfig::default()
    })
    .await;
    h.root("PUT", "/v1/auth/jwt/roles/ci", Some(ci_role(&keys)))
        .await;
    for _ in 0..3 {
        let (status, _) = h.login_from("ci", "garbage", "127.0.0.9:1").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Even a good token is refused from that address now; other addresses are unaffected.
    let good = signer.sign(&claims(&keys.issuer));
    let (status, body) = h.login_from("ci", &good, "127.0.0.9:2").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retry in")
    );
    let event = h.login_events().await.pop().unwrap();
    assert_eq!(event.record.reason.as_deref(), Some("rate_limited"));
    let (status, _) = h.login_from("ci", &good, "127.0.0.8:1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn agent_role_short_tokens_no_prod() {
    let signer = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let h = harness(AuthConfig::default()).await;
    let mut role = ci_role(&keys);
    role["kind"] = json!("agent");
    role["groups"] = json!(["agents"]);
    role.as_object_mut().unwrap().remove("ttl");
    let (status, body) = h
        .root("PUT", "/v1/auth/jwt/roles/bot", Some(role.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["ttl"].as_str(), body["max_ttl"].as_str()),
        (Some("15m"), Some("15m"))
    );
    role["groups"] = json!(["agents", "prod-agents"]);
    h.root("PUT", "/v1/auth/jwt/roles/trusted-bot", Some(role))
        .await;

    for (vault, env) in [("prod", "prod"), ("staging", "staging")] {
        h.root(
            "POST",
            "/v1/vaults",
            Some(json!({"name": vault, "tags": {"env": env}})),
        )
        .await;
        h.root(
            "PUT",
            &format!("/v1/vaults/{vault}/secrets/db"),
            Some(json!({"fields": {"password": {"text": "x"}}})),
        )
        .await;
    }
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    // A broad permit for every agent, so the forbid is what keeps them out of prod.
    let broad = "permit (principal in Group::\"agents\", action == Action::\"read\", resource);";
    for (name, text) in [
        (
            "agents-not-in-prod",
            std::fs::read_to_string(format!("{examples}/agents-not-in-prod.cedar")).unwrap(),
        ),
        (
            "agents-read-staging",
            std::fs::read_to_string(format!("{examples}/agents-read-staging.cedar")).unwrap(),
        ),
        ("agents-read-all", broad.to_string()),
    ] {
        let (status, body) = h
            .root(
                "PUT",
                &format!("/v1/policies/{name}"),
                Some(json!({"policy": text})),
            )
            .await;
        assert!(status.is_success(), "{name}: {body}");
    }

    let mut c = claims(&keys.issuer);
    c["sub"] = json!("agent-7");
    let (status, body) = h.login("bot", &signer.sign(&c)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["principal"], "Agent::\"agent-7\"");
    let token = body["token"].as_str().unwrap().to_string();
    let (_, me) = h
        .call("GET", "/v1/tokens/self", Some(&token), None, "127.0.0.1:1")
        .await;
    let life =
        chrono::DateTime::parse_from_rfc3339(me["token"]["max_expires_at"].as_str().unwrap())
            .unwrap()
            .timestamp()
            - now();
    assert!((890..=900).contains(&life), "{life}");
    let read = |vault: &'static str, token: String| {
        let h = &h;
        async move {
            h.call(
                "GET",
                &format!("/v1/read?ref=lk://{vault}/db/password"),
                Some(&token),
                None,
                "127.0.0.1:1",
            )
            .await
            .0
        }
    };
    assert_eq!(read("staging", token.clone()).await, StatusCode::OK);
    assert_eq!(read("prod", token).await, StatusCode::FORBIDDEN);

    c["sub"] = json!("agent-8");
    let (_, body) = h.login("trusted-bot", &signer.sign(&c)).await;
    let trusted = body["token"].as_str().unwrap().to_string();
    assert_eq!(read("prod", trusted).await, StatusCode::OK);
}

#[tokio::test]
async fn jwt_role_admin_api() {
    let signer = Signer::new("k1");
    let keys = key_server(&[&signer]).await;
    let mut auth = AuthConfig::default();
    let settings: JwtRoleSettings = serde_json::from_value(ci_role(&keys)).unwrap();
    auth.jwt.insert("from-file".into(), settings);
    let h = harness(auth).await;

    let (status, body) = h
        .root("PUT", "/v1/auth/jwt/roles/from-file", Some(ci_role(&keys)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config file")
    );
    let (status, _) = h.root("DELETE", "/v1/auth/jwt/roles/from-file", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = h
        .login("from-file", &signer.sign(&claims(&keys.issuer)))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bad settings name the field.
    let mut bad = ci_role(&keys);
    bad["kind"] = json!("robot");
    let (status, body) = h.root("PUT", "/v1/auth/jwt/roles/x", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`kind` `robot`")
    );
    let mut bad = ci_role(&keys);
    bad["surprise"] = json!(1);
    let (status, body) = h.root("PUT", "/v1/auth/jwt/roles/x", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h
        .root("PUT", "/v1/auth/jwt/roles/Bad%20Name", Some(ci_role(&keys)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _) = h
        .root("PUT", "/v1/auth/jwt/roles/api", Some(ci_role(&keys)))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = h
        .root("PUT", "/v1/auth/jwt/roles/api", Some(ci_role(&keys)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = h.root("GET", "/v1/auth/connectors", None).await;
    let names: Vec<_> = listed["jwt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, vec![("api", "api"), ("from-file", "config_file")]);
    let (status, _) = h.root("DELETE", "/v1/auth/jwt/roles/api", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.root("DELETE", "/v1/auth/jwt/roles/api", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.login("api", &signer.sign(&claims(&keys.issuer))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // OIDC client secrets are stored sealed and never shown.
    let (status, body) = h
        .root(
            "PUT",
            "/v1/auth/oidc/connectors/corp",
            Some(json!({"issuer": keys.issuer, "client_id": "latchkey", "client_secret": "hunter2-client"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["has_client_secret"], true);
    assert!(!body.to_string().contains("hunter2-client"));
    let stored = h.store.list_connectors().await.unwrap();
    let corp = stored.iter().find(|c| c.name == "corp").unwrap();
    assert!(!corp.config.contains("hunter2"));
    assert!(
        !corp
            .sealed_secret
            .as_ref()
            .unwrap()
            .windows(7)
            .any(|w| w == b"hunter2")
    );
    // Only an admin manages connectors.
    let _ = &h.state;
    let (status, _) = h
        .call("GET", "/v1/auth/connectors", None, None, "127.0.0.1:1")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failing_discovery_is_fetched_once_per_window() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&hits);
    let app = Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::SERVICE_UNAVAILABLE }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = latchkey_server::identity::ProviderClient::new().unwrap();
    for _ in 0..5 {
        let error = client.discovery(&issuer).await.unwrap_err();
        assert!(error.contains("503"), "{error}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
