//! The access review report: who read which secret in a period, under which grant, what was
//! denied, which break-glass reads happened, and which standing permissions went unused.
//!
//! Grant facts come from the detail of each read event. The just-in-time grant workflow
//! writes these keys: `grant` (the grant id), `approved_by` (comma-separated principals),
//! `approval_reason` (the requester's reason) and `break_glass` (`true` for an emergency
//! read). Events without them leave those columns empty.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use latchkey_core::audit::{AuditEvent, Outcome, format_time, parse_time_bound};
use latchkey_core::policy::{
    AccessRequest, Action, PolicyEngine, Principal, PrincipalKind, RequestContext, Resource,
};
use latchkey_store::{AuditFilter, PrincipalRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::state::{RequestCtx, SharedState};

/// Events read per store query while building a report.
const PAGE: u32 = 10_000;
/// Principal excluded from unused-access findings: it may do everything by design.
const ROOT_PRINCIPAL: &str = r#"User::"root""#;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessReport {
    /// Start of the period (inclusive), RFC 3339.
    pub since: String,
    /// End of the period (exclusive), RFC 3339.
    pub until: String,
    pub generated_at: String,
    /// Sequence numbers of the first and last read events in the period; 0 when none.
    pub first_seq: u64,
    pub last_seq: u64,
    /// One entry per secret that exists or appears in the period, by vault then name.
    pub secrets: Vec<SecretAccess>,
    /// Principals whose policies allow reading a secret they did not read in the period.
    pub unused_access: Vec<UnusedAccess>,
    /// Principals left out of `unused_access`, with the reason.
    pub excluded_principals: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretAccess {
    /// The Cedar reference, such as `Secret::"prod/db"`.
    pub resource: String,
    /// Vault and secret name; empty when the secret no longer exists.
    pub vault: String,
    pub secret: String,
    pub reads: Vec<ReadSummary>,
    pub denied: Vec<DeniedSummary>,
    pub break_glass: Vec<BreakGlassUse>,
}

/// Allowed reads of one secret by one principal under one grant (or none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadSummary {
    pub principal: String,
    pub count: u64,
    pub first_time: String,
    pub last_time: String,
    /// The grant id, or empty for reads under standing policy.
    pub grant: String,
    pub approved_by: String,
    pub approval_reason: String,
    /// Policies that allowed the reads.
    pub policies: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeniedSummary {
    pub principal: String,
    pub count: u64,
    pub last_time: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassUse {
    pub seq: u64,
    pub time: String,
    pub principal: String,
    pub approval_reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnusedAccess {
    pub principal: String,
    pub resource: String,
    /// Policies that allow the read.
    pub policies: Vec<String>,
}

/// A secret as it exists now, for the least-privilege evaluation.
pub struct InventoryItem {
    pub vault: String,
    pub vault_tags: BTreeMap<String, String>,
    pub secret: String,
    pub tags: BTreeMap<String, String>,
}

impl InventoryItem {
    fn resource(&self) -> Resource {
        Resource::Secret {
            vault: self.vault.clone(),
            vault_tags: self.vault_tags.clone(),
            name: self.secret.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// Everything a report is built from.
pub struct ReportInput<'a> {
    pub since: String,
    pub until: String,
    pub now: chrono::DateTime<chrono::Utc>,
    /// Events in the period, in sequence order.
    pub events: &'a [AuditEvent],
    pub inventory: &'a [InventoryItem],
    pub principals: &'a [PrincipalRow],
    pub engine: &'a PolicyEngine,
}

#[derive(Default)]
struct SecretTally {
    reads: BTreeMap<(String, String), ReadSummary>,
    denied: BTreeMap<String, DeniedSummary>,
    break_glass: Vec<BreakGlassUse>,
}

/// Builds the report. Pure: the same input gives the same report.
pub fn build(input: &ReportInput<'_>) -> AccessReport {
    let mut tallies: BTreeMap<String, SecretTally> = BTreeMap::new();
    for item in input.inventory {
        tallies.entry(item.resource().uid_string()).or_default();
    }
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for event in input.events {
        let record = &event.record;
        if record.action != Action::Read.as_str() || !record.resource.starts_with("Secret::") {
            continue;
        }
        let tally = tallies.entry(record.resource.clone()).or_default();
        let detail = |key: &str| record.detail.get(key).cloned().unwrap_or_default();
        match record.outcome {
            Outcome::Allowed => {
                used.insert((record.principal.clone(), record.resource.clone()));
                let grant = detail("grant");
                let summary = tally
                    .reads
                    .entry((record.principal.clone(), grant.clone()))
                    .or_insert_with(|| ReadSummary {
                        principal: record.principal.clone(),
                        count: 0,
                        first_time: record.time.clone(),
                        last_time: record.time.clone(),
                        grant,
                        approved_by: String::new(),
                        approval_reason: String::new(),
                        policies: Vec::new(),
                    });
                summary.count += 1;
                summary.last_time = record.time.clone();
                merge_text(&mut summary.approved_by, &detail("approved_by"));
                merge_text(&mut summary.approval_reason, &detail("approval_reason"));
                for policy in &record.policies {
                    if !summary.policies.contains(policy) {
                        summary.policies.push(policy.clone());
                    }
                }
                if detail("break_glass") == "true" {
                    tally.break_glass.push(BreakGlassUse {
                        seq: event.seq,
                        time: record.time.clone(),
                        principal: record.principal.clone(),
                        approval_reason: detail("approval_reason"),
                    });
                }
            }
            Outcome::Denied => {
                let summary = tally
                    .denied
                    .entry(record.principal.clone())
                    .or_insert_with(|| DeniedSummary {
                        principal: record.principal.clone(),
                        count: 0,
                        last_time: record.time.clone(),
                    });
                summary.count += 1;
                summary.last_time = record.time.clone();
            }
            Outcome::Failed => {}
        }
    }

    let names: BTreeMap<String, (&str, &str)> = input
        .inventory
        .iter()
        .map(|item| {
            (
                item.resource().uid_string(),
                (item.vault.as_str(), item.secret.as_str()),
            )
        })
        .collect();
    let mut secrets: Vec<SecretAccess> = tallies
        .into_iter()
        .map(|(resource, tally)| {
            let (vault, secret) = names.get(&resource).copied().unwrap_or(("", ""));
            SecretAccess {
                vault: vault.to_owned(),
                secret: secret.to_owned(),
                resource,
                reads: tally.reads.into_values().collect(),
                denied: tally.denied.into_values().collect(),
                break_glass: tally.break_glass,
            }
        })
        .collect();
    // Existing secrets by vault and name; deleted ones (no names) after them.
    secrets.sort_by(|a, b| {
        (a.vault.is_empty(), &a.vault, &a.secret, &a.resource).cmp(&(
            b.vault.is_empty(),
            &b.vault,
            &b.secret,
            &b.resource,
        ))
    });

    let (unused_access, excluded_principals) = unused_reads(input, &used);
    AccessReport {
        since: input.since.clone(),
        until: input.until.clone(),
        generated_at: format_time(input.now),
        first_seq: input.events.first().map_or(0, |e| e.seq),
        last_seq: input.events.last().map_or(0, |e| e.seq),
        secrets,
        unused_access,
        excluded_principals,
    }
}

/// Adds `value` to a comma-separated list unless it is empty or already there.
fn merge_text(list: &mut String, value: &str) {
    if value.is_empty() || list.split(", ").any(|v| v == value) {
        return;
    }
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str(value);
}

/// Asks the policy engine, for every active principal and existing secret, whether a read
/// under standing policy (no grant, a user token, no MFA) would be allowed, and keeps the
/// allowed pairs that saw no allowed read in the period.
fn unused_reads(
    input: &ReportInput<'_>,
    used: &BTreeSet<(String, String)>,
) -> (Vec<UnusedAccess>, Vec<String>) {
    let context = RequestContext {
        token_kind: "user".into(),
        now: input.now.timestamp(),
        grant: false,
        mfa: false,
        duration: 0,
    };
    let mut findings = Vec::new();
    let mut excluded = Vec::new();
    for row in input.principals {
        let Some(kind) = principal_kind(&row.kind) else {
            excluded.push(format!("{} (unknown kind `{}`)", row.name, row.kind));
            continue;
        };
        let principal = Principal {
            kind,
            name: row.name.clone(),
            groups: row.groups.clone(),
        };
        let uid = principal.uid_string();
        if uid == ROOT_PRINCIPAL {
            excluded.push(format!("{uid} (may do everything by design)"));
            continue;
        }
        if !row.active {
            excluded.push(format!("{uid} (inactive)"));
            continue;
        }
        for item in input.inventory {
            let resource = item.resource();
            let decision = input.engine.decide(&AccessRequest {
                principal: &principal,
                action: Action::Read,
                resource: &resource,
                context: &context,
            });
            let resource_uid = resource.uid_string();
            if decision.allowed && !used.contains(&(uid.clone(), resource_uid.clone())) {
                findings.push(UnusedAccess {
                    principal: uid.clone(),
                    resource: resource_uid,
                    policies: decision.policies,
                });
            }
        }
    }
    findings.sort_by(|a, b| (&a.principal, &a.resource).cmp(&(&b.principal, &b.resource)));
    (findings, excluded)
}

fn principal_kind(text: &str) -> Option<PrincipalKind> {
    PrincipalKind::ALL.into_iter().find(|k| k.as_str() == text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Start of the period: RFC 3339, or a duration before now such as `7d` (the default).
    pub since: Option<String>,
    /// End of the period (exclusive), written like `since`; now by default.
    pub until: Option<String>,
}

/// The access review report for a period (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/reports/access", tag = "audit",
    params(("since" = Option<String>, Query, description = "RFC 3339 time or a duration before now; default 7d"),
        ("until" = Option<String>, Query, description = "RFC 3339 time or a duration before now; exclusive; default now")),
    responses((status = 200, body = AccessReport)))]
pub async fn access_report(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> ApiResult<Json<AccessReport>> {
    let now = chrono::Utc::now();
    let bound = |name: &str, text: &str| {
        parse_time_bound(text, now).map_err(|e| ApiError::bad_request(format!("`{name}`: {e}")))
    };
    let since = bound("since", query.since.as_deref().unwrap_or("7d"))?;
    let until = match query.until.as_deref() {
        Some(text) => bound("until", text)?,
        None => format_time(now),
    };
    if since >= until {
        return Err(ApiError::bad_request(format!(
            "`since` {since} is not before `until` {until}; give an earlier `since`"
        )));
    }
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .with_state(|s| s.action = Some("access_report".into()));

    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = state
            .store
            .search_audit(&AuditFilter {
                after,
                limit: PAGE,
                action: Some(Action::Read.as_str().into()),
                since: Some(since.clone()),
                until: Some(until.clone()),
                ..AuditFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page);
    }
    // NOTE: the least-privilege part makes one policy decision per principal and secret,
    // and the period's read events are held in memory, so very large deployments or long
    // periods make this request slow and large.
    let mut inventory = Vec::new();
    for vault in state.store.list_vaults().await? {
        for secret in state.store.list_secrets(&vault.id).await? {
            inventory.push(InventoryItem {
                vault: vault.name.clone(),
                vault_tags: vault.tags.clone(),
                secret: secret.name,
                tags: secret.tags,
            });
        }
    }
    let principals = state.store.list_principals().await?;
    let engine = state.engine();
    Ok(Json(build(&ReportInput {
        since,
        until,
        now,
        events: &events,
        inventory: &inventory,
        principals: &principals,
        engine: &engine,
    })))
}
