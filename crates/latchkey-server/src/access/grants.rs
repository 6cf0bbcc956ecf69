//! Grants: list, show and revoke the time-boxed access approved requests became.

use axum::Json;
use axum::extract::State;
use latchkey_core::audit::Outcome;
use latchkey_store::{GrantFilter, GrantRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AccessEventKind, announce, grant_detail, grant_uid, is_admin, may_review, policy_resources,
    resource_refs,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, format_unix};
use crate::state::{AppState, RequestCtx, SharedState};

const LIST_LIMIT: u32 = 500;

#[derive(Serialize, ToSchema)]
pub struct GrantView {
    pub id: String,
    pub access_request: String,
    pub holder: String,
    pub resources: Vec<String>,
    /// Reviewers, `policy:ID` for approval by policy, or `break_glass`.
    pub approved_by: Vec<String>,
    pub reason: String,
    /// `review`, `auto` or `break_glass`.
    pub kind: String,
    /// `live`, `expired` or `revoked`.
    pub status: String,
    pub starts_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

pub fn view(grant: &GrantRow, now: i64) -> GrantView {
    let status = if grant.revoked_at.is_some() {
        "revoked"
    } else if grant.is_live(now) {
        "live"
    } else {
        "expired"
    };
    GrantView {
        id: grant.id.clone(),
        access_request: grant.request_id.clone(),
        holder: grant.principal.clone(),
        resources: resource_refs(&grant.resources),
        approved_by: grant
            .approved_by
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
        reason: grant.reason.clone(),
        kind: grant.kind.clone(),
        status: status.to_string(),
        starts_at: format_unix(grant.starts_at),
        expires_at: format_unix(grant.expires_at),
        revoked_at: grant.revoked_at.map(format_unix),
        revoked_by: grant.revoked_by.clone(),
        revoke_reason: grant.revoke_reason.clone(),
    }
}

/// Returns whether the caller may see and revoke a grant: its holder, a principal allowed
/// to approve it, or an administrator.
async fn may_manage(state: &AppState, ctx: &RequestCtx, grant: &GrantRow) -> ApiResult<bool> {
    if grant.principal_id == ctx.caller.principal_id || is_admin(state, ctx) {
        return Ok(true);
    }
    let Some(request) = state.store.access_request(&grant.request_id).await? else {
        return Ok(false);
    };
    let targets = policy_resources(state, &grant.resources).await?;
    Ok(may_review(state, ctx, &request, &targets))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Every grant the caller may see, not only its own.
    #[serde(default)]
    pub all: bool,
    /// Only grants live now.
    #[serde(default)]
    pub live: bool,
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct GrantListResponse {
    pub grants: Vec<GrantView>,
}

/// List grants, newest first: the caller's own, or with `all` every grant it may see.
#[utoipa::path(get, path = "/v1/grants", tag = "access",
    params(("all" = Option<bool>, Query), ("live" = Option<bool>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = GrantListResponse)))]
pub async fn list(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<GrantListResponse>> {
    let limit = query.limit.unwrap_or(100).clamp(1, LIST_LIMIT);
    let now = state.clock.now();
    let rows = state
        .store
        .list_grants(&GrantFilter {
            principal_id: (!query.all).then(|| ctx.caller.principal_id.clone()),
            request_id: None,
            live_at: query.live.then_some(now),
            limit: LIST_LIMIT,
        })
        .await?;
    let mut grants = Vec::new();
    for grant in rows {
        if may_manage(&state, &ctx, &grant).await? {
            grants.push(view(&grant, now));
        }
        if grants.len() >= limit as usize {
            break;
        }
    }
    ctx.slot
        .prepare("list", "Grant::\"*\"", Outcome::Allowed, Vec::new());
    ctx.slot.detail("visible_grants", grants.len().to_string());
    Ok(Json(GrantListResponse { grants }))
}

async fn load_managed(state: &AppState, ctx: &RequestCtx, id: &str) -> ApiResult<GrantRow> {
    let not_found = || {
        ApiError::not_found(format!(
            "grant `{id}` not found: `lk grants --all` lists the ones you can see"
        ))
    };
    let grant = state.store.grant(id).await?.ok_or_else(not_found)?;
    if !may_manage(state, ctx, &grant).await? {
        return Err(not_found());
    }
    Ok(grant)
}

/// Show one grant.
#[utoipa::path(get, path = "/v1/grants/{id}", tag = "access", params(("id" = String, Path)),
    responses((status = 200, body = GrantView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<GrantView>> {
    let grant = load_managed(&state, &ctx, &id).await?;
    Ok(Json(view(&grant, state.clock.now())))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Why; kept with the grant and in the audit log.
    pub reason: Option<String>,
}

/// End a live grant now: its holder, a principal allowed to approve it, or an
/// administrator. Reads under it fail from the next request on.
#[utoipa::path(post, path = "/v1/grants/{id}/revoke", tag = "access", params(("id" = String, Path)),
    request_body = RevokeBody,
    responses((status = 200, body = GrantView), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> ApiResult<Json<GrantView>> {
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "revoked".to_string());
    if reason.len() > 1000 || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "the reason must be at most 1000 bytes without control characters",
        ));
    }
    let grant = load_managed(&state, &ctx, &id).await?;
    let now = state.clock.now();
    ctx.slot.prepare(
        "revoke_grant",
        &grant_uid(&id),
        Outcome::Allowed,
        Vec::new(),
    );
    for (key, value) in grant_detail(&grant) {
        ctx.slot.detail(&key, value);
    }
    ctx.slot.detail("why", reason.clone());
    if !grant.is_live(now) {
        return Err(ApiError::conflict(format!(
            "grant `{id}` already ended ({})",
            view(&grant, now).status
        )));
    }
    state.commit_audit(&ctx).await?;
    let by = ctx.caller.principal.uid_string();
    let revoked = state
        .store
        .revoke_grant(&id, &by, &reason, now)
        .await?
        .ok_or_else(|| ApiError::conflict(format!("grant `{id}` ended meanwhile")))?;
    tracing::info!(grant.id = %id, "grant revoked");
    if let Some(request) = state.store.access_request(&revoked.request_id).await? {
        announce(
            &state,
            AccessEventKind::Revoked,
            &request,
            Some(&by),
            Some(&reason),
            Some(&revoked),
        );
    }
    Ok(Json(view(&revoked, now)))
}
