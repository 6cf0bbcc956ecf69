//! `/v1/scim/tokens`: admins create, list and revoke the tokens an identity provider uses
//! on `/scim/v2`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::duration::parse_duration;
use latchkey_core::policy::{Action, Resource};
use latchkey_core::token::{RawToken, TokenKind, new_accessor};
use latchkey_store::{ScimTokenRow, StoreError};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, format_unix};
use crate::secrets::SecretText;
use crate::state::{RequestCtx, SharedState};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateScimTokenBody {
    /// Lifetime such as `90d`; without it the token lasts until revoked.
    pub ttl: Option<String>,
}

#[derive(Serialize)]
pub struct CreatedScimTokenResponse {
    /// The token, shown once; only its hash is stored.
    pub token: SecretText,
    pub accessor: String,
    pub expires_at: Option<String>,
}

#[derive(Serialize)]
pub struct ScimTokenResponse {
    pub accessor: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub created_by: String,
}

#[derive(Serialize)]
pub struct ScimTokenListResponse {
    pub tokens: Vec<ScimTokenResponse>,
}

/// Create a SCIM token (action `admin` on `System`).
pub async fn create(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<CreateScimTokenBody>,
) -> ApiResult<(StatusCode, Json<CreatedScimTokenResponse>)> {
    let ttl = match &body.ttl {
        Some(text) => {
            let duration =
                parse_duration(text).map_err(|e| ApiError::bad_request(format!("`ttl`: {e}")))?;
            if duration.is_zero() {
                return Err(ApiError::bad_request(
                    "`ttl` must be longer than zero, such as `90d`",
                ));
            }
            Some(
                i64::try_from(duration.as_secs())
                    .map_err(|_| ApiError::bad_request(format!("`ttl` `{text}` is too long")))?,
            )
        }
        None => None,
    };
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "create_scim_token");
    // SCIM tokens use the service-key prefix: they are long-lived service credentials.
    let raw = RawToken::generate(TokenKind::ServiceKey).map_err(ApiError::internal)?;
    let now = chrono::Utc::now().timestamp();
    let row = ScimTokenRow {
        accessor: new_accessor().map_err(ApiError::internal)?,
        hash: raw.hash().0,
        created_at: now,
        expires_at: ttl.map(|t| now.saturating_add(t)),
        revoked_at: None,
        created_by: ctx.caller.principal.uid_string(),
    };
    ctx.slot.detail("accessor", row.accessor.clone());
    state.commit_audit(&ctx).await?;
    state.store.insert_scim_token(&row).await?;
    tracing::info!(token.id = %row.accessor, "SCIM token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedScimTokenResponse {
            token: SecretText(zeroize::Zeroizing::new(raw.expose().to_string())),
            accessor: row.accessor,
            expires_at: row.expires_at.map(format_unix),
        }),
    ))
}

/// List SCIM tokens by accessor (action `admin` on `System`).
pub async fn list(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<ScimTokenListResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "list_scim_tokens");
    let tokens = state
        .store
        .list_scim_tokens()
        .await?
        .into_iter()
        .map(|row| ScimTokenResponse {
            accessor: row.accessor,
            created_at: format_unix(row.created_at),
            expires_at: row.expires_at.map(format_unix),
            revoked_at: row.revoked_at.map(format_unix),
            created_by: row.created_by,
        })
        .collect();
    Ok(Json(ScimTokenListResponse { tokens }))
}

/// Revoke a SCIM token (action `admin` on `System`); the next SCIM request with it gets 401.
pub async fn revoke(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(accessor): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "revoke_scim_token");
    ctx.slot.detail("accessor", accessor.clone());
    let known = state
        .store
        .list_scim_tokens()
        .await?
        .iter()
        .any(|t| t.accessor == accessor && t.revoked_at.is_none());
    if !known {
        return Err(ApiError::not_found(format!(
            "live SCIM token `{accessor}` not found: `lk scim token list` shows accessors"
        )));
    }
    state.commit_audit(&ctx).await?;
    state
        .store
        .revoke_scim_token(&accessor, chrono::Utc::now().timestamp())
        .await
        .map_err(|e: StoreError| ApiError::from(e))?;
    tracing::info!(token.id = %accessor, "SCIM token revoked");
    Ok(StatusCode::NO_CONTENT)
}
