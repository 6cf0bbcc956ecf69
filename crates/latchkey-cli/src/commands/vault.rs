//! `lk vault`: create and list vaults.

use clap::Subcommand;

use crate::client::Client;
use crate::commands::{parse_tags, text};
use crate::error::CliResult;
use crate::output::{self, Format, tags_text};

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Create a vault.
    Create {
        name: String,
        /// A tag such as `env=prod`; repeat for more.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List the vaults you can see.
    List,
    /// Show a vault's access settings, or change them with the flags given.
    Access {
        name: String,
        /// Distinct approvals a request needs (1 to 10); the requester's own never counts.
        #[arg(long)]
        approvals: Option<u32>,
        /// Maximum duration a request may ask for, such as `8h`.
        #[arg(long, value_name = "DURATION")]
        max_grant: Option<String>,
        /// How long a request may wait for approval before it expires, such as `1h`.
        #[arg(long, value_name = "DURATION")]
        request_expiry: Option<String>,
        /// Whether requests must give a reason.
        #[arg(long, value_name = "BOOL")]
        require_reason: Option<bool>,
        /// Maximum duration of break-glass access, such as `1h`.
        #[arg(long, value_name = "DURATION")]
        break_glass_max: Option<String>,
    },
}

pub async fn run(command: VaultCommand, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    match command {
        VaultCommand::Create { name, tags } => {
            let tags = parse_tags(&tags)?;
            let body = serde_json::json!({"name": name, "tags": tags});
            let vault: serde_json::Value = client.post(&["v1", "vaults"], &body).await?;
            if format == Format::Json {
                output::json(&vault);
            } else {
                outln!("created vault {}", text(&vault, "name"));
            }
        }
        VaultCommand::Access {
            name,
            approvals,
            max_grant,
            request_expiry,
            require_reason,
            break_glass_max,
        } => {
            for (flag, value) in [
                ("--max-grant", &max_grant),
                ("--request-expiry", &request_expiry),
                ("--break-glass-max", &break_glass_max),
            ] {
                if let Some(value) = value {
                    latchkey_core::duration::parse_duration(value)
                        .map_err(|e| crate::error::CliError::usage(format!("{flag}: {e}")))?;
                }
            }
            let changes = approvals.is_some()
                || max_grant.is_some()
                || request_expiry.is_some()
                || require_reason.is_some()
                || break_glass_max.is_some();
            let settings: serde_json::Value = if changes {
                let body = serde_json::json!({
                    "approvals": approvals,
                    "max_grant": max_grant,
                    "request_expiry": request_expiry,
                    "require_reason": require_reason,
                    "break_glass_max": break_glass_max,
                });
                let url = client.url(&["v1", "vaults", &name, "access"])?;
                client
                    .send(reqwest::Method::PATCH, url, Some(&body))
                    .await?
            } else {
                client.get(&["v1", "vaults", &name, "access"]).await?
            };
            if format == Format::Json {
                output::json(&settings);
            } else {
                for key in [
                    "approvals",
                    "max_grant",
                    "request_expiry",
                    "require_reason",
                    "break_glass_max",
                ] {
                    outln!("{:<16} {}", format!("{key}:"), text(&settings, key));
                }
            }
        }
        VaultCommand::List => {
            let list: serde_json::Value = client.get(&["v1", "vaults"]).await?;
            if format == Format::Json {
                output::json(&list["vaults"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list["vaults"]
                .as_array()
                .map(|vaults| {
                    vaults
                        .iter()
                        .map(|v| {
                            vec![
                                text(v, "name"),
                                v["tags"].as_object().map(tags_text).unwrap_or_default(),
                                text(v, "created_at"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(&["NAME", "TAGS", "CREATED"], &rows);
        }
    }
    Ok(())
}
