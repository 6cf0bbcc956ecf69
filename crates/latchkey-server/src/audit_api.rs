//! Reading the audit log, its signed checkpoints and its public key over the API.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use latchkey_core::audit::{
    AuditEvent, CHECKPOINT_ALGORITHM, Checkpoint, Outcome, parse_time_bound,
};
use latchkey_core::policy::{Action, Resource};
use latchkey_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit_log::SignerError;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::state::{RequestCtx, SharedState};

const MAX_PAGE: u32 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events with a sequence number above this one.
    #[serde(default)]
    pub after: u64,
    pub limit: Option<u32>,
    /// Only events of this principal, such as `User::"alice"`.
    pub principal: Option<String>,
    /// Only events whose resource starts with this text, such as `Secret::"prod/`.
    pub resource: Option<String>,
    /// Only events of this action, such as `read`.
    pub action: Option<String>,
    /// Only the events of this request id (error bodies and `x-request-id` give it).
    pub request_id: Option<String>,
    /// Only events under this grant id.
    pub grant: Option<String>,
    /// Only events of this access request: asked, reviewed, granted, read under its
    /// grant, expired, revoked.
    pub access_request: Option<String>,
    /// Only events with this outcome.
    pub outcome: Option<Outcome>,
    /// Only events at or after this time: RFC 3339, or a duration before now such as `7d`.
    pub since: Option<String>,
    /// Only events before this time, written like `since`.
    pub until: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventsResponse {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<AuditEvent>,
    /// The last sequence number in this page; pass it as `after` for the next one.
    pub last_seq: u64,
    /// The newest sequence number stored when this page was read.
    pub head_seq: u64,
}

fn check_limit(limit: Option<u32>) -> ApiResult<u32> {
    let limit = limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` {limit} must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

fn time_bound(name: &str, value: Option<&str>) -> ApiResult<Option<String>> {
    value
        .map(|text| {
            parse_time_bound(text, chrono::Utc::now())
                .map_err(|e| ApiError::bad_request(format!("`{name}`: {e}")))
        })
        .transpose()
}

/// Page through the audit log in sequence order, optionally filtered (action `admin` on
/// `System`). Filters combine with AND; pages stay in sequence order, so `last_seq` is
/// still the `after` of the next page.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit",
    params(("after" = Option<u64>, Query), ("limit" = Option<u32>, Query),
        ("principal" = Option<String>, Query), ("resource" = Option<String>, Query, description = "resource prefix"),
        ("action" = Option<String>, Query), ("request_id" = Option<String>, Query), ("grant" = Option<String>, Query), ("access_request" = Option<String>, Query), ("outcome" = Option<String>, Query, description = "allowed, denied or failed"),
        ("since" = Option<String>, Query, description = "RFC 3339 time or a duration before now, such as 7d"),
        ("until" = Option<String>, Query, description = "RFC 3339 time or a duration before now; exclusive")),
    responses((status = 200, body = EventsResponse)))]
pub async fn list_events(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventsResponse>> {
    let limit = check_limit(query.limit)?;
    let filter = AuditFilter {
        after: query.after,
        limit,
        since: time_bound("since", query.since.as_deref())?,
        until: time_bound("until", query.until.as_deref())?,
        principal: query.principal,
        resource_prefix: query.resource,
        action: query.action,
        request_id: query.request_id,
        grant: query.grant,
        access_request: query.access_request,
        outcome: query.outcome,
    };
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("audit_read".into()));
    let head_seq = state
        .store
        .audit_head()
        .await?
        .map(|(seq, _)| seq)
        .unwrap_or(0);
    let events = state.store.search_audit(&filter).await?;
    let last_seq = events.last().map(|e| e.seq).unwrap_or(query.after);
    Ok(Json(EventsResponse {
        events,
        last_seq,
        head_seq,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsQuery {
    /// Return checkpoints with a sequence number above this one.
    #[serde(default)]
    pub after: u64,
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointsResponse {
    #[schema(value_type = Vec<Object>)]
    pub checkpoints: Vec<Checkpoint>,
    /// The last checkpoint's sequence number in this page; pass it as `after` for the next.
    pub last_seq: u64,
}

/// Page through the signed checkpoints in sequence order (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/audit/checkpoints", tag = "audit",
    params(("after" = Option<u64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = CheckpointsResponse)))]
pub async fn list_checkpoints(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<CheckpointsQuery>,
) -> ApiResult<Json<CheckpointsResponse>> {
    let limit = check_limit(query.limit)?;
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("audit_read".into()));
    let checkpoints = state.store.checkpoints(query.after, limit).await?;
    let last_seq = checkpoints.last().map(|c| c.seq).unwrap_or(query.after);
    Ok(Json(CheckpointsResponse {
        checkpoints,
        last_seq,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AuditKeyResponse {
    /// Base64 (standard, padded) of the raw 32-byte Ed25519 public key.
    pub public_key: String,
    /// First 16 hex characters of the SHA-256 of the public key.
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
}

/// The public key that verifies audit checkpoints (any authenticated caller).
#[utoipa::path(get, path = "/v1/audit/key", tag = "audit",
    responses((status = 200, body = AuditKeyResponse), (status = 503, body = crate::error::ErrorBody)))]
pub async fn audit_key(
    State(state): State<SharedState>,
    _ctx: RequestCtx,
) -> ApiResult<Json<AuditKeyResponse>> {
    let signer = state.audit.signer().await.map_err(|e| match e {
        SignerError::Sealed => ApiError::sealed(),
        other => ApiError::internal(other),
    })?;
    Ok(Json(AuditKeyResponse {
        public_key: base64::engine::general_purpose::STANDARD.encode(signer.public_key()),
        key_id: signer.key_id().to_owned(),
        algorithm: CHECKPOINT_ALGORITHM.to_owned(),
    }))
}
