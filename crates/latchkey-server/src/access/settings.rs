//! A vault's access settings: how many approvals a request needs, the longest access it may
//! ask for, how long it may wait for approval, whether it must give a reason, and the
//! longest break-glass access.

use axum::Json;
use axum::extract::State;
use latchkey_core::duration::parse_duration;
use latchkey_core::policy::Action;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::state::{AppState, RequestCtx, SharedState};
use crate::vaults::{load_vault, vault_resource};

/// Maximum number of approvals a vault may require.
pub const MAX_APPROVALS: u32 = 10;
/// Maximum grant duration any vault may allow: 30 days.
pub const MAX_GRANT_LIMIT: i64 = 30 * 24 * 3600;

/// A vault's access settings as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessSettings {
    /// Distinct approvals a request needs, besides the requester's own (1 to 10).
    pub approvals: u32,
    /// Maximum duration a request may ask for, such as `8h`.
    pub max_grant: String,
    /// How long a request may wait for its approvals before it expires, such as `1h`.
    pub request_expiry: String,
    /// Whether a request must give a reason.
    pub require_reason: bool,
    /// Maximum duration of break-glass access, such as `1h`.
    pub break_glass_max: String,
}

impl Default for AccessSettings {
    fn default() -> AccessSettings {
        AccessSettings {
            approvals: 1,
            max_grant: "8h".into(),
            request_expiry: "1h".into(),
            require_reason: false,
            break_glass_max: "1h".into(),
        }
    }
}

/// Settings in seconds, as requests use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub approvals: u32,
    pub max_grant: i64,
    pub request_expiry: i64,
    pub require_reason: bool,
    pub break_glass_max: i64,
}

fn seconds(field: &str, text: &str) -> ApiResult<i64> {
    let duration = parse_duration(text).map_err(|e| {
        ApiError::bad_request(format!(
            "`{field}`: {e}; write a duration such as `30m` or `8h`"
        ))
    })?;
    let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
    if secs <= 0 {
        return Err(ApiError::bad_request(format!(
            "`{field}` must be longer than 0s"
        )));
    }
    if secs > MAX_GRANT_LIMIT {
        return Err(ApiError::bad_request(format!(
            "`{field}` = `{text}` is longer than the 30d limit"
        )));
    }
    Ok(secs)
}

impl AccessSettings {
    /// Checks every setting and returns them in seconds.
    pub fn limits(&self) -> ApiResult<Limits> {
        if self.approvals == 0 || self.approvals > MAX_APPROVALS {
            return Err(ApiError::bad_request(format!(
                "`approvals` = {} is out of range: a request needs 1 to {MAX_APPROVALS} approvals",
                self.approvals
            )));
        }
        Ok(Limits {
            approvals: self.approvals,
            max_grant: seconds("max_grant", &self.max_grant)?,
            request_expiry: seconds("request_expiry", &self.request_expiry)?,
            require_reason: self.require_reason,
            break_glass_max: seconds("break_glass_max", &self.break_glass_max)?,
        })
    }
}

/// Loads a vault's settings; a vault without stored settings has the defaults.
pub async fn load(state: &AppState, vault_id: &str) -> ApiResult<AccessSettings> {
    match state.store.vault_settings(vault_id).await? {
        None => Ok(AccessSettings::default()),
        Some(text) => serde_json::from_str(&text).map_err(ApiError::internal),
    }
}

/// Changes to a vault's access settings; omitted fields keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessSettingsBody {
    pub approvals: Option<u32>,
    pub max_grant: Option<String>,
    pub request_expiry: Option<String>,
    pub require_reason: Option<bool>,
    pub break_glass_max: Option<String>,
}

/// Show a vault's access settings (action `list` on the vault).
#[utoipa::path(get, path = "/v1/vaults/{vault}/access", tag = "access", params(("vault" = String, Path)),
    responses((status = 200, body = AccessSettings), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_settings(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<AccessSettings>> {
    let vault = load_vault(&state, &ctx, &name, None, Action::List).await?;
    state.authorize(&ctx, Action::List, &vault_resource(&vault), false)?;
    Ok(Json(load(&state, &vault.id).await?))
}

/// Change a vault's access settings (action `admin` on the vault).
#[utoipa::path(patch, path = "/v1/vaults/{vault}/access", tag = "access", params(("vault" = String, Path)),
    request_body = AccessSettingsBody,
    responses((status = 200, body = AccessSettings), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn patch_settings(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AccessSettingsBody>,
) -> ApiResult<Json<AccessSettings>> {
    let vault = load_vault(&state, &ctx, &name, None, Action::Admin).await?;
    let current = load(&state, &vault.id).await?;
    let settings = AccessSettings {
        approvals: body.approvals.unwrap_or(current.approvals),
        max_grant: body.max_grant.unwrap_or(current.max_grant),
        request_expiry: body.request_expiry.unwrap_or(current.request_expiry),
        require_reason: body.require_reason.unwrap_or(current.require_reason),
        break_glass_max: body.break_glass_max.unwrap_or(current.break_glass_max),
    };
    let limits = settings.limits()?;
    // Durations are kept in one spelling (`90m` becomes `1h30m`, `3600` becomes `1h`).
    let settings = AccessSettings {
        max_grant: super::duration_text(limits.max_grant),
        request_expiry: super::duration_text(limits.request_expiry),
        break_glass_max: super::duration_text(limits.break_glass_max),
        ..settings
    };
    state.authorize(&ctx, Action::Admin, &vault_resource(&vault), false)?;
    ctx.slot.detail("operation", "set_access_settings");
    ctx.slot.detail("approvals", settings.approvals.to_string());
    ctx.slot.detail("max_grant", settings.max_grant.clone());
    ctx.slot
        .detail("request_expiry", settings.request_expiry.clone());
    ctx.slot
        .detail("require_reason", settings.require_reason.to_string());
    ctx.slot
        .detail("break_glass_max", settings.break_glass_max.clone());
    state.commit_audit(&ctx).await?;
    let text = serde_json::to_string(&settings).map_err(ApiError::internal)?;
    state
        .store
        .put_vault_settings(&vault.id, &text, state.clock.now())
        .await?;
    tracing::info!(vault = %vault.name, "vault access settings changed");
    Ok(Json(settings))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let limits = AccessSettings::default().limits().unwrap();
        assert_eq!(limits.approvals, 1);
        assert_eq!(limits.max_grant, 8 * 3600);
        assert_eq!(limits.request_expiry, 3600);
        assert_eq!(limits.break_glass_max, 3600);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let zero = AccessSettings {
            approvals: 0,
            ..AccessSettings::default()
        };
        assert!(
            zero.limits()
                .unwrap_err()
                .message
                .contains("`approvals` = 0")
        );
        let long = AccessSettings {
            max_grant: "31d".into(),
            ..AccessSettings::default()
        };
        assert!(long.limits().unwrap_err().message.contains("`max_grant`"));
        let nonsense = AccessSettings {
            request_expiry: "soon".into(),
            ..AccessSettings::default()
        };
        assert!(
            nonsense
                .limits()
                .unwrap_err()
                .message
                .contains("`request_expiry`")
        );
    }
}
