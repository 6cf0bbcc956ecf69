//! The router: every route, its middleware and the OpenAPI document.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::state::SharedState;
use crate::{
    access, access_report, approvals, audit_api, audit_retention, auth, connectors, login, metrics,
    policies, scim, secrets, sys, tokens, users, vaults,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Latchkey",
        description = "Just-in-time secrets broker. Authenticate with `Authorization: Bearer <token>`."
    ),
    paths(
        sys::health,
        sys::seal_status,
        sys::init,
        sys::unseal,
        sys::seal,
        vaults::create_vault,
        vaults::list_vaults,
        vaults::get_vault,
        secrets::put_secret,
        secrets::get_secret,
        secrets::read_reference,
        secrets::list_secrets,
        secrets::secret_history,
        secrets::delete_secret,
        policies::put_policy,
        policies::get_policy,
        policies::list_policies,
        policies::delete_policy,
        policies::validate,
        users::create_user,
        users::list_users,
        users::get_user,
        users::set_groups,
        tokens::create_token,
        tokens::list_tokens,
        tokens::whoami,
        tokens::renew_self,
        tokens::renew_token,
        tokens::revoke_token,
        tokens::revoke_self,
        audit_api::list_events,
        audit_api::list_checkpoints,
        audit_api::audit_key,
        login::jwt_login,
        login::oidc_start,
        login::oidc_callback,
        login::device_start,
        login::device_poll,
        connectors::list,
        connectors::put_oidc,
        connectors::get_oidc,
        connectors::delete_oidc,
        connectors::put_jwt_role,
        connectors::get_jwt_role,
        connectors::delete_jwt_role,
        access_report::access_report,
        access::settings::get_settings,
        access::settings::patch_settings,
        access::requests::create_handler,
        access::requests::list,
        access::requests::get,
        access::requests::approve_handler,
        access::requests::deny_handler,
        access::requests::cancel_handler,
        access::grants::list,
        access::grants::get,
        access::grants::revoke,
        audit_retention::record_export,
        audit_retention::list_exports,
        audit_retention::purge,
    )
)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: `/v1/openapi.json` lists the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// Builds the application. Tests drive it with `oneshot`; `serve` binds it to a socket.
pub fn router(state: SharedState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let protected = Router::new()
        .route("/v1/sys/seal", post(sys::seal))
        .route(
            "/v1/vaults",
            post(vaults::create_vault).get(vaults::list_vaults),
        )
        .route("/v1/vaults/{vault}", get(vaults::get_vault))
        .route("/v1/vaults/{vault}/secrets", get(secrets::list_secrets))
        .route(
            "/v1/vaults/{vault}/access",
            get(access::settings::get_settings).patch(access::settings::patch_settings),
        )
        .route(
            "/v1/requests",
            post(access::requests::create_handler).get(access::requests::list),
        )
        .route("/v1/requests/{id}", get(access::requests::get))
        .route(
            "/v1/requests/{id}/approve",
            post(access::requests::approve_handler),
        )
        .route(
            "/v1/requests/{id}/deny",
            post(access::requests::deny_handler),
        )
        .route(
            "/v1/requests/{id}/cancel",
            post(access::requests::cancel_handler),
        )
        .route("/v1/grants", get(access::grants::list))
        .route("/v1/grants/{id}", get(access::grants::get))
        .route("/v1/grants/{id}/revoke", post(access::grants::revoke))
        .route(
            "/v1/vaults/{vault}/secrets/{secret}",
            put(secrets::put_secret)
                .get(secrets::get_secret)
                .delete(secrets::delete_secret),
        )
        .route(
            "/v1/vaults/{vault}/secrets/{secret}/versions",
            get(secrets::secret_history),
        )
        .route("/v1/read", get(secrets::read_reference))
        .route("/v1/policies", get(policies::list_policies))
        .route("/v1/policies/validate", post(policies::validate))
        .route(
            "/v1/policies/{name}",
            put(policies::put_policy)
                .get(policies::get_policy)
                .delete(policies::delete_policy),
        )
        .route("/v1/users", post(users::create_user).get(users::list_users))
        .route("/v1/users/{name}", get(users::get_user))
        .route("/v1/users/{name}/groups", put(users::set_groups))
        .route(
            "/v1/tokens",
            post(tokens::create_token).get(tokens::list_tokens),
        )
        .route("/v1/tokens/self", get(tokens::whoami))
        .route("/v1/tokens/self/renew", post(tokens::renew_self))
        .route("/v1/tokens/self/revoke", post(tokens::revoke_self))
        .route("/v1/tokens/{accessor}/renew", post(tokens::renew_token))
        .route("/v1/tokens/{accessor}/revoke", post(tokens::revoke_token))
        .route("/v1/audit/events", get(audit_api::list_events))
        .route("/v1/audit/checkpoints", get(audit_api::list_checkpoints))
        .route("/v1/audit/key", get(audit_api::audit_key))
        .route("/v1/auth/connectors", get(connectors::list))
        .route(
            "/v1/auth/oidc/connectors/{name}",
            put(connectors::put_oidc)
                .get(connectors::get_oidc)
                .delete(connectors::delete_oidc),
        )
        .route(
            "/v1/auth/jwt/roles/{name}",
            put(connectors::put_jwt_role)
                .get(connectors::get_jwt_role)
                .delete(connectors::delete_jwt_role),
        )
        .route("/v1/reports/access", get(access_report::access_report))
        .route(
            "/v1/audit/exports",
            post(audit_retention::record_export).get(audit_retention::list_exports),
        )
        .route("/v1/audit/purge", post(audit_retention::purge))
        // SCIM tokens, for the identity provider.
        .route(
            "/v1/scim/tokens",
            post(scim::tokens::create).get(scim::tokens::list),
        )
        .route(
            "/v1/scim/tokens/{accessor}/revoke",
            post(scim::tokens::revoke),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::guard));

    let public = Router::new()
        .route("/v1/sys/health", get(sys::health))
        .route("/v1/sys/seal-status", get(sys::seal_status))
        .route("/v1/sys/init", post(sys::init))
        .route("/v1/sys/unseal", post(sys::unseal))
        .route("/v1/auth/jwt/login", post(login::jwt_login))
        .route("/v1/auth/oidc/start", post(login::oidc_start))
        .route("/v1/auth/oidc/callback", post(login::oidc_callback))
        .route("/v1/auth/oidc/device", post(login::device_start))
        .route("/v1/auth/oidc/device/poll", post(login::device_poll))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics::serve_metrics));

    Router::new()
        .merge(public)
        .merge(protected)
        .merge(scim::router(state.clone()))
        // The approvals page, outside `/v1`: HTML for people, signed in with a cookie.
        .merge(approvals::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(metrics::track_requests))
        .layer(middleware::from_fn(auth::request_id))
        .with_state(state)
}
