//! Starting the server: open the store, unseal (dev mode) or wait sealed, bind, serve.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use latchkey_core::crypto::Key256;
use latchkey_store::{PostgresStore, SqliteStore, Store, redact_url};
use zeroize::Zeroizing;

use crate::config::ServerConfig;
use crate::state::{AppState, Settings};
use crate::sys::{UnsealMethod, initialize, load_seal_config};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8740";
const KEY_FILE: &str = "unseal.key";
const DATABASE_FILE: &str = "latchkey.db";
/// How often the server compares its policies with the store's, which bounds how long a
/// policy change made on another server takes to apply here.
const POLICY_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub struct ServeOptions {
    pub dev: bool,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub config: Option<ServerConfig>,
    /// Database URL; overrides the config file's `storage`.
    pub storage_url: Option<String>,
}

/// Opens the store named by `url`, or the SQLite file in `data_dir` when there is none.
async fn open_store(url: Option<&str>, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    match url {
        None => {
            let path = data_dir.join(DATABASE_FILE);
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("cannot open the database `{}`", path.display()))?;
            tracing::info!(storage = %path.display(), "storage: SQLite");
            Ok(Arc::new(store))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PostgresStore::open(url)
                .await
                .with_context(|| format!("cannot open the database `{}`", redact_url(url)))?;
            tracing::info!(storage = %redact_url(url), "storage: PostgreSQL");
            Ok(Arc::new(store))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let store = SqliteStore::open_url(url)
                .await
                .with_context(|| format!("cannot open the database `{url}`"))?;
            tracing::info!(storage = %url, "storage: SQLite");
            Ok(Arc::new(store))
        }
        Some(url) => bail!(
            "unsupported storage URL `{}`: use postgres://USER:PASSWORD@HOST/DATABASE or sqlite://PATH",
            redact_url(url)
        ),
    }
}

fn settings_from(options: &ServeOptions) -> anyhow::Result<Settings> {
    let mut settings = Settings {
        dev: options.dev,
        ..Settings::default()
    };
    if let Some(config) = &options.config {
        let parse = |text: &str| latchkey_core::duration::parse_duration(text).map(|d| d.as_secs());
        settings.default_token_ttl = parse(&config.tokens.default_ttl)?;
        settings.max_token_ttl = parse(&config.tokens.max_ttl)?;
        settings.max_body_bytes = config.limits.max_body_bytes;
        settings.audit_checkpoints = config.audit.checkpoints().map_err(anyhow::Error::msg)?;
        settings.auth = config.auth.clone();
        settings.audit_retention = config.audit.retention().map_err(anyhow::Error::msg)?;
        settings.notify = config.notify.clone();
    }
    Ok(settings)
}

fn create_data_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create data directory `{}`", path.display()))
}

/// Takes an exclusive lock on the data directory for the life of the process, so a second
/// server on the same directory fails at start instead of forking the audit chain.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    match try_lock_data_dir(data_dir)? {
        Some(file) => Ok(file),
        None => bail!(
            "the data directory `{}` is in use by another `lk server`; stop it or give another `--data-dir`",
            data_dir.display()
        ),
    }
}

/// Takes the lock that `lk server` keeps on its data directory while it runs, creating the
/// lock file when needed. Returns None when another process has it. The lock lasts until the
/// returned file is dropped.
///
/// # Errors
/// When the lock file cannot be created or locked.
pub fn try_lock_data_dir(data_dir: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock `{}`", path.display()))
        }
    }
}

/// Reads the dev-mode unseal key, creating it (mode 0600) when `create` is set.
fn dev_unseal_key(data_dir: &Path, create: bool) -> anyhow::Result<Key256> {
    let path = data_dir.join(KEY_FILE);
    if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read `{}`", path.display()))?,
        );
        let bytes = Zeroizing::new(
            hex::decode(text.trim())
                .with_context(|| format!("`{}` is not a hex key", path.display()))?,
        );
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .with_context(|| format!("`{}` does not hold a 32-byte key", path.display()))?;
        return Ok(Key256::from_bytes(array));
    }
    if !create {
        bail!(
            "the data directory `{}` is initialized but its key file `{KEY_FILE}` is missing; restore it to unseal",
            data_dir.display()
        );
    }
    let key = Key256::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.expose())));
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

fn tls_config(config: &ServerConfig) -> anyhow::Result<Option<rustls::ServerConfig>> {
    if config.tls.disable {
        return Ok(None);
    }
    let (Some(cert_path), Some(key_path)) = (&config.tls.cert_file, &config.tls.key_file) else {
        bail!("TLS needs `cert_file` and `key_file`");
    };
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("cannot read `{}`", cert_path.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("`{}` is not a PEM certificate chain", cert_path.display()))?;
    if certs.is_empty() {
        bail!("`{}` contains no certificate", cert_path.display());
    }
    let key_pem = Zeroizing::new(
        std::fs::read(key_path).with_context(|| format!("cannot read `{}`", key_path.display()))?,
    );
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("`{}` is not a PEM private key", key_path.display()))?
        .with_context(|| format!("`{}` contains no private key", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and private key do not form a usable TLS identity")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(server))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Runs the server until SIGINT or SIGTERM. The `export` lines go to `out`.
pub async fn serve(options: ServeOptions, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let data_dir = options
        .config
        .as_ref()
        .map(|c| c.data_dir.clone())
        .unwrap_or_else(|| options.data_dir.clone());
    create_data_dir(&data_dir)?;
    let _data_dir_lock = lock_data_dir(&data_dir)?;
    let tls = match &options.config {
        Some(config) if !options.dev => tls_config(config)?,
        _ => None,
    };
    if !options.dev && options.config.is_none() {
        bail!("give `--dev` for a local development server, or `--config FILE` for production");
    }

    let storage_url = options
        .storage_url
        .clone()
        .or_else(|| options.config.as_ref().and_then(|c| c.storage.clone()));
    let store = open_store(storage_url.as_deref(), &data_dir).await?;
    let mut settings = settings_from(&options)?;
    settings.tls = tls.is_some();
    let state = Arc::new(AppState::new(store, settings).await?);
    if let Some(config) = &options.config {
        let sinks =
            crate::audit_sinks::check_all(&config.audit.sinks).map_err(anyhow::Error::msg)?;
        let node = uuid::Uuid::new_v4().to_string();
        crate::audit_sinks::start(Arc::clone(&state.store), state.audit.feed(), sinks, &node)
            .map_err(anyhow::Error::msg)?;
    }

    let listener = std::net::TcpListener::bind(options.listen)
        .with_context(|| format!("cannot listen on `{}`", options.listen))?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "serving plain HTTP on a non-loopback address: tokens and secrets cross the network unencrypted; use TLS or listen on 127.0.0.1 behind a TLS proxy");
    }

    let seal_config = load_seal_config(&state)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if options.dev {
        match seal_config {
            None => {
                let key = dev_unseal_key(&data_dir, true)?;
                let initialized = initialize(&state, UnsealMethod::KeyFile(key))
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                state.keyring.install_root(initialized.root_key);
                writeln!(out, "export LATCHKEY_ADDR={scheme}://{address}")?;
                writeln!(
                    out,
                    "export LATCHKEY_TOKEN={}",
                    initialized.root_token.expose()
                )?;
            }
            Some(config) => {
                let key = dev_unseal_key(&data_dir, false)?;
                state.keyring.unseal_with_key(&config, &key)?;
                writeln!(out, "export LATCHKEY_ADDR={scheme}://{address}")?;
            }
        }
        out.flush()?;
        tracing::warn!(data_dir = %data_dir.display(), "dev mode: the unseal key is stored next to the data; do not use for production");
    } else if seal_config.is_none() {
        tracing::info!("not initialized: run `lk operator init`");
    } else {
        tracing::info!("sealed: run `lk operator unseal`");
    }
    tracing::info!(%address, scheme, "listening");

    // Other servers on the same database may change policies; pick their changes up.
    let watched = Arc::clone(&state);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(POLICY_REFRESH_INTERVAL);
        let mut failing = false;
        loop {
            ticks.tick().await;
            let refreshed = match watched.refresh_policies().await {
                Ok(changed) => watched
                    .refresh_connectors()
                    .await
                    .map(|_| changed)
                    .map_err(anyhow::Error::from),
                Err(error) => Err(error),
            };
            match refreshed {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("checking the stored policies works again");
                }
                Ok(_) => {}
                // Logged once per outage rather than every second.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "checking the stored policies failed");
                }
                Err(_) => {}
            }
        }
    });

    crate::jobs::spawn(Arc::clone(&state));

    let app =
        crate::app::router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        Some(server_config) => {
            let handle = axum_server::Handle::new();
            let shutdown = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let rustls =
                axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_config));
            axum_server::from_tcp_rustls(listener, rustls)
                .handle(handle)
                .serve(app)
                .await?;
        }
    }
    Ok(())
}
