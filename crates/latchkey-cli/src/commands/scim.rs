//! `lk scim token`: the bearer tokens an identity provider uses on `/scim/v2`.

use clap::Subcommand;

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum ScimCommand {
    /// Manage SCIM tokens.
    #[command(subcommand)]
    Token(ScimTokenCommand),
}

#[derive(Subcommand)]
pub enum ScimTokenCommand {
    /// Create a SCIM token (admin only); prints the token on stdout, once.
    Create {
        /// Lifetime, such as `90d`; without it the token lasts until revoked.
        #[arg(long, allow_hyphen_values = true)]
        ttl: Option<String>,
    },
    /// List SCIM tokens by accessor (never the tokens themselves).
    List,
    /// Revoke a SCIM token by accessor; the next SCIM request with it gets 401.
    Revoke { accessor: String },
}

pub async fn run(command: ScimCommand, format: Format) -> CliResult<()> {
    let ScimCommand::Token(command) = command;
    let client = Client::from_env()?;
    match command {
        ScimTokenCommand::Create { ttl } => {
            if let Some(value) = &ttl {
                latchkey_core::duration::parse_duration(value)
                    .map_err(|e| CliError::usage(format!("--ttl: {e}")))?;
            }
            let body = serde_json::json!({"ttl": ttl});
            let response: serde_json::Value = client.post(&["v1", "scim", "tokens"], &body).await?;
            if format == Format::Json {
                output::json(&response);
            } else {
                outln!("{}", text(&response, "token"));
                let expires = text(&response, "expires_at");
                eprintln!(
                    "SCIM token {}: {}; give it to the identity provider as the bearer token for this server's /scim/v2",
                    text(&response, "accessor"),
                    if expires.is_empty() {
                        "valid until revoked".to_string()
                    } else {
                        format!("expires {expires}")
                    }
                );
            }
        }
        ScimTokenCommand::List => {
            let url = client.url(&["v1", "scim", "tokens"])?;
            let response: serde_json::Value = client
                .send::<(), _>(reqwest::Method::GET, url, None)
                .await?;
            if format == Format::Json {
                output::json(&response["tokens"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = response["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let state = if text(t, "revoked_at").is_empty() {
                        "active"
                    } else {
                        "revoked"
                    };
                    vec![
                        text(t, "accessor"),
                        state.to_string(),
                        text(t, "created_at"),
                        text(t, "expires_at"),
                        text(t, "created_by"),
                    ]
                })
                .collect();
            output::table(
                &["ACCESSOR", "STATE", "CREATED", "EXPIRES", "CREATED BY"],
                &rows,
            );
        }
        ScimTokenCommand::Revoke { accessor } => {
            let url = client.url(&["v1", "scim", "tokens", &accessor, "revoke"])?;
            client.raw::<()>(reqwest::Method::POST, url, None).await?;
            outln!("revoked {accessor}");
        }
    }
    Ok(())
}
