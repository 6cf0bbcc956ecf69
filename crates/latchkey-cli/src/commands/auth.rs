//! `lk auth`: the identity connectors people and workloads sign in with.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum AuthCommand {
    /// List OIDC connectors and JWT roles.
    List,
    /// Manage OIDC connectors (sign-in for people).
    #[command(subcommand)]
    Oidc(OidcCommand),
    /// Manage JWT roles (login for CI jobs, workloads and agents).
    #[command(subcommand)]
    Jwt(JwtCommand),
}

#[derive(Subcommand)]
pub enum OidcCommand {
    /// Create or replace an OIDC connector.
    Set(Box<OidcSetArgs>),
    /// Show an OIDC connector.
    Show { name: String },
    /// Delete an OIDC connector.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum JwtCommand {
    /// Create or replace a JWT role.
    Set(Box<JwtSetArgs>),
    /// Show a JWT role.
    Show { name: String },
    /// Delete a JWT role.
    Rm { name: String },
}

#[derive(Args)]
pub struct OidcSetArgs {
    /// The connector's name, such as `corp`.
    name: String,
    /// The provider's issuer URL, exactly as its tokens carry it.
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    client_id: String,
    /// A file holding the client secret of a confidential client (stored sealed).
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// A scope to request; repeat for more (default: openid profile email).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// The ID token claim that names the user (default `sub`).
    #[arg(long)]
    user_claim: Option<String>,
    /// The ID token claim that carries groups, such as `groups`.
    #[arg(long)]
    groups_claim: Option<String>,
    /// A loopback port `lk login` may receive the redirect on; repeat for more (default 8250).
    #[arg(long = "redirect-port")]
    redirect_ports: Vec<u16>,
    /// Lifetime of the token a sign-in yields, such as `8h`.
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    max_ttl: Option<String>,
    /// Clock skew tolerated on token times, in seconds (default 60).
    #[arg(long)]
    leeway: Option<u64>,
    /// Refuse sign-in to users that do not exist yet (created by an admin or SCIM).
    #[arg(long)]
    existing_users_only: bool,
    /// A method that matches a sign-in to its SCIM user, tried in order; repeat for more
    /// (default: external_id, user_name, email).
    #[arg(long = "link-scim-by", value_parser = ["external_id", "user_name", "email"])]
    link_scim_by: Vec<String>,
    /// Refuse sign-in to anyone who matches no user provisioned over SCIM.
    #[arg(long)]
    require_scim_user: bool,
}

#[derive(Args)]
pub struct JwtSetArgs {
    /// The role's name, such as `ci` or `deploy`.
    name: String,
    /// The exact `iss` of accepted tokens.
    #[arg(long)]
    issuer: String,
    /// URL of the issuer's key set (default: found through OpenID discovery).
    #[arg(long, conflicts_with = "jwks_file")]
    jwks_url: Option<String>,
    /// A JWKS file with static keys.
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// An audience the token must be for; repeat for more. Without any, tokens that carry
    /// an `aud` are refused.
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// A claim that must match a glob, as `CLAIM=PATTERN` (`repository=acme/*`); repeat for
    /// more, and repeat a claim to allow several patterns.
    #[arg(long = "bound-claim")]
    bound_claims: Vec<String>,
    /// The claim that names the principal (default `sub`).
    #[arg(long)]
    user_claim: Option<String>,
    /// A claim carrying groups; tokens without it are refused.
    #[arg(long)]
    groups_claim: Option<String>,
    /// A group every principal of this role is in; repeat for more.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// `workload` or `agent` (agents get 15-minute tokens unless `--max-ttl` sets another maximum).
    #[arg(long, default_value = "workload", value_parser = ["workload", "agent"])]
    kind: String,
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    max_ttl: Option<String>,
    /// Clock skew tolerated on token times, in seconds (default 60).
    #[arg(long)]
    leeway: Option<u64>,
}

fn put_if(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_string(), value);
    }
}

fn oidc_body(args: &OidcSetArgs) -> CliResult<Value> {
    let mut body = Map::new();
    body.insert("issuer".into(), json!(args.issuer));
    body.insert("client_id".into(), json!(args.client_id));
    if !args.scopes.is_empty() {
        body.insert("scopes".into(), json!(args.scopes));
    }
    if !args.redirect_ports.is_empty() {
        body.insert("redirect_ports".into(), json!(args.redirect_ports));
    }
    put_if(
        &mut body,
        "user_claim",
        args.user_claim.as_ref().map(|v| json!(v)),
    );
    put_if(
        &mut body,
        "groups_claim",
        args.groups_claim.as_ref().map(|v| json!(v)),
    );
    put_if(&mut body, "ttl", args.ttl.as_ref().map(|v| json!(v)));
    put_if(
        &mut body,
        "max_ttl",
        args.max_ttl.as_ref().map(|v| json!(v)),
    );
    put_if(&mut body, "leeway", args.leeway.map(|v| json!(v)));
    if args.existing_users_only {
        body.insert("create_users".into(), json!(false));
    }
    if !args.link_scim_by.is_empty() {
        body.insert("link_scim_by".into(), json!(args.link_scim_by));
    }
    if args.require_scim_user {
        body.insert("require_scim_user".into(), json!(true));
    }
    if let Some(path) = &args.client_secret_file {
        let secret = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    CliError::usage(format!(
                        "cannot read --client-secret-file `{}`: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
        );
        if secret.is_empty() {
            return Err(CliError::usage(format!(
                "--client-secret-file `{}` is empty",
                path.display()
            )));
        }
        body.insert("client_secret".into(), json!(secret.as_str()));
    }
    Ok(Value::Object(body))
}

fn jwt_body(args: &JwtSetArgs) -> CliResult<Value> {
    let mut body = Map::new();
    body.insert("issuer".into(), json!(args.issuer));
    put_if(
        &mut body,
        "jwks_url",
        args.jwks_url.as_ref().map(|v| json!(v)),
    );
    if let Some(path) = &args.jwks_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!("cannot read --jwks-file `{}`: {e}", path.display()))
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| {
            CliError::usage(format!("--jwks-file `{}` is not JSON: {e}", path.display()))
        })?;
        body.insert("jwks".into(), doc);
    }
    if !args.audiences.is_empty() {
        body.insert("bound_audiences".into(), json!(args.audiences));
    }
    let mut claims: Map<String, Value> = Map::new();
    for pair in &args.bound_claims {
        let Some((claim, pattern)) = pair.split_once('=') else {
            return Err(CliError::usage(format!(
                "--bound-claim `{pair}` is not CLAIM=PATTERN, such as `repository=acme/*`"
            )));
        };
        if claim.trim().is_empty() {
            return Err(CliError::usage(format!(
                "--bound-claim `{pair}` names no claim"
            )));
        }
        let entry = claims
            .entry(claim.trim().to_string())
            .or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(json!(pattern));
        }
    }
    if !claims.is_empty() {
        body.insert("bound_claims".into(), Value::Object(claims));
    }
    if !args.groups.is_empty() {
        body.insert("groups".into(), json!(args.groups));
    }
    body.insert("kind".into(), json!(args.kind));
    put_if(
        &mut body,
        "user_claim",
        args.user_claim.as_ref().map(|v| json!(v)),
    );
    put_if(
        &mut body,
        "groups_claim",
        args.groups_claim.as_ref().map(|v| json!(v)),
    );
    put_if(&mut body, "ttl", args.ttl.as_ref().map(|v| json!(v)));
    put_if(
        &mut body,
        "max_ttl",
        args.max_ttl.as_ref().map(|v| json!(v)),
    );
    put_if(&mut body, "leeway", args.leeway.map(|v| json!(v)));
    Ok(Value::Object(body))
}

fn list_text(value: &Value) -> String {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn show(kind: &str, value: &Value, format: Format) {
    if format == Format::Json {
        output::json(value);
        return;
    }
    outln!(
        "{kind} `{}` ({})",
        text(value, "name"),
        text(value, "source")
    );
    if let Some(settings) = value["settings"].as_object() {
        for (key, setting) in settings.iter().filter(|(_, v)| !v.is_null()) {
            let shown = match setting {
                Value::String(s) => s.clone(),
                Value::Array(_) => list_text(setting),
                other => other.to_string(),
            };
            outln!("  {key:<18} {shown}");
        }
    }
    if value.get("has_client_secret").is_some() {
        outln!(
            "  {:<18} {}",
            "client secret",
            if value["has_client_secret"] == true {
                "stored"
            } else {
                "none"
            }
        );
    }
    outln!("  {:<18} {}", "token ttl", text(value, "ttl"));
    outln!("  {:<18} {}", "token max ttl", text(value, "max_ttl"));
}

pub async fn run(command: AuthCommand, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    match command {
        AuthCommand::List => {
            let listed: Value = client.get(&["v1", "auth", "connectors"]).await?;
            if format == Format::Json {
                output::json(&listed);
                return Ok(());
            }
            let mut rows = Vec::new();
            for c in listed["oidc"].as_array().into_iter().flatten() {
                rows.push(vec![
                    "oidc".into(),
                    text(c, "name"),
                    text(&c["settings"], "issuer"),
                    format!("client {}", text(&c["settings"], "client_id")),
                    text(c, "ttl"),
                    text(c, "source"),
                ]);
            }
            for r in listed["jwt"].as_array().into_iter().flatten() {
                rows.push(vec![
                    "jwt".into(),
                    text(r, "name"),
                    text(&r["settings"], "issuer"),
                    format!(
                        "{} {}",
                        text(&r["settings"], "kind"),
                        list_text(&r["settings"]["groups"])
                    ),
                    text(r, "ttl"),
                    text(r, "source"),
                ]);
            }
            output::table(
                &["KIND", "NAME", "ISSUER", "DETAIL", "TTL", "SOURCE"],
                &rows,
            );
        }
        AuthCommand::Oidc(OidcCommand::Set(args)) => {
            let body = oidc_body(&args)?;
            let saved: Value = client
                .put(&["v1", "auth", "oidc", "connectors", &args.name], &body)
                .await?;
            if format == Format::Json {
                output::json(&saved);
            } else {
                outln!("saved OIDC connector {}", args.name);
            }
        }
        AuthCommand::Oidc(OidcCommand::Show { name }) => {
            let value: Value = client
                .get(&["v1", "auth", "oidc", "connectors", &name])
                .await?;
            show("OIDC connector", &value, format);
        }
        AuthCommand::Oidc(OidcCommand::Rm { name }) => {
            client
                .delete(&["v1", "auth", "oidc", "connectors", &name])
                .await?;
            outln!("deleted OIDC connector {name}");
        }
        AuthCommand::Jwt(JwtCommand::Set(args)) => {
            let body = jwt_body(&args)?;
            let saved: Value = client
                .put(&["v1", "auth", "jwt", "roles", &args.name], &body)
                .await?;
            if format == Format::Json {
                output::json(&saved);
            } else {
                outln!(
                    "saved JWT role {} ({}, tokens {} up to {})",
                    args.name,
                    args.kind,
                    text(&saved, "ttl"),
                    text(&saved, "max_ttl")
                );
            }
        }
        AuthCommand::Jwt(JwtCommand::Show { name }) => {
            let value: Value = client.get(&["v1", "auth", "jwt", "roles", &name]).await?;
            show("JWT role", &value, format);
        }
        AuthCommand::Jwt(JwtCommand::Rm { name }) => {
            client
                .delete(&["v1", "auth", "jwt", "roles", &name])
                .await?;
            outln!("deleted JWT role {name}");
        }
    }
    Ok(())
}
