//! `lk token`: create, renew, revoke and list tokens.

use clap::Subcommand;

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user; prints the token on stdout (and details on stderr).
    Create {
        #[arg(long)]
        user: String,
        /// Lifetime, such as `15m` or `1h30m`.
        #[arg(long, allow_hyphen_values = true)]
        ttl: Option<String>,
        /// Maximum lifetime renewals may reach, such as `1h`.
        #[arg(long, allow_hyphen_values = true)]
        max_ttl: Option<String>,
        #[arg(long, default_value = "user", value_parser = ["user", "workload", "agent", "service_account"])]
        kind: String,
    },
    /// Renew a token (yours when no accessor is given), capped at its max TTL.
    Renew {
        accessor: Option<String>,
        /// How far from now, such as `30m`; defaults to the token's TTL.
        #[arg(long, allow_hyphen_values = true)]
        increment: Option<String>,
    },
    /// Revoke a token by accessor (`lk token list` shows them); takes effect at once.
    Revoke { accessor: String },
    /// List tokens by accessor (never the tokens themselves).
    List {
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn run(command: TokenCommand, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    match command {
        TokenCommand::Create {
            user,
            ttl,
            max_ttl,
            kind,
        } => {
            for (name, value) in [("--ttl", &ttl), ("--max-ttl", &max_ttl)] {
                if let Some(value) = value {
                    latchkey_core::duration::parse_duration(value)
                        .map_err(|e| CliError::usage(format!("{name}: {e}")))?;
                }
            }
            let body =
                serde_json::json!({"user": user, "ttl": ttl, "max_ttl": max_ttl, "kind": kind});
            let response: serde_json::Value = client.post(&["v1", "tokens"], &body).await?;
            if format == Format::Json {
                output::json(&response);
            } else {
                outln!("{}", text(&response, "token"));
                eprintln!(
                    "token for {}: accessor {}, expires {}, renewable until {}",
                    text(&response, "principal"),
                    text(&response, "accessor"),
                    text(&response, "expires_at"),
                    text(&response, "max_expires_at")
                );
            }
        }
        TokenCommand::Renew {
            accessor,
            increment,
        } => {
            if let Some(value) = &increment {
                latchkey_core::duration::parse_duration(value)
                    .map_err(|e| CliError::usage(format!("--increment: {e}")))?;
            }
            let body = serde_json::json!({"increment": increment});
            let response: serde_json::Value = match &accessor {
                Some(accessor) => {
                    client
                        .post(&["v1", "tokens", accessor, "renew"], &body)
                        .await?
                }
                None => {
                    client
                        .post(&["v1", "tokens", "self", "renew"], &body)
                        .await?
                }
            };
            for warning in response["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", warning.as_str().unwrap_or_default());
            }
            if format == Format::Json {
                output::json(&response);
            } else {
                outln!(
                    "renewed {}: expires {}",
                    text(&response, "accessor"),
                    text(&response, "expires_at")
                );
            }
        }
        TokenCommand::Revoke { accessor } => {
            let url = client.url(&["v1", "tokens", &accessor, "revoke"])?;
            client.raw::<()>(reqwest::Method::POST, url, None).await?;
            outln!("revoked {accessor}");
        }
        TokenCommand::List { user } => {
            let mut url = client.url(&["v1", "tokens"])?;
            if let Some(user) = &user {
                url.query_pairs_mut().append_pair("user", user);
            }
            let response: serde_json::Value = client
                .send::<(), _>(reqwest::Method::GET, url, None)
                .await?;
            if format == Format::Json {
                output::json(&response["tokens"]);
                return Ok(());
            }
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let rows: Vec<Vec<String>> = response["tokens"]
                .as_array()
                .map(|tokens| {
                    tokens
                        .iter()
                        .map(|t| {
                            let state = if !text(t, "revoked_at").is_empty() {
                                "revoked"
                            } else if text(t, "expires_at") <= now {
                                "expired"
                            } else {
                                "active"
                            };
                            vec![
                                text(t, "accessor"),
                                text(t, "principal"),
                                text(t, "kind"),
                                state.to_string(),
                                text(t, "expires_at"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(
                &["ACCESSOR", "PRINCIPAL", "KIND", "STATE", "EXPIRES"],
                &rows,
            );
        }
    }
    Ok(())
}
