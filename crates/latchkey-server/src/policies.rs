//! Cedar policies, stored by name and validated against the shipped schema.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use latchkey_core::policy::{Action, Resource, validate_name, validate_policy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, format_unix};
use crate::state::{RequestCtx, SharedState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPolicyBody {
    /// The policy in Cedar syntax.
    pub policy: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatePolicyBody {
    pub policy: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyResponse {
    pub name: String,
    pub policy: String,
    pub statements: usize,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct PolicySummary {
    pub name: String,
    pub statements: usize,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyListResponse {
    pub policies: Vec<PolicySummary>,
}

#[derive(Serialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    pub statements: usize,
}

fn invalid_policy(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_policy", error.to_string())
}

fn statement_count(name: &str, text: &str) -> usize {
    validate_policy(name, text).unwrap_or(0)
}

/// Create or replace a policy (action `admin` on `System`).
#[utoipa::path(put, path = "/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    request_body = PutPolicyBody,
    responses((status = 200, body = PolicyResponse), (status = 201, body = PolicyResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn put_policy(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutPolicyBody>,
) -> ApiResult<(StatusCode, Json<PolicyResponse>)> {
    validate_name(&name).map_err(invalid_policy)?;
    let statements = validate_policy(&name, &body.policy).map_err(invalid_policy)?;

    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "put_policy");
    ctx.slot.detail("policy", name.clone());

    // The new set must build as a whole before anything is stored. The engine built to
    // check it is the one installed after the write.
    let changing = state.policy_change().await;
    let rows = state.store.list_policies().await?;
    let policies: Vec<(&str, &str)> = rows
        .iter()
        .filter(|p| p.name != name)
        .map(|p| (p.name.as_str(), p.text.as_str()))
        .chain(std::iter::once((name.as_str(), body.policy.as_str())))
        .collect();
    let engine = state
        .engine()
        .rebuild(policies.iter().copied())
        .map_err(invalid_policy)?;

    state.commit_audit(&ctx).await?;
    let now = chrono::Utc::now().timestamp();
    let created = state.store.put_policy(&name, &body.policy, now).await?;
    state.install_policies(engine, &policies);
    drop(changing);
    tracing::info!(policy = %name, created, "policy stored");

    let row = state
        .store
        .policy(&name)
        .await?
        .ok_or_else(|| ApiError::internal("policy vanished after write"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(PolicyResponse {
            name: row.name,
            policy: row.text,
            statements,
            created_at: format_unix(row.created_at),
            updated_at: format_unix(row.updated_at),
        }),
    ))
}

/// Show a policy (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = PolicyResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_policy(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<PolicyResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    let row = state.store.policy(&name).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "policy `{name}` not found: `lk policy list` shows the policies"
        ))
    })?;
    Ok(Json(PolicyResponse {
        statements: statement_count(&row.name, &row.text),
        name: row.name,
        policy: row.text,
        created_at: format_unix(row.created_at),
        updated_at: format_unix(row.updated_at),
    }))
}

/// List policies (action `admin` on `System`).
#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = PolicyListResponse)))]
pub async fn list_policies(
    State(state): State<SharedState>,
    ctx: RequestCtx,
) -> ApiResult<Json<PolicyListResponse>> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "list_policies");
    let rows = state.store.list_policies().await?;
    Ok(Json(PolicyListResponse {
        policies: rows
            .iter()
            .map(|p| PolicySummary {
                name: p.name.clone(),
                statements: statement_count(&p.name, &p.text),
                updated_at: format_unix(p.updated_at),
            })
            .collect(),
    }))
}

/// Delete a policy (action `admin` on `System`).
#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_policy(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.authorize(&ctx, Action::Admin, &Resource::System, false)?;
    ctx.slot.detail("operation", "delete_policy");
    ctx.slot.detail("policy", name.clone());
    let changing = state.policy_change().await;
    let rows = state.store.list_policies().await?;
    if !rows.iter().any(|p| p.name == name) {
        return Err(ApiError::not_found(format!(
            "policy `{name}` not found: `lk policy list` shows the policies"
        )));
    }
    let policies: Vec<(&str, &str)> = rows
        .iter()
        .filter(|p| p.name != name)
        .map(|p| (p.name.as_str(), p.text.as_str()))
        .collect();
    let engine = state
        .engine()
        .rebuild(policies.iter().copied())
        .map_err(ApiError::internal)?;
    state.commit_audit(&ctx).await?;
    state.store.delete_policy(&name).await?;
    state.install_policies(engine, &policies);
    drop(changing);
    tracing::info!(policy = %name, "policy deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Validate a policy against the schema without storing it (any authenticated caller).
#[utoipa::path(post, path = "/v1/policies/validate", tag = "policies", request_body = ValidatePolicyBody,
    responses((status = 200, body = ValidateResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn validate(
    ctx: RequestCtx,
    ApiJson(body): ApiJson<ValidatePolicyBody>,
) -> ApiResult<Json<ValidateResponse>> {
    let _ = ctx;
    let name = body.name.unwrap_or_else(|| "policy".to_string());
    let statements = validate_policy(&name, &body.policy).map_err(invalid_policy)?;
    Ok(Json(ValidateResponse {
        valid: true,
        statements,
    }))
}
