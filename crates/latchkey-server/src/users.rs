//! Local principals and their groups. Identity providers feed the same model.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::policy::{Action, ROOT_USER, Resource};
use latchkey_store::PrincipalRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::principal_kind_from_str;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, format_unix, new_id, validate_identifier};
use crate::state::{RequestCtx, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `user` (default), `workload`, `agent` or `service_account`.
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetGroupsBody {
    pub groups: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    pub name: String,
    pub kind: String,
    pub principal: String,
    pub groups: Vec<String>,
    pub active: bool,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserListResponse {
    pub users: Vec<UserResponse>,
}

pub fn user_response(row: &PrincipalRow) -> UserResponse {
    let principal = principal_kind_from_str(&row.kind)
        .map(|kind| {
            latchkey_core::policy::Principal {
                kind,
                name: row.name.clone(),
                groups: Vec::new(),
            }
            .uid_string()
        })
        .unwrap_or_default();
    UserResponse {
        name: row.name.clone(),
        kind: row.kind.clone(),
        principal,
        groups: row.groups.clone(),
        active: row.active,
        created_at: format_unix(row.created_at),
    }
}

fn checked_groups(groups: Vec<String>) -> ApiResult<Vec<String>> {
    let mut groups = groups;
    for group in &groups {
        validate_identifier("group", group)?;
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}

/// Create a principal (action `admin` on `System`).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUserBody,
    responses((status = 201, body = UserResponse), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_user(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> ApiResult<(StatusCode, Json<UserResponse>)> {
    let kind = body.kind.unwrap_or_else(|| "user".to_string());
    if principal_kind_from_str(&kind).is_none() {
        return Err(ApiError::bad_request(format!(
            "unknown principal kind `{kind}`: use `user`, `workload`, `agent` or `service_account`"
        )));
    }
    validate_identifier(&kind, &body.name)?;
    if body.name == ROOT_USER {
        return Err(ApiError::bad_request(format!(
            "the name `{ROOT_USER}` is reserved for the root token"
        )));
    }
    let groups = checked_groups(body.groups)?;

    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot
        .detail("principal", format!("{kind}:{}", body.name));
    state.commit_audit(&ctx).await?;

    let row = PrincipalRow {
        id: new_id("prn"),
        kind,
        name: body.name,
        active: true,
        groups,
        created_at: chrono::Utc::now().timestamp(),
    };
    state.store.create_principal(&row).await?;
    tracing::info!(principal.id = %row.id, kind = %row.kind, "principal created");
    Ok((StatusCode::CREATED, Json(user_response(&row))))
}

/// List principals (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/users", tag = "users", responses((status = 200, body = UserListResponse)))]
pub async fn list_users(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<UserListResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "list_principals");
    let rows = state.store.list_principals().await?;
    Ok(Json(UserListResponse {
        users: rows.iter().map(user_response).collect(),
    }))
}

async fn find_user(state: &SharedState, name: &str) -> ApiResult<PrincipalRow> {
    state
        .store
        .principal_by_name("user", name)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "user `{name}` not found: `lk user list` shows the users"
            ))
        })
}

/// Show a user (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/users/{name}", tag = "users", params(("name" = String, Path)),
    responses((status = 200, body = UserResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_user(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<UserResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "get_principal");
    ctx.slot.detail("principal", format!("user:{name}"));
    Ok(Json(user_response(&find_user(&state, &name).await?)))
}

/// Replace a user's groups (action `admin` on `System`); takes effect on the next request.
#[utoipa::path(put, path = "/v1/users/{name}/groups", tag = "users", params(("name" = String, Path)),
    request_body = SetGroupsBody, responses((status = 200, body = UserResponse)))]
pub async fn set_groups(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SetGroupsBody>,
) -> ApiResult<Json<UserResponse>> {
    let groups = checked_groups(body.groups)?;
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    let mut row = find_user(&state, &name).await?;
    ctx.slot.detail("operation", "set_groups");
    ctx.slot.detail("principal", format!("user:{name}"));
    ctx.slot.detail("groups", groups.join(","));
    state.commit_audit(&ctx).await?;
    state.store.set_groups(&row.id, &groups).await?;
    state.tokens.clear();
    row.groups = groups;
    tracing::info!(principal.id = %row.id, "groups replaced");
    Ok(Json(user_response(&row)))
}
