//! Reading the audit log over the API.

use axum::Json;
use axum::extract::State;
use latchkey_core::audit::AuditEvent;
use latchkey_core::policy::{Action, Resource};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

/// Page through the audit log in sequence order (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit",
    params(("after" = Option<u64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = EventsResponse)))]
pub async fn list_events(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventsResponse>> {
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` {limit} must be between 1 and {MAX_PAGE}"
        )));
    }
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("audit_read".into()));
    let head_seq = state
        .store
        .audit_head()
        .await?
        .map(|(seq, _)| seq)
        .unwrap_or(0);
    let events = state.store.audit_events(query.after, limit).await?;
    let last_seq = events.last().map(|e| e.seq).unwrap_or(query.after);
    Ok(Json(EventsResponse {
        events,
        last_seq,
        head_seq,
    }))
}
