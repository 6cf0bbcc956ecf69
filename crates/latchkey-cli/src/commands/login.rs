//! `lk login`, `lk logout` and `lk whoami`.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

use clap::Args;
use zeroize::Zeroizing;

use crate::client::{Client, config_dir, token_file};
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Args)]
pub struct LoginArgs {
    /// The token to store; `-` reads it from standard input.
    #[arg(long)]
    token: String,
}

pub async fn login(args: LoginArgs, format: Format) -> CliResult<()> {
    let token = if args.token == "-" {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut text)?;
        Zeroizing::new(text.trim().to_string())
    } else {
        Zeroizing::new(args.token.trim().to_string())
    };
    latchkey_core::token::RawToken::parse(&token)
        .map_err(|e| CliError::usage(format!("invalid token: {e}")))?;

    let client = Client::new(None)?.with_token(token.clone());
    let me: serde_json::Value = client.get(&["v1", "tokens", "self"]).await?;

    let dir = config_dir()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = token_file()?;
    let temporary = dir.join(".token.tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;

    if format == Format::Json {
        output::json(&me);
    } else {
        println!(
            "signed in as {} (token {} expires {})",
            text(&me, "principal"),
            text(&me["token"], "accessor"),
            text(&me["token"], "expires_at")
        );
        println!("token stored in {}", path.display());
    }
    Ok(())
}

/// Revokes the token `lk login` stored and removes it. A token given in LATCHKEY_TOKEN is
/// left alone: logging out never revokes a token the user did not store.
pub async fn logout() -> CliResult<()> {
    let path = token_file()?;
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Zeroizing::new(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::usage(format!(
                "no stored token in `{}`: `lk logout` only ends a session started with `lk login`",
                path.display()
            )));
        }
        Err(e) => {
            return Err(CliError::other(format!(
                "cannot read `{}`: {e}",
                path.display()
            )));
        }
    };
    let client = Client::new(None)?.with_token(stored);
    let url = client.url(&["v1", "tokens", "self", "revoke"])?;
    let revoked = client.raw::<()>(reqwest::Method::POST, url, None).await;
    if let Err(error) = &revoked
        && error.exit_code != crate::error::EXIT_UNAUTHENTICATED
    {
        return Err(CliError {
            exit_code: error.exit_code,
            message: format!("{}; the stored token was kept", error.message),
        });
    }
    std::fs::remove_file(&path)
        .map_err(|e| CliError::other(format!("cannot remove `{}`: {e}", path.display())))?;
    match revoked {
        Ok(_) => println!("token revoked and removed"),
        Err(_) => println!("the stored token was no longer valid; removed it"),
    }
    Ok(())
}

pub async fn whoami(format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    let me: serde_json::Value = client.get(&["v1", "tokens", "self"]).await?;
    if format == Format::Json {
        output::json(&me);
        return Ok(());
    }
    let groups = me["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!("principal:  {}", text(&me, "principal"));
    println!(
        "groups:     {}",
        if groups.is_empty() {
            "-".to_string()
        } else {
            groups
        }
    );
    println!(
        "token:      {} ({})",
        text(&me["token"], "accessor"),
        text(&me["token"], "kind")
    );
    println!("expires:    {}", text(&me["token"], "expires_at"));
    println!("max expiry: {}", text(&me["token"], "max_expires_at"));
    println!(
        "issued by:  {}",
        if text(&me["token"], "created_by").is_empty() {
            "server initialization".to_string()
        } else {
            text(&me["token"], "created_by")
        }
    );
    Ok(())
}
