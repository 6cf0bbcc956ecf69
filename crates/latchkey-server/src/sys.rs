//! Health, initialization, unseal and seal.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_core::crypto::Key256;
use latchkey_core::policy::{Action, ROOT_USER, Resource};
use latchkey_core::token::{RawToken, TokenKind, new_accessor};
use latchkey_core::unseal::{self, PassphraseParams};
use latchkey_store::{PrincipalRow, TokenRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult, current_request_id};
use crate::extract::ApiJson;
use crate::keyring::{SealConfig, SealError, UnsealProgress, new_root_key};
use crate::secrets::SecretText;
use crate::state::{AppState, RequestCtx, SharedState};

/// The root token's lifetime: it does not expire in practice, but can be revoked.
const ROOT_TOKEN_TTL: i64 = 10 * 365 * 24 * 3600;
pub const ROOT_PRINCIPAL_ID: &str = "prn_root";

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, `storage_unavailable` (the database cannot be reached), `uninitialized`,
    /// `sealed` or `degraded` (the audit log cannot be written), all but `ok` with status
    /// 503. `sink_degraded` (status 200): the server works, but a streaming sink is failing.
    /// `notify_degraded` (status 200): the server works, but a notification webhook is
    /// failing.
    pub status: String,
    pub storage_reachable: bool,
    pub initialized: bool,
    pub sealed: bool,
    pub audit_writable: bool,
    pub audit_last_seq: u64,
    /// Streaming copies of the audit log and their state.
    pub audit_sinks: Vec<crate::audit_sinks::SinkHealth>,
    /// Access-request notification webhooks and their state.
    pub notify: Vec<crate::notify::WebhookHealth>,
    pub version: String,
}

#[derive(Serialize, ToSchema)]
pub struct SealStatusResponse {
    pub initialized: bool,
    pub sealed: bool,
    /// `key_file`, `passphrase` or `shamir`; absent before init.
    pub mode: Option<String>,
    pub progress: u8,
    pub threshold: u8,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitBody {
    /// Protect the root key with this passphrase (Argon2id).
    #[schema(value_type = Option<String>)]
    pub passphrase: Option<SecretText>,
    /// Split the unseal key into this many Shamir shares.
    pub shares: Option<u8>,
    /// How many shares unseal the server.
    pub threshold: Option<u8>,
}

#[derive(Serialize, ToSchema)]
pub struct InitResponse {
    /// The root token, shown once.
    #[schema(value_type = String)]
    pub root_token: SecretText,
    /// The unseal key shares, shown once (Shamir mode only).
    #[schema(value_type = Vec<String>)]
    pub shares: Vec<SecretText>,
    pub mode: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealBody {
    /// The passphrase, or one unseal key share.
    #[schema(value_type = Option<String>)]
    pub key: Option<SecretText>,
    /// Discard the shares submitted so far.
    #[serde(default)]
    pub reset: bool,
}

/// Protection for a new deployment's root key.
pub enum UnsealMethod {
    KeyFile(Key256),
    Passphrase(Zeroizing<String>),
    Shamir { shares: u8, threshold: u8 },
}

pub struct Initialized {
    pub root_token: RawToken,
    pub shares: Vec<Zeroizing<String>>,
    /// The root key, to unseal at once (dev mode) or drop (production, unsealed later).
    pub root_key: Key256,
}

/// Creates the root key, the seal configuration, the root principal and the root token.
pub async fn initialize(state: &AppState, method: UnsealMethod) -> ApiResult<Initialized> {
    let seal_error = |e: SealError| ApiError::internal(e);
    let (root_key, config, shares) = match method {
        UnsealMethod::KeyFile(unseal_key) => {
            let (root, wrapped_root_key) = new_root_key(&unseal_key).map_err(seal_error)?;
            (root, SealConfig::KeyFile { wrapped_root_key }, Vec::new())
        }
        UnsealMethod::Passphrase(passphrase) => {
            let params = PassphraseParams::generate().map_err(ApiError::internal)?;
            let unseal_key = unseal::derive_key(passphrase.as_bytes(), &params)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let (root, wrapped_root_key) = new_root_key(&unseal_key).map_err(seal_error)?;
            (
                root,
                SealConfig::Passphrase {
                    wrapped_root_key,
                    params,
                },
                Vec::new(),
            )
        }
        UnsealMethod::Shamir { shares, threshold } => {
            let unseal_key = Key256::generate().map_err(ApiError::internal)?;
            let split = unseal::split_key(&unseal_key, shares, threshold)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let (root, wrapped_root_key) = new_root_key(&unseal_key).map_err(seal_error)?;
            let texts = split.iter().map(|s| s.encode()).collect();
            (
                root,
                SealConfig::Shamir {
                    wrapped_root_key,
                    shares,
                    threshold,
                },
                texts,
            )
        }
    };
    let config_json = serde_json::to_string(&config).map_err(ApiError::internal)?;

    let now = chrono::Utc::now().timestamp();
    let root = PrincipalRow {
        id: ROOT_PRINCIPAL_ID.into(),
        kind: "user".into(),
        name: ROOT_USER.into(),
        active: true,
        groups: Vec::new(),
        created_at: now,
    };
    let root_token = RawToken::generate(TokenKind::Token).map_err(ApiError::internal)?;
    let token_row = TokenRow {
        accessor: new_accessor().map_err(ApiError::internal)?,
        hash: root_token.hash().0,
        principal_id: root.id.clone(),
        kind: "root".into(),
        created_at: now,
        ttl: ROOT_TOKEN_TTL,
        expires_at: now + ROOT_TOKEN_TTL,
        max_expires_at: now + ROOT_TOKEN_TTL,
        revoked_at: None,
        created_by: None,
    };
    // The event is durable before anything is initialized, so no deployment exists whose
    // creation went unrecorded; a failure afterwards is recorded as a second event.
    let mut detail = BTreeMap::new();
    detail.insert("mode".to_string(), config.mode().to_string());
    detail.insert(
        "root_token_accessor".to_string(),
        token_row.accessor.clone(),
    );
    record_unauthenticated(state, "init", Outcome::Allowed, None, detail.clone()).await?;
    if let Err(error) = state
        .store
        .initialize(&config_json, &root, &token_row)
        .await
    {
        let reason = Some(error_code(&error).to_string());
        let _ = record_unauthenticated(state, "init", Outcome::Failed, reason, detail).await;
        return Err(error.into());
    }
    crate::audit_log::load_or_create_signer(state.store.as_ref(), &root_key)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(mode = config.mode(), "initialized");
    Ok(Initialized {
        root_token,
        shares,
        root_key,
    })
}

fn error_code(error: &latchkey_store::StoreError) -> &'static str {
    match error {
        latchkey_store::StoreError::AlreadyInitialized => "already_initialized",
        _ => "store_failed",
    }
}

/// Audits an operation that has no authenticated caller (init, unseal).
async fn record_unauthenticated(
    state: &AppState,
    action: &str,
    outcome: Outcome,
    reason: Option<String>,
    detail: BTreeMap<String, String>,
) -> ApiResult<()> {
    let record = AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: current_request_id(),
        principal: "anonymous".into(),
        action: action.into(),
        resource: Resource::System.uid_string(),
        outcome,
        reason,
        policies: Vec::new(),
        client_addr: None,
        token_id: None,
        detail,
    };
    state
        .audit
        .append(record)
        .await
        .map_err(|_| ApiError::audit_unavailable())?;
    Ok(())
}

pub async fn load_seal_config(state: &AppState) -> ApiResult<Option<SealConfig>> {
    match state.store.seal_config().await? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(ApiError::internal),
    }
}

/// Server health: 200 when initialized, unsealed and able to write its audit log.
#[utoipa::path(get, path = "/v1/sys/health", tag = "sys",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(State(state): State<SharedState>) -> (StatusCode, Json<HealthResponse>) {
    let seal_config = state.store.seal_config().await;
    let storage_reachable = seal_config.is_ok();
    let initialized = matches!(seal_config, Ok(Some(_)));
    let sealed = state.keyring.is_sealed();
    let audit_writable = state.audit.is_healthy();
    let audit_sinks = state.audit.feed().health();
    let sink_degraded = audit_sinks.iter().any(|s| s.state == "degraded");
    let notify = state.notifier.health();
    let notify_degraded = notify.iter().any(|w| w.state == "failing");
    let status = if !storage_reachable {
        "storage_unavailable"
    } else if !initialized {
        "uninitialized"
    } else if sealed {
        "sealed"
    } else if !audit_writable {
        "degraded"
    } else if sink_degraded {
        // A failing copy must not take the server out of a load balancer's rotation: the
        // primary log still records every request.
        "sink_degraded"
    } else if notify_degraded {
        // Requests and approvals still work. Only their notifications are lost.
        "notify_degraded"
    } else {
        "ok"
    };
    let code = if matches!(status, "ok" | "sink_degraded" | "notify_degraded") {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(HealthResponse {
            status: status.into(),
            storage_reachable,
            initialized,
            sealed,
            audit_writable,
            audit_last_seq: state.audit.last_seq(),
            audit_sinks,
            notify,
            version: env!("CARGO_PKG_VERSION").into(),
        }),
    )
}

/// Shows whether the server is initialized and sealed, and the progress of a Shamir unseal.
#[utoipa::path(get, path = "/v1/sys/seal-status", tag = "sys", responses((status = 200, body = SealStatusResponse)))]
pub async fn seal_status(State(state): State<SharedState>) -> ApiResult<Json<SealStatusResponse>> {
    let config = load_seal_config(&state).await?;
    let progress = state.keyring.progress(config.as_ref());
    Ok(Json(SealStatusResponse {
        initialized: config.is_some(),
        sealed: progress.sealed,
        mode: config.as_ref().map(|c| c.mode().to_string()),
        progress: progress.progress,
        threshold: progress.threshold,
    }))
}

/// Initialize a new server: creates the root key and returns the root token (and shares)
/// once. The server stays sealed until `unseal`.
#[utoipa::path(post, path = "/v1/sys/init", tag = "sys", request_body = InitBody,
    responses((status = 200, body = InitResponse), (status = 409, body = crate::error::ErrorBody)))]
pub async fn init(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<InitBody>,
) -> ApiResult<Json<InitResponse>> {
    if load_seal_config(&state).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_initialized",
            "the server is already initialized",
        ));
    }
    let method = match (body.passphrase, body.shares, body.threshold) {
        (Some(passphrase), None, None) => UnsealMethod::Passphrase(passphrase.0),
        (None, Some(shares), Some(threshold)) => UnsealMethod::Shamir { shares, threshold },
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(ApiError::bad_request(
                "give both `shares` and `threshold`, such as 5 and 3",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either `passphrase`, or `shares` and `threshold`, but not both",
            ));
        }
    };
    let mode = match method {
        UnsealMethod::Passphrase(_) => "passphrase",
        _ => "shamir",
    };
    let initialized = initialize(&state, method).await?;
    Ok(Json(InitResponse {
        root_token: SecretText(Zeroizing::new(initialized.root_token.expose().to_string())),
        shares: initialized.shares.into_iter().map(SecretText).collect(),
        mode: mode.into(),
    }))
}

/// Submit the passphrase or one share. Returns the progress toward the threshold.
#[utoipa::path(post, path = "/v1/sys/unseal", tag = "sys", request_body = UnsealBody,
    responses((status = 200, body = UnsealProgress), (status = 400, body = crate::error::ErrorBody)))]
pub async fn unseal(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<UnsealBody>,
) -> ApiResult<Json<UnsealProgress>> {
    let config = load_seal_config(&state).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_initialized",
            "the server is not initialized: run `lk operator init` first",
        )
    })?;
    if body.reset {
        state.keyring.reset_progress();
        return Ok(Json(state.keyring.progress(Some(&config))));
    }
    if !state.keyring.is_sealed() {
        return Ok(Json(state.keyring.progress(Some(&config))));
    }
    let key = body.key.ok_or_else(|| {
        ApiError::bad_request("give `key`: the passphrase or one unseal key share")
    })?;
    match state.keyring.submit(&config, &key.0) {
        Ok(progress) => {
            let mut detail = BTreeMap::new();
            detail.insert(
                "progress".to_string(),
                format!("{}/{}", progress.progress, progress.threshold),
            );
            let action = if progress.sealed {
                "unseal_share"
            } else {
                "unseal"
            };
            if let Err(error) =
                record_unauthenticated(&state, action, Outcome::Allowed, None, detail).await
            {
                // An unseal that cannot be recorded does not happen.
                if !progress.sealed {
                    state.keyring.seal();
                }
                return Err(error);
            }
            if !progress.sealed {
                tracing::info!("unsealed");
                // Loads the audit signing key, creating it for a deployment that has none.
                if let Err(error) = state.audit.signer().await {
                    tracing::error!(%error, "cannot load the audit signing key; checkpoints wait");
                }
            }
            Ok(Json(progress))
        }
        Err(error) => {
            tracing::warn!(%error, "unseal attempt failed");
            record_unauthenticated(
                &state,
                "unseal",
                Outcome::Failed,
                Some("unseal_failed".into()),
                BTreeMap::new(),
            )
            .await?;
            Err(ApiError::bad_request(format!("unseal failed: {error}")))
        }
    }
}

/// Seal the server: forget all keys in memory (action `admin` on `System`).
#[utoipa::path(post, path = "/v1/sys/seal", tag = "sys", responses((status = 204)))]
pub async fn seal(State(state): State<SharedState>, ctx: RequestCtx) -> ApiResult<StatusCode> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.with_state(|s| s.action = Some("seal".into()));
    state.commit_audit(&ctx).await?;
    state.keyring.seal();
    state.tokens.clear();
    tracing::info!("sealed");
    Ok(StatusCode::NO_CONTENT)
}
