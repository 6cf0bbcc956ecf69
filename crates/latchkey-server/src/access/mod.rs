//! Just-in-time access: a principal asks for time-boxed access to vaults or secrets with a
//! reason, other principals approve or deny, and the last approval needed creates a grant.
//!
//! Policy decides every step: action `request` to ask, `approve` to review (never one's
//! own request, whatever else a policy says), `auto_approve` to have a request approved
//! at once, `break_glass` to take short access without approval. A read that the standing
//! policies refuse is decided again with `context.grant` true when a live grant of the
//! caller covers the secret. Grants are looked up in the store on every such read, so a
//! revoked or expired grant stops reads at once, on every server.

pub mod expiry;
pub mod grants;
pub mod requests;
pub mod settings;

use std::collections::BTreeMap;

use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_core::duration::format_duration;
use latchkey_core::policy::{Action, Resource};
use latchkey_core::reference::SecretRef;
use latchkey_store::{AccessRequestRow, AccessResource, GrantRow};

use crate::error::{ApiError, ApiResult};
use crate::notify::{AccessEvent, AccessEventKind};
use crate::state::{AppState, RequestCtx, SharedState};

/// Returns the Cedar-style uid that audit events give an access request.
pub fn request_uid(id: &str) -> String {
    format!("AccessRequest::\"{id}\"")
}

/// Returns the Cedar-style uid that audit events give a grant.
pub fn grant_uid(id: &str) -> String {
    format!("Grant::\"{id}\"")
}

/// Returns the `lk://` reference of what a request or grant covers.
pub fn resource_ref(resource: &AccessResource) -> String {
    SecretRef {
        vault: resource.vault.clone(),
        secret: resource.secret.clone(),
        field: None,
        version: None,
    }
    .to_string()
}

pub fn resource_refs(resources: &[AccessResource]) -> Vec<String> {
    resources.iter().map(resource_ref).collect()
}

/// Formats seconds the way durations are written on the command line (`1h30m`).
pub fn duration_text(seconds: i64) -> String {
    format_duration(std::time::Duration::from_secs(seconds.max(0) as u64))
}

/// Loads the policy resources of a request: each vault with its tags, and each secret with
/// its tags when it exists (a secret created later is decided without tags).
pub async fn policy_resources(
    state: &AppState,
    resources: &[AccessResource],
) -> ApiResult<Vec<Resource>> {
    let mut out = Vec::with_capacity(resources.len());
    for resource in resources {
        let vault = state.store.vault_by_name(&resource.vault).await?;
        let vault_tags = vault.as_ref().map(|v| v.tags.clone()).unwrap_or_default();
        match &resource.secret {
            None => out.push(Resource::Vault {
                name: resource.vault.clone(),
                tags: vault_tags,
            }),
            Some(secret) => {
                let tags = match &vault {
                    Some(vault) => state
                        .store
                        .secret_by_name(&vault.id, secret)
                        .await?
                        .map(|s| s.tags)
                        .unwrap_or_default(),
                    None => BTreeMap::new(),
                };
                out.push(Resource::Secret {
                    vault: resource.vault.clone(),
                    vault_tags,
                    name: secret.clone(),
                    tags,
                });
            }
        }
    }
    Ok(out)
}

/// Decides `action` on every resource; returns the permitting policies of all of them, or
/// None when any is refused.
pub fn decide_all(
    state: &AppState,
    ctx: &RequestCtx,
    action: Action,
    resources: &[Resource],
    duration: i64,
) -> Option<Vec<String>> {
    let mut policies = Vec::new();
    for resource in resources {
        let decision = state.decide_in(&ctx.caller, action, resource, false, duration);
        if !decision.allowed {
            return None;
        }
        for policy in decision.policies {
            if !policies.contains(&policy) {
                policies.push(policy);
            }
        }
    }
    Some(policies)
}

/// True when the caller may review `request`: not its requester, and allowed `approve` on
/// every resource it covers.
pub fn may_review(
    state: &AppState,
    ctx: &RequestCtx,
    request: &AccessRequestRow,
    resources: &[Resource],
) -> bool {
    request.requester_id != ctx.caller.principal_id
        && decide_all(state, ctx, Action::Approve, resources, request.duration).is_some()
}

/// True when the caller administers the whole server.
pub fn is_admin(state: &AppState, ctx: &RequestCtx) -> bool {
    state
        .decide(&ctx.caller, Action::Admin, &Resource::System, false)
        .allowed
}

/// Decides a read of a secret: by the standing policies first, then, when they refuse,
/// again with `context.grant` for a live grant of the caller that covers the secret. The
/// audit slot gets the decision and, for a read under a grant, the grant's facts.
///
/// A read refused without a grant that a grant would allow fails with `grant_required`,
/// whose message says how to ask for one.
pub async fn authorize_read(
    state: &SharedState,
    ctx: &RequestCtx,
    resource: &Resource,
    vault: &str,
    secret: &str,
) -> ApiResult<()> {
    let standing = state.decide(&ctx.caller, Action::Read, resource, false);
    if standing.allowed {
        state.record_decision(ctx, Action::Read, resource, standing)?;
        return Ok(());
    }
    let now = state.clock.now();
    let grants = state
        .store
        .live_grants(&ctx.caller.principal_id, now)
        .await?;
    // The most specific grant names the read: one for this secret before a vault-wide one,
    // then the one that lasts longest (the store lists them by expiry, latest first).
    let covering = |exact: bool| {
        grants.iter().find(|g| {
            g.resources
                .iter()
                .any(|r| r.covers(vault, secret) && (r.secret.is_some() || !exact))
        })
    };
    if let Some(grant) = covering(true).or_else(|| covering(false)) {
        let decision = state.decide(&ctx.caller, Action::Read, resource, true);
        if decision.allowed {
            ctx.slot.detail("grant", grant.id.clone());
            ctx.slot.detail("access_request", grant.request_id.clone());
            ctx.slot.detail("approved_by", grant.approved_by.clone());
            ctx.slot.detail("approval_reason", grant.reason.clone());
            if grant.kind == "break_glass" {
                ctx.slot.detail("break_glass", "true");
            }
        }
        state.record_decision(ctx, Action::Read, resource, decision)?;
        return Ok(());
    }
    let with_grant = state.decide(&ctx.caller, Action::Read, resource, true);
    let denied = state.record_decision(ctx, Action::Read, resource, standing);
    if denied.is_ok() || !with_grant.allowed {
        return denied.map(|_| ());
    }
    // A grant would allow the read. Say how to get one, if the caller can.
    let may = |action| state.decide(&ctx.caller, action, resource, false).allowed;
    let (may_request, may_break_glass) = (may(Action::Request), may(Action::BreakGlass));
    if !may_request && !may_break_glass {
        return denied.map(|_| ());
    }
    ctx.slot.detail("needs", "grant");
    let reference = SecretRef {
        vault: vault.into(),
        secret: Some(secret.into()),
        field: None,
        version: None,
    };
    let principal = ctx.caller.principal.uid_string();
    let message = if may_request {
        let longest = match state.store.vault_by_name(vault).await? {
            Some(row) => settings::load(state, &row.id)
                .await?
                .limits()
                .map(|l| l.max_grant)
                .unwrap_or(3600),
            None => 3600,
        };
        let duration = duration_text(longest.min(3600));
        format!(
            "{principal} needs approved access to read {reference}: ask for it with `lk request {reference} --for {duration} --reason \"...\"`, or add `--wait` to `lk run` or `lk read` to ask and wait for the approval"
        )
    } else {
        format!(
            "{principal} needs approved access to read {reference} and may not request it, but may break glass: `lk request {reference} --break-glass --for 15m --reason \"...\"` (approvers are notified, and every read is flagged)"
        )
    };
    Err(ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "grant_required",
        message,
    ))
}

/// Writes one audit event of the access workflow and waits until it is durable.
pub async fn append_event(
    state: &AppState,
    ctx: Option<&RequestCtx>,
    action: &str,
    resource: String,
    policies: Vec<String>,
    detail: BTreeMap<String, String>,
) -> ApiResult<()> {
    let record = AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: ctx
            .map(|c| c.request_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        principal: ctx
            .map(|c| c.caller.principal.uid_string())
            .unwrap_or_else(|| crate::jobs::SYSTEM_PRINCIPAL.to_string()),
        action: action.to_string(),
        resource,
        outcome: Outcome::Allowed,
        reason: None,
        policies,
        client_addr: ctx.and_then(|c| c.client_addr.clone()),
        token_id: ctx.map(|c| c.caller.token.accessor.clone()),
        detail,
    };
    state
        .audit
        .append(record)
        .await
        .map(|_| ())
        .map_err(|_| ApiError::audit_unavailable())
}

/// Returns the facts about a request that its audit events carry.
pub fn request_detail(request: &AccessRequestRow) -> BTreeMap<String, String> {
    let mut detail = BTreeMap::new();
    detail.insert("access_request".to_string(), request.id.clone());
    detail.insert("requester".to_string(), request.requester.clone());
    detail.insert(
        "resources".to_string(),
        resource_refs(&request.resources).join(","),
    );
    detail.insert("duration".to_string(), duration_text(request.duration));
    detail.insert("request_reason".to_string(), request.reason.clone());
    if let Some(ticket) = &request.ticket {
        detail.insert("ticket".to_string(), ticket.clone());
    }
    detail
}

/// Returns the facts about a grant that its audit events carry.
pub fn grant_detail(grant: &GrantRow) -> BTreeMap<String, String> {
    let mut detail = BTreeMap::new();
    detail.insert("grant".to_string(), grant.id.clone());
    detail.insert("access_request".to_string(), grant.request_id.clone());
    detail.insert("holder".to_string(), grant.principal.clone());
    detail.insert(
        "resources".to_string(),
        resource_refs(&grant.resources).join(","),
    );
    detail.insert("approved_by".to_string(), grant.approved_by.clone());
    detail.insert("approval_reason".to_string(), grant.reason.clone());
    detail.insert(
        "expires_at".to_string(),
        crate::extract::format_unix(grant.expires_at),
    );
    if grant.kind == "break_glass" {
        detail.insert("break_glass".to_string(), "true".to_string());
    }
    detail
}

/// Tells the configured webhooks about a step. Never blocks and never fails: delivery
/// happens in the background.
pub fn announce(
    state: &AppState,
    kind: AccessEventKind,
    request: &AccessRequestRow,
    actor: Option<&str>,
    comment: Option<&str>,
    grant: Option<&GrantRow>,
) {
    state.notifier.notify(AccessEvent {
        kind,
        request_id: request.id.clone(),
        requester: request.requester.clone(),
        resources: resource_refs(&request.resources),
        duration_secs: u64::try_from(request.duration).unwrap_or(0),
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        actor: actor.map(str::to_string),
        comment: comment.map(str::to_string),
        grant_id: grant
            .map(|g| g.id.clone())
            .or_else(|| request.grant_id.clone()),
        approvals: u32::try_from(request.approvals()).unwrap_or(0),
        approvals_required: u32::try_from(request.approvals_required).unwrap_or(1),
        time: format_time(chrono::Utc::now()),
    });
}
