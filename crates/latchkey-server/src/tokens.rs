//! Short-lived bearer tokens: create, look up, renew within the max TTL, revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::audit::Outcome;
use latchkey_core::duration::{format_duration, parse_duration};
use latchkey_core::policy::{Action, Resource};
use latchkey_core::token::{RawToken, TokenKind, new_accessor};
use latchkey_store::TokenRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, format_unix};
use crate::secrets::SecretText;
use crate::state::{RequestCtx, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    /// The principal's name.
    pub user: String,
    /// `user` (default), `workload`, `agent` or `service_account`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Lifetime such as `15m`; defaults to the server's `default_ttl`.
    pub ttl: Option<String>,
    /// Maximum lifetime that renewals may reach, such as `1h`; defaults to the server's `max_ttl`.
    pub max_ttl: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// How far from now to extend, such as `30m`; defaults to the token's TTL.
    pub increment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedTokenResponse {
    /// The token. It is shown once; only its hash is stored.
    #[schema(value_type = String)]
    pub token: SecretText,
    pub accessor: String,
    pub principal: String,
    pub ttl: String,
    pub expires_at: String,
    pub max_expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub accessor: String,
    pub principal: String,
    pub kind: String,
    pub created_at: String,
    pub expires_at: String,
    pub max_expires_at: String,
    pub revoked_at: Option<String>,
    pub created_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenListResponse {
    pub tokens: Vec<TokenResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct WhoamiResponse {
    pub principal: String,
    pub name: String,
    pub kind: String,
    pub groups: Vec<String>,
    pub token: TokenResponse,
}

#[derive(Serialize, ToSchema)]
pub struct RenewResponse {
    pub accessor: String,
    pub expires_at: String,
    pub max_expires_at: String,
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub user: Option<String>,
}

fn seconds_of(what: &str, text: &str) -> ApiResult<i64> {
    let duration =
        parse_duration(text).map_err(|e| ApiError::bad_request(format!("`{what}`: {e}")))?;
    if duration.is_zero() {
        return Err(ApiError::bad_request(format!(
            "`{what}` must be longer than zero, such as `15m`"
        )));
    }
    i64::try_from(duration.as_secs())
        .map_err(|_| ApiError::bad_request(format!("`{what}` `{text}` is too long")))
}

async fn token_response(state: &SharedState, row: &TokenRow) -> ApiResult<TokenResponse> {
    let principal = state
        .store
        .principal_by_id(&row.principal_id)
        .await?
        .map(|p| crate::users::user_response(&p).principal)
        .unwrap_or_else(|| row.principal_id.clone());
    Ok(TokenResponse {
        accessor: row.accessor.clone(),
        principal,
        kind: row.kind.clone(),
        created_at: format_unix(row.created_at),
        expires_at: format_unix(row.expires_at),
        max_expires_at: format_unix(row.max_expires_at),
        revoked_at: row.revoked_at.map(format_unix),
        created_by: row.created_by.clone(),
    })
}

/// Create a token for a principal (action `admin` on `System`).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokenBody,
    responses((status = 201, body = CreatedTokenResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn create_token(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<CreateTokenBody>,
) -> ApiResult<(StatusCode, Json<CreatedTokenResponse>)> {
    let server_max = i64::try_from(state.settings.max_token_ttl).unwrap_or(i64::MAX);
    let ttl = match &body.ttl {
        Some(text) => seconds_of("ttl", text)?,
        None => i64::try_from(state.settings.default_token_ttl).unwrap_or(3600),
    };
    if ttl > server_max {
        return Err(ApiError::bad_request(format!(
            "`ttl` {} is longer than the server's maximum of {} (`tokens.max_ttl` in the server config)",
            format_duration(std::time::Duration::from_secs(ttl as u64)),
            format_duration(std::time::Duration::from_secs(server_max as u64)),
        )));
    }
    let max_ttl = match &body.max_ttl {
        Some(text) => seconds_of("max_ttl", text)?,
        None => server_max.max(ttl),
    };
    if max_ttl > server_max {
        return Err(ApiError::bad_request(format!(
            "`max_ttl` {} is longer than the server's maximum of {}",
            format_duration(std::time::Duration::from_secs(max_ttl as u64)),
            format_duration(std::time::Duration::from_secs(server_max as u64)),
        )));
    }
    if ttl > max_ttl {
        return Err(ApiError::bad_request(format!(
            "`ttl` {} is longer than `max_ttl` {}",
            format_duration(std::time::Duration::from_secs(ttl as u64)),
            format_duration(std::time::Duration::from_secs(max_ttl as u64)),
        )));
    }
    let kind = body.kind.clone().unwrap_or_else(|| "user".to_string());

    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "create_token");
    ctx.slot.detail("for", format!("{kind}:{}", body.user));
    let principal = state
        .store
        .principal_by_name(&kind, &body.user)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{kind} `{}` not found: create it with `lk user create {}`",
                body.user, body.user
            ))
        })?;
    if !principal.active {
        return Err(ApiError::conflict(format!(
            "{kind} `{}` is deactivated",
            body.user
        )));
    }

    let raw = RawToken::generate(TokenKind::Token).map_err(ApiError::internal)?;
    let now = chrono::Utc::now().timestamp();
    let row = TokenRow {
        accessor: new_accessor().map_err(ApiError::internal)?,
        hash: raw.hash().0,
        principal_id: principal.id.clone(),
        kind: "user".into(),
        created_at: now,
        ttl,
        expires_at: now + ttl,
        max_expires_at: now + max_ttl,
        revoked_at: None,
        created_by: Some(ctx.caller.principal.uid_string()),
    };
    ctx.slot.detail("accessor", row.accessor.clone());
    state.commit_audit_with_token(&ctx, row.clone()).await?;
    tracing::info!(token.id = %row.accessor, principal.id = %principal.id, "token created");

    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenResponse {
            token: SecretText(zeroize::Zeroizing::new(raw.expose().to_string())),
            accessor: row.accessor.clone(),
            principal: crate::users::user_response(&principal).principal,
            ttl: format_duration(std::time::Duration::from_secs(ttl as u64)),
            expires_at: format_unix(row.expires_at),
            max_expires_at: format_unix(row.max_expires_at),
        }),
    ))
}

/// List tokens by accessor, never the tokens themselves (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(("user" = Option<String>, Query)),
    responses((status = 200, body = TokenListResponse)))]
pub async fn list_tokens(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<TokenListResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "list_tokens");
    let principal_id = match &query.user {
        Some(name) => Some(
            state
                .store
                .principal_by_name("user", name)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("user `{name}` not found")))?
                .id,
        ),
        None => None,
    };
    let rows = state.store.list_tokens(principal_id.as_deref()).await?;
    let mut tokens = Vec::with_capacity(rows.len());
    for row in &rows {
        tokens.push(token_response(&state, row).await?);
    }
    Ok(Json(TokenListResponse { tokens }))
}

/// Show the caller: principal, groups and the token's expiry.
#[utoipa::path(get, path = "/v1/tokens/self", tag = "tokens", responses((status = 200, body = WhoamiResponse)))]
pub async fn whoami(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<WhoamiResponse>> {
    let principal = &ctx.caller.principal;
    ctx.slot.prepare(
        "lookup_self",
        &principal.uid_string(),
        Outcome::Allowed,
        Vec::new(),
    );
    Ok(Json(WhoamiResponse {
        principal: principal.uid_string(),
        name: principal.name.clone(),
        kind: principal.kind.as_str().to_string(),
        groups: principal.groups.clone(),
        token: token_response(&state, &ctx.caller.token).await?,
    }))
}

/// Loads the token named by `accessor` if the caller may manage it: the caller's own
/// token, or any token with `admin` on `System`.
async fn manageable_token(
    state: &SharedState,
    ctx: &RequestCtx,
    accessor: &str,
    action: &str,
) -> ApiResult<TokenRow> {
    let row = state.store.token_by_accessor(accessor).await?;
    let own = row
        .as_ref()
        .is_some_and(|r| r.accessor == ctx.caller.token.accessor);
    if own {
        ctx.slot.prepare(
            action,
            &format!("Token::\"{accessor}\""),
            Outcome::Allowed,
            vec!["builtin:own-token".into()],
        );
    } else {
        state.authorize(ctx, Action::Admin, &Resource::System, false)?;
        ctx.slot.with_state(|s| s.action = Some(action.to_string()));
    }
    ctx.slot.detail("accessor", accessor);
    row.ok_or_else(|| {
        ApiError::not_found(format!(
            "token `{accessor}` not found: `lk token list` shows accessors"
        ))
    })
}

async fn renew(
    state: &SharedState,
    ctx: &RequestCtx,
    row: TokenRow,
    body: RenewBody,
) -> ApiResult<Json<RenewResponse>> {
    let increment = match &body.increment {
        Some(text) => seconds_of("increment", text)?,
        None => row.ttl,
    };
    if row.revoked_at.is_some() {
        return Err(ApiError::conflict(format!(
            "token `{}` is revoked and cannot be renewed",
            row.accessor
        )));
    }
    let now = chrono::Utc::now().timestamp();
    if row.expires_at <= now {
        return Err(ApiError::conflict(format!(
            "token `{}` has expired and cannot be renewed",
            row.accessor
        )));
    }
    if row.expires_at >= row.max_expires_at {
        return Err(ApiError::bad_request(format!(
            "token `{}` already expires at its max TTL ({}); create a new token",
            row.accessor,
            format_unix(row.max_expires_at)
        )));
    }
    let wanted = now
        .checked_add(increment)
        .ok_or_else(|| ApiError::bad_request("`increment` is too long"))?;
    let expires_at = wanted.min(row.max_expires_at);
    let mut warnings = Vec::new();
    if wanted > row.max_expires_at {
        warnings.push(format!(
            "the renewal was capped at the token's max TTL: it expires at {}",
            format_unix(row.max_expires_at)
        ));
    }
    state.commit_audit(ctx).await?;
    state
        .store
        .set_token_expiry(&row.accessor, expires_at)
        .await?;
    state.tokens.clear();
    Ok(Json(RenewResponse {
        accessor: row.accessor,
        expires_at: format_unix(expires_at),
        max_expires_at: format_unix(row.max_expires_at),
        warnings,
    }))
}

/// Renew the caller's own token, capped at its max TTL.
#[utoipa::path(post, path = "/v1/tokens/self/renew", tag = "tokens", request_body = RenewBody,
    responses((status = 200, body = RenewResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn renew_self(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<RenewBody>,
) -> ApiResult<Json<RenewResponse>> {
    let accessor = ctx.caller.token.accessor.clone();
    let row = manageable_token(&state, &ctx, &accessor, "renew_token").await?;
    renew(&state, &ctx, row, body).await
}

/// Renew a token by accessor (own tokens, or `admin` on `System`).
#[utoipa::path(post, path = "/v1/tokens/{accessor}/renew", tag = "tokens", params(("accessor" = String, Path)),
    request_body = RenewBody, responses((status = 200, body = RenewResponse)))]
pub async fn renew_token(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(accessor): ApiPath<String>,
    ApiJson(body): ApiJson<RenewBody>,
) -> ApiResult<Json<RenewResponse>> {
    let row = manageable_token(&state, &ctx, &accessor, "renew_token").await?;
    renew(&state, &ctx, row, body).await
}

async fn revoke(state: &SharedState, ctx: &RequestCtx, row: TokenRow) -> ApiResult<StatusCode> {
    state.commit_audit(ctx).await?;
    state
        .store
        .revoke_token(&row.accessor, chrono::Utc::now().timestamp())
        .await?;
    state.tokens.clear();
    tracing::info!(token.id = %row.accessor, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke a token by accessor (own tokens, or `admin` on `System`). Takes effect at once.
#[utoipa::path(post, path = "/v1/tokens/{accessor}/revoke", tag = "tokens", params(("accessor" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(accessor): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let row = manageable_token(&state, &ctx, &accessor, "revoke_token").await?;
    revoke(&state, &ctx, row).await
}

/// Revoke the caller's own token.
#[utoipa::path(post, path = "/v1/tokens/self/revoke", tag = "tokens", responses((status = 204)))]
pub async fn revoke_self(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<StatusCode> {
    let accessor = ctx.caller.token.accessor.clone();
    let row = manageable_token(&state, &ctx, &accessor, "revoke_token").await?;
    revoke(&state, &ctx, row).await
}
