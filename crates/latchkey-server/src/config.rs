//! The server configuration file (`lk server --config latchkey.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; defaults to 127.0.0.1:8740.
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database (`latchkey.db`).
    pub data_dir: PathBuf,
    /// Database URL: `postgres://user:password@host/db` for PostgreSQL, or `sqlite://PATH`;
    /// defaults to `latchkey.db` in `data_dir`.
    pub storage: Option<String>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub tokens: TokenConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key.
    pub key_file: Option<PathBuf>,
    /// Serve plain HTTP. Only for a server behind a TLS-terminating proxy on the same host.
    #[serde(default)]
    pub disable: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of a new token when the request names none, such as `1h`.
    pub default_ttl: String,
    /// Maximum lifetime a token may reach, renewals included, such as `24h`.
    pub max_ttl: String,
}

impl Default for TokenConfig {
    fn default() -> TokenConfig {
        TokenConfig {
            default_ttl: "1h".into(),
            max_ttl: "24h".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file `{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if !config.tls.disable && (config.tls.cert_file.is_none() || config.tls.key_file.is_none())
        {
            return Err(invalid(
                "TLS is required outside dev mode: set `[tls] cert_file` and `key_file`, or `disable = true` behind a TLS proxy".into(),
            ));
        }
        for (name, value) in [
            ("default_ttl", &config.tokens.default_ttl),
            ("max_ttl", &config.tokens.max_ttl),
        ] {
            latchkey_core::duration::parse_duration(value)
                .map_err(|e| invalid(format!("`tokens.{name}`: {e}")))?;
        }
        Ok(config)
    }
}
