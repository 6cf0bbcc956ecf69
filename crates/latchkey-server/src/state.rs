//! Shared server state and the authorization step every handler goes through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_core::policy::{
    AccessRequest, Action, Decision, PolicyEngine, RequestContext, Resource,
};
use latchkey_store::Store;

use crate::audit_log::{AuditLog, CheckpointSettings};
use crate::auth::{Caller, TokenCache};
use crate::error::{ApiError, ApiResult};
use crate::identity::{AuthConfig, Identity, TokenLimits};
use crate::keyring::Keyring;
use crate::login::FailureLimiter;
use crate::notify::{Notifier, NotifyConfig};
use crate::secret_cache::SecretCache;

/// Server-wide settings that handlers read.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dev: bool,
    /// Default token lifetime, in seconds.
    pub default_token_ttl: u64,
    /// Maximum lifetime any token may reach through renewal, in seconds.
    pub max_token_ttl: u64,
    pub max_body_bytes: usize,
    /// When the audit writer signs a checkpoint (`[audit]` in the config file).
    pub audit_checkpoints: CheckpointSettings,
    /// Identity connectors from the config file (`[auth]`).
    pub auth: AuthConfig,
    /// `[audit] retention` as written and parsed; None keeps every event.
    pub audit_retention: Option<(String, std::time::Duration)>,
    /// Access-request notification webhooks (`[notify]`).
    pub notify: NotifyConfig,
    /// True when this server serves HTTPS itself; the approvals page then marks its
    /// cookies `Secure`.
    pub tls: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            dev: false,
            default_token_ttl: 3600,
            max_token_ttl: 24 * 3600,
            max_body_bytes: 1024 * 1024,
            audit_checkpoints: CheckpointSettings::default(),
            auth: AuthConfig::default(),
            audit_retention: None,
            notify: NotifyConfig::default(),
            tls: false,
        }
    }
}

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keyring: Keyring,
    pub policies: RwLock<Arc<PolicyEngine>>,
    /// SHA-256 over the stored policies the engine was built from.
    policy_fingerprint: std::sync::Mutex<[u8; 32]>,
    /// Lock held while the policies change, so that this server builds one engine at a time
    /// and never installs an engine built from older policies over a newer one.
    policy_changes: tokio::sync::Mutex<()>,
    /// Lock held while the connectors are listed and installed, so that a listing older
    /// than the installed one never replaces it.
    connector_changes: tokio::sync::Mutex<()>,
    pub tokens: TokenCache,
    pub secret_cache: SecretCache,
    pub audit: AuditLog,
    pub identity: Identity,
    pub login_failures: FailureLimiter,
    /// Sends access-request events to the `[notify]` webhooks.
    pub notifier: Notifier,
    pub settings: Settings,
    /// The time access requests and grants are judged by.
    pub clock: Clock,
}

/// Wall-clock time in unix seconds, which tests can move forward to reach an expiry
/// without sleeping through it.
#[derive(Default)]
pub struct Clock {
    offset: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves this server's clock `seconds` forward, for tests of expiry.
    pub fn advance(&self, seconds: i64) {
        self.offset
            .fetch_add(seconds, std::sync::atomic::Ordering::Relaxed);
    }
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub async fn new(store: Arc<dyn Store>, settings: Settings) -> anyhow::Result<AppState> {
        let keyring = Keyring::default();
        let audit = AuditLog::start(
            Arc::clone(&store),
            keyring.root_cell(),
            settings.audit_checkpoints,
        )
        .await?;
        let (engine, fingerprint) = load_policy_engine(store.as_ref()).await?;
        let identity = Identity::new(
            settings.auth.clone(),
            TokenLimits {
                default_ttl: settings.default_token_ttl,
                max_ttl: settings.max_token_ttl,
            },
        )?;
        identity.refresh(&store.list_connectors().await?);
        let notifier = Notifier::start(&settings.notify)?;
        Ok(AppState {
            store,
            keyring,
            policies: RwLock::new(Arc::new(engine)),
            policy_fingerprint: std::sync::Mutex::new(fingerprint),
            policy_changes: tokio::sync::Mutex::new(()),
            connector_changes: tokio::sync::Mutex::new(()),
            tokens: TokenCache::default(),
            secret_cache: SecretCache::default(),
            audit,
            identity,
            login_failures: FailureLimiter::default(),
            notifier,
            settings,
            clock: Clock::default(),
        })
    }

    pub fn engine(&self) -> Arc<PolicyEngine> {
        self.policies
            .read()
            .map(|e| Arc::clone(&e))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Waits until no other policy change runs on this server. Hold the guard while
    /// building an engine, storing the change and installing the engine with
    /// [`AppState::install_policies`].
    pub async fn policy_change(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.policy_changes.lock().await
    }

    /// Makes `engine`, built from `policies` (name and text), the one that decides from now
    /// on. Call it while holding the guard of [`AppState::policy_change`].
    pub fn install_policies(&self, engine: PolicyEngine, policies: &[(&str, &str)]) {
        let fingerprint = policy_fingerprint(policies.iter().copied());
        let previous = match self.policies.write() {
            Ok(mut guard) => std::mem::replace(&mut *guard, Arc::new(engine)),
            Err(_) => return,
        };
        if let Ok(mut guard) = self.policy_fingerprint.lock() {
            *guard = fingerprint;
        }
        // The engine replaced here is freed once the last request deciding with it ends.
        drop(previous);
    }

    /// Rebuilds the engine when the stored policies differ from the ones it was built from,
    /// which happens when another server on the same database changed them.
    pub async fn refresh_policies(&self) -> anyhow::Result<bool> {
        let _changing = self.policy_change().await;
        let rows = self.store.list_policies().await?;
        let policies: Vec<(&str, &str)> = rows
            .iter()
            .map(|p| (p.name.as_str(), p.text.as_str()))
            .collect();
        let fingerprint = policy_fingerprint(policies.iter().copied());
        let current = self
            .policy_fingerprint
            .lock()
            .map(|f| *f)
            .unwrap_or([0; 32]);
        if fingerprint == current {
            return Ok(false);
        }
        let engine = self.engine().rebuild(policies.iter().copied())?;
        self.install_policies(engine, &policies);
        tracing::info!(
            policies = rows.len(),
            "policies changed in the store; reloaded"
        );
        Ok(true)
    }

    /// Rebuilds the identity connectors when the stored ones changed, on this server or
    /// another one on the same database.
    pub async fn refresh_connectors(&self) -> latchkey_store::StoreResult<bool> {
        let _changing = self.connector_changes.lock().await;
        let rows = self.store.list_connectors().await?;
        Ok(self.identity.refresh(&rows))
    }

    /// Decides whether the caller may take `action` on `resource`, and fills the request's
    /// audit slot with the decision. A deny becomes a `permission_denied` error.
    pub fn authorize(
        &self,
        ctx: &RequestCtx,
        action: Action,
        resource: &Resource,
        grant: bool,
    ) -> ApiResult<Decision> {
        let decision = self.decide(&ctx.caller, action, resource, grant);
        self.record_decision(ctx, action, resource, decision)
    }

    /// Fills the request's audit slot with a decision made by [`AppState::decide`]; a deny
    /// becomes a `permission_denied` error.
    pub fn record_decision(
        &self,
        ctx: &RequestCtx,
        action: Action,
        resource: &Resource,
        decision: Decision,
    ) -> ApiResult<Decision> {
        let principal = ctx.caller.principal.uid_string();
        let resource_uid = resource.uid_string();
        ctx.slot.prepare(
            action.as_str(),
            &resource_uid,
            if decision.allowed {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            decision.policies.clone(),
        );
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, "policy evaluation errors");
        }
        if decision.allowed {
            tracing::debug!(%principal, action = action.as_str(), resource = %resource_uid, policies = ?decision.policies, "allowed");
            Ok(decision)
        } else {
            tracing::debug!(%principal, action = action.as_str(), resource = %resource_uid, "denied");
            Err(ApiError::permission_denied(
                &principal,
                action.as_str(),
                &resource_uid,
            ))
        }
    }

    /// Decides without touching the audit slot (for filtering lists).
    pub fn decide(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        grant: bool,
    ) -> Decision {
        self.decide_in(caller, action, resource, grant, 0)
    }

    /// Decides with `duration` (seconds of access asked for) in the context, for the
    /// actions of access requests.
    pub fn decide_in(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        grant: bool,
        duration: i64,
    ) -> Decision {
        let context = RequestContext {
            token_kind: caller.token.kind.clone(),
            now: chrono::Utc::now().timestamp(),
            grant,
            mfa: false,
            duration,
        };
        let request = AccessRequest {
            principal: &caller.principal,
            action,
            resource,
            context: &context,
        };
        self.engine().decide(&request)
    }

    /// Writes the request's prepared audit event together with the token the request issues,
    /// in one durable commit.
    pub async fn commit_audit_with_token(
        &self,
        ctx: &RequestCtx,
        token: latchkey_store::TokenRow,
    ) -> ApiResult<()> {
        let record = ctx
            .slot
            .take_for_commit(ctx)
            .ok_or_else(|| ApiError::internal("a token was issued without an audit event"))?;
        self.audit
            .append_with_token(record, token)
            .await
            .map_err(|_| ApiError::audit_unavailable())?;
        Ok(())
    }

    /// Writes the request's prepared audit event now and waits until it is durable.
    /// Handlers call this before returning a secret and before changing state.
    pub async fn commit_audit(&self, ctx: &RequestCtx) -> ApiResult<()> {
        let record = ctx.slot.take_for_commit(ctx);
        match record {
            Some(record) => {
                self.audit
                    .append(record)
                    .await
                    .map_err(|_| ApiError::audit_unavailable())?;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

async fn load_policy_engine(store: &dyn Store) -> anyhow::Result<(PolicyEngine, [u8; 32])> {
    let rows = store.list_policies().await?;
    let policies = rows.iter().map(|p| (p.name.as_str(), p.text.as_str()));
    let engine = PolicyEngine::new(policies.clone())?;
    Ok((engine, policy_fingerprint(policies)))
}

/// SHA-256 over policies given as (name, text), in any order.
fn policy_fingerprint<'a>(policies: impl Iterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut sorted: Vec<(&str, &str)> = policies.collect();
    sorted.sort_unstable();
    let mut text = Vec::new();
    for (name, body) in sorted {
        for part in [name.as_bytes(), body.as_bytes()] {
            text.extend_from_slice(&(part.len() as u64).to_be_bytes());
            text.extend_from_slice(part);
        }
    }
    latchkey_core::crypto::sha256(&text)
}

/// Context of one authenticated request, passed to its handler.
#[derive(Clone)]
pub struct RequestCtx {
    pub caller: Caller,
    pub request_id: String,
    pub client_addr: Option<String>,
    pub slot: AuditSlot,
}

/// The audit event of one request, filled in as the handler decides.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<SlotState>>);

#[derive(Default)]
pub struct SlotState {
    pub action: Option<String>,
    pub resource: Option<String>,
    pub outcome: Option<Outcome>,
    pub policies: Vec<String>,
    pub detail: BTreeMap<String, String>,
    /// True once the handler committed the event itself.
    pub committed: bool,
}

impl AuditSlot {
    pub fn prepare(&self, action: &str, resource: &str, outcome: Outcome, policies: Vec<String>) {
        if let Ok(mut state) = self.0.lock() {
            state.action = Some(action.to_string());
            state.resource = Some(resource.to_string());
            state.outcome = Some(outcome);
            state.policies = policies;
        }
    }

    /// Adds a fact to the event (a field name, a version, a target id). Never a secret.
    pub fn detail(&self, key: &str, value: impl Into<String>) {
        if let Ok(mut state) = self.0.lock() {
            state.detail.insert(key.to_string(), value.into());
        }
    }

    fn take_for_commit(&self, ctx: &RequestCtx) -> Option<AuditRecord> {
        let mut state = self.0.lock().ok()?;
        if state.committed || state.action.is_none() {
            return None;
        }
        state.committed = true;
        Some(build_record(
            &state,
            ctx,
            state.outcome.unwrap_or(Outcome::Allowed),
            None,
        ))
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&mut SlotState) -> T) -> Option<T> {
        self.0.lock().ok().map(|mut s| f(&mut s))
    }
}

pub fn build_record(
    state: &SlotState,
    ctx: &RequestCtx,
    outcome: Outcome,
    reason: Option<String>,
) -> AuditRecord {
    AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: ctx.request_id.clone(),
        principal: ctx.caller.principal.uid_string(),
        action: state.action.clone().unwrap_or_default(),
        resource: state.resource.clone().unwrap_or_default(),
        outcome,
        reason,
        policies: state.policies.clone(),
        client_addr: ctx.client_addr.clone(),
        token_id: Some(ctx.caller.token.accessor.clone()),
        detail: state.detail.clone(),
    }
}
