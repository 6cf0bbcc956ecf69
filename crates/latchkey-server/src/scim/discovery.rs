//! ServiceProviderConfig, ResourceTypes and Schemas: what this service supports, and
//! nothing more (RFC 7643 sections 5 to 7).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use latchkey_core::scim::{GROUP_SCHEMA, USER_SCHEMA};
use serde_json::{Value, json};

use super::{MAX_RESULTS, ScimApiError, ScimResult, base_url, prepare_audit, scim_json};
use crate::state::{RequestCtx, SharedState};

const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

pub async fn service_provider_config(ctx: RequestCtx, headers: HeaderMap) -> Response {
    prepare_audit(
        &ctx,
        "scim_discover",
        "ScimConfig::\"ServiceProviderConfig\"",
    );
    let base = base_url(&headers);
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [SPC_SCHEMA],
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "SCIM token",
                "description": "A bearer token created with `lk scim token create`",
                "primary": true
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{base}/ServiceProviderConfig"),
            }
        }),
    )
}

fn resource_type_values(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "description": "A person; each is a Latchkey `user` principal",
            "schema": USER_SCHEMA,
            "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")}
        }),
        json!({
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "description": "A set of users; its displayName is their Cedar group",
            "schema": GROUP_SCHEMA,
            "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")}
        }),
    ]
}

fn list_of(resources: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [super::LIST_SCHEMA],
            "totalResults": resources.len(),
            "startIndex": 1,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

pub async fn resource_types(ctx: RequestCtx, headers: HeaderMap) -> Response {
    prepare_audit(&ctx, "scim_discover", "ScimConfig::\"ResourceTypes\"");
    list_of(resource_type_values(&base_url(&headers)))
}

pub async fn resource_type(
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ScimResult<Response> {
    prepare_audit(&ctx, "scim_discover", "ScimConfig::\"ResourceTypes\"");
    resource_type_values(&base_url(&headers))
        .into_iter()
        .find(|r| r["id"] == json!(id))
        .map(|r| scim_json(StatusCode::OK, &r))
        .ok_or_else(|| ScimApiError::not_found("resource type", &id))
}

fn attribute(name: &str, kind: &str, extra: Value) -> Value {
    let mut value = json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": "",
        "required": false,
        "caseExact": false,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
    });
    if let (Value::Object(target), Value::Object(extra)) = (&mut value, extra) {
        target.extend(extra);
    }
    value
}

fn string(name: &str) -> Value {
    attribute(name, "string", json!({}))
}

fn multi_valued(name: &str, sub_attributes: Vec<Value>) -> Value {
    attribute(
        name,
        "complex",
        json!({"multiValued": true, "subAttributes": sub_attributes}),
    )
}

fn schema_values(base: &str) -> Vec<Value> {
    let typed_value = |name: &str| {
        multi_valued(
            name,
            vec![
                string("value"),
                string("display"),
                string("type"),
                attribute("primary", "boolean", json!({})),
            ],
        )
    };
    let user_attributes = vec![
        attribute(
            "userName",
            "string",
            json!({"required": true, "uniqueness": "server"}),
        ),
        attribute(
            "name",
            "complex",
            json!({"subAttributes": [
                string("formatted"),
                string("familyName"),
                string("givenName"),
                string("middleName"),
                string("honorificPrefix"),
                string("honorificSuffix"),
            ]}),
        ),
        string("displayName"),
        string("nickName"),
        string("title"),
        string("userType"),
        string("preferredLanguage"),
        string("locale"),
        string("timezone"),
        attribute("active", "boolean", json!({})),
        typed_value("emails"),
        typed_value("phoneNumbers"),
        attribute(
            "groups",
            "complex",
            json!({
                "multiValued": true,
                "mutability": "readOnly",
                "subAttributes": [
                    attribute("value", "string", json!({"mutability": "readOnly"})),
                    attribute(
                        "$ref",
                        "reference",
                        json!({"mutability": "readOnly", "referenceTypes": ["Group"]}),
                    ),
                    attribute("display", "string", json!({"mutability": "readOnly"})),
                ],
            }),
        ),
    ];
    let group_attributes = vec![
        attribute(
            "displayName",
            "string",
            json!({"required": true, "uniqueness": "server"}),
        ),
        multi_valued(
            "members",
            vec![
                attribute(
                    "value",
                    "string",
                    json!({"mutability": "immutable", "caseExact": true}),
                ),
                attribute(
                    "$ref",
                    "reference",
                    json!({"mutability": "immutable", "referenceTypes": ["User"]}),
                ),
                attribute(
                    "type",
                    "string",
                    json!({"mutability": "immutable", "canonicalValues": ["User"]}),
                ),
                string("display"),
            ],
        ),
    ];
    vec![
        json!({
            "schemas": [SCHEMA_SCHEMA],
            "id": USER_SCHEMA,
            "name": "User",
            "description": "User account",
            "attributes": user_attributes,
            "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}")}
        }),
        json!({
            "schemas": [SCHEMA_SCHEMA],
            "id": GROUP_SCHEMA,
            "name": "Group",
            "description": "Group",
            "attributes": group_attributes,
            "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}")}
        }),
    ]
}

pub async fn schemas(ctx: RequestCtx, headers: HeaderMap) -> Response {
    prepare_audit(&ctx, "scim_discover", "ScimConfig::\"Schemas\"");
    list_of(schema_values(&base_url(&headers)))
}

pub async fn schema(
    State(_state): State<SharedState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ScimResult<Response> {
    prepare_audit(&ctx, "scim_discover", "ScimConfig::\"Schemas\"");
    schema_values(&base_url(&headers))
        .into_iter()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(&id))
        })
        .map(|s| scim_json(StatusCode::OK, &s))
        .ok_or_else(|| ScimApiError::not_found("schema", &id))
}
