//! `/scim/v2/Groups`: a group's members are SCIM users, and its displayName becomes their
//! Cedar group at once (the store sets both in one transaction).

use std::collections::{BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_core::scim::{GROUP_SCHEMA, PatchOperation, apply_patch, find_key};
use latchkey_store::ScimGroupRow;
use serde_json::{Map, Value, json};

use super::{
    ListParams, ScimApiError, ScimResult, base_url, check_name, format_time_secs, list_response,
    parse_body, prepare_audit, project_value, scim_json, single_params,
};
use crate::extract::new_id;
use crate::state::{RequestCtx, SharedState};

fn render(base: &str, row: &ScimGroupRow) -> ScimResult<Value> {
    let mut object: Map<String, Value> = serde_json::from_str(&row.resource)
        .map_err(|e| ScimApiError::from(crate::error::ApiError::internal(e)))?;
    object.insert("id".into(), json!(row.id));
    object.insert("displayName".into(), json!(row.display_name));
    // A member deleted since the group was written has left the member table; drop it here.
    if let Some(Value::Array(members)) = object.get_mut("members") {
        members.retain(|m| {
            m.get("value")
                .and_then(Value::as_str)
                .is_some_and(|v| row.members.iter().any(|id| id == v))
        });
        if members.is_empty() {
            object.remove("members");
        }
    }
    object.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": format_time_secs(row.created_at),
            "lastModified": format_time_secs(row.updated_at),
            "location": format!("{base}/Groups/{}", row.id),
            "version": format!("W/\"{}\"", row.version),
        }),
    );
    Ok(Value::Object(object))
}

struct GroupInput {
    display_name: String,
    external_id: Option<String>,
    members: Vec<String>,
    resource: Map<String, Value>,
}

/// Checks a Group body: a displayName, and members that are existing SCIM users.
async fn check_group(
    state: &SharedState,
    mut object: Map<String, Value>,
) -> ScimResult<GroupInput> {
    for name in ["id", "meta"] {
        if let Some(key) = find_key(&object, name).cloned() {
            object.remove(&key);
        }
    }
    let display_name = find_key(&object, "displayName")
        .and_then(|k| object.get(k))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ScimApiError::bad_value("`displayName` is required and must be a string"))?;
    check_name("displayName", &display_name)?;
    let external_id = find_key(&object, "externalId")
        .and_then(|k| object.get(k))
        .and_then(Value::as_str)
        .map(str::to_string);

    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    if let Some(key) = find_key(&object, "members").cloned() {
        let Some(Value::Array(items)) = object.remove(&key) else {
            return Err(ScimApiError::bad_value("`members` must be a list"));
        };
        for item in items {
            let Some(value) = item
                .get("value")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return Err(ScimApiError::bad_value(
                    "each member needs a string `value`: the user's id",
                ));
            };
            if item
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.eq_ignore_ascii_case("User"))
            {
                return Err(ScimApiError::bad_value(format!(
                    "member `{value}`: only users can be members; nested groups are not supported"
                )));
            }
            if state.store.scim_user(&value).await?.is_none() {
                return Err(ScimApiError::bad_value(format!(
                    "member `{value}` is not a SCIM user: create the user first"
                )));
            }
            if seen.insert(value.clone()) {
                members.push(item);
            }
        }
        if !members.is_empty() {
            object.insert("members".into(), Value::Array(members));
        }
    }
    object.insert("schemas".into(), json!([GROUP_SCHEMA]));
    if let Some(key) = find_key(&object, "displayName").cloned() {
        object.remove(&key);
    }
    Ok(GroupInput {
        display_name,
        external_id,
        members: seen.into_iter().collect(),
        resource: object,
    })
}

async fn load(state: &SharedState, id: &str) -> ScimResult<ScimGroupRow> {
    state
        .store
        .scim_group(id)
        .await?
        .ok_or_else(|| ScimApiError::not_found("group", id))
}

fn group_uid(name: &str) -> String {
    format!("Group::{}", serde_json::to_string(name).unwrap_or_default())
}

pub async fn create(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    body: Bytes,
) -> ScimResult<Response> {
    let input = check_group(&state, parse_body(&body)?).await?;
    prepare_audit(&ctx, "scim_create_group", &group_uid(&input.display_name));
    let now = chrono::Utc::now().timestamp();
    let row = ScimGroupRow {
        id: new_id("grp"),
        display_name: input.display_name,
        external_id: input.external_id,
        resource: Value::Object(input.resource).to_string(),
        version: 1,
        created_at: now,
        updated_at: now,
        members: input.members,
    };
    ctx.slot.detail("members", row.members.join(","));
    state.commit_audit(&ctx).await?;
    state.store.put_scim_group(&row, None).await?;
    state.tokens.clear();
    tracing::info!(group.id = %row.id, members = row.members.len(), "SCIM group created");
    let body = render(&base_url(&headers), &load(&state, &row.id).await?)?;
    let mut response = scim_json(StatusCode::CREATED, &body);
    if let Some(location) = body["meta"]["location"]
        .as_str()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn get(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ScimResult<Response> {
    let (attributes, excluded) = single_params(&query)?;
    prepare_audit(&ctx, "scim_read_group", &format!("ScimGroup::\"{id}\""));
    let body = render(&base_url(&headers), &load(&state, &id).await?)?;
    Ok(scim_json(
        StatusCode::OK,
        &project_value(body, &attributes, &excluded),
    ))
}

/// Renders every SCIM group, for lists and searches.
pub(super) async fn all(state: &SharedState, headers: &HeaderMap) -> ScimResult<Vec<Value>> {
    let base = base_url(headers);
    state
        .store
        .scim_groups()
        .await?
        .iter()
        .map(|row| render(&base, row))
        .collect()
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
    prepare_audit(&ctx, "scim_list_groups", "ScimGroup::\"*\"");
    list_with(&state, &headers, params).await
}

pub async fn search(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    body: Bytes,
) -> ScimResult<Response> {
    let params = ListParams::from_map(&parse_body(&body)?)?;
    prepare_audit(&ctx, "scim_list_groups", "ScimGroup::\"*\"");
    list_with(&state, &headers, params).await
}

async fn update(
    state: &SharedState,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    current: ScimGroupRow,
    input: GroupInput,
) -> ScimResult<Response> {
    let row = ScimGroupRow {
        id: current.id.clone(),
        display_name: input.display_name,
        external_id: input.external_id,
        resource: Value::Object(input.resource).to_string(),
        version: current.version + 1,
        created_at: current.created_at,
        updated_at: chrono::Utc::now().timestamp(),
        members: input.members,
    };
    let added: Vec<&str> = row
        .members
        .iter()
        .filter(|m| !current.members.contains(m))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = current
        .members
        .iter()
        .filter(|m| !row.members.contains(m))
        .map(String::as_str)
        .collect();
    ctx.slot.detail("members_added", added.join(","));
    ctx.slot.detail("members_removed", removed.join(","));
    state.commit_audit(ctx).await?;
    state
        .store
        .put_scim_group(&row, Some(current.version))
        .await?;
    // Policy decisions use the new groups from the next request on.
    state.tokens.clear();
    let body = render(&base_url(headers), &load(state, &row.id).await?)?;
    Ok(scim_json(StatusCode::OK, &body))
}

pub async fn replace(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ScimResult<Response> {
    let input = check_group(&state, parse_body(&body)?).await?;
    prepare_audit(&ctx, "scim_replace_group", &format!("ScimGroup::\"{id}\""));
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
    prepare_audit(&ctx, "scim_patch_group", &format!("ScimGroup::\"{id}\""));
    let current = load(&state, &id).await?;
    let Value::Object(mut object) = render("", &current)? else {
        return Err(ScimApiError::from(crate::error::ApiError::internal(
            "group did not render as an object",
        )));
    };
    apply_patch(&mut object, &operations, &[])?;
    let input = check_group(&state, object).await?;
    update(&state, &ctx, &headers, current, input).await
}

pub async fn delete(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
) -> ScimResult<Response> {
    prepare_audit(&ctx, "scim_delete_group", &format!("ScimGroup::\"{id}\""));
    let current = load(&state, &id).await?;
    ctx.slot
        .detail("members_removed", current.members.join(","));
    state.commit_audit(&ctx).await?;
    state.store.delete_scim_group(&id).await?;
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT.into_response())
}
