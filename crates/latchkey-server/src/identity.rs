//! Identity connectors: the OIDC providers people sign in with and the JWT roles workloads
//! and agents log in with, their settings, and the provider documents (discovery, key
//! sets) the server fetches and caches.
//!
//! Connectors come from two places: the `[auth]` section of the server config file, and
//! the admin API (`lk auth ...`), which stores them in the database so every node on it
//! loads them. A name defined in the config file cannot be changed through the API.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use latchkey_core::duration::{format_duration, parse_duration};
use latchkey_core::jwt::{ClaimRules, DEFAULT_LEEWAY_SECS, KeySet};
use latchkey_core::policy::PrincipalKind;
use latchkey_store::ConnectorRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Bounds on how long a fetched key set or discovery document is trusted, applied to its
/// `Cache-Control: max-age`.
const MIN_CACHE: Duration = Duration::from_secs(60);
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
/// Cache lifetime when the provider sends no `max-age`.
const DEFAULT_CACHE: Duration = Duration::from_secs(300);
/// Minimum time between refetches of one key set for tokens naming an unknown `kid`, so a
/// burst of forged `kid`s costs the provider one request per window.
pub const REFETCH_WINDOW: Duration = Duration::from_secs(10);
/// Timeout of one request to a provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum token lifetime of an agent role that sets no `max_ttl`, in seconds.
pub const AGENT_DEFAULT_MAX_TTL: u64 = 15 * 60;

fn default_user_claim() -> String {
    "sub".into()
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_redirect_ports() -> Vec<u16> {
    vec![8250]
}

fn default_true() -> bool {
    true
}

fn default_kind() -> String {
    "workload".into()
}

/// An OpenID Connect provider people sign in with.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's issuer URL, exactly as its tokens carry it.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (config file only; the API takes `client_secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes to request; `openid` is always included.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim that names the user, such as `sub`, `preferred_username` or `email`.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The ID token claim that carries the user's groups. When set, a token without it is
    /// refused; when unset, the user's groups stay as they are.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Loopback ports the CLI may listen on for the redirect (`http://127.0.0.1:PORT/callback`).
    #[serde(default = "default_redirect_ports")]
    pub redirect_ports: Vec<u16>,
    /// Lifetime of the token a login yields, such as `8h`; defaults to the server's.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub max_ttl: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (default 60).
    #[serde(default)]
    pub leeway: Option<u64>,
    /// Create a user on their first login. When false, only users that already exist
    /// (created by an admin or by SCIM) may sign in.
    #[serde(default = "default_true")]
    pub create_users: bool,
    /// Methods that match a login to a user provisioned over SCIM, tried in order:
    /// `external_id` (matched with the `sub` claim), `user_name` (with the user claim) and
    /// `email` (with `email`, when `email_verified` is true).
    #[serde(default = "default_link_scim_by")]
    pub link_scim_by: Vec<String>,
    /// Rejects a login that matches no user provisioned over SCIM.
    #[serde(default)]
    pub require_scim_user: bool,
}

fn default_link_scim_by() -> Vec<String> {
    vec!["external_id".into(), "user_name".into(), "email".into()]
}

/// One glob pattern or a list of them.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum Patterns {
    One(String),
    Many(Vec<String>),
}

impl Patterns {
    fn to_vec(&self) -> Vec<String> {
        match self {
            Patterns::One(one) => vec![one.clone()],
            Patterns::Many(many) => many.clone(),
        }
    }
}

/// A JWT role: which tokens from which issuer may log in, and as whom.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtRoleSettings {
    /// The exact `iss` of accepted tokens.
    pub issuer: String,
    /// URL of the issuer's key set. Without it and without `jwks`, the key set is found
    /// through the issuer's OpenID discovery document.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Static keys, as a JWKS document (`{"keys": [...]}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Audiences a token may be for. Empty: a token carrying any `aud` is refused.
    #[serde(default)]
    pub bound_audiences: Vec<String>,
    /// Claims that must match a glob pattern, such as `repository = "acme/*"`.
    #[serde(default)]
    pub bound_claims: BTreeMap<String, Patterns>,
    /// The claim that names the principal.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// A claim carrying groups; when set, tokens without it are refused.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Groups every principal of this role is in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `workload` or `agent`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Lifetime of the token a login yields, such as `15m`.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Maximum token lifetime, renewals included. Agents default to 15 minutes.
    #[serde(default)]
    pub max_ttl: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (default 60).
    #[serde(default)]
    pub leeway: Option<u64>,
}

/// The `[auth]` section of the server config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// OIDC connectors by name: `[auth.oidc.corp]`.
    #[serde(default)]
    pub oidc: BTreeMap<String, OidcSettings>,
    /// JWT roles by name: `[auth.jwt.deploy]`.
    #[serde(default)]
    pub jwt: BTreeMap<String, JwtRoleSettings>,
    /// Failed logins allowed from one client address per minute before it gets 429.
    #[serde(default)]
    pub failed_logins_per_minute: Option<u32>,
}

/// The place a connector was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    ConfigFile,
    Api,
}

/// The source of a role's keys.
#[derive(Clone)]
pub enum KeySource {
    Static(Arc<KeySet>),
    Url(String),
    Discovery,
}

/// A validated OIDC connector.
#[derive(Clone)]
pub struct OidcConnector {
    pub name: String,
    pub settings: OidcSettings,
    pub source: Source,
    /// The client secret sealed under the root key, for connectors made through the API.
    pub sealed_secret: Option<Vec<u8>>,
    pub ttl: i64,
    pub max_ttl: i64,
    pub leeway: u64,
}

/// A validated JWT role.
#[derive(Clone)]
pub struct JwtRole {
    pub name: String,
    pub settings: JwtRoleSettings,
    pub source: Source,
    pub kind: PrincipalKind,
    pub keys: KeySource,
    pub rules: ClaimRules,
    pub ttl: i64,
    pub max_ttl: i64,
}

/// The connectors in force.
#[derive(Clone, Default)]
pub struct Registry {
    pub oidc: BTreeMap<String, Arc<OidcConnector>>,
    pub jwt: BTreeMap<String, Arc<JwtRole>>,
}

/// Checks a connector or role name: lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit, at most 64 characters.
pub fn validate_connector_name(what: &str, name: &str) -> Result<(), String> {
    let start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if start && rest && name.len() <= 64 {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most 64 characters"
        ))
    }
}

/// Checks a provider URL: `https`, or `http` to a loopback address only, since keys and
/// tokens fetched over plain HTTP from elsewhere could be replaced on the way.
pub fn validate_provider_url(what: &str, text: &str) -> Result<reqwest::Url, String> {
    let url =
        reqwest::Url::parse(text).map_err(|e| format!("`{what}` `{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        _ => {
            return Err(format!(
                "`{what}` `{text}` must use https (plain http is accepted only for 127.0.0.1, ::1 and localhost)"
            ));
        }
    }
    if url.host_str().is_none() {
        return Err(format!("`{what}` `{text}` has no host"));
    }
    Ok(url)
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Lifetimes: `ttl` and `max_ttl` parsed, with defaults, checked against each other and
/// against the server's maximum.
fn lifetimes(
    ttl: Option<&str>,
    max_ttl: Option<&str>,
    default_ttl: u64,
    default_max: u64,
    server_max: u64,
) -> Result<(i64, i64), String> {
    let parse = |what: &str, text: &str| -> Result<u64, String> {
        let duration = parse_duration(text).map_err(|e| format!("`{what}`: {e}"))?;
        if duration.is_zero() {
            return Err(format!("`{what}` must be longer than zero, such as `15m`"));
        }
        Ok(duration.as_secs())
    };
    let max = match max_ttl {
        Some(text) => parse("max_ttl", text)?,
        None => default_max.min(server_max),
    };
    // The origin of the bound, so the message names the setting to change.
    let max_source = match max_ttl {
        Some(_) => "",
        None if default_max < server_max => {
            " (the default for agent roles; set `max_ttl` to allow longer tokens)"
        }
        None => " (the server's `tokens.max_ttl`)",
    };
    let ttl = match ttl {
        Some(text) => parse("ttl", text)?,
        None => default_ttl.min(max),
    };
    let show = |s: u64| format_duration(Duration::from_secs(s));
    if max > server_max {
        return Err(format!(
            "`max_ttl` {} is longer than the server's maximum of {} (`tokens.max_ttl`)",
            show(max),
            show(server_max)
        ));
    }
    if ttl > max {
        return Err(format!(
            "`ttl` {} is longer than `max_ttl` {}{max_source}",
            show(ttl),
            show(max)
        ));
    }
    Ok((
        i64::try_from(ttl).unwrap_or(i64::MAX),
        i64::try_from(max).unwrap_or(i64::MAX),
    ))
}

/// Token lifetimes of the server, in seconds, that connectors default to.
#[derive(Clone, Copy, Debug)]
pub struct TokenLimits {
    pub default_ttl: u64,
    pub max_ttl: u64,
}

impl OidcConnector {
    /// Validates settings into a connector.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn new(
        name: &str,
        settings: OidcSettings,
        source: Source,
        sealed_secret: Option<Vec<u8>>,
        limits: TokenLimits,
    ) -> Result<OidcConnector, String> {
        validate_connector_name("connector", name)?;
        validate_provider_url("issuer", &settings.issuer)?;
        if settings.client_id.trim().is_empty() {
            return Err("`client_id` is empty".into());
        }
        if settings.user_claim.trim().is_empty() {
            return Err("`user_claim` is empty".into());
        }
        if settings.redirect_ports.is_empty() || settings.redirect_ports.contains(&0) {
            return Err(
                "`redirect_ports` must list the loopback ports the CLI may use, such as [8250]"
                    .into(),
            );
        }
        for method in &settings.link_scim_by {
            if !matches!(method.as_str(), "external_id" | "user_name" | "email") {
                return Err(format!(
                    "`link_scim_by` entry `{method}` is not one of `external_id`, `user_name` and `email`"
                ));
            }
        }
        if source == Source::Api && settings.client_secret_file.is_some() {
            return Err(
                "`client_secret_file` is read from the server's config file only; send `client_secret` instead"
                    .into(),
            );
        }
        let (ttl, max_ttl) = lifetimes(
            settings.ttl.as_deref(),
            settings.max_ttl.as_deref(),
            limits.default_ttl,
            limits.max_ttl,
            limits.max_ttl,
        )?;
        Ok(OidcConnector {
            name: name.to_string(),
            leeway: settings.leeway.unwrap_or(DEFAULT_LEEWAY_SECS),
            settings,
            source,
            sealed_secret,
            ttl,
            max_ttl,
        })
    }

    /// Scopes to request, `openid` first, the groups scope when a groups claim is wanted.
    pub fn scopes(&self) -> String {
        let mut scopes = vec!["openid".to_string()];
        for scope in &self.settings.scopes {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        scopes.join(" ")
    }

    /// The rules an ID token from this connector must satisfy.
    pub fn rules(&self, nonce: Option<String>) -> ClaimRules {
        ClaimRules {
            issuer: self.settings.issuer.clone(),
            audiences: vec![self.settings.client_id.clone()],
            leeway: self.leeway,
            bound_claims: BTreeMap::new(),
            user_claim: self.settings.user_claim.clone(),
            groups_claim: self.settings.groups_claim.clone(),
            nonce,
        }
    }
}

impl JwtRole {
    /// Validates settings into a role.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn new(
        name: &str,
        settings: JwtRoleSettings,
        source: Source,
        limits: TokenLimits,
    ) -> Result<JwtRole, String> {
        validate_connector_name("role", name)?;
        validate_provider_url("issuer", &settings.issuer)?;
        let keys = match (&settings.jwks_url, &settings.jwks) {
            (Some(_), Some(_)) => {
                return Err("set one of `jwks_url` and `jwks`, not both".into());
            }
            (Some(url), None) => {
                validate_provider_url("jwks_url", url)?;
                KeySource::Url(url.clone())
            }
            (None, Some(doc)) => KeySource::Static(Arc::new(
                KeySet::from_json(doc.to_string().as_bytes())
                    .map_err(|e| format!("`jwks`: {e}"))?,
            )),
            (None, None) => KeySource::Discovery,
        };
        let kind = match settings.kind.as_str() {
            "workload" => PrincipalKind::Workload,
            "agent" => PrincipalKind::Agent,
            other => {
                return Err(format!(
                    "`kind` `{other}` is not a role kind: use `workload` or `agent`"
                ));
            }
        };
        if settings.user_claim.trim().is_empty() {
            return Err("`user_claim` is empty".into());
        }
        for (claim, patterns) in &settings.bound_claims {
            if patterns.to_vec().is_empty() {
                return Err(format!(
                    "bound claim `{claim}` lists no pattern; give at least one, such as `*`"
                ));
            }
        }
        for group in &settings.groups {
            crate::extract::validate_identifier("group", group).map_err(|e| e.message)?;
        }
        let default_max = match kind {
            PrincipalKind::Agent => AGENT_DEFAULT_MAX_TTL,
            _ => limits.max_ttl,
        };
        let (ttl, max_ttl) = lifetimes(
            settings.ttl.as_deref(),
            settings.max_ttl.as_deref(),
            limits.default_ttl,
            default_max,
            limits.max_ttl,
        )?;
        let rules = ClaimRules {
            issuer: settings.issuer.clone(),
            audiences: settings.bound_audiences.clone(),
            leeway: settings.leeway.unwrap_or(DEFAULT_LEEWAY_SECS),
            bound_claims: settings
                .bound_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.to_vec()))
                .collect(),
            user_claim: settings.user_claim.clone(),
            groups_claim: settings.groups_claim.clone(),
            nonce: None,
        };
        Ok(JwtRole {
            name: name.to_string(),
            settings,
            source,
            kind,
            keys,
            rules,
            ttl,
            max_ttl,
        })
    }
}

impl Registry {
    /// Builds the connectors from the config file and the stored rows. A stored connector
    /// that no longer validates (the server's limits changed) is skipped with a warning
    /// rather than stopping the server.
    pub fn build(config: &AuthConfig, rows: &[ConnectorRow], limits: TokenLimits) -> Registry {
        let mut registry = Registry::default();
        for row in rows {
            let built = match row.kind.as_str() {
                "oidc" => serde_json::from_str::<OidcSettings>(&row.config)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        OidcConnector::new(
                            &row.name,
                            s,
                            Source::Api,
                            row.sealed_secret.clone(),
                            limits,
                        )
                    })
                    .map(|c| {
                        registry.oidc.insert(row.name.clone(), Arc::new(c));
                    }),
                "jwt" => serde_json::from_str::<JwtRoleSettings>(&row.config)
                    .map_err(|e| e.to_string())
                    .and_then(|s| JwtRole::new(&row.name, s, Source::Api, limits))
                    .map(|r| {
                        registry.jwt.insert(row.name.clone(), Arc::new(r));
                    }),
                other => Err(format!("unknown connector kind `{other}`")),
            };
            if let Err(error) = built {
                tracing::warn!(kind = %row.kind, name = %row.name, %error, "stored connector skipped");
            }
        }
        // The config file wins: its connectors were validated at startup.
        for (name, settings) in &config.oidc {
            if let Ok(c) =
                OidcConnector::new(name, settings.clone(), Source::ConfigFile, None, limits)
            {
                registry.oidc.insert(name.clone(), Arc::new(c));
            }
        }
        for (name, settings) in &config.jwt {
            if let Ok(r) = JwtRole::new(name, settings.clone(), Source::ConfigFile, limits) {
                registry.jwt.insert(name.clone(), Arc::new(r));
            }
        }
        registry
    }
}

/// Checks the `[auth]` section at startup.
///
/// # Errors
/// A message naming the connector and the bad setting.
pub fn validate_config(config: &AuthConfig, limits: TokenLimits) -> Result<(), String> {
    for (name, settings) in &config.oidc {
        OidcConnector::new(name, settings.clone(), Source::ConfigFile, None, limits)
            .map_err(|e| format!("`auth.oidc.{name}`: {e}"))?;
        if let Some(path) = &settings.client_secret_file {
            std::fs::metadata(path).map_err(|e| {
                format!(
                    "`auth.oidc.{name}.client_secret_file` `{}`: {e}",
                    path.display()
                )
            })?;
        }
    }
    for (name, settings) in &config.jwt {
        JwtRole::new(name, settings.clone(), Source::ConfigFile, limits)
            .map_err(|e| format!("`auth.jwt.{name}`: {e}"))?;
    }
    if config.failed_logins_per_minute == Some(0) {
        return Err("`auth.failed_logins_per_minute` is 0; set 1 or more, such as 10".into());
    }
    Ok(())
}

/// The parts of an OpenID discovery document Latchkey uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

/// A fetched document and when it stops being trusted.
struct Cached<T> {
    value: Arc<T>,
    fetched: Instant,
    lifetime: Duration,
}

/// One key set: its last fetch, and a lock so concurrent logins share one fetch.
#[derive(Default)]
struct KeySetSlot {
    cached: Option<Cached<KeySet>>,
    /// When a fetch last failed, so a provider that is down is asked once per window.
    last_failure: Option<Instant>,
    last_error: Option<String>,
    /// When a token naming an unknown key last caused a fetch.
    last_kid_refetch: Option<Instant>,
}

/// One issuer's discovery document, locked so concurrent logins share one fetch.
#[derive(Default)]
struct DiscoveryEntry {
    cached: Option<Cached<Discovery>>,
    /// When a fetch last failed, so a provider that is down is asked once per window.
    last_failure: Option<Instant>,
    last_error: Option<String>,
}

type DiscoverySlot = Arc<tokio::sync::Mutex<DiscoveryEntry>>;

/// Fetches and caches what providers publish. Every fetch is counted, for `/metrics` and
/// for tests that check refetch limits.
pub struct ProviderClient {
    http: reqwest::Client,
    key_sets: Mutex<HashMap<String, Arc<tokio::sync::Mutex<KeySetSlot>>>>,
    discovery: Mutex<HashMap<String, DiscoverySlot>>,
    pub fetches: std::sync::atomic::AtomicU64,
}

impl ProviderClient {
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new() -> anyhow::Result<ProviderClient> {
        let http = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ProviderClient {
            http,
            key_sets: Mutex::new(HashMap::new()),
            discovery: Mutex::new(HashMap::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Duration), String> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot reach `{url}`: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("`{url}` answered {status}"));
        }
        let lifetime = cache_lifetime(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("cannot read `{url}`: {}", error_chain(&e)))?
            .to_vec();
        Ok((body, lifetime))
    }

    /// Returns the issuer's discovery document, fetched again once its cache lifetime has
    /// passed. After a failed fetch the provider is asked again only after
    /// [`REFETCH_WINDOW`]; meanwhile calls get the last good document, or the error.
    ///
    /// # Errors
    /// A message for the operator log when it cannot be fetched or does not match.
    pub async fn discovery(&self, issuer: &str) -> Result<Arc<Discovery>, String> {
        let slot = {
            let mut map = self
                .discovery
                .lock()
                .map_err(|_| "discovery cache poisoned")?;
            Arc::clone(map.entry(issuer.to_string()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(cached) = slot.cached.as_ref()
            && cached.fetched.elapsed() < cached.lifetime
        {
            return Ok(Arc::clone(&cached.value));
        }
        if slot
            .last_failure
            .is_some_and(|at| at.elapsed() < REFETCH_WINDOW)
        {
            return match (&slot.cached, &slot.last_error) {
                (Some(stale), _) => Ok(Arc::clone(&stale.value)),
                (None, Some(error)) => Err(error.clone()),
                (None, None) => Err(format!("no discovery document from `{issuer}` yet")),
            };
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        match self.get(&url).await.and_then(|(body, lifetime)| {
            let doc: Discovery = serde_json::from_slice(&body)
                .map_err(|e| format!("`{url}` is not a discovery document: {e}"))?;
            if doc.issuer != issuer {
                return Err(format!(
                    "`{url}` names issuer `{}`, not the configured `{issuer}`",
                    doc.issuer
                ));
            }
            validate_provider_url("jwks_uri", &doc.jwks_uri)?;
            Ok((doc, lifetime))
        }) {
            Ok((doc, lifetime)) => {
                let value = Arc::new(doc);
                slot.cached = Some(Cached {
                    value: Arc::clone(&value),
                    fetched: Instant::now(),
                    lifetime,
                });
                slot.last_failure = None;
                slot.last_error = None;
                Ok(value)
            }
            // A provider that is briefly down keeps working from the last good document.
            Err(error) => {
                slot.last_failure = Some(Instant::now());
                slot.last_error = Some(error.clone());
                match slot.cached.as_ref() {
                    Some(stale) => {
                        tracing::warn!(%error, "using the last discovery document");
                        Ok(Arc::clone(&stale.value))
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// Returns the key set at `url`. When `kid` is given and the cached set lacks it, the
    /// set is fetched again, at most once per [`REFETCH_WINDOW`].
    ///
    /// # Errors
    /// A message for the operator log when no key set could be fetched.
    pub async fn key_set(&self, url: &str, kid: Option<&str>) -> Result<Arc<KeySet>, String> {
        let slot = {
            let mut map = self.key_sets.lock().map_err(|_| "key set cache poisoned")?;
            Arc::clone(map.entry(url.to_string()).or_default())
        };
        let mut slot = slot.lock().await;
        let within_window =
            |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < REFETCH_WINDOW);
        let fresh = slot
            .cached
            .as_ref()
            .is_some_and(|c| c.fetched.elapsed() < c.lifetime);
        let kid_missing = match (kid, slot.cached.as_ref()) {
            (Some(kid), Some(cached)) => !cached.value.has_kid(kid),
            _ => false,
        };
        let serve_cached = if fresh {
            // A rotated key is fetched at once, but forged key ids cost one fetch per window.
            !kid_missing || within_window(slot.last_kid_refetch)
        } else {
            within_window(slot.last_failure)
        };
        if serve_cached {
            return match (&slot.cached, &slot.last_error) {
                (Some(cached), _) => Ok(Arc::clone(&cached.value)),
                (None, Some(error)) => Err(error.clone()),
                (None, None) => Err(format!("no key set from `{url}` yet")),
            };
        }
        if fresh && kid_missing {
            slot.last_kid_refetch = Some(Instant::now());
        }
        let fetched = self.get(url).await.and_then(|(body, lifetime)| {
            KeySet::from_json(&body)
                .map(|set| (set, lifetime))
                .map_err(|e| format!("`{url}`: {e}"))
        });
        match fetched {
            Ok((set, lifetime)) => {
                let value = Arc::new(set);
                slot.cached = Some(Cached {
                    value: Arc::clone(&value),
                    fetched: Instant::now(),
                    lifetime,
                });
                slot.last_error = None;
                slot.last_failure = None;
                Ok(value)
            }
            Err(error) => {
                slot.last_error = Some(error.clone());
                slot.last_failure = Some(Instant::now());
                match &slot.cached {
                    Some(stale) => {
                        tracing::warn!(%error, "using the last key set");
                        Ok(Arc::clone(&stale.value))
                    }
                    None => Err(error),
                }
            }
        }
    }
}

/// Formats an error and its causes on one line, because reqwest's top-level message
/// alone rarely names the cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How long a response may be cached: its `max-age`, within [`MIN_CACHE`] and [`MAX_CACHE`].
fn cache_lifetime(headers: &reqwest::header::HeaderMap) -> Duration {
    let max_age = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let (name, value) = directive.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        });
    match max_age {
        Some(seconds) => Duration::from_secs(seconds).clamp(MIN_CACHE, MAX_CACHE),
        None => DEFAULT_CACHE,
    }
}

/// The connectors in force, rebuilt when the stored rows change.
pub struct Identity {
    pub config: AuthConfig,
    pub limits: TokenLimits,
    registry: RwLock<Arc<Registry>>,
    fingerprint: Mutex<[u8; 32]>,
    pub provider: ProviderClient,
}

impl Identity {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: AuthConfig, limits: TokenLimits) -> anyhow::Result<Identity> {
        let registry = Registry::build(&config, &[], limits);
        Ok(Identity {
            config,
            limits,
            registry: RwLock::new(Arc::new(registry)),
            fingerprint: Mutex::new([0; 32]),
            provider: ProviderClient::new()?,
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .map(|r| Arc::clone(&r))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Rebuilds the registry when the stored connectors differ from the last build.
    /// Returns true when it rebuilt.
    pub fn refresh(&self, rows: &[ConnectorRow]) -> bool {
        let mut text = Vec::new();
        for row in rows {
            for part in [
                row.kind.as_bytes(),
                row.name.as_bytes(),
                row.config.as_bytes(),
                row.sealed_secret.as_deref().unwrap_or_default(),
            ] {
                text.extend_from_slice(&(part.len() as u64).to_be_bytes());
                text.extend_from_slice(part);
            }
        }
        // Rows are never empty of length prefixes, so an empty list still hashes apart from
        // the all-zero starting value.
        text.extend_from_slice(b"connectors");
        let fingerprint = latchkey_core::crypto::sha256(&text);
        let Ok(mut current) = self.fingerprint.lock() else {
            return false;
        };
        if *current == fingerprint {
            return false;
        }
        let registry = Registry::build(&self.config, rows, self.limits);
        if let Ok(mut guard) = self.registry.write() {
            *guard = Arc::new(registry);
        }
        *current = fingerprint;
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const LIMITS: TokenLimits = TokenLimits {
        default_ttl: 3600,
        max_ttl: 24 * 3600,
    };

    fn role(text: &str) -> Result<JwtRole, String> {
        let settings: JwtRoleSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        JwtRole::new("deploy", settings, Source::ConfigFile, LIMITS)
    }

    #[test]
    fn agent_roles_default_to_fifteen_minutes() {
        let agent = role("issuer = \"https://idp.example\"\nkind = \"agent\"").unwrap();
        assert_eq!((agent.ttl, agent.max_ttl), (900, 900));
        let workload = role("issuer = \"https://idp.example\"").unwrap();
        assert_eq!((workload.ttl, workload.max_ttl), (3600, 24 * 3600));
        let longer = role(
            "issuer = \"https://idp.example\"\nkind = \"agent\"\nmax_ttl = \"1h\"\nttl = \"30m\"",
        )
        .unwrap();
        assert_eq!((longer.ttl, longer.max_ttl), (1800, 3600));
    }

    #[test]
    fn role_settings_are_checked_with_clear_messages() {
        let cases = [
            ("issuer = \"http://idp.example\"", "must use https"),
            ("issuer = \"not a url\"", "is not a URL"),
            (
                "issuer = \"https://idp.example\"\nkind = \"robot\"",
                "`kind` `robot`",
            ),
            (
                "issuer = \"https://idp.example\"\njwks_url = \"https://idp.example/k\"\njwks = { keys = [] }",
                "not both",
            ),
            (
                "issuer = \"https://idp.example\"\nttl = \"2h\"\nmax_ttl = \"1h\"",
                "longer than `max_ttl`",
            ),
            (
                "issuer = \"https://idp.example\"\nmax_ttl = \"48h\"",
                "server's maximum",
            ),
            (
                "issuer = \"https://idp.example\"\nbound_claims = { ref = [] }",
                "bound claim `ref`",
            ),
            (
                "issuer = \"https://idp.example\"\nunknown = 1",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = role(text).err().unwrap_or_default();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(role("issuer = \"http://127.0.0.1:9000\"").is_ok());
        assert!(role("issuer = \"http://localhost:9000\"").is_ok());
        assert!(
            JwtRole::new(
                "Bad Name",
                role("issuer = \"https://i.example\"").unwrap().settings,
                Source::Api,
                LIMITS
            )
            .is_err()
        );
    }

    #[test]
    fn bound_claims_take_one_pattern_or_a_list() {
        let role = role(
            "issuer = \"https://idp.example\"\n[bound_claims]\nrepository = \"acme/*\"\nref = [\"refs/heads/main\", \"refs/tags/*\"]",
        )
        .unwrap();
        assert_eq!(
            role.rules.bound_claims["repository"],
            vec!["acme/*".to_string()]
        );
        assert_eq!(role.rules.bound_claims["ref"].len(), 2);
    }

    #[test]
    fn cache_lifetime_honours_max_age_within_bounds() {
        let headers = |value: &str| {
            let mut map = reqwest::header::HeaderMap::new();
            map.insert(reqwest::header::CACHE_CONTROL, value.parse().unwrap());
            map
        };
        assert_eq!(
            cache_lifetime(&headers("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(cache_lifetime(&headers("max-age=5")), MIN_CACHE);
        assert_eq!(cache_lifetime(&headers("max-age=99999999")), MAX_CACHE);
        assert_eq!(cache_lifetime(&headers("no-cache")), DEFAULT_CACHE);
        assert_eq!(
            cache_lifetime(&reqwest::header::HeaderMap::new()),
            DEFAULT_CACHE
        );
    }

    #[test]
    fn oidc_connector_checks() {
        let settings = |text: &str| toml::from_str::<OidcSettings>(text).unwrap();
        let ok = OidcConnector::new(
            "corp",
            settings("issuer = \"https://idp.example\"\nclient_id = \"lk\"\nscopes = [\"groups\", \"openid\"]"),
            Source::Api,
            None,
            LIMITS,
        )
        .unwrap();
        assert_eq!(ok.scopes(), "openid groups");
        let from_api_with_file = OidcConnector::new(
            "corp",
            settings(
                "issuer = \"https://idp.example\"\nclient_id = \"lk\"\nclient_secret_file = \"/x\"",
            ),
            Source::Api,
            None,
            LIMITS,
        );
        assert!(from_api_with_file.err().unwrap().contains("client_secret"));
        let no_ports = OidcConnector::new(
            "corp",
            settings("issuer = \"https://idp.example\"\nclient_id = \"lk\"\nredirect_ports = []"),
            Source::Api,
            None,
            LIMITS,
        );
        assert!(no_ports.err().unwrap().contains("redirect_ports"));
    }

    #[test]
    fn registry_prefers_the_config_file_and_skips_bad_rows() {
        let mut config = AuthConfig::default();
        config.jwt.insert(
            "deploy".into(),
            toml::from_str("issuer = \"https://file.example\"").unwrap(),
        );
        let row = |name: &str, config: &str| ConnectorRow {
            kind: "jwt".into(),
            name: name.into(),
            config: config.into(),
            sealed_secret: None,
            created_at: 0,
            updated_at: 0,
        };
        let rows = [
            row("deploy", r#"{"issuer":"https://api.example"}"#),
            row(
                "agents",
                r#"{"issuer":"https://api.example","kind":"agent"}"#,
            ),
            row("broken", r#"{"issuer":"ftp://x"}"#),
        ];
        let registry = Registry::build(&config, &rows, LIMITS);
        assert_eq!(
            registry.jwt["deploy"].settings.issuer,
            "https://file.example"
        );
        assert_eq!(registry.jwt["deploy"].source, Source::ConfigFile);
        assert_eq!(registry.jwt["agents"].kind, PrincipalKind::Agent);
        assert!(!registry.jwt.contains_key("broken"));
    }
}
