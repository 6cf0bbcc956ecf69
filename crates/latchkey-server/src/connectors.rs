//! The admin API for identity connectors: OIDC connectors and JWT roles (action `admin` on
//! `System`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::crypto::{aad, seal};
use latchkey_core::policy::{Action, Resource};
use latchkey_store::ConnectorRow;
use serde::Serialize;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::identity::{
    JwtRole, JwtRoleSettings, OidcConnector, OidcSettings, Source, validate_connector_name,
};
use crate::state::{RequestCtx, SharedState};

#[derive(Serialize, ToSchema)]
pub struct OidcConnectorResponse {
    pub name: String,
    pub source: Source,
    pub settings: OidcSettings,
    /// True when a client secret is stored or configured; the secret itself is never shown.
    pub has_client_secret: bool,
    pub ttl: String,
    pub max_ttl: String,
}

#[derive(Serialize, ToSchema)]
pub struct JwtRoleResponse {
    pub name: String,
    pub source: Source,
    pub settings: JwtRoleSettings,
    pub ttl: String,
    pub max_ttl: String,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectorsResponse {
    pub oidc: Vec<OidcConnectorResponse>,
    pub jwt: Vec<JwtRoleResponse>,
}

fn duration_text(seconds: i64) -> String {
    latchkey_core::duration::format_duration(std::time::Duration::from_secs(seconds.unsigned_abs()))
}

fn oidc_response(c: &OidcConnector) -> OidcConnectorResponse {
    OidcConnectorResponse {
        name: c.name.clone(),
        source: c.source,
        has_client_secret: c.sealed_secret.is_some() || c.settings.client_secret_file.is_some(),
        settings: c.settings.clone(),
        ttl: duration_text(c.ttl),
        max_ttl: duration_text(c.max_ttl),
    }
}

fn jwt_response(r: &JwtRole) -> JwtRoleResponse {
    JwtRoleResponse {
        name: r.name.clone(),
        source: r.source,
        settings: r.settings.clone(),
        ttl: duration_text(r.ttl),
        max_ttl: duration_text(r.max_ttl),
    }
}

/// Reloads the connectors from the store so a change applies on this node at once.
async fn reload(state: &SharedState) -> ApiResult<()> {
    state.refresh_connectors().await?;
    Ok(())
}

fn refuse_config_file(state: &SharedState, kind: &str, name: &str) -> ApiResult<()> {
    let defined = match kind {
        "oidc" => state.identity.config.oidc.contains_key(name),
        _ => state.identity.config.jwt.contains_key(name),
    };
    if defined {
        return Err(ApiError::conflict(format!(
            "`{name}` is defined in the server's config file (`[auth.{kind}.{name}]`); change it there"
        )));
    }
    Ok(())
}

/// List OIDC connectors and JWT roles.
#[utoipa::path(get, path = "/v1/auth/connectors", tag = "auth",
    responses((status = 200, body = ConnectorsResponse)))]
pub async fn list(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<ConnectorsResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "list_connectors");
    reload(&state).await?;
    let registry = state.identity.registry();
    Ok(Json(ConnectorsResponse {
        oidc: registry.oidc.values().map(|c| oidc_response(c)).collect(),
        jwt: registry.jwt.values().map(|r| jwt_response(r)).collect(),
    }))
}

/// Create or replace an OIDC connector. The body holds its settings and, for a
/// confidential client, `client_secret`, which is stored sealed and never returned.
#[utoipa::path(put, path = "/v1/auth/oidc/connectors/{name}", tag = "auth",
    request_body = OidcSettings,
    responses((status = 200, body = OidcConnectorResponse), (status = 201, body = OidcConnectorResponse),
        (status = 400, body = crate::error::ErrorBody)))]
pub async fn put_oidc(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
    ApiJson(mut body): ApiJson<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<OidcConnectorResponse>)> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "put_oidc_connector");
    ctx.slot.detail("connector", name.clone());
    validate_connector_name("connector", &name).map_err(ApiError::bad_request)?;
    refuse_config_file(&state, "oidc", &name)?;
    let secret = match body.as_object_mut().and_then(|o| o.remove("client_secret")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) if !text.is_empty() => Some(Zeroizing::new(text)),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`client_secret` must be a non-empty string",
            ));
        }
    };
    let settings: OidcSettings = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid OIDC connector: {e}")))?;
    let sealed = match &secret {
        Some(secret) => {
            let root = state.keyring.root().ok_or_else(ApiError::sealed)?;
            Some(
                seal(
                    &root,
                    &aad::connector_secret("oidc", &name),
                    secret.as_bytes(),
                )
                .map_err(ApiError::internal)?,
            )
        }
        None => None,
    };
    let connector = OidcConnector::new(
        &name,
        settings.clone(),
        Source::Api,
        sealed.clone(),
        state.identity.limits,
    )
    .map_err(|e| ApiError::bad_request(format!("invalid OIDC connector `{name}`: {e}")))?;
    let now = chrono::Utc::now().timestamp();
    let row = ConnectorRow {
        kind: "oidc".into(),
        name: name.clone(),
        config: serde_json::to_string(&settings).map_err(ApiError::internal)?,
        sealed_secret: sealed,
        created_at: now,
        updated_at: now,
    };
    state.commit_audit(&ctx).await?;
    let created = state.store.put_connector(&row).await?;
    reload(&state).await?;
    tracing::info!(connector = %name, "OIDC connector saved");
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(oidc_response(&connector)),
    ))
}

/// Create or replace a JWT role.
#[utoipa::path(put, path = "/v1/auth/jwt/roles/{name}", tag = "auth",
    request_body = JwtRoleSettings,
    responses((status = 200, body = JwtRoleResponse), (status = 201, body = JwtRoleResponse),
        (status = 400, body = crate::error::ErrorBody)))]
pub async fn put_jwt_role(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
    ApiJson(settings): ApiJson<JwtRoleSettings>,
) -> ApiResult<(StatusCode, Json<JwtRoleResponse>)> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "put_jwt_role");
    ctx.slot.detail("role", name.clone());
    validate_connector_name("role", &name).map_err(ApiError::bad_request)?;
    refuse_config_file(&state, "jwt", &name)?;
    let role = JwtRole::new(&name, settings.clone(), Source::Api, state.identity.limits)
        .map_err(|e| ApiError::bad_request(format!("invalid JWT role `{name}`: {e}")))?;
    let now = chrono::Utc::now().timestamp();
    let row = ConnectorRow {
        kind: "jwt".into(),
        name: name.clone(),
        config: serde_json::to_string(&settings).map_err(ApiError::internal)?,
        sealed_secret: None,
        created_at: now,
        updated_at: now,
    };
    state.commit_audit(&ctx).await?;
    let created = state.store.put_connector(&row).await?;
    reload(&state).await?;
    tracing::info!(role = %name, "JWT role saved");
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(jwt_response(&role)),
    ))
}

/// Show one OIDC connector.
#[utoipa::path(get, path = "/v1/auth/oidc/connectors/{name}", tag = "auth",
    responses((status = 200, body = OidcConnectorResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_oidc(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<OidcConnectorResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "get_oidc_connector");
    reload(&state).await?;
    state
        .identity
        .registry()
        .oidc
        .get(&name)
        .map(|c| Json(oidc_response(c)))
        .ok_or_else(|| ApiError::not_found(format!("no OIDC connector `{name}`")))
}

/// Show one JWT role.
#[utoipa::path(get, path = "/v1/auth/jwt/roles/{name}", tag = "auth",
    responses((status = 200, body = JwtRoleResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_jwt_role(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<JwtRoleResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "get_jwt_role");
    reload(&state).await?;
    state
        .identity
        .registry()
        .jwt
        .get(&name)
        .map(|r| Json(jwt_response(r)))
        .ok_or_else(|| ApiError::not_found(format!("no JWT role `{name}`")))
}

async fn delete(
    state: &SharedState,
    ctx: &RequestCtx,
    kind: &str,
    name: &str,
) -> ApiResult<StatusCode> {
    state.authorize(ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .detail("operation", format!("delete_{kind}_connector"));
    ctx.slot.detail("connector", name.to_string());
    refuse_config_file(state, kind, name)?;
    let stored = state.store.list_connectors().await?;
    if !stored.iter().any(|c| c.kind == kind && c.name == name) {
        return Err(ApiError::not_found(format!("no {kind} connector `{name}`")));
    }
    state.commit_audit(ctx).await?;
    state.store.delete_connector(kind, name).await?;
    reload(state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete an OIDC connector. Tokens already issued through it stay valid until they expire
/// or are revoked.
#[utoipa::path(delete, path = "/v1/auth/oidc/connectors/{name}", tag = "auth",
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_oidc(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &ctx, "oidc", &name).await
}

/// Delete a JWT role.
#[utoipa::path(delete, path = "/v1/auth/jwt/roles/{name}", tag = "auth",
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_jwt_role(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &ctx, "jwt", &name).await
}
