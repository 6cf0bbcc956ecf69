//! Background jobs that run on one server at a time, however many share the database.
//!
//! Every server runs the same loop. Each tick it tries to take each job's lease in the
//! database; the server that gets it runs the job and then releases the lease. A server
//! killed mid-job keeps its lease only until [`LEASE_TTL`] runs out, and then another
//! server takes the job over. Jobs claim their items one at a time in the database, so a
//! job that stops halfway or is taken over handles each item once.
//!
//! Adding a job takes one async function and one entry in [`JOBS`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_store::{AuditFilter, ExpiryClaim, StoreResult};

use crate::state::AppState;

/// How often each server looks for due jobs.
const TICK: Duration = Duration::from_secs(1);
/// How long a lease lasts without renewal. Jobs renew it after each batch, so a batch
/// must finish well within it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// Tokens claimed per batch by the token expiry job.
const EXPIRY_BATCH: u32 = 100;
/// Age in seconds after which a claim whose expiry was never recorded is taken again: its
/// server stopped between claiming the token and marking it recorded.
const STALE_CLAIM_SECS: i64 = 60;

/// The principal recorded in audit events of background jobs.
pub const SYSTEM_PRINCIPAL: &str = "system";
/// The audit action recorded once per expired token.
pub const TOKEN_EXPIRE_ACTION: &str = "token.expire";

type JobFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<usize>> + Send + 'a>>;

/// A background job: its lease name and the function that runs it once, returning how
/// many items it handled.
pub struct Job {
    pub name: &'static str,
    pub run: for<'a> fn(&'a AppState, &'a Lease) -> JobFuture<'a>,
}

/// Every background job, in the order each tick runs them.
pub const JOBS: &[Job] = &[
    Job {
        name: "token_expiry",
        run: |state, lease| Box::pin(record_token_expiry(state, lease)),
    },
    Job {
        name: "access_expiry",
        run: |state, lease| Box::pin(crate::access::expiry::run(state, lease)),
    },
];

/// A job's lease while the job runs.
pub struct Lease {
    job: &'static str,
    holder: String,
}

impl Lease {
    /// Extends the lease by [`LEASE_TTL`]. Returns false when it was lost, because it
    /// expired and another server took it: the job should stop.
    pub async fn renew(&self, state: &AppState) -> StoreResult<bool> {
        state
            .store
            .renew_lease(self.job, &self.holder, LEASE_TTL)
            .await
    }
}

/// Returns an id for this server process, unique across servers and restarts.
pub fn new_holder_id() -> String {
    format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple())
}

/// Starts the loop that runs due jobs every tick while the server is unsealed.
pub fn spawn(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let holder = new_holder_id();
    tracing::debug!(%holder, "background jobs started");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = vec![false; JOBS.len()];
        loop {
            ticks.tick().await;
            // A sealed server stops acting until an operator unseals it.
            if state.keyring.is_sealed() {
                continue;
            }
            for (job, failing) in JOBS.iter().zip(failing.iter_mut()) {
                match run_job(&state, job, &holder).await {
                    Ok(items) => {
                        if *failing {
                            *failing = false;
                            tracing::info!(job = job.name, "background job works again");
                        }
                        if items > 0 {
                            tracing::info!(job = job.name, items, "background job done");
                        }
                    }
                    // Logged once per outage rather than every tick.
                    Err(error) if !*failing => {
                        *failing = true;
                        tracing::warn!(job = job.name, error = %format!("{error:#}"), "background job failed; retrying every second");
                    }
                    Err(_) => {}
                }
            }
        }
    })
}

/// Runs `job` once when `holder` can take its lease; returns the items it handled, 0 when
/// another server holds the lease.
///
/// # Errors
/// The job's error, or the store's when the lease cannot be taken.
pub async fn run_job(state: &AppState, job: &Job, holder: &str) -> anyhow::Result<usize> {
    if !state.store.take_lease(job.name, holder, LEASE_TTL).await? {
        return Ok(0);
    }
    let lease = Lease {
        job: job.name,
        holder: holder.to_string(),
    };
    let result = (job.run)(state, &lease).await;
    // Releasing lets the next tick of any server run the job; a failed release only makes
    // the others wait for the lease to expire.
    if let Err(error) = state.store.release_lease(job.name, holder).await {
        tracing::debug!(job = job.name, %error, "releasing a job lease failed");
    }
    result
}

/// Records one `token.expire` audit event for each token whose expiry passed, and marks the
/// token so that no server records it again.
///
/// The event is appended before the mark is set. When a server stops between the two, the
/// claim goes stale, and the server that claims the token again first looks the event up in
/// the audit log, so the token still gets exactly one event.
async fn record_token_expiry(state: &AppState, lease: &Lease) -> anyhow::Result<usize> {
    let mut recorded = 0;
    loop {
        let now = chrono::Utc::now().timestamp();
        let claims = state
            .store
            .claim_expired_tokens(now, now - STALE_CLAIM_SECS, EXPIRY_BATCH)
            .await?;
        if claims.is_empty() {
            return Ok(recorded);
        }
        for claim in &claims {
            if !(claim.reclaimed && expiry_event_exists(state, &claim.accessor).await?) {
                let record = token_expiry_record(state, claim).await?;
                state.audit.append(record).await?;
                recorded += 1;
            }
            state
                .store
                .mark_expiry_recorded(&claim.accessor, chrono::Utc::now().timestamp())
                .await?;
        }
        if !lease.renew(state).await? {
            // Another server took the job over; it continues with the unclaimed tokens.
            return Ok(recorded);
        }
    }
}

fn token_resource(accessor: &str) -> String {
    format!("Token::\"{accessor}\"")
}

/// Returns true when the audit log already contains the `token.expire` event of `accessor`.
///
/// NOTE: this scans the system principal's events, which is fine for the rare stale
/// claim it serves, but would be slow if stale claims became common.
async fn expiry_event_exists(state: &AppState, accessor: &str) -> StoreResult<bool> {
    // The closing quote of the resource makes the prefix match exact.
    let filter = AuditFilter {
        after: 0,
        limit: 1,
        principal: Some(SYSTEM_PRINCIPAL.to_string()),
        action: Some(TOKEN_EXPIRE_ACTION.to_string()),
        resource_prefix: Some(token_resource(accessor)),
        ..AuditFilter::default()
    };
    Ok(!state.store.search_audit(&filter).await?.is_empty())
}

async fn token_expiry_record(state: &AppState, claim: &ExpiryClaim) -> StoreResult<AuditRecord> {
    let owner = state
        .store
        .principal_by_id(&claim.principal_id)
        .await?
        .map(|p| crate::users::user_response(&p).principal)
        .unwrap_or_else(|| claim.principal_id.clone());
    let mut detail = std::collections::BTreeMap::new();
    detail.insert("principal".to_string(), owner);
    detail.insert(
        "expired_at".to_string(),
        crate::extract::format_unix(claim.expires_at),
    );
    Ok(AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: uuid::Uuid::new_v4().to_string(),
        principal: SYSTEM_PRINCIPAL.to_string(),
        action: TOKEN_EXPIRE_ACTION.to_string(),
        resource: token_resource(&claim.accessor),
        outcome: Outcome::Allowed,
        reason: None,
        policies: Vec::new(),
        client_addr: None,
        token_id: None,
        detail,
    })
}
