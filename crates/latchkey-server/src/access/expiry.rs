//! The background job that ends access requests left pending past their expiry, and
//! records grants that ran out. Reads already stop at a grant's expiry without it: this
//! job writes the audit events and notifies the webhooks.

use latchkey_core::audit::format_time;

use super::{
    AccessEventKind, announce, append_event, grant_detail, grant_uid, request_detail, request_uid,
};
use crate::jobs::Lease;
use crate::state::AppState;

/// Items handled per batch, between lease renewals.
const BATCH: u32 = 100;

/// The audit action of a request that expired undecided.
pub const REQUEST_EXPIRE_ACTION: &str = "request.expire";
/// The audit action of a grant that ran out.
pub const GRANT_EXPIRE_ACTION: &str = "grant.expire";

/// Runs one pass under the job lease.
pub async fn run(state: &AppState, lease: &Lease) -> anyhow::Result<usize> {
    let mut handled = 0;
    loop {
        let batch = sweep_once(state).await?;
        handled += batch;
        if batch < BATCH as usize || !lease.renew(state).await? {
            return Ok(handled);
        }
    }
}

/// Expires up to one batch of requests and records up to one batch of grant expiries, at
/// the server clock's now. Returns how many it handled.
pub async fn sweep_once(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let expired = state.store.expire_access_requests(now, BATCH).await?;
    for request in &expired {
        let mut detail = request_detail(request);
        detail.insert(
            "expired_at".into(),
            format_time(
                chrono::DateTime::from_timestamp(request.expires_at, 0).unwrap_or_default(),
            ),
        );
        detail.insert(
            "approvals".into(),
            format!("{}/{}", request.approvals(), request.approvals_required),
        );
        append_event(
            state,
            None,
            REQUEST_EXPIRE_ACTION,
            request_uid(&request.id),
            vec!["builtin:request_expiry".into()],
            detail,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        announce(state, AccessEventKind::Expired, request, None, None, None);
    }
    let grants = state.store.unrecorded_grant_expiries(now, BATCH).await?;
    for grant in &grants {
        // The event comes first: a pass that stops between the two writes the event again
        // on the next pass rather than never.
        append_event(
            state,
            None,
            GRANT_EXPIRE_ACTION,
            grant_uid(&grant.id),
            vec!["builtin:grant_expiry".into()],
            grant_detail(grant),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        state
            .store
            .mark_grant_expiry_recorded(&grant.id, now)
            .await?;
    }
    Ok(expired.len().max(grants.len()))
}
