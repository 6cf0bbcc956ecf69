//! Logins that end in a Latchkey token: JWT role logins for workloads and agents, and the
//! OpenID Connect authorization-code and device flows for people.
//!
//! These routes take no token. Every completed login, allowed or failed, writes an audit
//! event that is durable before the response. A failed login gets the same 401 whatever
//! the cause. The cause goes to the operator log and the audit event, and repeated
//! failures from one address are rejected for a while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_core::crypto::{aad, open, random_bytes, seal, sha256};
use latchkey_core::duration::format_duration;
use latchkey_core::jwt::{self, JwtError, VerifiedToken};
use latchkey_core::policy::{Principal, PrincipalKind};
use latchkey_core::token::{RawToken, TokenKind, new_accessor};
use latchkey_store::{LoginAttemptRow, PrincipalRow, TokenRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult, REQUEST_ID};
use crate::extract::{ApiJson, format_unix, new_id};
use crate::identity::{Discovery, JwtRole, KeySource, OidcConnector, error_chain};
use crate::secrets::SecretText;
use crate::state::SharedState;

/// How long a started login may wait for its callback or approval.
const CODE_LOGIN_LIFETIME: i64 = 600;
/// Default number of failed logins one client address may make per minute.
pub const DEFAULT_FAILED_LOGINS_PER_MINUTE: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// A credential from the request body: no `Debug`, wiped on drop.
pub struct Credential(Zeroizing<String>);

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Credential, D::Error> {
        String::deserialize(deserializer).map(|s| Credential(Zeroizing::new(s)))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtLoginBody {
    /// The JWT role to log in with.
    pub role: String,
    /// The token the platform issued (GitHub Actions, GitLab, Kubernetes, ...).
    #[schema(value_type = String)]
    pub jwt: Credential,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// The Latchkey token. It is shown once; only its hash is stored.
    #[schema(value_type = String)]
    pub token: SecretText,
    pub accessor: String,
    pub principal: String,
    pub groups: Vec<String>,
    pub ttl: String,
    pub expires_at: String,
    pub max_expires_at: String,
    /// The way the session was obtained, such as `jwt:deploy` or `oidc:corp`.
    pub method: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcStartBody {
    /// The connector; may be left out when exactly one is configured.
    #[serde(default)]
    pub connector: Option<String>,
    /// The address the provider sends the browser back to: `http://127.0.0.1:PORT/callback`.
    pub redirect_uri: String,
}

#[derive(Serialize, ToSchema)]
pub struct OidcStartResponse {
    /// Open this in a browser to sign in.
    pub auth_url: String,
    /// The `state` the callback must carry back.
    pub state: String,
    pub connector: String,
    pub expires_at: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcCallbackBody {
    pub state: String,
    #[schema(value_type = String)]
    pub code: Credential,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceStartBody {
    #[serde(default)]
    pub connector: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceStartResponse {
    /// Pass this to the poll endpoint; it proves this client started the login.
    pub login_id: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
    pub connector: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePollBody {
    pub login_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct DevicePending {
    /// `pending`, or `slow_down` when polls should be further apart.
    pub status: String,
    pub interval: u64,
}

/// Failed logins per client address in the current window.
#[derive(Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// Seconds until `addr` may try again, when it used up its failures.
    fn blocked_for(&self, addr: Option<IpAddr>, limit: u32) -> Option<u64> {
        let addr = addr?;
        let windows = self.windows.lock().ok()?;
        let (start, count) = windows.get(&addr)?;
        let elapsed = start.elapsed();
        (elapsed < FAILURE_WINDOW && *count >= limit)
            .then(|| (FAILURE_WINDOW - elapsed).as_secs().max(1))
    }

    fn record_failure(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        if let Ok(mut windows) = self.windows.lock() {
            if windows.len() > 100_000 {
                windows.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
            }
            let entry = windows.entry(addr).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= FAILURE_WINDOW {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
        }
    }
}

/// Why a login failed: for the operator log and the audit event, never for the client.
struct Failure {
    code: &'static str,
    detail: String,
}

impl Failure {
    fn new(code: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            code,
            detail: detail.into(),
        }
    }

    fn jwt(error: &JwtError) -> Failure {
        Failure::new(error.code(), error.to_string())
    }
}

/// Facts about one login request, for its audit event.
struct LoginCtx {
    method: String,
    client: Option<SocketAddr>,
    request_id: String,
}

impl LoginCtx {
    fn new(method: String, client: Option<SocketAddr>) -> LoginCtx {
        LoginCtx {
            method,
            client,
            request_id: REQUEST_ID.try_with(Clone::clone).unwrap_or_default(),
        }
    }

    fn record(&self, principal: String, outcome: Outcome, reason: Option<String>) -> AuditRecord {
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("method".to_string(), self.method.clone());
        AuditRecord {
            time: format_time(chrono::Utc::now()),
            request_id: self.request_id.clone(),
            principal,
            action: "login".into(),
            resource: format!("AuthMethod::{:?}", self.method),
            outcome,
            reason,
            policies: Vec::new(),
            client_addr: self.client.map(|c| c.ip().to_string()),
            token_id: None,
            detail,
        }
    }
}

fn failure_limit(state: &SharedState) -> u32 {
    state
        .identity
        .config
        .failed_logins_per_minute
        .unwrap_or(DEFAULT_FAILED_LOGINS_PER_MINUTE)
}

fn login_failed() -> ApiError {
    let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "login_failed",
        format!(
            "login failed; an administrator can find the reason in the server log or the audit log under request id {request_id}"
        ),
    )
}

/// Records a failed login (operator log, audit log, rate limit) and returns its response.
async fn fail(state: &SharedState, ctx: &LoginCtx, failure: Failure) -> Response {
    tracing::warn!(
        method = %ctx.method,
        reason = failure.code,
        detail = %failure.detail,
        client = ?ctx.client.map(|c| c.ip()),
        "login failed"
    );
    state
        .login_failures
        .record_failure(ctx.client.map(|c| c.ip()));
    let mut record = ctx.record(
        "anonymous".into(),
        Outcome::Failed,
        Some(failure.code.into()),
    );
    record.detail.insert("error".into(), failure.detail);
    if state.audit.append(record).await.is_err() {
        return ApiError::audit_unavailable().into_response();
    }
    login_failed().into_response()
}

/// Rejects a client that failed too often, after recording that in the audit log.
async fn reject_if_limited(state: &SharedState, ctx: &LoginCtx) -> Option<Response> {
    let wait = state
        .login_failures
        .blocked_for(ctx.client.map(|c| c.ip()), failure_limit(state))?;
    tracing::warn!(method = %ctx.method, client = ?ctx.client.map(|c| c.ip()), "login rejected: too many failed logins from this address");
    let record = ctx.record(
        "anonymous".into(),
        Outcome::Failed,
        Some("rate_limited".into()),
    );
    if state.audit.append(record).await.is_err() {
        return Some(ApiError::audit_unavailable().into_response());
    }
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failed_logins",
        format!("too many failed logins from this address; retry in {wait} s"),
    )
    .into_response();
    if let Ok(value) = wait.to_string().parse() {
        response.headers_mut().insert("retry-after", value);
    }
    Some(response)
}

/// The principal a verified identity maps to, and the token it gets.
struct Subject {
    kind: PrincipalKind,
    name: String,
    /// The groups to set, or None to leave the principal's groups as they are.
    groups: Option<Vec<String>>,
    create: bool,
    ttl: i64,
    max_ttl: i64,
    /// How to find the user among those provisioned over SCIM, for OIDC logins.
    link: Option<ScimLinkKeys>,
}

/// The values an OIDC login offers for matching a SCIM user, in the connector's order.
struct ScimLinkKeys {
    /// (method, value) pairs: `external_id` with `sub`, `user_name` with the user claim,
    /// `email` with a verified `email`.
    keys: Vec<(String, String)>,
    /// Refuse the login when no SCIM user matches.
    required: bool,
}

/// Finds the principal of the SCIM user an OIDC login matches, trying each key in order.
async fn linked_principal(
    state: &SharedState,
    link: &ScimLinkKeys,
) -> Result<Option<PrincipalRow>, ApiError> {
    for (method, value) in &link.keys {
        let key = match method.as_str() {
            "external_id" => latchkey_store::ScimLink::ExternalId(value),
            "user_name" => latchkey_store::ScimLink::UserName(value),
            _ => latchkey_store::ScimLink::Email(value),
        };
        if let Some(user) = state.store.find_scim_user(key).await? {
            return Ok(state.store.principal_by_id(&user.principal_id).await?);
        }
    }
    Ok(None)
}

fn kind_str(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::User => "user",
        PrincipalKind::Workload => "workload",
        PrincipalKind::Agent => "agent",
        PrincipalKind::ServiceAccount => "service_account",
    }
}

/// Checks a name or group from a provider: it becomes a Cedar entity id, so it must be
/// printable and bounded.
fn check_provider_name(what: &str, name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Failure::new(
            "invalid_identity",
            format!(
                "the provider's {what} {name:?} is empty, longer than 256 bytes or holds control characters"
            ),
        ));
    }
    Ok(())
}

/// Finds or creates the principal, applies the provider's groups, and issues a token,
/// stored in the same durable commit as the login's audit event.
async fn complete(state: &SharedState, ctx: &LoginCtx, subject: Subject) -> Response {
    match issue(state, ctx, subject).await {
        Ok(response) => response,
        Err(Ok(failure)) => fail(state, ctx, failure).await,
        Err(Err(error)) => error.into_response(),
    }
}

async fn issue(
    state: &SharedState,
    ctx: &LoginCtx,
    subject: Subject,
) -> Result<Response, Result<Failure, ApiError>> {
    let kind = kind_str(subject.kind);
    check_provider_name("principal name", &subject.name).map_err(Ok)?;
    for group in subject.groups.iter().flatten() {
        check_provider_name("group", group).map_err(Ok)?;
    }
    let linked = match &subject.link {
        Some(link) => linked_principal(state, link).await.map_err(Err)?,
        None => None,
    };
    if linked.is_none() && subject.link.as_ref().is_some_and(|l| l.required) {
        return Err(Ok(Failure::new(
            "unknown_principal",
            format!(
                "no user provisioned over SCIM matches `{}`, and the connector requires one",
                subject.name
            ),
        )));
    }
    let existing = match linked {
        Some(row) => Some(row),
        None => state
            .store
            .principal_by_name(kind, &subject.name)
            .await
            .map_err(|e| Err(e.into()))?,
    };
    let mut principal = match existing {
        Some(row) if !row.active => {
            return Err(Ok(Failure::new(
                "inactive_principal",
                format!("{kind} `{}` is deactivated", subject.name),
            )));
        }
        Some(row) => row,
        None if !subject.create => {
            return Err(Ok(Failure::new(
                "unknown_principal",
                format!(
                    "{kind} `{}` does not exist and the connector does not create users",
                    subject.name
                ),
            )));
        }
        None => {
            let row = PrincipalRow {
                id: new_id("prn"),
                kind: kind.to_string(),
                name: subject.name.clone(),
                active: true,
                groups: Vec::new(),
                created_at: chrono::Utc::now().timestamp(),
            };
            match state.store.create_principal(&row).await {
                Ok(()) => row,
                // Two first logins raced; the other one created it.
                Err(latchkey_store::StoreError::Conflict(_)) => state
                    .store
                    .principal_by_name(kind, &subject.name)
                    .await
                    .map_err(|e| Err(e.into()))?
                    .ok_or_else(|| {
                        Err(ApiError::internal("principal vanished after a conflict"))
                    })?,
                Err(e) => return Err(Err(e.into())),
            }
        }
    };
    // A user provisioned over SCIM takes its groups from SCIM only, so a login's group
    // claim cannot undo a group removal that the identity provider pushed.
    let scim_managed = subject.kind == PrincipalKind::User
        && state
            .store
            .scim_user(&principal.id)
            .await
            .map_err(|e| Err(e.into()))?
            .is_some();
    if let Some(groups) = subject.groups.filter(|_| !scim_managed) {
        let mut groups = groups;
        groups.sort();
        groups.dedup();
        if groups != principal.groups {
            state
                .store
                .set_groups(&principal.id, &groups)
                .await
                .map_err(|e| Err(e.into()))?;
            state.tokens.clear();
            principal.groups = groups;
        }
    }

    let raw = RawToken::generate(TokenKind::Token).map_err(|e| Err(ApiError::internal(e)))?;
    let now = chrono::Utc::now().timestamp();
    let row = TokenRow {
        accessor: new_accessor().map_err(|e| Err(ApiError::internal(e)))?,
        hash: raw.hash().0,
        principal_id: principal.id.clone(),
        kind: "user".into(),
        created_at: now,
        ttl: subject.ttl,
        expires_at: now + subject.ttl,
        max_expires_at: now + subject.max_ttl,
        revoked_at: None,
        created_by: Some(ctx.method.clone()),
    };
    let uid = Principal {
        kind: subject.kind,
        name: principal.name.clone(),
        groups: principal.groups.clone(),
    }
    .uid_string();
    let mut record = ctx.record(uid.clone(), Outcome::Allowed, None);
    record.token_id = Some(row.accessor.clone());
    record
        .detail
        .insert("groups".into(), principal.groups.join(","));
    state
        .audit
        .append_with_token(record, row.clone())
        .await
        .map_err(|_| Err(ApiError::audit_unavailable()))?;
    tracing::info!(token.id = %row.accessor, principal = %uid, method = %ctx.method, "login");
    Ok(Json(LoginResponse {
        token: SecretText(Zeroizing::new(raw.expose().to_string())),
        accessor: row.accessor,
        principal: uid,
        groups: principal.groups,
        ttl: format_duration(Duration::from_secs(subject.ttl.unsigned_abs())),
        expires_at: format_unix(row.expires_at),
        max_expires_at: format_unix(row.max_expires_at),
        method: ctx.method.clone(),
    })
    .into_response())
}

/// The client's socket address, when the connection provides it (tests driving the router
/// directly have none).
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<ClientAddr, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Log in with a JWT from a CI platform, an orchestrator or an agent runtime.
#[utoipa::path(post, path = "/v1/auth/jwt/login", tag = "auth", request_body = JwtLoginBody,
    responses((status = 200, body = LoginResponse), (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody)))]
pub async fn jwt_login(
    State(state): State<SharedState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<JwtLoginBody>,
) -> Response {
    if state.keyring.is_sealed() {
        return ApiError::sealed().into_response();
    }
    let ctx = LoginCtx::new(format!("jwt:{}", body.role), client);
    if let Some(rejected) = reject_if_limited(&state, &ctx).await {
        return rejected;
    }
    let registry = state.identity.registry();
    let Some(role) = registry.jwt.get(&body.role) else {
        return fail(
            &state,
            &ctx,
            Failure::new("unknown_role", format!("no JWT role `{}`", body.role)),
        )
        .await;
    };
    let verified = match verify_role_token(&state, role, &body.jwt.0).await {
        Ok(verified) => verified,
        Err(failure) => return fail(&state, &ctx, failure).await,
    };
    let mut groups = role.settings.groups.clone();
    groups.extend(verified.groups.iter().cloned());
    let subject = Subject {
        kind: role.kind,
        name: verified.name,
        groups: Some(groups),
        create: true,
        ttl: role.ttl,
        max_ttl: role.max_ttl,
        link: None,
    };
    complete(&state, &ctx, subject).await
}

async fn verify_role_token(
    state: &SharedState,
    role: &JwtRole,
    token: &str,
) -> Result<VerifiedToken, Failure> {
    let header = jwt::peek_header(token).map_err(|e| Failure::jwt(&e))?;
    let now = chrono::Utc::now().timestamp();
    let url = match &role.keys {
        KeySource::Static(keys) => {
            return jwt::verify(token, keys, &role.rules, now).map_err(|e| Failure::jwt(&e));
        }
        KeySource::Url(url) => url.clone(),
        KeySource::Discovery => state
            .identity
            .provider
            .discovery(&role.settings.issuer)
            .await
            .map_err(|e| Failure::new("provider_unreachable", e))?
            .jwks_uri
            .clone(),
    };
    verify_with_url(state, &url, token, &header, &role.rules, now).await
}

/// Verifies against the key set at `url`, fetching it again once when the token names a
/// key the cached set does not hold (the provider rotated its keys).
async fn verify_with_url(
    state: &SharedState,
    url: &str,
    token: &str,
    header: &jwt::TokenHeader,
    rules: &jwt::ClaimRules,
    now: i64,
) -> Result<VerifiedToken, Failure> {
    let keys = state
        .identity
        .provider
        .key_set(url, header.kid.as_deref())
        .await
        .map_err(|e| Failure::new("provider_unreachable", e))?;
    jwt::verify(token, &keys, rules, now).map_err(|e| Failure::jwt(&e))
}

fn pick_connector(
    state: &SharedState,
    name: Option<&str>,
) -> ApiResult<std::sync::Arc<OidcConnector>> {
    let registry = state.identity.registry();
    match name {
        Some(name) => registry.oidc.get(name).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "no OIDC connector `{name}`; `lk auth list` shows the configured ones"
            ))
        }),
        None => {
            let mut all = registry.oidc.values();
            match (all.next(), all.next()) {
                (Some(one), None) => Ok(std::sync::Arc::clone(one)),
                (None, _) => Err(ApiError::not_found(
                    "no OIDC connector is configured: an administrator adds one with `lk auth oidc set`",
                )),
                _ => Err(ApiError::bad_request(format!(
                    "several OIDC connectors are configured ({}); name one with `--connector`",
                    registry.oidc.keys().cloned().collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

fn random_text() -> ApiResult<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>().map_err(ApiError::internal)?))
}

fn id_hash(value: &str) -> String {
    hex::encode(sha256(value.as_bytes()))
}

/// The private half of a login in progress, sealed into its row.
#[derive(Serialize, Deserialize)]
struct Pending {
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    verifier: Option<String>,
    #[serde(default)]
    device_code: Option<String>,
    #[serde(default)]
    interval: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for value in [&mut self.nonce, &mut self.verifier, &mut self.device_code]
            .into_iter()
            .flatten()
        {
            value.zeroize();
        }
    }
}

fn seal_pending(state: &SharedState, id_hash: &str, pending: &Pending) -> ApiResult<Vec<u8>> {
    let root = state.keyring.root().ok_or_else(ApiError::sealed)?;
    let text = Zeroizing::new(serde_json::to_vec(pending).map_err(ApiError::internal)?);
    seal(&root, &aad::login_attempt(id_hash), &text).map_err(ApiError::internal)
}

fn open_pending(state: &SharedState, row: &LoginAttemptRow) -> Result<Pending, Failure> {
    let root = state
        .keyring
        .root()
        .ok_or_else(|| Failure::new("sealed", "the server was sealed during the login"))?;
    let text = open(&root, &aad::login_attempt(&row.id_hash), &row.sealed)
        .map_err(|e| Failure::new("corrupt_login_attempt", e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| Failure::new("corrupt_login_attempt", e.to_string()))
}

/// Checks that a redirect goes to the CLI on this machine, on a port the connector allows.
fn check_redirect(connector: &OidcConnector, redirect_uri: &str) -> ApiResult<()> {
    let allowed = || {
        connector
            .settings
            .redirect_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/callback"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let url = reqwest::Url::parse(redirect_uri).map_err(|e| {
        ApiError::bad_request(format!("`redirect_uri` `{redirect_uri}` is not a URL: {e}"))
    })?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    let port_allowed = url
        .port()
        .is_some_and(|p| connector.settings.redirect_ports.contains(&p));
    if url.scheme() != "http"
        || !loopback
        || !port_allowed
        || url.path() != "/callback"
        || url.query().is_some()
    {
        return Err(ApiError::bad_request(format!(
            "`redirect_uri` `{redirect_uri}` is not allowed for connector `{}`: use one of {} (with `lk login`, pass `--port {}`)",
            connector.name,
            allowed(),
            connector
                .settings
                .redirect_ports
                .first()
                .copied()
                .unwrap_or(8250)
        )));
    }
    Ok(())
}

async fn provider_document(
    state: &SharedState,
    connector: &OidcConnector,
) -> Result<std::sync::Arc<Discovery>, Failure> {
    state
        .identity
        .provider
        .discovery(&connector.settings.issuer)
        .await
        .map_err(|e| Failure::new("provider_unreachable", e))
}

/// Start a browser sign-in: returns the provider URL to open, with PKCE, state and nonce.
#[utoipa::path(post, path = "/v1/auth/oidc/start", tag = "auth", request_body = OidcStartBody,
    responses((status = 200, body = OidcStartResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn oidc_start(
    State(state): State<SharedState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<OidcStartBody>,
) -> Result<Json<OidcStartResponse>, Response> {
    if state.keyring.is_sealed() {
        return Err(ApiError::sealed().into_response());
    }
    let ctx = LoginCtx::new("oidc".into(), client);
    if let Some(rejected) = reject_if_limited(&state, &ctx).await {
        return Err(rejected);
    }
    oidc_start_checked(&state, body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn oidc_start_checked(
    state: &SharedState,
    body: OidcStartBody,
) -> ApiResult<Json<OidcStartResponse>> {
    let state = state.clone();
    let connector = pick_connector(&state, body.connector.as_deref())?;
    check_redirect(&connector, &body.redirect_uri)?;
    let discovery = provider_document(&state, &connector).await.map_err(|f| {
        tracing::warn!(connector = %connector.name, detail = %f.detail, "cannot start a login");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_unreachable",
            format!(
                "the identity provider of connector `{}` ({}) cannot be used: {}",
                connector.name, connector.settings.issuer, f.detail
            ),
        )
    })?;
    let Some(endpoint) = discovery.authorization_endpoint.as_deref() else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_unsupported",
            "the identity provider publishes no authorization endpoint",
        ));
    };
    let state_value = random_text()?;
    let nonce = random_text()?;
    let verifier = random_text()?;
    let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    let mut url = reqwest::Url::parse(endpoint).map_err(ApiError::internal)?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &connector.settings.client_id)
        .append_pair("redirect_uri", &body.redirect_uri)
        .append_pair("scope", &connector.scopes())
        .append_pair("state", &state_value)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let hash = id_hash(&state_value);
    let pending = Pending {
        nonce: Some(nonce),
        verifier: Some(verifier),
        device_code: None,
        interval: 0,
    };
    let now = chrono::Utc::now().timestamp();
    let row = LoginAttemptRow {
        sealed: seal_pending(&state, &hash, &pending)?,
        id_hash: hash,
        connector: connector.name.clone(),
        flow: "code".into(),
        redirect_uri: Some(body.redirect_uri.clone()),
        expires_at: now + CODE_LOGIN_LIFETIME,
    };
    state.store.insert_login_attempt(&row, now).await?;
    Ok(Json(OidcStartResponse {
        auth_url: url.to_string(),
        state: state_value,
        connector: connector.name.clone(),
        expires_at: format_unix(row.expires_at),
    }))
}

/// Finish a browser sign-in with the `code` and `state` the provider redirected with.
#[utoipa::path(post, path = "/v1/auth/oidc/callback", tag = "auth", request_body = OidcCallbackBody,
    responses((status = 200, body = LoginResponse), (status = 401, body = crate::error::ErrorBody)))]
pub async fn oidc_callback(
    State(state): State<SharedState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<OidcCallbackBody>,
) -> Response {
    if state.keyring.is_sealed() {
        return ApiError::sealed().into_response();
    }
    let mut ctx = LoginCtx::new("oidc".into(), client);
    if let Some(rejected) = reject_if_limited(&state, &ctx).await {
        return rejected;
    }
    let row = match state.store.take_login_attempt(&id_hash(&body.state)).await {
        Ok(Some(row)) if row.flow == "code" => row,
        Ok(_) => {
            return fail(
                &state,
                &ctx,
                Failure::new(
                    "unknown_state",
                    "the `state` matches no login in progress: it was used already, it expired, or it was forged",
                ),
            )
            .await;
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    ctx.method = format!("oidc:{}", row.connector);
    let now = chrono::Utc::now().timestamp();
    if row.expires_at < now {
        return fail(
            &state,
            &ctx,
            Failure::new(
                "expired_login",
                "the login started more than 10 minutes ago",
            ),
        )
        .await;
    }
    let Some(connector) = state.identity.registry().oidc.get(&row.connector).cloned() else {
        return fail(
            &state,
            &ctx,
            Failure::new(
                "unknown_connector",
                format!("connector `{}` was removed during the login", row.connector),
            ),
        )
        .await;
    };
    let pending = match open_pending(&state, &row) {
        Ok(pending) => pending,
        Err(failure) => return fail(&state, &ctx, failure).await,
    };
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", body.code.0.to_string()),
        ("redirect_uri", row.redirect_uri.clone().unwrap_or_default()),
        (
            "code_verifier",
            pending.verifier.clone().unwrap_or_default(),
        ),
    ];
    let verified = match exchange(&state, &connector, &mut form, pending.nonce.clone()).await {
        Ok(Exchange::Token(verified)) => verified,
        Ok(Exchange::Pending { .. }) => {
            return fail(
                &state,
                &ctx,
                Failure::new(
                    "provider_error",
                    "the provider answered a code exchange as pending",
                ),
            )
            .await;
        }
        Err(failure) => return fail(&state, &ctx, failure).await,
    };
    complete(&state, &ctx, oidc_subject(&connector, verified)).await
}

fn oidc_subject(connector: &OidcConnector, verified: VerifiedToken) -> Subject {
    let mut keys = Vec::new();
    for method in &connector.settings.link_scim_by {
        let value = match method.as_str() {
            "external_id" => verified.subject.clone(),
            "user_name" => Some(verified.name.clone()),
            // Only an address the provider verified may stand for the user.
            _ => verified
                .claims
                .get("email")
                .and_then(|e| e.as_str())
                .filter(|_| {
                    verified.claims.get("email_verified") == Some(&serde_json::Value::Bool(true))
                })
                .map(str::to_string),
        };
        if let Some(value) = value {
            keys.push((method.clone(), value));
        }
    }
    Subject {
        kind: PrincipalKind::User,
        name: verified.name,
        groups: connector
            .settings
            .groups_claim
            .is_some()
            .then_some(verified.groups),
        create: connector.settings.create_users,
        ttl: connector.ttl,
        max_ttl: connector.max_ttl,
        link: Some(ScimLinkKeys {
            keys,
            required: connector.settings.require_scim_user,
        }),
    }
}

enum Exchange {
    Token(VerifiedToken),
    Pending { slow_down: bool },
}

/// Returns the connector's client secret, when it has one.
fn client_secret(
    state: &SharedState,
    connector: &OidcConnector,
) -> Result<Option<Zeroizing<String>>, Failure> {
    if let Some(path) = &connector.settings.client_secret_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(
                "client_secret_unreadable",
                format!("`{}`: {e}", path.display()),
            )
        })?;
        return Ok(Some(Zeroizing::new(text.trim().to_string())));
    }
    let Some(sealed) = &connector.sealed_secret else {
        return Ok(None);
    };
    let root = state
        .keyring
        .root()
        .ok_or_else(|| Failure::new("sealed", "the server is sealed"))?;
    let bytes = open(
        &root,
        &aad::connector_secret("oidc", &connector.name),
        sealed,
    )
    .map_err(|e| Failure::new("client_secret_unreadable", e.to_string()))?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| Failure::new("client_secret_unreadable", "the client secret is not UTF-8"))?;
    Ok(Some(Zeroizing::new(text)))
}

/// Calls the provider's token endpoint and verifies the ID token it returns.
async fn exchange(
    state: &SharedState,
    connector: &OidcConnector,
    form: &mut Vec<(&'static str, String)>,
    nonce: Option<String>,
) -> Result<Exchange, Failure> {
    let discovery = provider_document(state, connector).await?;
    let endpoint = discovery.token_endpoint.clone().ok_or_else(|| {
        Failure::new(
            "provider_unsupported",
            "the provider publishes no token endpoint",
        )
    })?;
    let secret = client_secret(state, connector)?;
    let mut request = state.identity.provider.http().post(&endpoint);
    match &secret {
        Some(secret) => {
            request = request.basic_auth(&connector.settings.client_id, Some(secret.as_str()));
        }
        None => form.push(("client_id", connector.settings.client_id.clone())),
    }
    let response = request.form(&form).send().await.map_err(|e| {
        Failure::new(
            "provider_unreachable",
            format!("`{endpoint}`: {}", error_chain(&e)),
        )
    })?;
    for (_, value) in form.iter_mut() {
        zeroize::Zeroize::zeroize(value);
    }
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| {
        Failure::new(
            "provider_error",
            format!("`{endpoint}` answered {status} without JSON: {e}"),
        )
    })?;
    if !status.is_success() {
        let error = body["error"].as_str().unwrap_or("unknown");
        return match error {
            "authorization_pending" => Ok(Exchange::Pending { slow_down: false }),
            "slow_down" => Ok(Exchange::Pending { slow_down: true }),
            _ => Err(Failure::new(
                "provider_refused",
                format!(
                    "the token endpoint answered {status} `{error}`: {}",
                    body["error_description"].as_str().unwrap_or("")
                ),
            )),
        };
    }
    let id_token = Zeroizing::new(
        body["id_token"]
            .as_str()
            .ok_or_else(|| {
                Failure::new(
                    "provider_error",
                    "the token response has no `id_token`; is `openid` among the scopes?",
                )
            })?
            .to_string(),
    );
    let header = jwt::peek_header(&id_token).map_err(|e| Failure::jwt(&e))?;
    let now = chrono::Utc::now().timestamp();
    let verified = verify_with_url(
        state,
        &discovery.jwks_uri,
        &id_token,
        &header,
        &connector.rules(nonce),
        now,
    )
    .await?;
    Ok(Exchange::Token(verified))
}

/// Start a device sign-in for a machine without a browser.
#[utoipa::path(post, path = "/v1/auth/oidc/device", tag = "auth", request_body = DeviceStartBody,
    responses((status = 200, body = DeviceStartResponse)))]
pub async fn device_start(
    State(state): State<SharedState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<DeviceStartBody>,
) -> Result<Json<DeviceStartResponse>, Response> {
    if state.keyring.is_sealed() {
        return Err(ApiError::sealed().into_response());
    }
    let ctx = LoginCtx::new("oidc-device".into(), client);
    if let Some(rejected) = reject_if_limited(&state, &ctx).await {
        return Err(rejected);
    }
    device_start_checked(&state, body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn device_start_checked(
    state: &SharedState,
    body: DeviceStartBody,
) -> ApiResult<Json<DeviceStartResponse>> {
    let state = state.clone();
    let connector = pick_connector(&state, body.connector.as_deref())?;
    let unreachable = |detail: String| {
        tracing::warn!(connector = %connector.name, %detail, "cannot start a device login");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_unreachable",
            format!(
                "the identity provider of connector `{}` ({}) cannot be reached or refused the device login: {detail}",
                connector.name, connector.settings.issuer
            ),
        )
    };
    let discovery = provider_document(&state, &connector)
        .await
        .map_err(|f| unreachable(f.detail))?;
    let Some(endpoint) = discovery.device_authorization_endpoint.clone() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "provider_unsupported",
            format!(
                "the provider of connector `{}` does not offer device login; use `lk login` with a browser",
                connector.name
            ),
        ));
    };
    let secret = client_secret(&state, &connector).map_err(|f| unreachable(f.detail))?;
    let mut form = vec![("scope", connector.scopes())];
    let mut request = state.identity.provider.http().post(&endpoint);
    match &secret {
        Some(secret) => {
            request = request.basic_auth(&connector.settings.client_id, Some(secret.as_str()))
        }
        None => form.push(("client_id", connector.settings.client_id.clone())),
    }
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    let status = response.status();
    let answer: serde_json::Value = response
        .json()
        .await
        .map_err(|e| unreachable(format!("answered {status} without JSON: {e}")))?;
    if !status.is_success() {
        return Err(unreachable(format!(
            "it answered {status} `{}`: {}",
            answer["error"].as_str().unwrap_or("unknown"),
            answer["error_description"].as_str().unwrap_or("")
        )));
    }
    let text = |key: &str| answer[key].as_str().map(str::to_string);
    let (Some(device_code), Some(user_code), Some(verification_uri)) = (
        text("device_code"),
        text("user_code"),
        text("verification_uri"),
    ) else {
        return Err(unreachable(
            "the device response lacks device_code, user_code or verification_uri".into(),
        ));
    };
    let expires_in = answer["expires_in"].as_u64().unwrap_or(600).min(3600);
    // RFC 8628 section 3.2: five seconds when the provider sends no interval.
    let interval = answer["interval"].as_u64().unwrap_or(5).clamp(1, 60);
    let login_id = random_text()?;
    let hash = id_hash(&login_id);
    let pending = Pending {
        nonce: None,
        verifier: None,
        device_code: Some(device_code),
        interval,
    };
    let now = chrono::Utc::now().timestamp();
    let row = LoginAttemptRow {
        sealed: seal_pending(&state, &hash, &pending)?,
        id_hash: hash,
        connector: connector.name.clone(),
        flow: "device".into(),
        redirect_uri: None,
        expires_at: now + i64::try_from(expires_in).unwrap_or(600),
    };
    state.store.insert_login_attempt(&row, now).await?;
    Ok(Json(DeviceStartResponse {
        login_id,
        user_code,
        verification_uri,
        verification_uri_complete: text("verification_uri_complete"),
        expires_in,
        interval,
        connector: connector.name.clone(),
    }))
}

/// Poll a device sign-in: 202 while the user has not approved it, 200 with the token once
/// they have, 401 when it was denied or expired.
#[utoipa::path(post, path = "/v1/auth/oidc/device/poll", tag = "auth", request_body = DevicePollBody,
    responses((status = 200, body = LoginResponse), (status = 202, body = DevicePending),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn device_poll(
    State(state): State<SharedState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<DevicePollBody>,
) -> Response {
    if state.keyring.is_sealed() {
        return ApiError::sealed().into_response();
    }
    let mut ctx = LoginCtx::new("oidc-device".into(), client);
    if let Some(rejected) = reject_if_limited(&state, &ctx).await {
        return rejected;
    }
    let hash = id_hash(&body.login_id);
    let row = match state.store.login_attempt(&hash).await {
        Ok(Some(row)) if row.flow == "device" => row,
        Ok(_) => {
            return fail(
                &state,
                &ctx,
                Failure::new(
                    "unknown_login",
                    "the login id matches no device login in progress",
                ),
            )
            .await;
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    ctx.method = format!("oidc-device:{}", row.connector);
    let end = |state: SharedState, hash: String| async move {
        let _ = state.store.take_login_attempt(&hash).await;
    };
    if row.expires_at < chrono::Utc::now().timestamp() {
        end(state.clone(), hash).await;
        return fail(
            &state,
            &ctx,
            Failure::new(
                "expired_login",
                "the device code expired before the user approved it",
            ),
        )
        .await;
    }
    let Some(connector) = state.identity.registry().oidc.get(&row.connector).cloned() else {
        end(state.clone(), hash).await;
        return fail(
            &state,
            &ctx,
            Failure::new(
                "unknown_connector",
                format!("connector `{}` was removed during the login", row.connector),
            ),
        )
        .await;
    };
    let pending = match open_pending(&state, &row) {
        Ok(pending) => pending,
        Err(failure) => return fail(&state, &ctx, failure).await,
    };
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:device_code".to_string(),
        ),
        (
            "device_code",
            pending.device_code.clone().unwrap_or_default(),
        ),
    ];
    match exchange(&state, &connector, &mut form, None).await {
        Ok(Exchange::Pending { slow_down }) => (
            StatusCode::ACCEPTED,
            Json(DevicePending {
                status: if slow_down { "slow_down" } else { "pending" }.into(),
                interval: pending.interval + if slow_down { 5 } else { 0 },
            }),
        )
            .into_response(),
        Ok(Exchange::Token(verified)) => {
            // Only the poll that removes the row completes the login.
            match state.store.take_login_attempt(&hash).await {
                Ok(Some(_)) => complete(&state, &ctx, oidc_subject(&connector, verified)).await,
                Ok(None) => {
                    fail(
                        &state,
                        &ctx,
                        Failure::new("unknown_login", "another poll completed this login"),
                    )
                    .await
                }
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        Err(failure) => {
            end(state.clone(), hash).await;
            fail(&state, &ctx, failure).await
        }
    }
}
