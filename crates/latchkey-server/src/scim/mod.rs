//! The SCIM 2.0 service at `/scim/v2` (RFC 7643, RFC 7644): Users and Groups pushed by an
//! identity provider, authenticated with a dedicated SCIM token.
//!
//! SCIM tokens live in their own table, so an ordinary token is unknown here and a SCIM
//! token is unknown on `/v1`. Every request leaves one audit event, as on `/v1`.

mod discovery;
mod groups;
pub mod tokens;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use latchkey_core::audit::{AuditRecord, Outcome, format_time};
use latchkey_core::policy::{Principal, PrincipalKind};
use latchkey_core::scim::ScimError;
use latchkey_core::token::RawToken;
use latchkey_store::{StoreError, TokenRow};
use serde_json::{Value, json};

use crate::auth::{Caller, bearer_token, client_addr, record_response, route_action};
use crate::error::{ApiError, ErrorCode};
use crate::state::{AuditSlot, RequestCtx, SharedState};

pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const CONTENT_TYPE: &str = "application/scim+json";

/// Page size when the request gives no `count`, and the largest page returned.
pub const MAX_RESULTS: usize = 200;

/// The name SCIM requests act under in the audit log: `ServiceAccount::"scim"`.
const SCIM_PRINCIPAL: &str = "scim";

/// Builds the `/scim/v2` routes with their own authentication layer.
pub fn router(state: SharedState) -> Router<SharedState> {
    Router::new()
        .route(
            "/scim/v2/ServiceProviderConfig",
            get(discovery::service_provider_config),
        )
        .route("/scim/v2/ResourceTypes", get(discovery::resource_types))
        .route("/scim/v2/ResourceTypes/{id}", get(discovery::resource_type))
        .route("/scim/v2/Schemas", get(discovery::schemas))
        .route("/scim/v2/Schemas/{id}", get(discovery::schema))
        .route("/scim/v2/Users", get(users::list).post(users::create))
        .route("/scim/v2/Users/.search", post(users::search))
        .route(
            "/scim/v2/Users/{id}",
            get(users::get)
                .put(users::replace)
                .patch(users::patch)
                .delete(users::delete),
        )
        .route("/scim/v2/Groups", get(groups::list).post(groups::create))
        .route("/scim/v2/Groups/.search", post(groups::search))
        .route(
            "/scim/v2/Groups/{id}",
            get(groups::get)
                .put(groups::replace)
                .patch(groups::patch)
                .delete(groups::delete),
        )
        .route("/scim/v2/.search", post(search_all))
        .route("/scim/v2/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state, guard))
}

async fn not_found() -> ScimApiError {
    ScimApiError::new(
        StatusCode::NOT_FOUND,
        None,
        "no such SCIM endpoint: `/scim/v2/ResourceTypes` lists the resources",
    )
}

async fn method_not_allowed() -> ScimApiError {
    ScimApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "this SCIM endpoint does not accept that method",
    )
}

/// Searches users and groups together (`POST /.search`): users first, then groups, with
/// one filter, pagination and projection over both.
async fn search_all(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    body: Bytes,
) -> ScimResult<Response> {
    let params = ListParams::from_map(&parse_body(&body)?)?;
    prepare_audit(&ctx, "scim_search", "Scim::\"*\"");
    let mut resources = users::all(&state, &headers).await?;
    resources.extend(groups::all(&state, &headers).await?);
    Ok(list_response(resources, &params))
}

/// An error in the SCIM form (RFC 7644 section 3.12).
#[derive(Debug)]
pub struct ScimApiError {
    pub status: StatusCode,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimApiError {
    pub fn new(
        status: StatusCode,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> ScimApiError {
        ScimApiError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    pub fn bad_value(detail: impl Into<String>) -> ScimApiError {
        ScimApiError::new(StatusCode::BAD_REQUEST, Some("invalidValue"), detail)
    }

    pub fn not_found(kind: &str, id: &str) -> ScimApiError {
        ScimApiError::new(
            StatusCode::NOT_FOUND,
            None,
            format!("{kind} `{id}` not found"),
        )
    }

    fn code(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "unauthenticated",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            501 => "not_implemented",
            503 => "unavailable",
            _ => "internal",
        }
    }
}

impl From<ScimError> for ScimApiError {
    fn from(error: ScimError) -> ScimApiError {
        ScimApiError::new(
            StatusCode::BAD_REQUEST,
            Some(error.scim_type()),
            error.to_string(),
        )
    }
}

impl From<StoreError> for ScimApiError {
    fn from(error: StoreError) -> ScimApiError {
        match error {
            StoreError::Conflict(what) => ScimApiError::new(
                StatusCode::CONFLICT,
                Some("uniqueness"),
                format!("{what} already exists"),
            ),
            StoreError::Concurrent(what) => ScimApiError::new(
                StatusCode::CONFLICT,
                None,
                format!("{what} changed while this request ran; retry"),
            ),
            other => ApiError::from(other).into(),
        }
    }
}

impl From<ApiError> for ScimApiError {
    fn from(error: ApiError) -> ScimApiError {
        ScimApiError::new(error.status, None, error.message)
    }
}

impl IntoResponse for ScimApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = json!(scim_type);
        }
        let code = self.code();
        let mut response = scim_json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

pub type ScimResult<T> = Result<T, ScimApiError>;

/// A JSON response with the SCIM content type.
pub fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Parses a request body as a JSON object, whatever its JSON content type.
pub fn parse_body(body: &Bytes) -> ScimResult<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ScimError::InvalidSyntax("the body must be a JSON object".into()).into()),
        Err(e) => Err(ScimError::InvalidSyntax(format!("the body is not valid JSON: {e}")).into()),
    }
}

/// The base URL of the SCIM service as the client reached it, for `meta.location` and
/// `$ref`.
///
/// NOTE: the scheme comes from `X-Forwarded-Proto` and is `http` without it, so a server
/// that terminates TLS itself reports `http://` locations.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}/scim/v2")
}

/// Records what the handler did in the request's audit event.
pub fn prepare_audit(ctx: &RequestCtx, action: &str, resource: &str) {
    ctx.slot.prepare(
        action,
        resource,
        Outcome::Allowed,
        vec!["builtin:scim-token".into()],
    );
}

/// Authenticates a SCIM token and records the request in the audit log.
async fn guard(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    if state.keyring.is_sealed() {
        return ScimApiError::from(ApiError::sealed()).into_response();
    }
    let request_id = request
        .extensions()
        .get::<crate::auth::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client = client_addr(&request);
    let fallback_action = route_action(&request);
    let fallback_resource = request.uri().path().to_string();

    let token = match authenticate(&state, request.headers()).await {
        Ok(token) => token,
        Err((reason, accessor)) => {
            if reason == "storage_unavailable" {
                return ScimApiError::from(ApiError::storage_unavailable()).into_response();
            }
            tracing::warn!(reason, client = ?client, "SCIM authentication failed");
            let record = AuditRecord {
                time: format_time(chrono::Utc::now()),
                request_id,
                principal: "anonymous".into(),
                action: fallback_action,
                resource: fallback_resource,
                outcome: Outcome::Failed,
                reason: Some(reason.into()),
                policies: Vec::new(),
                client_addr: client,
                token_id: accessor,
                detail: Default::default(),
            };
            if state.audit.append(record).await.is_err() {
                return ScimApiError::from(ApiError::audit_unavailable()).into_response();
            }
            return ScimApiError::new(
                StatusCode::UNAUTHORIZED,
                None,
                "missing, invalid, expired or revoked SCIM token: create one with `lk scim token create`",
            )
            .into_response();
        }
    };

    let ctx = RequestCtx {
        caller: Caller {
            principal: Arc::new(Principal {
                kind: PrincipalKind::ServiceAccount,
                name: SCIM_PRINCIPAL.into(),
                groups: Vec::new(),
            }),
            principal_id: SCIM_PRINCIPAL.into(),
            token: Arc::new(token),
        },
        request_id,
        client_addr: client,
        slot: AuditSlot::default(),
    };
    request.extensions_mut().insert(ctx.clone());
    let response = next.run(request).await;
    let response =
        record_response(&state, &ctx, response, fallback_action, fallback_resource).await;
    if response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json")
    {
        // An error from the shared layer (such as a failed audit write): restate it in SCIM form.
        let status = response.status();
        return ScimApiError::new(
            status,
            None,
            "the request failed; the server log has the details",
        )
        .into_response();
    }
    response
}

/// Looks up a SCIM token; returns it as a token row for the audit trail, or the reason
/// code and the accessor when it is refused.
async fn authenticate(
    state: &SharedState,
    headers: &HeaderMap,
) -> Result<TokenRow, (&'static str, Option<String>)> {
    let text = bearer_token(headers).ok_or(("missing_token", None))?;
    let raw = RawToken::parse(text).map_err(|_| ("malformed_token", None))?;
    let hash = raw.hash().0;
    drop(raw);
    let row = state
        .store
        .scim_token_by_hash(&hash)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "SCIM token lookup failed");
            ("storage_unavailable", None)
        })?
        .ok_or(("unknown_token", None))?;
    if row.revoked_at.is_some() {
        return Err(("revoked_token", Some(row.accessor)));
    }
    let now = chrono::Utc::now().timestamp();
    if row.expires_at.is_some_and(|at| at <= now) {
        return Err(("expired_token", Some(row.accessor)));
    }
    Ok(TokenRow {
        accessor: row.accessor,
        hash: row.hash,
        principal_id: SCIM_PRINCIPAL.into(),
        kind: "scim".into(),
        created_at: row.created_at,
        ttl: 0,
        expires_at: row.expires_at.unwrap_or(i64::MAX),
        max_expires_at: row.expires_at.unwrap_or(i64::MAX),
        revoked_at: None,
        created_by: Some(row.created_by),
    })
}

/// Query parameters shared by list and search requests.
#[derive(Default)]
pub struct ListParams {
    pub filter: Option<latchkey_core::scim::Filter>,
    pub start_index: usize,
    pub count: usize,
    pub attributes: Vec<latchkey_core::scim::AttrPath>,
    pub excluded: Vec<latchkey_core::scim::AttrPath>,
}

impl ListParams {
    /// Reads `filter`, `startIndex`, `count`, `attributes` and `excludedAttributes` from a
    /// query string (GET) or a SearchRequest body (POST `.search`), as strings or numbers.
    pub fn from_map(map: &serde_json::Map<String, Value>) -> ScimResult<ListParams> {
        use latchkey_core::scim::projection::parse_attribute_list;
        let field = |name: &str| {
            latchkey_core::scim::find_key(map, name)
                .and_then(|k| map.get(k))
                .filter(|v| !v.is_null())
        };
        let text_list = |name: &str| -> ScimResult<Vec<latchkey_core::scim::AttrPath>> {
            match field(name) {
                None => Ok(Vec::new()),
                Some(Value::String(s)) => Ok(parse_attribute_list(s)?),
                Some(Value::Array(items)) => {
                    let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                    Ok(parse_attribute_list(&joined.join(","))?)
                }
                Some(other) => Err(ScimApiError::bad_value(format!(
                    "`{name}` must be a list of attribute names, not {other}"
                ))),
            }
        };
        let number = |name: &str, default: usize| -> ScimResult<i64> {
            match field(name) {
                None => Ok(default as i64),
                Some(Value::Number(n)) => n
                    .as_i64()
                    .ok_or_else(|| ScimApiError::bad_value(format!("`{name}` must be an integer"))),
                Some(Value::String(s)) => s.trim().parse().map_err(|_| {
                    ScimApiError::bad_value(format!("`{name}` must be an integer, not `{s}`"))
                }),
                Some(other) => Err(ScimApiError::bad_value(format!(
                    "`{name}` must be an integer, not {other}"
                ))),
            }
        };
        let filter = match field("filter") {
            None => None,
            Some(Value::String(text)) => Some(latchkey_core::scim::Filter::parse(text)?),
            Some(_) => {
                return Err(ScimError::InvalidFilter("`filter` must be a string".into()).into());
            }
        };
        // RFC 7644 section 3.4.2.4: a startIndex below 1 means 1, and a negative count 0.
        let start_index = number("startIndex", 1)?.max(1) as usize;
        let count = (number("count", MAX_RESULTS)?.max(0) as usize).min(MAX_RESULTS);
        Ok(ListParams {
            filter,
            start_index,
            count,
            attributes: text_list("attributes")?,
            excluded: text_list("excludedAttributes")?,
        })
    }

    pub fn from_query(query: &std::collections::HashMap<String, String>) -> ScimResult<ListParams> {
        let map = query
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        ListParams::from_map(&map)
    }
}

/// Filters, pages and projects rendered resources into a ListResponse.
pub fn list_response(resources: Vec<Value>, params: &ListParams) -> Response {
    let matching: Vec<Value> = resources
        .into_iter()
        .filter(|r| params.filter.as_ref().is_none_or(|f| f.matches(r)))
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(params.start_index - 1)
        .take(params.count)
        .map(|resource| project_value(resource, &params.attributes, &params.excluded))
        .collect();
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": params.start_index,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
    )
}

pub fn project_value(
    resource: Value,
    attributes: &[latchkey_core::scim::AttrPath],
    excluded: &[latchkey_core::scim::AttrPath],
) -> Value {
    match resource {
        Value::Object(mut object) => {
            latchkey_core::scim::project(&mut object, attributes, excluded);
            Value::Object(object)
        }
        other => other,
    }
}

/// Reads `attributes` and `excludedAttributes` for a single-resource response.
pub fn single_params(
    query: &std::collections::HashMap<String, String>,
) -> ScimResult<(
    Vec<latchkey_core::scim::AttrPath>,
    Vec<latchkey_core::scim::AttrPath>,
)> {
    let params = ListParams::from_query(query)?;
    Ok((params.attributes, params.excluded))
}

/// Checks a userName or displayName: it becomes a principal or Cedar group name, so it
/// must be printable and bounded.
pub fn check_name(what: &str, name: &str) -> ScimResult<()> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ScimApiError::bad_value(format!(
            "`{what}` {name:?} must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

/// Formats unix seconds as RFC 3339 for `meta`.
pub fn format_time_secs(seconds: i64) -> String {
    crate::extract::format_unix(seconds)
}
