//! Offboarding: deactivate a principal and revoke everything it holds, at once.
//!
//! Identity providers call this through SCIM (`active=false` by PATCH or PUT, or DELETE).
//! Revocation happens in one store transaction; see [`Store::offboard_principal`]. Each
//! revoked credential gets its own audit event.
//!
//! [`Store::offboard_principal`]: latchkey_store::Store::offboard_principal

use std::collections::BTreeSet;

use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_store::Offboarding;

use crate::error::{ApiError, ApiResult};
use crate::state::{RequestCtx, SharedState};

/// Deactivates `principal_id`, and in the same store transaction revokes its live tokens
/// and grants and cancels its pending access requests. Writes one audit event per revoked
/// token (`revoke_token`), grant (`revoke_grant`) and request (`cancel`), and clears the
/// token cache so the next request with any of the tokens gets 401.
///
/// The events for the tokens live before the transaction are durable before it runs, so
/// a failed audit write leaves the tokens live and the caller sees 503 and retries. A
/// token created between that listing and the transaction is revoked too, and its event
/// is written afterwards, like the events of grants and requests: their revocation only
/// takes access away, so it does not wait for the audit log.
pub async fn offboard(
    state: &SharedState,
    ctx: &RequestCtx,
    principal_id: &str,
    principal_uid: &str,
    reason: &str,
) -> ApiResult<Offboarding> {
    let now = chrono::Utc::now().timestamp();
    let live: Vec<String> = state
        .store
        .list_tokens(Some(principal_id))
        .await?
        .into_iter()
        .filter(|t| t.revoked_at.is_none() && t.expires_at > now)
        .map(|t| t.accessor)
        .collect();
    for accessor in &live {
        append_revocation(state, ctx, principal_uid, accessor, reason).await?;
    }

    let result = state.store.offboard_principal(principal_id, now).await?;
    state.tokens.clear();

    for grant in &result.revoked_grants {
        let mut detail = crate::access::grant_detail(grant);
        detail.insert("operation".into(), "offboard".into());
        detail.insert("why".into(), reason.to_string());
        crate::access::append_event(
            state,
            Some(ctx),
            "revoke_grant",
            crate::access::grant_uid(&grant.id),
            vec!["builtin:offboarding".into()],
            detail,
        )
        .await?;
        if let Some(request) = state.store.access_request(&grant.request_id).await? {
            crate::access::announce(
                state,
                crate::notify::AccessEventKind::Revoked,
                &request,
                Some(&ctx.caller.principal.uid_string()),
                Some(reason),
                Some(grant),
            );
        }
    }
    for request in &result.cancelled_requests {
        let mut detail = crate::access::request_detail(request);
        detail.insert("operation".into(), "offboard".into());
        detail.insert("why".into(), reason.to_string());
        crate::access::append_event(
            state,
            Some(ctx),
            "cancel",
            crate::access::request_uid(&request.id),
            vec!["builtin:offboarding".into()],
            detail,
        )
        .await?;
    }

    let announced: BTreeSet<&String> = live.iter().collect();
    for accessor in result
        .revoked_tokens
        .iter()
        .filter(|a| !announced.contains(a))
    {
        append_revocation(state, ctx, principal_uid, accessor, reason).await?;
    }
    tracing::info!(
        principal.id = %principal_id,
        tokens = result.revoked_tokens.len(),
        grants = result.revoked_grants.len(),
        requests = result.cancelled_requests.len(),
        reason,
        "principal offboarded"
    );
    Ok(result)
}

async fn append_revocation(
    state: &SharedState,
    ctx: &RequestCtx,
    principal_uid: &str,
    accessor: &str,
    reason: &str,
) -> ApiResult<()> {
    let record = AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: ctx.request_id.clone(),
        principal: ctx.caller.principal.uid_string(),
        action: "revoke_token".into(),
        resource: format!("Token::\"{accessor}\""),
        outcome: Outcome::Allowed,
        reason: None,
        policies: vec!["builtin:offboarding".into()],
        client_addr: ctx.client_addr.clone(),
        token_id: Some(ctx.caller.token.accessor.clone()),
        detail: [
            ("operation".to_string(), "offboard".to_string()),
            ("holder".to_string(), principal_uid.to_string()),
            ("why".to_string(), reason.to_string()),
        ]
        .into_iter()
        .collect(),
    };
    state
        .audit
        .append(record)
        .await
        .map_err(|_| ApiError::audit_unavailable())?;
    Ok(())
}
