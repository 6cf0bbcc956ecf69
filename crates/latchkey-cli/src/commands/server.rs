//! `lk server`: run the broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use latchkey_server::config::ServerConfig;
use latchkey_server::serve::{DEFAULT_LISTEN, ServeOptions, serve};

use crate::error::{CliError, CliResult};

#[derive(Args)]
pub struct ServerArgs {
    /// Development mode: SQLite in the data directory, initialized and unsealed with a key
    /// file kept there, plain HTTP on 127.0.0.1. Prints the root token once.
    #[arg(long)]
    dev: bool,
    /// Data directory (dev mode); default: `latchkey` under the user's data directory.
    #[arg(long, env = "LATCHKEY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Database URL, such as postgres://latchkey@db.internal/latchkey; overrides the
    /// config file's `storage`. Default: SQLite in the data directory.
    #[arg(long, env = "LATCHKEY_STORAGE_URL")]
    storage_url: Option<String>,
    /// Production configuration file (TOML). The server starts sealed.
    #[arg(long, conflicts_with = "dev")]
    config: Option<PathBuf>,
}

pub async fn run(args: ServerArgs) -> CliResult<()> {
    let config = match &args.config {
        Some(path) => Some(ServerConfig::load(path).map_err(|e| CliError::usage(e.to_string()))?),
        None => None,
    };
    if !args.dev && config.is_none() {
        return Err(CliError::usage(
            "give `--dev` for a local development server, or `--config FILE` for production",
        ));
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => dirs::data_dir()
            .map(|d| d.join("latchkey"))
            .ok_or_else(|| CliError::usage("cannot find a data directory: pass `--data-dir`"))?,
    };
    let default_listen: SocketAddr = DEFAULT_LISTEN
        .parse()
        .map_err(|_| CliError::other("invalid built-in listen address"))?;
    let listen = args
        .listen
        .or_else(|| config.as_ref().and_then(|c| c.listen))
        .unwrap_or(default_listen);
    let options = ServeOptions {
        dev: args.dev,
        data_dir,
        listen,
        config,
        storage_url: args.storage_url,
    };
    let mut stdout = std::io::stdout();
    serve(options, &mut stdout).await.map_err(CliError::from)
}
