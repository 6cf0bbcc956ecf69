//! Token authentication, the request-id and audit middleware, and the request context
//! extractor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_core::policy::{Principal, PrincipalKind};
use latchkey_core::token::RawToken;
use latchkey_store::TokenRow;

use crate::error::{ApiError, Audited, ErrorCode, REQUEST_ID};
use crate::state::{AuditSlot, RequestCtx, SharedState, build_record};

/// How long a token lookup is trusted. This server clears its cache on every change it
/// makes. The lifetime bounds how long a change made by another server on the same
/// database (a revocation, a group change, a deactivation) takes to apply here.
const TOKEN_CACHE_LIFETIME: Duration = Duration::from_secs(1);

/// Tokens beyond this many cached entries clear the cache rather than grow it.
const TOKEN_CACHE_LIMIT: usize = 100_000;

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub principal_id: String,
    pub token: Arc<TokenRow>,
}

struct CachedToken {
    token: Arc<TokenRow>,
    principal: Arc<Principal>,
    active: bool,
    loaded_at: Instant,
}

/// Token lookups by hash. Any change to a token, a principal or a group membership clears
/// it, so a revoked token is refused on its next request.
#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    map: HashMap<[u8; 32], Arc<CachedToken>>,
    /// Incremented by every `clear`, so a lookup that read the store before a clear does
    /// not cache what it read: it may predate a revocation.
    generation: u64,
}

impl TokenCache {
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.map.clear();
            entries.generation += 1;
        }
    }

    /// Returns a cached entry younger than [`TOKEN_CACHE_LIFETIME`].
    fn get(&self, hash: &[u8; 32]) -> Option<Arc<CachedToken>> {
        let entry = self
            .entries
            .read()
            .ok()
            .and_then(|e| e.map.get(hash).cloned())
            .filter(|entry| entry.loaded_at.elapsed() < TOKEN_CACHE_LIFETIME);
        crate::metrics::METRICS.token_lookup(entry.is_some());
        entry
    }

    fn generation(&self) -> u64 {
        self.entries.read().map(|e| e.generation).unwrap_or(0)
    }

    /// Caches an entry read from the store, unless the cache was cleared since `generation`.
    fn insert(&self, hash: [u8; 32], entry: Arc<CachedToken>, generation: u64) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.generation != generation {
                return;
            }
            if entries.map.len() >= TOKEN_CACHE_LIMIT {
                entries.map.clear();
            }
            entries.map.insert(hash, entry);
        }
    }
}

/// Why authentication failed: recorded in the audit log, never sent to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    Inactive,
    /// The token could not be looked up: no verdict on it, so no 401 either.
    StoreUnavailable,
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_token",
            AuthFailure::Malformed => "malformed_token",
            AuthFailure::Unknown => "unknown_token",
            AuthFailure::Expired => "expired_token",
            AuthFailure::Revoked => "revoked_token",
            AuthFailure::Inactive => "inactive_principal",
            AuthFailure::StoreUnavailable => "storage_unavailable",
        }
    }
}

pub fn principal_kind_from_str(kind: &str) -> Option<PrincipalKind> {
    match kind {
        "user" => Some(PrincipalKind::User),
        "workload" => Some(PrincipalKind::Workload),
        "agent" => Some(PrincipalKind::Agent),
        "service_account" => Some(PrincipalKind::ServiceAccount),
        _ => None,
    }
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Resolves the bearer token of a request to its caller.
pub async fn authenticate(
    state: &SharedState,
    headers: &HeaderMap,
) -> Result<Caller, (AuthFailure, Option<String>)> {
    let text = bearer_token(headers).ok_or((AuthFailure::Missing, None))?;
    authenticate_token(state, text).await
}

/// Resolves a token, however the request carried it, to its caller: the same checks for
/// the API's bearer token and the approvals page's session cookie.
pub async fn authenticate_token(
    state: &SharedState,
    text: &str,
) -> Result<Caller, (AuthFailure, Option<String>)> {
    let raw = RawToken::parse(text).map_err(|_| (AuthFailure::Malformed, None))?;
    let hash = raw.hash().0;
    drop(raw);

    let entry = match state.tokens.get(&hash) {
        Some(entry) => entry,
        None => {
            let generation = state.tokens.generation();
            let token = state
                .store
                .token_by_hash(&hash)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "token lookup failed");
                    (AuthFailure::StoreUnavailable, None)
                })?
                .ok_or((AuthFailure::Unknown, None))?;
            let row = state
                .store
                .principal_by_id(&token.principal_id)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "principal lookup failed");
                    (AuthFailure::StoreUnavailable, None)
                })?
                .ok_or((AuthFailure::Unknown, Some(token.accessor.clone())))?;
            let kind = principal_kind_from_str(&row.kind)
                .ok_or((AuthFailure::Unknown, Some(token.accessor.clone())))?;
            let entry = Arc::new(CachedToken {
                principal: Arc::new(Principal {
                    kind,
                    name: row.name,
                    groups: row.groups,
                }),
                active: row.active,
                token: Arc::new(token),
                loaded_at: Instant::now(),
            });
            state.tokens.insert(hash, Arc::clone(&entry), generation);
            entry
        }
    };

    let accessor = Some(entry.token.accessor.clone());
    if entry.token.revoked_at.is_some() {
        return Err((AuthFailure::Revoked, accessor));
    }
    if entry.token.expires_at <= chrono::Utc::now().timestamp() {
        return Err((AuthFailure::Expired, accessor));
    }
    if !entry.active {
        return Err((AuthFailure::Inactive, accessor));
    }
    Ok(Caller {
        principal: Arc::clone(&entry.principal),
        principal_id: entry.token.principal_id.clone(),
        token: Arc::clone(&entry.token),
    })
}

/// Gives every request an id (echoed in `x-request-id` and in error bodies).
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

pub(crate) fn client_addr(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

pub(crate) fn route_action(request: &Request) -> String {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    format!("http:{} {}", request.method(), path)
}

/// Refuses requests to a sealed server, authenticates the caller, and makes sure every
/// request leaves exactly one audit event (two when an allowed action then failed) that is
/// durable before the response is sent. A response whose audit write fails becomes a 503.
pub async fn guard(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    if state.keyring.is_sealed() {
        return ApiError::sealed().into_response();
    }
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client = client_addr(&request);
    let fallback_action = route_action(&request);
    let fallback_resource = request.uri().path().to_string();

    let caller = match authenticate(&state, request.headers()).await {
        Ok(caller) => caller,
        Err((AuthFailure::StoreUnavailable, _)) => {
            return ApiError::storage_unavailable().into_response();
        }
        Err((failure, accessor)) => {
            let failed = FailedAuth {
                request_id,
                client_addr: client,
                action: fallback_action,
                resource: fallback_resource,
                failure,
                accessor,
            };
            if record_auth_failure(&state, failed).await.is_err() {
                return ApiError::audit_unavailable().into_response();
            }
            return ApiError::unauthenticated().into_response();
        }
    };

    let ctx = RequestCtx {
        caller,
        request_id,
        client_addr: client,
        slot: AuditSlot::default(),
    };
    request.extensions_mut().insert(ctx.clone());
    let response = next.run(request).await;
    record_response(&state, &ctx, response, fallback_action, fallback_resource).await
}

/// A request whose token was refused, for its audit event.
pub(crate) struct FailedAuth {
    pub request_id: String,
    pub client_addr: Option<String>,
    pub action: String,
    pub resource: String,
    pub failure: AuthFailure,
    /// The token's accessor, when the token was found.
    pub accessor: Option<String>,
}

/// Logs a failed authentication and writes its audit event. Returns Err when the audit log
/// cannot be written.
pub(crate) async fn record_auth_failure(state: &SharedState, failed: FailedAuth) -> Result<(), ()> {
    tracing::warn!(reason = failed.failure.code(), client = ?failed.client_addr, "authentication failed");
    let record = AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: failed.request_id,
        principal: "anonymous".into(),
        action: failed.action,
        resource: failed.resource,
        outcome: Outcome::Failed,
        reason: Some(failed.failure.code().into()),
        policies: Vec::new(),
        client_addr: failed.client_addr,
        token_id: failed.accessor,
        detail: Default::default(),
    };
    state.audit.append(record).await.map(|_| ()).map_err(|_| ())
}

/// Writes the audit event of a handled request unless the handler already recorded it,
/// and turns the response into a 503 when that write fails.
pub(crate) async fn record_response(
    state: &SharedState,
    ctx: &RequestCtx,
    response: Response,
    fallback_action: String,
    fallback_resource: String,
) -> Response {
    if response.extensions().get::<Audited>().is_some() {
        return response;
    }
    let status = response.status();
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map(|c| c.0.to_string());
    let record = ctx.slot.with_state(|slot| {
        if slot.action.is_none() {
            slot.action = Some(fallback_action.clone());
            slot.resource = Some(fallback_resource.clone());
        }
        let outcome = if status.is_success() || status.is_redirection() {
            slot.outcome.unwrap_or(Outcome::Allowed)
        } else if status.as_u16() == 403 {
            Outcome::Denied
        } else {
            Outcome::Failed
        };
        if slot.committed && outcome == Outcome::Allowed {
            // The handler recorded this already and nothing went wrong afterwards.
            return None;
        }
        Some(build_record(slot, ctx, outcome, code.clone()))
    });
    if let Some(Some(record)) = record
        && state.audit.append(record).await.is_err()
    {
        // An unreachable database fails the audit append as well; its own error is more precise.
        if code.as_deref() == Some("storage_unavailable") {
            return response;
        }
        return ApiError::audit_unavailable().into_response();
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<RequestCtx, ApiError> {
        parts
            .extensions
            .get::<RequestCtx>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route is missing the authentication layer"))
    }
}
