//! Secrets: versioned sets of fields, sealed under their vault's data key.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use latchkey_core::policy::{Action, Resource};
use latchkey_core::reference::SecretRef;
use latchkey_store::{SecretRow, SecretVersionRow, VaultRow};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::extract::{
    ApiJson, ApiPath, ApiQuery, format_unix, new_id, validate_name, validate_tags,
};
use crate::sealing::{Field, open_fields, seal_fields};
use crate::state::{RequestCtx, SharedState};
use crate::vaults::{load_vault, vault_not_found};

/// Text that contains a secret value: zeroized on drop, never printed by `Debug`.
pub struct SecretText(pub Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretText, D::Error> {
        String::deserialize(deserializer).map(|s| SecretText(Zeroizing::new(s)))
    }
}

impl Serialize for SecretText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A field value in a request: exactly one of `text` (UTF-8) or `base64` (any bytes).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldValueBody {
    #[schema(value_type = Option<String>)]
    pub text: Option<SecretText>,
    #[schema(value_type = Option<String>)]
    pub base64: Option<SecretText>,
}

/// A field value in a response: always `base64`, and `text` too when the bytes are UTF-8.
#[derive(Serialize, ToSchema)]
pub struct FieldValueResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub text: Option<SecretText>,
    #[schema(value_type = String)]
    pub base64: SecretText,
}

impl FieldValueResponse {
    fn from_bytes(bytes: &[u8]) -> FieldValueResponse {
        let text = std::str::from_utf8(bytes)
            .ok()
            .map(|t| SecretText(Zeroizing::new(t.to_string())));
        FieldValueResponse {
            text,
            base64: SecretText(Zeroizing::new(BASE64.encode(bytes))),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretBody {
    pub fields: BTreeMap<String, FieldValueBody>,
    /// Replaces the secret's tags; omitted keeps them.
    pub tags: Option<BTreeMap<String, String>>,
    /// Keep the current version's other fields instead of replacing all of them.
    #[serde(default)]
    pub merge: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PutSecretResponse {
    pub reference: String,
    pub version: u32,
    pub fields: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SecretSummary {
    pub name: String,
    pub reference: String,
    pub version: u32,
    pub tags: BTreeMap<String, String>,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct SecretListResponse {
    pub vault: String,
    pub secrets: Vec<SecretSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct SecretResponse {
    pub reference: String,
    pub vault: String,
    pub secret: String,
    pub version: u32,
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    pub fields: BTreeMap<String, FieldValueResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct ReadResponse {
    pub reference: String,
    pub vault: String,
    pub secret: String,
    pub field: String,
    pub version: u32,
    pub value: FieldValueResponse,
}

#[derive(Serialize, ToSchema)]
pub struct VersionResponse {
    pub version: u32,
    pub fields: Vec<String>,
    pub created_at: String,
    pub created_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryResponse {
    pub reference: String,
    pub versions: Vec<VersionResponse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    pub version: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(rename = "ref")]
    pub reference: String,
}

fn secret_resource(vault: &VaultRow, name: &str, tags: &BTreeMap<String, String>) -> Resource {
    Resource::Secret {
        vault: vault.name.clone(),
        vault_tags: vault.tags.clone(),
        name: name.to_string(),
        tags: tags.clone(),
    }
}

fn reference_text(vault: &str, secret: &str) -> String {
    SecretRef {
        vault: vault.into(),
        secret: Some(secret.into()),
        field: None,
        version: None,
    }
    .to_string()
}

/// Loads a vault for `action` on its secret `secret_name`, from the cache when it contains a
/// fresh copy. Otherwise one query reads and caches the vault, the secret and its current
/// version, so that `cached_secret` and `open_version` find them.
async fn cached_vault(
    state: &SharedState,
    ctx: &RequestCtx,
    vault_name: &str,
    secret_name: &str,
    action: Action,
) -> ApiResult<VaultRow> {
    validate_name("vault", vault_name)?;
    if let Some(row) = state.secret_cache.vault(vault_name) {
        return Ok((*row).clone());
    }
    match state
        .secret_cache
        .load(&state.store, vault_name, secret_name)
        .await?
    {
        Some((row, _)) => Ok((*row).clone()),
        None => Err(vault_not_found(
            state,
            ctx,
            vault_name,
            Some(secret_name),
            action,
        )),
    }
}

/// Loads a secret by vault and name, from the cache when it contains a fresh copy, else with
/// its current version in one query. A missing secret is not cached, so one created
/// meanwhile is found on the next read.
async fn cached_secret(
    state: &SharedState,
    vault: &VaultRow,
    secret_name: &str,
) -> ApiResult<Option<SecretRow>> {
    if let Some(row) = state.secret_cache.secret(&vault.id, secret_name) {
        return Ok(Some((*row).clone()));
    }
    match state
        .secret_cache
        .load(&state.store, &vault.name, secret_name)
        .await?
    {
        Some((loaded, secret)) if loaded.id == vault.id => Ok(secret.map(|s| (*s).clone())),
        // The vault was replaced since it was cached: keep to the one this request holds.
        _ => Ok(state.store.secret_by_name(&vault.id, secret_name).await?),
    }
}

/// Loads a vault and one of its secrets, deciding `action` on the secret. A missing secret
/// is a 404 only for callers allowed `action` on a secret of that name.
async fn authorize_secret(
    state: &SharedState,
    ctx: &RequestCtx,
    vault_name: &str,
    secret_name: &str,
    action: Action,
) -> ApiResult<(VaultRow, SecretRow)> {
    validate_name("secret", secret_name)?;
    let vault = cached_vault(state, ctx, vault_name, secret_name, action).await?;
    let secret = cached_secret(state, &vault, secret_name).await?;
    let tags = secret.as_ref().map(|s| s.tags.clone()).unwrap_or_default();
    let resource = secret_resource(&vault, secret_name, &tags);
    if action == Action::Read {
        crate::access::authorize_read(state, ctx, &resource, vault_name, secret_name).await?;
    } else {
        state.authorize(ctx, action, &resource, false)?;
    }
    let secret = secret.ok_or_else(|| {
        ApiError::not_found(format!(
            "secret `{secret_name}` not found in vault `{vault_name}`: `lk secret list {}` shows its secrets",
            SecretRef { vault: vault_name.into(), secret: None, field: None, version: None }
        ))
    })?;
    Ok((vault, secret))
}

/// Opens one version of a secret. Versions never change once written, so a cached one is
/// used whatever its age.
async fn open_version(
    state: &SharedState,
    vault: &VaultRow,
    secret: &SecretRow,
    version: Option<u32>,
) -> ApiResult<(Arc<SecretVersionRow>, Vec<Field>)> {
    let number = version.unwrap_or(secret.current_version);
    if number == 0 {
        return Err(ApiError::bad_request("`version` starts at 1"));
    }
    let row = match state.secret_cache.version(&secret.id, number) {
        Some(row) => row,
        None => {
            let generation = state.secret_cache.generation();
            let row = state
                .store
                .secret_version(&secret.id, number)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "version {number} of secret `{}` not found; the latest is {}",
                        secret.name, secret.current_version
                    ))
                })?;
            let row = Arc::new(row);
            state
                .secret_cache
                .insert_version(Arc::clone(&row), generation);
            row
        }
    };
    let key = vault_key(state, vault)?;
    let fields = open_fields(&key, &vault.id, &secret.id, number, &row.ciphertext)
        .map_err(ApiError::internal)?;
    Ok((row, fields))
}

fn decode_field(name: &str, body: FieldValueBody) -> ApiResult<Field> {
    validate_name("field", name)?;
    let value = match (body.text, body.base64) {
        (Some(text), None) => Zeroizing::new(text.0.as_bytes().to_vec()),
        (None, Some(encoded)) => {
            Zeroizing::new(BASE64.decode(encoded.0.as_bytes()).map_err(|_| {
                ApiError::bad_request(format!("field `{name}`: `base64` is not valid base64"))
            })?)
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "field `{name}`: give exactly one of `text` or `base64`"
            )));
        }
    };
    Ok(Field {
        name: name.to_string(),
        value,
    })
}

/// Write a new version of a secret (action `write`).
#[utoipa::path(put, path = "/v1/vaults/{vault}/secrets/{secret}", tag = "secrets",
    params(("vault" = String, Path), ("secret" = String, Path)), request_body = PutSecretBody,
    responses((status = 200, body = PutSecretResponse), (status = 403, body = crate::error::ErrorBody)))]
pub async fn put_secret(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath((vault_name, secret_name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<PutSecretBody>,
) -> ApiResult<Json<PutSecretResponse>> {
    validate_name("secret", &secret_name)?;
    if body.fields.is_empty() {
        return Err(ApiError::bad_request(
            "a secret needs at least one field, such as `password=...`",
        ));
    }
    if let Some(tags) = &body.tags {
        validate_tags(tags)?;
    }
    let merge = body.merge;
    let new_tags = body.tags;
    let mut given = Vec::with_capacity(body.fields.len());
    for (name, value) in body.fields {
        given.push(decode_field(&name, value)?);
    }

    let vault = load_vault(&state, &ctx, &vault_name, Some(&secret_name), Action::Write).await?;
    let existing = state.store.secret_by_name(&vault.id, &secret_name).await?;
    let tags = new_tags
        .clone()
        .or_else(|| existing.as_ref().map(|s| s.tags.clone()))
        .unwrap_or_default();

    // A write that changes tags needs `write` on the secret as it is now and as it will be.
    // Otherwise a writer could re-tag a secret into their reach and then read it.
    if let Some(current) = &existing
        && current.tags != tags
    {
        state.authorize(
            &ctx,
            Action::Write,
            &secret_resource(&vault, &secret_name, &current.tags),
            false,
        )?;
        ctx.slot.detail("old_tags", tags_text(&current.tags));
    }
    state.authorize(
        &ctx,
        Action::Write,
        &secret_resource(&vault, &secret_name, &tags),
        false,
    )?;

    let version = existing
        .as_ref()
        .map(|s| s.current_version + 1)
        .unwrap_or(1);
    ctx.slot.detail(
        "fields",
        given
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    ctx.slot.detail("tags", tags_text(&tags));
    ctx.slot.detail("merge", merge.to_string());
    ctx.slot.detail("version", version.to_string());
    state.commit_audit(&ctx).await?;

    let key = vault_key(&state, &vault)?;
    let now = chrono::Utc::now().timestamp();
    let mut fields: Vec<Field> = Vec::new();
    if merge && let Some(old) = &existing {
        let (_, old_fields) = open_version(&state, &vault, old, None).await?;
        fields = old_fields
            .into_iter()
            .filter(|f| !given.iter().any(|g| g.name == f.name))
            .collect();
    }
    fields.extend(given.iter().map(|f| Field {
        name: f.name.clone(),
        value: f.value.clone(),
    }));
    fields.sort_by(|a, b| a.name.cmp(&b.name));

    let secret = match &existing {
        Some(old) => SecretRow {
            current_version: version,
            tags,
            updated_at: now,
            ..old.clone()
        },
        None => SecretRow {
            id: new_id("sec"),
            vault_id: vault.id.clone(),
            name: secret_name.clone(),
            tags,
            current_version: version,
            created_at: now,
            updated_at: now,
        },
    };
    let ciphertext =
        seal_fields(&key, &vault.id, &secret.id, version, &fields).map_err(ApiError::internal)?;
    let row = SecretVersionRow {
        secret_id: secret.id.clone(),
        version,
        field_names: fields.iter().map(|f| f.name.clone()).collect(),
        ciphertext,
        created_at: now,
        created_by: ctx.caller.principal.uid_string(),
    };
    // A concurrent write to the same secret makes this one fail with 409 rather than retry,
    // so the version recorded in the audit event is the version written.
    let written = state
        .store
        .put_secret_version(existing.as_ref(), &secret, &row)
        .await;
    // Also after a conflict: another server changed the secret, so the cached row is stale.
    state
        .secret_cache
        .invalidate_secret(&vault.id, &secret.name, &secret.id);
    written?;
    tracing::info!(vault = %vault.name, secret.id = %secret.id, version, "secret version written");

    Ok(Json(PutSecretResponse {
        reference: reference_text(&vault.name, &secret.name),
        version,
        fields: given.iter().map(|f| f.name.clone()).collect(),
    }))
}

fn tags_text(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Returns a vault's data key; a server sealed meanwhile returns 503 `sealed`.
fn vault_key(
    state: &SharedState,
    vault: &VaultRow,
) -> ApiResult<std::sync::Arc<latchkey_core::crypto::Key256>> {
    state
        .keyring
        .vault_key(&vault.id, &vault.wrapped_key)
        .map_err(|error| {
            if state.keyring.is_sealed() {
                ApiError::sealed()
            } else {
                ApiError::internal(error)
            }
        })
}

/// Read every field of a secret version (action `read`).
#[utoipa::path(get, path = "/v1/vaults/{vault}/secrets/{secret}", tag = "secrets",
    params(("vault" = String, Path), ("secret" = String, Path), ("version" = Option<u32>, Query)),
    responses((status = 200, body = SecretResponse), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_secret(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath((vault_name, secret_name)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<VersionQuery>,
) -> ApiResult<Json<SecretResponse>> {
    let (vault, secret) =
        authorize_secret(&state, &ctx, &vault_name, &secret_name, Action::Read).await?;
    let (row, fields) = open_version(&state, &vault, &secret, query.version).await?;
    ctx.slot.detail("version", row.version.to_string());
    ctx.slot.detail("fields", row.field_names.join(","));

    let response = SecretResponse {
        reference: reference_text(&vault.name, &secret.name),
        vault: vault.name.clone(),
        secret: secret.name.clone(),
        version: row.version,
        tags: secret.tags.clone(),
        created_at: format_unix(row.created_at),
        fields: fields
            .iter()
            .map(|f| (f.name.clone(), FieldValueResponse::from_bytes(&f.value)))
            .collect(),
    };
    state.commit_audit(&ctx).await?;
    Ok(Json(response))
}

/// Read one field by its `lk://` reference (action `read`). The server parses the
/// reference with the same parser as the CLI.
#[utoipa::path(get, path = "/v1/read", tag = "secrets",
    params(("ref" = String, Query, description = "a reference such as lk://prod/db/password?version=2")),
    responses((status = 200, body = ReadResponse), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn read_reference(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> ApiResult<Json<ReadResponse>> {
    let reference =
        SecretRef::parse(&query.reference).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (vault_name, secret_name, field_name) = reference
        .require_field()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

    let (vault, secret) =
        authorize_secret(&state, &ctx, vault_name, secret_name, Action::Read).await?;
    ctx.slot.detail("field", field_name);
    let (row, fields) = open_version(&state, &vault, &secret, reference.version).await?;
    ctx.slot.detail("version", row.version.to_string());
    let field = fields
        .iter()
        .find(|f| f.name == field_name)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "field `{field_name}` not found in `{}` version {}; its fields are: {}",
                reference_text(vault_name, secret_name),
                row.version,
                row.field_names.join(", ")
            ))
        })?;

    let response = ReadResponse {
        reference: SecretRef {
            version: Some(row.version),
            ..reference.clone()
        }
        .to_string(),
        vault: vault.name.clone(),
        secret: secret.name.clone(),
        field: field.name.clone(),
        version: row.version,
        value: FieldValueResponse::from_bytes(&field.value),
    };
    state.commit_audit(&ctx).await?;
    Ok(Json(response))
}

/// List a vault's secrets (action `list` on the vault).
#[utoipa::path(get, path = "/v1/vaults/{vault}/secrets", tag = "secrets", params(("vault" = String, Path)),
    responses((status = 200, body = SecretListResponse)))]
pub async fn list_secrets(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(vault_name): ApiPath<String>,
) -> ApiResult<Json<SecretListResponse>> {
    let vault = load_vault(&state, &ctx, &vault_name, None, Action::List).await?;
    state.authorize(
        &ctx,
        Action::List,
        &crate::vaults::vault_resource(&vault),
        false,
    )?;
    let rows = state.store.list_secrets(&vault.id).await?;
    let secrets = rows
        .iter()
        .map(|s| SecretSummary {
            name: s.name.clone(),
            reference: reference_text(&vault.name, &s.name),
            version: s.current_version,
            tags: s.tags.clone(),
            updated_at: format_unix(s.updated_at),
        })
        .collect();
    Ok(Json(SecretListResponse {
        vault: vault.name,
        secrets,
    }))
}

/// List a secret's versions, newest first (action `list` on the secret).
#[utoipa::path(get, path = "/v1/vaults/{vault}/secrets/{secret}/versions", tag = "secrets",
    params(("vault" = String, Path), ("secret" = String, Path)), responses((status = 200, body = HistoryResponse)))]
pub async fn secret_history(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath((vault_name, secret_name)): ApiPath<(String, String)>,
) -> ApiResult<Json<HistoryResponse>> {
    let (vault, secret) =
        authorize_secret(&state, &ctx, &vault_name, &secret_name, Action::List).await?;
    let versions = state.store.secret_versions(&secret.id).await?;
    Ok(Json(HistoryResponse {
        reference: reference_text(&vault.name, &secret.name),
        versions: versions
            .into_iter()
            .map(|v| VersionResponse {
                version: v.version,
                fields: v.field_names,
                created_at: format_unix(v.created_at),
                created_by: v.created_by,
            })
            .collect(),
    }))
}

/// Delete a secret and all its versions (action `delete`).
#[utoipa::path(delete, path = "/v1/vaults/{vault}/secrets/{secret}", tag = "secrets",
    params(("vault" = String, Path), ("secret" = String, Path)), responses((status = 204)))]
pub async fn delete_secret(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath((vault_name, secret_name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let (_vault, secret) =
        authorize_secret(&state, &ctx, &vault_name, &secret_name, Action::Delete).await?;
    state.commit_audit(&ctx).await?;
    let deleted = state.store.delete_secret(&secret.id).await;
    state
        .secret_cache
        .invalidate_secret(&secret.vault_id, &secret.name, &secret.id);
    deleted?;
    tracing::info!(secret.id = %secret.id, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}
