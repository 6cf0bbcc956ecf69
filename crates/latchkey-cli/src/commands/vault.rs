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
                println!("created vault {}", text(&vault, "name"));
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
