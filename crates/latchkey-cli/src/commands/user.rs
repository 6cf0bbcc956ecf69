//! `lk user`: local principals and their groups.

use clap::Subcommand;

use crate::client::Client;
use crate::commands::text;
use crate::error::CliResult;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user (or, with `--kind`, a workload, agent or service account).
    Create {
        name: String,
        /// A group to join; repeat for more.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long, default_value = "user", value_parser = ["user", "workload", "agent", "service_account"])]
        kind: String,
    },
    /// List principals.
    List,
    /// Replace a user's groups (no `--group` removes them all).
    SetGroups {
        name: String,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

fn joined(value: &serde_json::Value) -> String {
    value
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub async fn run(command: UserCommand, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    match command {
        UserCommand::Create { name, groups, kind } => {
            let body = serde_json::json!({"name": name, "groups": groups, "kind": kind});
            let user: serde_json::Value = client.post(&["v1", "users"], &body).await?;
            if format == Format::Json {
                output::json(&user);
            } else {
                outln!(
                    "created {} (groups: {})",
                    text(&user, "principal"),
                    joined(&user["groups"])
                );
            }
        }
        UserCommand::List => {
            let list: serde_json::Value = client.get(&["v1", "users"]).await?;
            if format == Format::Json {
                output::json(&list["users"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list["users"]
                .as_array()
                .map(|users| {
                    users
                        .iter()
                        .map(|u| {
                            vec![
                                text(u, "name"),
                                text(u, "kind"),
                                joined(&u["groups"]),
                                text(u, "active"),
                                text(u, "created_at"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(&["NAME", "KIND", "GROUPS", "ACTIVE", "CREATED"], &rows);
        }
        UserCommand::SetGroups { name, groups } => {
            let user: serde_json::Value = client
                .put(
                    &["v1", "users", &name, "groups"],
                    &serde_json::json!({"groups": groups}),
                )
                .await?;
            if format == Format::Json {
                output::json(&user);
            } else {
                outln!(
                    "{} groups: {}",
                    text(&user, "principal"),
                    joined(&user["groups"])
                );
            }
        }
    }
    Ok(())
}
