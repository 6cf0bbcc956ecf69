//! `lk policy`: set, get, list, rm and validate Cedar policies.

use std::path::PathBuf;

use clap::Subcommand;

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy from a Cedar file.
    Set {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Print a policy's Cedar text.
    Get { name: String },
    /// List policies.
    List,
    /// Delete a policy.
    Rm { name: String },
    /// Check a Cedar file against Latchkey's schema, offline. Exits 2 when it is invalid.
    Validate { file: PathBuf },
}

fn read_policy(path: &PathBuf) -> CliResult<String> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read policy file `{}`: {e}", path.display())))
}

pub async fn run(command: PolicyCommand, format: Format) -> CliResult<()> {
    match command {
        PolicyCommand::Validate { file } => {
            let text = read_policy(&file)?;
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "policy".into());
            let statements = latchkey_core::policy::validate_policy(&name, &text)
                .map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?;
            if format == Format::Json {
                output::json(&serde_json::json!({"valid": true, "statements": statements}));
            } else {
                outln!(
                    "{}: valid ({statements} statement{})",
                    file.display(),
                    if statements == 1 { "" } else { "s" }
                );
            }
            return Ok(());
        }
        PolicyCommand::Set { name, file } => {
            let policy = read_policy(&file)?;
            let client = Client::from_env()?;
            let response: serde_json::Value = client
                .put(
                    &["v1", "policies", &name],
                    &serde_json::json!({"policy": policy}),
                )
                .await?;
            if format == Format::Json {
                output::json(&response);
            } else {
                let statements = text(&response, "statements");
                let noun = if statements == "1" {
                    "statement"
                } else {
                    "statements"
                };
                outln!(
                    "stored policy {} ({statements} {noun})",
                    text(&response, "name")
                );
            }
        }
        PolicyCommand::Get { name } => {
            let client = Client::from_env()?;
            let response: serde_json::Value = client.get(&["v1", "policies", &name]).await?;
            if format == Format::Json {
                output::json(&response);
            } else {
                out!("{}", text(&response, "policy"));
                if !text(&response, "policy").ends_with('\n') {
                    outln!();
                }
            }
        }
        PolicyCommand::List => {
            let client = Client::from_env()?;
            let response: serde_json::Value = client.get(&["v1", "policies"]).await?;
            if format == Format::Json {
                output::json(&response["policies"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = response["policies"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|p| {
                            vec![
                                text(p, "name"),
                                text(p, "statements"),
                                text(p, "updated_at"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(&["NAME", "STATEMENTS", "UPDATED"], &rows);
        }
        PolicyCommand::Rm { name } => {
            let client = Client::from_env()?;
            client.delete(&["v1", "policies", &name]).await?;
            outln!("deleted policy {name}");
        }
    }
    Ok(())
}
