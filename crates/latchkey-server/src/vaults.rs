//! Vaults: named containers of secrets, each with its own data key.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::audit::Outcome;
use latchkey_core::policy::{Action, Resource};
use latchkey_store::VaultRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, format_unix, new_id, validate_name, validate_tags};
use crate::state::{RequestCtx, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVaultBody {
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct VaultResponse {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct VaultListResponse {
    pub vaults: Vec<VaultResponse>,
}

impl From<&VaultRow> for VaultResponse {
    fn from(row: &VaultRow) -> VaultResponse {
        VaultResponse {
            name: row.name.clone(),
            tags: row.tags.clone(),
            created_at: format_unix(row.created_at),
        }
    }
}

pub fn vault_resource(row: &VaultRow) -> Resource {
    Resource::Vault {
        name: row.name.clone(),
        tags: row.tags.clone(),
    }
}

/// Loads a vault for `action` on it, or on its secret `secret` when one is named.
///
/// A missing vault is decided like an existing one without tags, on the same kind of
/// resource, so callers who may not act there get the same 403 whether or not it exists.
pub async fn load_vault(
    state: &SharedState,
    ctx: &RequestCtx,
    name: &str,
    secret: Option<&str>,
    action: Action,
) -> ApiResult<VaultRow> {
    validate_name("vault", name)?;
    match state.store.vault_by_name(name).await? {
        Some(row) => Ok(row),
        None => Err(vault_not_found(state, ctx, name, secret, action)),
    }
}

/// Returns the error for a vault that does not exist. Callers allowed `action` on a vault of
/// that name without tags (or on its secret `secret`, when one is named) get a 404, and
/// others the 403 they would get if it existed.
pub fn vault_not_found(
    state: &SharedState,
    ctx: &RequestCtx,
    name: &str,
    secret: Option<&str>,
    action: Action,
) -> ApiError {
    let resource = match secret {
        Some(secret) => Resource::Secret {
            vault: name.to_string(),
            vault_tags: BTreeMap::new(),
            name: secret.to_string(),
            tags: BTreeMap::new(),
        },
        None => Resource::Vault {
            name: name.to_string(),
            tags: BTreeMap::new(),
        },
    };
    if let Err(denied) = state.authorize(ctx, action, &resource, false) {
        return denied;
    }
    ApiError::not_found(format!(
        "vault `{name}` not found: `lk vault list` shows the vaults you can see"
    ))
}

/// Create a vault (action `admin` on `System`).
#[utoipa::path(post, path = "/v1/vaults", tag = "vaults", request_body = CreateVaultBody,
    responses((status = 201, body = VaultResponse), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_vault(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<CreateVaultBody>,
) -> ApiResult<(StatusCode, Json<VaultResponse>)> {
    validate_name("vault", &body.name)?;
    validate_tags(&body.tags)?;

    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "create_vault");
    ctx.slot.detail("vault", body.name.clone());
    state.commit_audit(&ctx).await?;

    let id = new_id("vlt");
    let (_, wrapped_key) = state
        .keyring
        .new_vault_key(&id)
        .map_err(ApiError::internal)?;
    let row = VaultRow {
        id,
        name: body.name,
        tags: body.tags,
        wrapped_key,
        created_at: chrono::Utc::now().timestamp(),
    };
    state.store.create_vault(&row).await?;
    tracing::info!(vault = %row.name, vault.id = %row.id, "vault created");
    Ok((StatusCode::CREATED, Json(VaultResponse::from(&row))))
}

/// List the vaults the caller may `list`.
#[utoipa::path(get, path = "/v1/vaults", tag = "vaults", responses((status = 200, body = VaultListResponse)))]
pub async fn list_vaults(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<VaultListResponse>> {
    let rows = state.store.list_vaults().await?;
    let vaults = rows
        .iter()
        .filter(|row| {
            state
                .decide(&ctx.caller, Action::List, &vault_resource(row), false)
                .allowed
        })
        .map(VaultResponse::from)
        .collect::<Vec<_>>();
    ctx.slot.prepare(
        "list",
        &Resource::System.uid_string(),
        Outcome::Allowed,
        Vec::new(),
    );
    ctx.slot.detail("visible_vaults", vaults.len().to_string());
    Ok(Json(VaultListResponse { vaults }))
}

/// Show one vault (action `list` on the vault).
#[utoipa::path(get, path = "/v1/vaults/{vault}", tag = "vaults", params(("vault" = String, Path)),
    responses((status = 200, body = VaultResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_vault(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<VaultResponse>> {
    let row = load_vault(&state, &ctx, &name, None, Action::List).await?;
    state.authorize(&ctx, Action::List, &vault_resource(&row), false)?;
    Ok(Json(VaultResponse::from(&row)))
}
