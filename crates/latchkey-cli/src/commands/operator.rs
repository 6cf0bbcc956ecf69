//! `lk operator`: initialize, unseal and seal a production server.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Initialize a new server: protect the root key with a passphrase (Argon2id, the
    /// default) or split it into Shamir shares. Prints the root token (and shares) once.
    Init {
        /// Split the unseal key into this many shares.
        #[arg(long, requires = "threshold")]
        shares: Option<u8>,
        /// How many shares unseal the server.
        #[arg(long, requires = "shares")]
        threshold: Option<u8>,
        /// Read the passphrase from standard input instead of prompting.
        #[arg(long, conflicts_with = "shares")]
        passphrase_stdin: bool,
    },
    /// Unseal with the passphrase or one share per call. Prompts unless `--stdin` is given.
    Unseal {
        /// Read the passphrase or share from standard input.
        #[arg(long)]
        stdin: bool,
        /// Discard the shares submitted so far.
        #[arg(long, conflicts_with = "stdin")]
        reset: bool,
    },
    /// Seal the server: it drops its keys from memory until unsealed again.
    Seal,
    /// Copy a stopped SQLite deployment into an empty PostgreSQL database and verify the
    /// copy: row counts per table, the audit chain and its checkpoints.
    Migrate(crate::commands::migrate::MigrateArgs),
}

fn read_stdin_line() -> CliResult<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    std::io::stdin().read_to_string(&mut text)?;
    let trimmed = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string());
    if trimmed.is_empty() {
        return Err(CliError::usage("standard input was empty"));
    }
    Ok(trimmed)
}

fn prompt(label: &str) -> CliResult<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "no terminal to prompt on: pass the input with `--stdin` (or `--passphrase-stdin`)",
        ));
    }
    rpassword::prompt_password(label)
        .map(Zeroizing::new)
        .map_err(CliError::from)
}

pub async fn run(command: OperatorCommand, format: Format) -> CliResult<()> {
    if let OperatorCommand::Migrate(args) = command {
        return crate::commands::migrate::run(args, format).await;
    }
    let client = Client::from_env()?;
    match command {
        OperatorCommand::Init {
            shares,
            threshold,
            passphrase_stdin,
        } => {
            let body = match (shares, threshold) {
                (Some(shares), Some(threshold)) => {
                    serde_json::json!({"shares": shares, "threshold": threshold})
                }
                _ => {
                    let passphrase = if passphrase_stdin {
                        read_stdin_line()?
                    } else {
                        let first = prompt("Passphrase: ")?;
                        let second = prompt("Repeat passphrase: ")?;
                        if first != second {
                            return Err(CliError::usage("the passphrases do not match"));
                        }
                        first
                    };
                    serde_json::json!({"passphrase": passphrase.as_str()})
                }
            };
            let response: serde_json::Value = client.post(&["v1", "sys", "init"], &body).await?;
            if format == Format::Json {
                output::json(&response);
                return Ok(());
            }
            outln!("Root token: {}", text(&response, "root_token"));
            if let Some(list) = response["shares"].as_array().filter(|l| !l.is_empty()) {
                for (i, share) in list.iter().enumerate() {
                    outln!(
                        "Unseal share {}: {}",
                        i + 1,
                        share.as_str().unwrap_or_default()
                    );
                }
            }
            eprintln!(
                "The server is initialized and sealed. These values are shown once: store them safely, then run `lk operator unseal`."
            );
            Ok(())
        }
        OperatorCommand::Unseal { stdin, reset } => {
            let body = if reset {
                serde_json::json!({"reset": true})
            } else {
                let key = if stdin {
                    read_stdin_line()?
                } else {
                    prompt("Passphrase or unseal share: ")?
                };
                serde_json::json!({"key": key.as_str()})
            };
            let response: serde_json::Value = client.post(&["v1", "sys", "unseal"], &body).await?;
            if format == Format::Json {
                output::json(&response);
            } else if response["sealed"].as_bool() == Some(false) {
                outln!("unsealed");
            } else {
                outln!(
                    "sealed: {}/{} shares submitted",
                    text(&response, "progress"),
                    text(&response, "threshold")
                );
            }
            Ok(())
        }
        OperatorCommand::Seal => {
            client
                .raw::<()>(
                    reqwest::Method::POST,
                    client.url(&["v1", "sys", "seal"])?,
                    None,
                )
                .await?;
            outln!("sealed");
            Ok(())
        }
        // Returned above, before a client was needed.
        OperatorCommand::Migrate(_) => Ok(()),
    }
}
