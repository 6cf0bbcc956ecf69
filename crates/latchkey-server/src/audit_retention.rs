//! Retention: recording written exports, and purging old events once they are safe to drop.
//!
//! With `[audit] retention = "400d"`, an event may be purged when all of these hold:
//!
//! 1. it is older than the retention period;
//! 2. an acknowledged export covers it. The CLI acknowledges a JSON Lines export after it
//!    wrote and fsynced the file, with the file's SHA-256 and the hashes of its first and
//!    last events, which the server compares with the stored chain;
//! 3. every streaming sink has delivered it (its cursor in the store is past it);
//! 4. the purge stops at a signed checkpoint P: events below P are deleted and event P is
//!    kept. The checkpoint signs P's hash, and P's hash covers its `prev_hash`, so the
//!    first kept event is anchored and `lk audit verify` starts there.
//!
//! The purge is an admin action, recorded in the audit log before any event is deleted.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::audit::{AuditEvent, format_time};
use latchkey_core::policy::{Action, Resource};
use latchkey_store::{AuditFilter, ExportRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::{RequestCtx, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportAckBody {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Number of events in the file; exports are gapless, so `last_seq - first_seq + 1`.
    pub events: u64,
    /// Hex SHA-256 of the file as written.
    pub sha256: String,
    /// The file's name, for people reading the record.
    pub file_name: String,
    /// `hash` of the first and last exported events.
    pub first_hash: String,
    pub last_hash: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ExportResponse {
    pub id: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
    pub sha256: String,
    pub file_name: String,
    /// Unix seconds.
    pub recorded_at: i64,
    pub recorded_by: String,
}

impl From<ExportRow> for ExportResponse {
    fn from(row: ExportRow) -> ExportResponse {
        ExportResponse {
            id: row.id,
            first_seq: row.first_seq,
            last_seq: row.last_seq,
            events: row.events,
            sha256: row.sha256,
            file_name: row.file_name,
            recorded_at: row.recorded_at,
            recorded_by: row.recorded_by,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ExportsResponse {
    pub exports: Vec<ExportResponse>,
}

async fn stored_event(state: &SharedState, seq: u64) -> ApiResult<Option<AuditEvent>> {
    let events = state.store.audit_events(seq.saturating_sub(1), 1).await?;
    Ok(events.into_iter().next().filter(|e| e.seq == seq))
}

/// Record that an export file covering `first_seq..=last_seq` was written (action `admin`
/// on `System`). Retention purges only events that a recorded export covers.
#[utoipa::path(post, path = "/v1/audit/exports", tag = "audit", request_body = ExportAckBody,
    responses((status = 201, body = ExportResponse), (status = 400, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn record_export(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<ExportAckBody>,
) -> ApiResult<(StatusCode, Json<ExportResponse>)> {
    if body.first_seq == 0 || body.first_seq > body.last_seq {
        return Err(ApiError::bad_request(format!(
            "the range {}..{} is invalid: `first_seq` must be at least 1 and at most `last_seq`",
            body.first_seq, body.last_seq
        )));
    }
    if body.events != body.last_seq - body.first_seq + 1 {
        return Err(ApiError::bad_request(format!(
            "`events` {} does not match the range {}..{}, which holds {} events; an export has no gaps",
            body.events,
            body.first_seq,
            body.last_seq,
            body.last_seq - body.first_seq + 1
        )));
    }
    let is_hex = |text: &str| text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(&body.sha256) {
        return Err(ApiError::bad_request(
            "`sha256` must be 64 hex characters: the SHA-256 of the export file",
        ));
    }
    if body.file_name.is_empty()
        || body.file_name.len() > 255
        || body.file_name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "`file_name` must be 1 to 255 characters without control characters",
        ));
    }
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("audit_export_record".into()));
    ctx.slot
        .detail("range", format!("{}..{}", body.first_seq, body.last_seq));
    ctx.slot.detail("sha256", body.sha256.to_lowercase());

    for (seq, hash, name) in [
        (body.first_seq, &body.first_hash, "first_hash"),
        (body.last_seq, &body.last_hash, "last_hash"),
    ] {
        let Some(event) = stored_event(&state, seq).await? else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "audit event {seq} is not in the store (purged or not yet written), so this export cannot be checked"
                ),
            ));
        };
        if !event.hash.eq_ignore_ascii_case(hash) {
            return Err(ApiError::bad_request(format!(
                "`{name}` does not match stored audit event {seq}; the file is not an export of this log"
            )));
        }
    }

    let mut row = ExportRow {
        id: 0,
        first_seq: body.first_seq,
        last_seq: body.last_seq,
        events: body.events,
        sha256: body.sha256.to_lowercase(),
        file_name: body.file_name,
        recorded_at: chrono::Utc::now().timestamp(),
        recorded_by: ctx.caller.principal.uid_string(),
    };
    state.commit_audit(&ctx).await?;
    row.id = state.store.record_export(&row).await?;
    tracing::info!(
        id = row.id,
        first = row.first_seq,
        last = row.last_seq,
        "recorded an audit export"
    );
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// List recorded exports, oldest first (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/audit/exports", tag = "audit",
    responses((status = 200, body = ExportsResponse)))]
pub async fn list_exports(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<ExportsResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("audit_read".into()));
    let exports = state.store.exports().await?;
    Ok(Json(ExportsResponse {
        exports: exports.into_iter().map(ExportResponse::from).collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// Only compute what would be purged. True when omitted.
    #[serde(default = "default_true")]
    pub dry_run: bool,
}

fn default_true() -> bool {
    true
}

/// The plan of a purge: its range and the rule that limits it. Every bound is a sequence
/// number, and the events below it may be purged by that rule.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PurgePlan {
    pub dry_run: bool,
    /// The configured retention, such as `400d`.
    pub retention: String,
    /// Events older than this time are past retention.
    pub cutoff: String,
    /// Lowest stored sequence number before the purge.
    pub first_seq: u64,
    pub head_seq: u64,
    /// First event past the retention cutoff.
    pub age_bound: u64,
    /// First event after the gapless run of exported events.
    pub export_bound: u64,
    /// First event some streaming sink has not delivered.
    pub sink_bound: u64,
    /// The signed checkpoint the purge stops at: events below it are deleted, it stays.
    /// 0 when nothing can be purged.
    pub purge_before: u64,
    /// Events deleted (or, in a dry run, that would be).
    pub events: u64,
    /// The rule that limits the purge, in words.
    pub limited_by: String,
}

/// Plan the purge of events past retention, and run it unless `dry_run` (action `admin`
/// on `System`).
#[utoipa::path(post, path = "/v1/audit/purge", tag = "audit", request_body = PurgeBody,
    responses((status = 200, body = PurgePlan), (status = 409, body = crate::error::ErrorBody)))]
pub async fn purge(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<PurgeBody>,
) -> ApiResult<Json<PurgePlan>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("audit_purge".into()));
    let Some((retention_text, retention)) = state.settings.audit_retention.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "retention_off",
            "audit retention is off, so nothing may be purged; set `[audit] retention`, such as `400d`, in the server config",
        ));
    };
    let mut plan = plan(&state, &retention_text, retention).await?;
    plan.dry_run = body.dry_run;
    ctx.slot.detail("dry_run", body.dry_run.to_string());
    ctx.slot
        .detail("purge_before", plan.purge_before.to_string());
    ctx.slot.detail("events", plan.events.to_string());
    if body.dry_run || plan.events == 0 {
        return Ok(Json(plan));
    }

    // The purge is on record before any event goes.
    state.commit_audit(&ctx).await?;
    let deleted = state.store.purge_audit_before(plan.purge_before).await?;
    tracing::info!(
        purge_before = plan.purge_before,
        deleted,
        "purged audit events past retention"
    );
    plan.events = deleted;
    Ok(Json(plan))
}

async fn plan(
    state: &SharedState,
    retention_text: &str,
    retention: std::time::Duration,
) -> ApiResult<PurgePlan> {
    let store = state.store.as_ref();
    let now = chrono::Utc::now();
    let cutoff = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .map(format_time)
        .unwrap_or_default();
    let head_seq = store.audit_head().await?.map_or(0, |(seq, _)| seq);
    let first_seq = store.audit_first_seq().await?.unwrap_or(0);

    // Event times follow sequence order closely but not exactly (a batch is chained in
    // arrival order), so the first event at or after the cutoff bounds the purge.
    let at_cutoff = store
        .search_audit(&AuditFilter {
            limit: 1,
            since: Some(cutoff.clone()),
            ..AuditFilter::default()
        })
        .await?;
    let age_bound = at_cutoff.first().map_or(head_seq + 1, |e| e.seq);

    let mut exports = store.exports().await?;
    exports.sort_by_key(|e| e.first_seq);
    let mut covered = first_seq.saturating_sub(1);
    for export in &exports {
        if export.first_seq <= covered + 1 {
            covered = covered.max(export.last_seq);
        }
    }
    let export_bound = covered + 1;

    let sink_bound = store
        .sink_cursors()
        .await?
        .iter()
        .map(|c| c.seq + 1)
        .min()
        .unwrap_or(u64::MAX);

    let limit = age_bound.min(export_bound).min(sink_bound);
    let mut checkpoint = 0;
    let mut after = 0;
    loop {
        let page = store.checkpoints(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for c in &page {
            if c.seq <= limit && c.seq > first_seq {
                checkpoint = c.seq;
            }
        }
        if after > limit {
            break;
        }
    }
    let limited_by = if checkpoint == 0 && limit > first_seq {
        "no signed checkpoint lies within the purgeable range yet".to_owned()
    } else if limit == age_bound {
        "retention: later events are not old enough".to_owned()
    } else if limit == export_bound {
        "exports: later events are not in a recorded export; run `lk audit export -o FILE`"
            .to_owned()
    } else {
        "streaming sinks: a sink has not delivered later events".to_owned()
    };
    let events = checkpoint.saturating_sub(first_seq);
    Ok(PurgePlan {
        dry_run: true,
        retention: retention_text.to_owned(),
        cutoff,
        first_seq,
        head_seq,
        age_bound,
        export_bound,
        sink_bound: sink_bound.min(head_seq + 1),
        purge_before: checkpoint,
        events,
        limited_by,
    })
}
