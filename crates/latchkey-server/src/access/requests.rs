//! Access requests: ask, list, show, approve, deny, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::audit::Outcome;
use latchkey_core::duration::parse_duration;
use latchkey_core::policy::{Action, Resource};
use latchkey_core::reference::SecretRef;
use latchkey_store::{
    AccessRequestFilter, AccessRequestRow, AccessResource, AccessReviewRow, GrantRow, ReviewOutcome,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::settings::{self, Limits};
use super::{
    AccessEventKind, announce, append_event, decide_all, duration_text, grant_detail, is_admin,
    may_review, policy_resources, request_detail, request_uid, resource_refs,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, format_unix, new_id, validate_name};
use crate::state::{AppState, RequestCtx, SharedState};
use crate::vaults::load_vault;

/// Maximum number of resources one request may name.
pub const MAX_RESOURCES: usize = 20;
const MAX_REASON_BYTES: usize = 1000;
const MAX_TICKET_BYTES: usize = 500;
const MAX_COMMENT_BYTES: usize = 1000;
/// Maximum number of requests a list returns.
const LIST_LIMIT: u32 = 500;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequestBody {
    /// References to vaults (`lk://prod`) or secrets (`lk://prod/db`). Access covers the
    /// whole secret, so a field or version in a reference is ignored.
    pub resources: Vec<String>,
    /// How long access lasts once approved, such as `1h`. Defaults to 1h, or the vault's
    /// longest grant when that is shorter.
    #[serde(default)]
    pub duration: Option<String>,
    /// Why access is needed; required where a vault says so, and for break-glass.
    #[serde(default)]
    pub reason: String,
    /// A link to the ticket or incident.
    pub ticket: Option<String>,
    /// Take access at once without approval, where a policy allows `break_glass`.
    #[serde(default)]
    pub break_glass: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ReviewView {
    pub reviewer: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub comment: Option<String>,
    pub time: String,
}

#[derive(Serialize, ToSchema)]
pub struct RequestView {
    pub id: String,
    pub requester: String,
    pub resources: Vec<String>,
    /// How long access lasts once approved, such as `1h`.
    pub duration: String,
    pub duration_seconds: i64,
    pub reason: String,
    pub ticket: Option<String>,
    /// `review` (approved by others), `auto` (approved by policy) or `break_glass`.
    pub kind: String,
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub status: String,
    pub approvals: i64,
    pub approvals_required: i64,
    pub created_at: String,
    /// When the request expires if it is still pending.
    pub expires_at: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    /// The grant the approval created.
    pub grant: Option<String>,
    pub reviews: Vec<ReviewView>,
    /// Whether the caller may approve or deny it now.
    pub can_review: bool,
}

/// Returns a request's status at `now`. A pending request past its expiry is `expired`
/// even before the expiry job records it.
pub fn status_at(request: &AccessRequestRow, now: i64) -> &str {
    if request.status == "pending" && request.expires_at <= now {
        "expired"
    } else {
        &request.status
    }
}

pub fn view(request: &AccessRequestRow, now: i64, can_review: bool) -> RequestView {
    let status = status_at(request, now).to_string();
    RequestView {
        id: request.id.clone(),
        requester: request.requester.clone(),
        resources: resource_refs(&request.resources),
        duration: duration_text(request.duration),
        duration_seconds: request.duration,
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        kind: request.kind.clone(),
        can_review: can_review && status == "pending",
        status,
        approvals: request.approvals(),
        approvals_required: request.approvals_required,
        created_at: format_unix(request.created_at),
        expires_at: format_unix(request.expires_at),
        decided_at: request.decided_at.map(format_unix),
        decided_by: request.decided_by.clone(),
        grant: request.grant_id.clone(),
        reviews: request
            .reviews
            .iter()
            .map(|r| ReviewView {
                reviewer: r.reviewer.clone(),
                verdict: r.verdict.clone(),
                comment: r.comment.clone(),
                time: format_unix(r.created_at),
            })
            .collect(),
    }
}

fn check_text(what: &str, text: &str, max: usize) -> ApiResult<()> {
    if text.len() > max {
        return Err(ApiError::bad_request(format!(
            "the {what} is longer than {max} bytes"
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::bad_request(format!(
            "the {what} contains a control character"
        )));
    }
    Ok(())
}

/// Parses the references of a request into what it covers, without duplicates.
pub fn parse_resources(references: &[String]) -> ApiResult<Vec<AccessResource>> {
    if references.is_empty() {
        return Err(ApiError::bad_request(
            "name at least one vault or secret, such as `lk://prod/db`",
        ));
    }
    if references.len() > MAX_RESOURCES {
        return Err(ApiError::bad_request(format!(
            "a request names at most {MAX_RESOURCES} vaults or secrets; this one names {}",
            references.len()
        )));
    }
    let mut out: Vec<AccessResource> = Vec::new();
    for text in references {
        let reference =
            SecretRef::parse(text).map_err(|e| ApiError::bad_request(format!("`{text}`: {e}")))?;
        validate_name("vault", &reference.vault)?;
        if let Some(secret) = &reference.secret {
            validate_name("secret", secret)?;
        }
        let resource = AccessResource {
            vault: reference.vault,
            secret: reference.secret,
        };
        if !out.contains(&resource) {
            out.push(resource);
        }
    }
    out.sort();
    Ok(out)
}

/// Parses the access duration of a request.
pub fn parse_request_duration(text: &str) -> ApiResult<i64> {
    let duration = parse_duration(text).map_err(|e| {
        ApiError::bad_request(format!(
            "`duration` = `{text}`: {e}; write a duration such as `30m` or `1h`"
        ))
    })?;
    let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
    if secs <= 0 {
        return Err(ApiError::bad_request("access must last longer than 0s"));
    }
    Ok(secs)
}

/// The strictest settings over the vaults a request names, with the vault each limit came
/// from for messages.
struct Combined {
    limits: Limits,
    max_grant_vault: String,
    break_glass_vault: String,
    reason_vault: Option<String>,
}

async fn combined_limits(
    state: &SharedState,
    ctx: &RequestCtx,
    resources: &[AccessResource],
    action: Action,
) -> ApiResult<Combined> {
    let mut combined: Option<Combined> = None;
    let mut seen: Vec<&str> = Vec::new();
    for resource in resources {
        if seen.contains(&resource.vault.as_str()) {
            continue;
        }
        seen.push(&resource.vault);
        let vault = load_vault(
            state,
            ctx,
            &resource.vault,
            resource.secret.as_deref(),
            action,
        )
        .await?;
        let limits = settings::load(state, &vault.id).await?.limits()?;
        combined = Some(match combined {
            None => Combined {
                limits,
                max_grant_vault: vault.name.clone(),
                break_glass_vault: vault.name.clone(),
                reason_vault: limits.require_reason.then(|| vault.name.clone()),
            },
            Some(mut c) => {
                c.limits.approvals = c.limits.approvals.max(limits.approvals);
                c.limits.request_expiry = c.limits.request_expiry.min(limits.request_expiry);
                if limits.max_grant < c.limits.max_grant {
                    c.limits.max_grant = limits.max_grant;
                    c.max_grant_vault = vault.name.clone();
                }
                if limits.break_glass_max < c.limits.break_glass_max {
                    c.limits.break_glass_max = limits.break_glass_max;
                    c.break_glass_vault = vault.name.clone();
                }
                if limits.require_reason && c.reason_vault.is_none() {
                    c.limits.require_reason = true;
                    c.reason_vault = Some(vault.name.clone());
                }
                c
            }
        });
    }
    combined.ok_or_else(|| ApiError::bad_request("the request names no vault"))
}

/// Records a refusal of `action` on the first resource the caller may not act on.
fn refuse(
    state: &AppState,
    ctx: &RequestCtx,
    action: Action,
    resources: &[Resource],
    duration: i64,
) -> ApiError {
    for resource in resources {
        let decision = state.decide_in(&ctx.caller, action, resource, false, duration);
        if !decision.allowed {
            return match state.record_decision(ctx, action, resource, decision) {
                Err(error) => error,
                Ok(_) => ApiError::internal("a refused decision was recorded as allowed"),
            };
        }
    }
    ApiError::internal("no resource refused the action")
}

/// Files an access request; approves it at once when policy allows `auto_approve`, or
/// grants access at once for break-glass.
pub async fn create(
    state: &SharedState,
    ctx: &RequestCtx,
    body: CreateRequestBody,
) -> ApiResult<RequestView> {
    let resources = parse_resources(&body.resources)?;
    let asked = body
        .duration
        .as_deref()
        .map(parse_request_duration)
        .transpose()?;
    let reason = body.reason.trim().to_string();
    check_text("reason", &reason, MAX_REASON_BYTES)?;
    let ticket = body
        .ticket
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if let Some(ticket) = &ticket {
        check_text("ticket", ticket, MAX_TICKET_BYTES)?;
    }
    let action = if body.break_glass {
        Action::BreakGlass
    } else {
        Action::Request
    };

    let combined = combined_limits(state, ctx, &resources, action).await?;
    let duration = asked.unwrap_or_else(|| {
        let longest = if body.break_glass {
            combined.limits.break_glass_max
        } else {
            combined.limits.max_grant
        };
        longest.min(3600)
    });
    let targets = policy_resources(state, &resources).await?;
    let id = new_id("req");
    let Some(policies) = decide_all(state, ctx, action, &targets, duration) else {
        return Err(refuse(state, ctx, action, &targets, duration));
    };
    ctx.slot.prepare(
        action.as_str(),
        &super::request_uid(&id),
        Outcome::Allowed,
        policies,
    );

    // Secrets must exist, because a grant for a misspelt name gives no access.
    for resource in &resources {
        if let Some(secret) = &resource.secret {
            let vault = state
                .store
                .vault_by_name(&resource.vault)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!("vault `{}` not found", resource.vault))
                })?;
            if state
                .store
                .secret_by_name(&vault.id, secret)
                .await?
                .is_none()
            {
                return Err(ApiError::not_found(format!(
                    "secret `{secret}` not found in vault `{}`: `lk secret list lk://{}` shows its secrets",
                    resource.vault, resource.vault
                )));
            }
        }
    }

    let limits = combined.limits;
    if body.break_glass {
        if duration > limits.break_glass_max {
            return Err(ApiError::bad_request(format!(
                "break-glass access lasts at most {} in vault `{}`; ask for {} or less",
                duration_text(limits.break_glass_max),
                combined.break_glass_vault,
                duration_text(limits.break_glass_max)
            )));
        }
        if reason.is_empty() {
            return Err(ApiError::bad_request(
                "break-glass access needs a reason: add `--reason \"...\"`",
            ));
        }
    } else {
        if duration > limits.max_grant {
            return Err(ApiError::bad_request(format!(
                "`{}` is longer than vault `{}` allows (at most {}); ask for {} or less",
                duration_text(duration),
                combined.max_grant_vault,
                duration_text(limits.max_grant),
                duration_text(limits.max_grant)
            )));
        }
        if reason.is_empty()
            && let Some(vault) = &combined.reason_vault
        {
            return Err(ApiError::bad_request(format!(
                "vault `{vault}` requires a reason for access: add `--reason \"...\"`"
            )));
        }
    }

    let now = state.clock.now();
    let auto_policies = if body.break_glass {
        None
    } else {
        decide_all(state, ctx, Action::AutoApprove, &targets, duration)
    };
    let kind = if body.break_glass {
        "break_glass"
    } else if auto_policies.is_some() {
        "auto"
    } else {
        "review"
    };
    let requester = ctx.caller.principal.uid_string();
    let grant = (kind != "review").then(|| GrantRow {
        id: new_id("grt"),
        request_id: id.clone(),
        principal_id: ctx.caller.principal_id.clone(),
        principal: requester.clone(),
        resources: resources.clone(),
        approved_by: match &auto_policies {
            Some(policies) => policies
                .iter()
                .map(|p| format!("policy:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            None => "break_glass".to_string(),
        },
        reason: reason.clone(),
        kind: kind.to_string(),
        starts_at: now,
        expires_at: now.saturating_add(duration),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    });
    let request = AccessRequestRow {
        id: id.clone(),
        requester_id: ctx.caller.principal_id.clone(),
        requester: requester.clone(),
        resources,
        duration,
        reason,
        ticket,
        kind: kind.to_string(),
        approvals_required: i64::from(limits.approvals),
        status: if grant.is_some() {
            "approved".into()
        } else {
            "pending".into()
        },
        created_at: now,
        expires_at: now.saturating_add(limits.request_expiry),
        decided_at: grant.as_ref().map(|_| now),
        decided_by: grant.as_ref().map(|g| g.approved_by.clone()),
        grant_id: grant.as_ref().map(|g| g.id.clone()),
        reviews: Vec::new(),
    };

    for (key, value) in request_detail(&request) {
        ctx.slot.detail(&key, value);
    }
    ctx.slot.detail("kind", kind);
    ctx.slot
        .detail("approvals_required", request.approvals_required.to_string());
    if let Some(grant) = &grant
        && body.break_glass
    {
        for (key, value) in grant_detail(grant) {
            ctx.slot.detail(&key, value);
        }
    }
    state.commit_audit(ctx).await?;
    if let (Some(grant), Some(policies)) = (&grant, &auto_policies) {
        append_event(
            state,
            Some(ctx),
            Action::AutoApprove.as_str(),
            request_uid(&request.id),
            policies.clone(),
            grant_detail(grant),
        )
        .await?;
    }
    state
        .store
        .insert_access_request(&request, grant.as_ref())
        .await?;
    tracing::info!(request.id = %request.id, kind, "access request filed");
    announce(
        state,
        match kind {
            "break_glass" => AccessEventKind::BreakGlass,
            "auto" => AccessEventKind::AutoApproved,
            _ => AccessEventKind::Created,
        },
        &request,
        None,
        None,
        grant.as_ref(),
    );
    Ok(view(&request, now, false))
}

/// Returns whether the caller may see a request, and whether it may review it.
async fn access_to(
    state: &AppState,
    ctx: &RequestCtx,
    request: &AccessRequestRow,
) -> ApiResult<(bool, bool)> {
    let targets = policy_resources(state, &request.resources).await?;
    let reviewer = may_review(state, ctx, request, &targets);
    let visible =
        reviewer || request.requester_id == ctx.caller.principal_id || is_admin(state, ctx);
    Ok((visible, reviewer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub status: Option<String>,
    /// Only the caller's own requests.
    #[serde(default)]
    pub mine: bool,
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct RequestListResponse {
    pub requests: Vec<RequestView>,
}

const STATUSES: [&str; 5] = ["pending", "approved", "denied", "expired", "cancelled"];

/// Lists the requests the caller may see: its own, those it may review, or all for an
/// administrator.
pub async fn list_visible(
    state: &AppState,
    ctx: &RequestCtx,
    status: Option<&str>,
    mine: bool,
    limit: u32,
) -> ApiResult<Vec<RequestView>> {
    if let Some(status) = status
        && !STATUSES.contains(&status)
    {
        return Err(ApiError::bad_request(format!(
            "unknown status `{status}`: use one of {}",
            STATUSES.join(", ")
        )));
    }
    let now = state.clock.now();
    // An expired request may still be stored as pending until the expiry job runs.
    let stored_status = match status {
        Some("expired") => None,
        other => other.map(str::to_string),
    };
    let rows = state
        .store
        .list_access_requests(&AccessRequestFilter {
            status: stored_status,
            requester_id: mine.then(|| ctx.caller.principal_id.clone()),
            limit: LIST_LIMIT,
        })
        .await?;
    let mut out = Vec::new();
    for request in rows {
        if let Some(status) = status
            && status_at(&request, now) != status
        {
            continue;
        }
        let (visible, reviewer) = access_to(state, ctx, &request).await?;
        if visible {
            out.push(view(&request, now, reviewer));
        }
        if out.len() >= limit as usize {
            break;
        }
    }
    Ok(out)
}

/// List access requests the caller may see, newest first.
#[utoipa::path(get, path = "/v1/requests", tag = "access",
    params(("status" = Option<String>, Query), ("mine" = Option<bool>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = RequestListResponse)))]
pub async fn list(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<RequestListResponse>> {
    let limit = query.limit.unwrap_or(100).clamp(1, LIST_LIMIT);
    let requests = list_visible(&state, &ctx, query.status.as_deref(), query.mine, limit).await?;
    ctx.slot
        .prepare("list", "AccessRequest::\"*\"", Outcome::Allowed, Vec::new());
    ctx.slot
        .detail("visible_requests", requests.len().to_string());
    Ok(Json(RequestListResponse { requests }))
}

/// Loads a request the caller may see; others get the same 404 as a missing one.
pub async fn load_visible(
    state: &AppState,
    ctx: &RequestCtx,
    id: &str,
) -> ApiResult<(AccessRequestRow, bool)> {
    let not_found = || {
        ApiError::not_found(format!(
            "access request `{id}` not found: `lk requests` lists the ones you can see"
        ))
    };
    let request = state
        .store
        .access_request(id)
        .await?
        .ok_or_else(not_found)?;
    let (visible, reviewer) = access_to(state, ctx, &request).await?;
    if !visible {
        return Err(not_found());
    }
    Ok((request, reviewer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Seconds to wait for the request to change (its status or its approvals) before
    /// answering, at most 60; 0 or absent answers at once.
    pub wait: Option<u64>,
}

/// The longest a `wait` holds a request open.
const MAX_WAIT_SECS: u64 = 60;
/// Interval between two looks at the store while waiting.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Show one access request with its reviews; with `wait`, once it changes or the wait
/// ends, so a client waiting for a decision makes one call (and one audit event) per
/// minute instead of one per poll.
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "access",
    params(("id" = String, Path), ("wait" = Option<u64>, Query)),
    responses((status = 200, body = RequestView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> ApiResult<Json<RequestView>> {
    let (mut request, reviewer) = load_visible(&state, &ctx, &id).await?;
    let wait = query.wait.unwrap_or(0).min(MAX_WAIT_SECS);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let seen = (
        status_at(&request, state.clock.now()).to_string(),
        request.reviews.len(),
    );
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(WAIT_POLL).await;
        let Some(latest) = state.store.access_request(&id).await? else {
            break;
        };
        request = latest;
        let now = (
            status_at(&request, state.clock.now()).to_string(),
            request.reviews.len(),
        );
        if now != seen {
            break;
        }
    }
    Ok(Json(view(&request, state.clock.now(), reviewer)))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// Why; kept with the review and in the audit log.
    pub comment: Option<String>,
}

/// Approves or denies a request as the caller. The requester's own review is refused
/// whatever the policies say.
pub async fn review(
    state: &SharedState,
    ctx: &RequestCtx,
    id: &str,
    approve: bool,
    comment: Option<String>,
) -> ApiResult<RequestView> {
    let verdict = if approve { "approve" } else { "deny" };
    let comment = comment
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    if let Some(comment) = &comment {
        check_text("comment", comment, MAX_COMMENT_BYTES)?;
    }
    let request = state.store.access_request(id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "access request `{id}` not found: `lk requests --pending` lists the ones you can review"
        ))
    })?;
    let targets = policy_resources(state, &request.resources).await?;
    ctx.slot
        .prepare(verdict, &request_uid(id), Outcome::Denied, Vec::new());
    // Someone who may not see the request learns no more than `lk requests ID` tells them.
    if request.requester_id != ctx.caller.principal_id
        && !may_review(state, ctx, &request, &targets)
        && !is_admin(state, ctx)
    {
        ctx.slot.detail("refused", "not_visible");
        return Err(ApiError::not_found(format!(
            "access request `{id}` not found: `lk requests --pending` lists the ones you can review"
        )));
    }
    for (key, value) in request_detail(&request) {
        ctx.slot.detail(&key, value);
    }
    if let Some(comment) = &comment {
        ctx.slot.detail("comment", comment.clone());
    }
    if request.requester_id == ctx.caller.principal_id {
        ctx.slot.detail("refused", "own_request");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "self_approval",
            format!(
                "you cannot {verdict} your own access request `{id}`: another approver must review it"
            ),
        ));
    }
    let Some(policies) = decide_all(state, ctx, Action::Approve, &targets, request.duration) else {
        let error = refuse(state, ctx, Action::Approve, &targets, request.duration);
        // The refusal names the action that was decided; the event keeps the verdict.
        ctx.slot
            .with_state(|slot| slot.action = Some(verdict.to_string()));
        return Err(error);
    };
    ctx.slot
        .prepare(verdict, &request_uid(id), Outcome::Allowed, policies);

    let now = state.clock.now();
    let status = status_at(&request, now);
    if status == "expired" {
        return Err(ApiError::conflict(format!(
            "access request `{id}` expired at {} without enough approvals; the requester can ask again",
            format_unix(request.expires_at)
        )));
    }
    if status != "pending" {
        return Err(ApiError::conflict(format!(
            "access request `{id}` is already {status}; only a pending request can be reviewed"
        )));
    }
    if request
        .reviews
        .iter()
        .any(|r| r.reviewer_id == ctx.caller.principal_id)
    {
        return Err(ApiError::conflict(format!(
            "you already reviewed access request `{id}`"
        )));
    }

    let grant_id = new_id("grt");
    let reaches = approve && request.approvals() + 1 >= request.approvals_required;
    ctx.slot.detail(
        "approvals",
        format!(
            "{}/{}",
            request.approvals() + i64::from(approve),
            request.approvals_required
        ),
    );
    if reaches {
        ctx.slot.detail("grant", grant_id.clone());
    }
    state.commit_audit(ctx).await?;

    let reviewer = ctx.caller.principal.uid_string();
    let review = AccessReviewRow {
        request_id: id.to_string(),
        reviewer_id: ctx.caller.principal_id.clone(),
        reviewer: reviewer.clone(),
        verdict: verdict.to_string(),
        comment: comment.clone(),
        created_at: now,
    };
    let template = GrantRow {
        id: grant_id,
        request_id: id.to_string(),
        principal_id: request.requester_id.clone(),
        principal: request.requester.clone(),
        resources: request.resources.clone(),
        approved_by: String::new(),
        reason: request.reason.clone(),
        kind: request.kind.clone(),
        starts_at: now,
        expires_at: now,
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    };
    let (request, grant) = match state
        .store
        .review_access_request(&review, &template, now)
        .await?
    {
        ReviewOutcome::Recorded { request, grant } => (request, grant),
        ReviewOutcome::NotFound => {
            return Err(ApiError::not_found(format!(
                "access request `{id}` not found"
            )));
        }
        ReviewOutcome::NotPending(request) => {
            return Err(ApiError::conflict(format!(
                "access request `{id}` was {} meanwhile; only a pending request can be reviewed",
                request.status
            )));
        }
        ReviewOutcome::Expired(_) => {
            return Err(ApiError::conflict(format!(
                "access request `{id}` expired meanwhile; the requester can ask again"
            )));
        }
        ReviewOutcome::AlreadyReviewed(_) => {
            return Err(ApiError::conflict(format!(
                "you already reviewed access request `{id}`"
            )));
        }
    };
    if let Some(grant) = &grant {
        // Every grant's facts get their own event; the approval's event above named the
        // grant id, unless another approval landed at the same time.
        let mut detail = grant_detail(grant);
        detail.insert("operation".into(), "grant".into());
        append_event(
            state,
            Some(ctx),
            "grant",
            super::grant_uid(&grant.id),
            Vec::new(),
            detail,
        )
        .await?;
        tracing::info!(request.id = %id, grant.id = %grant.id, "access request approved");
        announce(
            state,
            AccessEventKind::Approved,
            &request,
            Some(&reviewer),
            comment.as_deref(),
            Some(grant),
        );
    } else if !approve {
        tracing::info!(request.id = %id, "access request denied");
        announce(
            state,
            AccessEventKind::Denied,
            &request,
            Some(&reviewer),
            comment.as_deref(),
            None,
        );
    }
    Ok(view(&request, now, false))
}

/// Ask for access to vaults or secrets for a time, with a reason.
#[utoipa::path(post, path = "/v1/requests", tag = "access", request_body = CreateRequestBody,
    responses((status = 201, body = RequestView), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn create_handler(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<CreateRequestBody>,
) -> ApiResult<(StatusCode, Json<RequestView>)> {
    let view = create(&state, &ctx, body).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Approve someone else's request (action `approve` on every resource it names).
#[utoipa::path(post, path = "/v1/requests/{id}/approve", tag = "access", params(("id" = String, Path)),
    request_body = ReviewBody,
    responses((status = 200, body = RequestView), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn approve_handler(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> ApiResult<Json<RequestView>> {
    let comment = body.comment;
    Ok(Json(review(&state, &ctx, &id, true, comment).await?))
}

/// Deny someone else's request (action `approve` on every resource it names).
#[utoipa::path(post, path = "/v1/requests/{id}/deny", tag = "access", params(("id" = String, Path)),
    request_body = ReviewBody,
    responses((status = 200, body = RequestView), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn deny_handler(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> ApiResult<Json<RequestView>> {
    let comment = body.comment;
    Ok(Json(review(&state, &ctx, &id, false, comment).await?))
}

/// Withdraw one's own pending request (or any, for an administrator).
#[utoipa::path(post, path = "/v1/requests/{id}/cancel", tag = "access", params(("id" = String, Path)),
    responses((status = 200, body = RequestView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel_handler(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RequestView>> {
    let (request, _) = load_visible(&state, &ctx, &id).await?;
    ctx.slot
        .prepare("cancel", &request_uid(&id), Outcome::Denied, Vec::new());
    for (key, value) in request_detail(&request) {
        ctx.slot.detail(&key, value);
    }
    if request.requester_id != ctx.caller.principal_id && !is_admin(&state, &ctx) {
        return Err(ApiError::permission_denied(
            &ctx.caller.principal.uid_string(),
            "cancel",
            &request_uid(&id),
        ));
    }
    ctx.slot
        .prepare("cancel", &request_uid(&id), Outcome::Allowed, Vec::new());
    let now = state.clock.now();
    if status_at(&request, now) != "pending" {
        return Err(ApiError::conflict(format!(
            "access request `{id}` is already {}; only a pending request can be cancelled",
            status_at(&request, now)
        )));
    }
    state.commit_audit(&ctx).await?;
    let by = ctx.caller.principal.uid_string();
    let request = state
        .store
        .cancel_access_request(&id, &by, now)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "access request `{id}` was decided meanwhile; only a pending request can be cancelled"
            ))
        })?;
    Ok(Json(view(&request, now, false)))
}
