//! `/scim/v2/Users`: each SCIM user is a `user` principal with the same id.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_core::policy::ROOT_USER;
use latchkey_core::scim::{PatchOperation, USER_SCHEMA, apply_patch, find_key, lenient_bool};
use latchkey_store::ScimUserRow;
use serde_json::{Map, Value, json};

use super::{
    ListParams, ScimApiError, ScimResult, base_url, check_name, format_time_secs, list_response,
    parse_body, prepare_audit, project_value, scim_json, single_params,
};
use crate::extract::new_id;
use crate::offboard::offboard;
use crate::state::{RequestCtx, SharedState};

/// Attributes the server sets; a client's values for them are ignored on create and
/// replace, and refused by PATCH.
const SERVER_OWNED: &[&str] = &["id", "meta", "groups", "password"];

fn principal_uid(name: &str) -> String {
    format!("User::{}", serde_json::to_string(name).unwrap_or_default())
}

/// Renders a stored user with its id, groups and meta.
async fn render(state: &SharedState, base: &str, row: &ScimUserRow) -> ScimResult<Value> {
    let mut object: Map<String, Value> = serde_json::from_str(&row.resource)
        .map_err(|e| ScimApiError::from(crate::error::ApiError::internal(e)))?;
    object.insert("id".into(), json!(row.principal_id));
    object.insert("userName".into(), json!(row.user_name));
    // The principal's flag is the truth, shown whenever the provider has set `active`.
    // Removing `active` by PATCH leaves the account's state as it was (a deactivated user
    // stays deactivated) and the attribute unassigned, as RFC 7644 section 3.5.2.2 asks.
    if let Some(key) = find_key(&object, "active").cloned() {
        object.insert(key, json!(row.active));
    }
    let groups: Vec<Value> = state
        .store
        .scim_groups()
        .await?
        .into_iter()
        .filter(|g| g.members.contains(&row.principal_id))
        .map(|g| {
            json!({
                "value": g.id,
                "$ref": format!("{base}/Groups/{}", g.id),
                "display": g.display_name,
            })
        })
        .collect();
    if !groups.is_empty() {
        object.insert("groups".into(), Value::Array(groups));
    }
    object.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": format_time_secs(row.created_at),
            "lastModified": format_time_secs(row.updated_at),
            "location": format!("{base}/Users/{}", row.principal_id),
            "version": format!("W/\"{}\"", row.version),
        }),
    );
    Ok(Value::Object(object))
}

/// Converts `"True"`/`"False"` strings to booleans in `active` and in each multi-valued
/// attribute's `primary`, as Entra ID sends them.
fn normalize_booleans(object: &mut Map<String, Value>) -> ScimResult<()> {
    if let Some(key) = find_key(object, "active").cloned() {
        let value = &object[&key];
        let flag = lenient_bool(value).ok_or_else(|| {
            ScimApiError::bad_value(format!("`active` must be true or false, not {value}"))
        })?;
        object.insert(key, json!(flag));
    }
    for value in object.values_mut() {
        let Value::Array(items) = value else { continue };
        for item in items {
            let Value::Object(element) = item else {
                continue;
            };
            if let Some(key) = find_key(element, "primary").cloned()
                && let Some(flag) = lenient_bool(&element[&key])
            {
                element.insert(key, json!(flag));
            }
        }
    }
    Ok(())
}

/// The checked contents of a User body.
struct UserInput {
    user_name: String,
    external_id: Option<String>,
    email: Option<String>,
    active: Option<bool>,
    resource: Map<String, Value>,
}

fn check_user(mut object: Map<String, Value>) -> ScimResult<UserInput> {
    for name in SERVER_OWNED {
        if let Some(key) = find_key(&object, name).cloned() {
            object.remove(&key);
        }
    }
    normalize_booleans(&mut object)?;
    let user_name = find_key(&object, "userName")
        .and_then(|k| object.get(k))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ScimApiError::bad_value("`userName` is required and must be a string"))?;
    check_name("userName", &user_name)?;
    if user_name.eq_ignore_ascii_case(ROOT_USER) {
        return Err(ScimApiError::new(
            StatusCode::CONFLICT,
            Some("uniqueness"),
            format!("the userName `{user_name}` is reserved for the root token"),
        ));
    }
    let external_id = match find_key(&object, "externalId").and_then(|k| object.get(k)) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ScimApiError::bad_value(format!(
                "`externalId` must be a string, not {other}"
            )));
        }
    };
    let active = find_key(&object, "active")
        .and_then(|k| object.get(k))
        .and_then(Value::as_bool);
    let email = primary_email(&object);
    if let Some(key) = find_key(&object, "schemas").cloned()
        && !object[&key].as_array().is_some_and(|s| {
            s.iter().any(|v| {
                v.as_str()
                    .is_some_and(|v| v.eq_ignore_ascii_case(USER_SCHEMA))
            })
        })
    {
        return Err(latchkey_core::scim::ScimError::InvalidSyntax(format!(
            "`schemas` must contain `{USER_SCHEMA}`"
        ))
        .into());
    }
    object.insert("schemas".into(), json!([USER_SCHEMA]));
    if let Some(key) = find_key(&object, "userName").cloned() {
        object.remove(&key);
    }
    Ok(UserInput {
        user_name,
        external_id,
        email,
        active,
        resource: object,
    })
}

/// The primary email, or the first one, in lowercase.
fn primary_email(object: &Map<String, Value>) -> Option<String> {
    let emails = find_key(object, "emails")
        .and_then(|k| object.get(k))
        .and_then(Value::as_array)?;
    let primary = emails
        .iter()
        .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| emails.first())?;
    primary
        .get("value")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
}

fn created_response(status: StatusCode, body: Value) -> Response {
    let location = body["meta"]["location"].as_str().map(str::to_string);
    let mut response = scim_json(status, &body);
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn load(state: &SharedState, id: &str) -> ScimResult<ScimUserRow> {
    state
        .store
        .scim_user(id)
        .await?
        .ok_or_else(|| ScimApiError::not_found("user", id))
}

pub async fn create(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    body: Bytes,
) -> ScimResult<Response> {
    let input = check_user(parse_body(&body)?)?;
    prepare_audit(&ctx, "scim_create_user", &principal_uid(&input.user_name));

    // A principal made earlier by an OIDC login or `lk user create` is adopted, so its
    // tokens and policies carry over; one already linked to a SCIM user is a conflict.
    let existing = state
        .store
        .principal_by_name("user", &input.user_name)
        .await?;
    let principal_id = match &existing {
        Some(p) if state.store.scim_user(&p.id).await?.is_some() => {
            return Err(ScimApiError::new(
                StatusCode::CONFLICT,
                Some("uniqueness"),
                format!("user `{}` already exists", input.user_name),
            ));
        }
        Some(p) => p.id.clone(),
        None => new_id("prn"),
    };
    let now = chrono::Utc::now().timestamp();
    let active = input.active.unwrap_or(true);
    let row = ScimUserRow {
        principal_id: principal_id.clone(),
        external_id: input.external_id,
        user_name: input.user_name,
        email: input.email,
        resource: Value::Object(input.resource).to_string(),
        version: 1,
        created_at: now,
        updated_at: now,
        active: existing.as_ref().is_none_or(|p| p.active) && active,
    };
    ctx.slot.detail("principal_id", principal_id.clone());
    state.commit_audit(&ctx).await?;
    state.store.put_scim_user(&row, None).await?;
    if existing.is_some() && !active {
        offboard(
            &state,
            &ctx,
            &principal_id,
            &principal_uid(&row.user_name),
            "scim_inactive",
        )
        .await?;
    }
    state.tokens.clear();
    tracing::info!(principal.id = %principal_id, adopted = existing.is_some(), "SCIM user created");
    let body = render(
        &state,
        &base_url(&headers),
        &load(&state, &principal_id).await?,
    )
    .await?;
    Ok(created_response(StatusCode::CREATED, body))
}

pub async fn get(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ScimResult<Response> {
    let (attributes, excluded) = single_params(&query)?;
    prepare_audit(&ctx, "scim_read_user", &format!("ScimUser::\"{id}\""));
    let row = load(&state, &id).await?;
    let body = render(&state, &base_url(&headers), &row).await?;
    Ok(scim_json(
        StatusCode::OK,
        &project_value(body, &attributes, &excluded),
    ))
}

/// Renders every SCIM user, for lists and searches.
pub(super) async fn all(state: &SharedState, headers: &HeaderMap) -> ScimResult<Vec<Value>> {
    let base = base_url(headers);
    let mut resources = Vec::new();
    // NOTE: filters run in memory over every SCIM user, which is fine for thousands of
    // users; a filter translated to SQL would be needed for far more.
    for row in state.store.scim_users().await? {
        resources.push(render(state, &base, &row).await?);
    }
    Ok(resources)
}

async fn list_with(
    state: &SharedState,
    headers: &HeaderMap,
    params: ListParams,
) -> ScimResult<Response> {
    Ok(list_response(all(state, headers).await?, &params))
}

pub async fn list(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ScimResult<Response> {
    let params = ListParams::from_query(&query)?;
    prepare_audit(&ctx, "scim_list_users", "ScimUser::\"*\"");
    list_with(&state, &headers, params).await
}

pub async fn search(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    body: Bytes,
) -> ScimResult<Response> {
    let params = ListParams::from_map(&parse_body(&body)?)?;
    prepare_audit(&ctx, "scim_list_users", "ScimUser::\"*\"");
    list_with(&state, &headers, params).await
}

/// Writes a changed user, and offboards or reactivates it when `active` changed.
async fn update(
    state: &SharedState,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    current: ScimUserRow,
    input: UserInput,
) -> ScimResult<Response> {
    let active = input.active.unwrap_or(current.active);
    let row = ScimUserRow {
        principal_id: current.principal_id.clone(),
        external_id: input.external_id,
        user_name: input.user_name,
        email: input.email,
        resource: Value::Object(input.resource).to_string(),
        version: current.version + 1,
        created_at: current.created_at,
        updated_at: chrono::Utc::now().timestamp(),
        active,
    };
    ctx.slot
        .detail("principal_id", current.principal_id.clone());
    if active != current.active {
        ctx.slot.detail("active", active.to_string());
    }
    state.commit_audit(ctx).await?;
    state
        .store
        .put_scim_user(&row, Some(current.version))
        .await?;
    if current.active && !active {
        offboard(
            state,
            ctx,
            &row.principal_id,
            &principal_uid(&row.user_name),
            "scim_inactive",
        )
        .await?;
    } else if !current.active && active {
        // Reactivation restores the account only: revoked tokens stay revoked.
        tracing::info!(principal.id = %row.principal_id, "SCIM user reactivated");
    }
    state.tokens.clear();
    let body = render(
        state,
        &base_url(headers),
        &load(state, &row.principal_id).await?,
    )
    .await?;
    Ok(scim_json(StatusCode::OK, &body))
}

pub async fn replace(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ScimResult<Response> {
    let input = check_user(parse_body(&body)?)?;
    prepare_audit(&ctx, "scim_replace_user", &format!("ScimUser::\"{id}\""));
    let current = load(&state, &id).await?;
    update(&state, &ctx, &headers, current, input).await
}

pub async fn patch(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ScimResult<Response> {
    let operations = PatchOperation::parse_body(&Value::Object(parse_body(&body)?))?;
    prepare_audit(&ctx, "scim_patch_user", &format!("ScimUser::\"{id}\""));
    let current = load(&state, &id).await?;
    let mut object: Map<String, Value> = serde_json::from_str(&current.resource)
        .map_err(|e| ScimApiError::from(crate::error::ApiError::internal(e)))?;
    object.insert("userName".into(), json!(current.user_name));
    apply_patch(&mut object, &operations, &["groups", "password"])?;
    let input = check_user(object)?;
    update(&state, &ctx, &headers, current, input).await
}

pub async fn delete(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
) -> ScimResult<Response> {
    prepare_audit(&ctx, "scim_delete_user", &format!("ScimUser::\"{id}\""));
    let current = load(&state, &id).await?;
    ctx.slot.detail("principal_id", id.clone());
    state.commit_audit(&ctx).await?;
    // The principal stays, deactivated, so the audit trail keeps naming it.
    offboard(
        &state,
        &ctx,
        &id,
        &principal_uid(&current.user_name),
        "scim_deleted",
    )
    .await?;
    state.store.delete_scim_user(&id).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT.into_response())
}
