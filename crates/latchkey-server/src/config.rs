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
    #[serde(default)]
    pub audit: AuditConfig,
    /// Identity connectors: `[auth.oidc.NAME]` and `[auth.jwt.NAME]`.
    #[serde(default)]
    pub auth: crate::identity::AuthConfig,
    /// Access-request notifications: `[notify]` and `[[notify.webhooks]]`.
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Sign a checkpoint after this many audit events; at least 1.
    pub checkpoint_every: u64,
    /// Sign a checkpoint when an unsigned event is this old, such as `60s`; at least `1s`.
    pub checkpoint_interval: String,
    /// Streaming copies of the log (`[[audit.sinks]]`).
    #[serde(default)]
    pub sinks: Vec<crate::audit_sinks::SinkConfig>,
    /// Age after which events may be purged, such as `400d`; unset keeps every event.
    pub retention: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            checkpoint_every: 1000,
            checkpoint_interval: "60s".into(),
            sinks: Vec::new(),
            retention: None,
        }
    }
}

impl AuditConfig {
    /// Parses `retention`.
    ///
    /// # Errors
    /// A message naming the value when it is not a duration of at least one second.
    pub fn retention(&self) -> Result<Option<(String, std::time::Duration)>, String> {
        let Some(text) = &self.retention else {
            return Ok(None);
        };
        let period = latchkey_core::duration::parse_duration(text)
            .map_err(|e| format!("`audit.retention`: {e}"))?;
        if period.as_secs() == 0 {
            return Err(format!(
                "`audit.retention` `{text}` is under one second; give a period such as `400d`"
            ));
        }
        Ok(Some((text.clone(), period)))
    }

    /// Converts these values to checkpoint settings.
    ///
    /// # Errors
    /// A message naming the bad value, when `checkpoint_every` is 0 or
    /// `checkpoint_interval` is not a duration of at least one second.
    pub fn checkpoints(&self) -> Result<crate::audit_log::CheckpointSettings, String> {
        if self.checkpoint_every == 0 {
            return Err("`audit.checkpoint_every` is 0; set it to 1 or more, such as 1000".into());
        }
        let interval = latchkey_core::duration::parse_duration(&self.checkpoint_interval)
            .map_err(|e| format!("`audit.checkpoint_interval`: {e}"))?;
        if interval.as_secs() == 0 {
            return Err(format!(
                "`audit.checkpoint_interval` `{}` is under one second; set at least `1s`, such as `60s`",
                self.checkpoint_interval
            ));
        }
        Ok(crate::audit_log::CheckpointSettings {
            every: self.checkpoint_every,
            interval,
        })
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
        config.audit.checkpoints().map_err(invalid)?;
        let seconds = |text: &str| {
            latchkey_core::duration::parse_duration(text)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        };
        crate::identity::validate_config(
            &config.auth,
            crate::identity::TokenLimits {
                default_ttl: seconds(&config.tokens.default_ttl),
                max_ttl: seconds(&config.tokens.max_ttl),
            },
        )
        .map_err(invalid)?;
        crate::audit_sinks::check_all(&config.audit.sinks).map_err(invalid)?;
        config.audit.retention().map_err(invalid)?;
        // Reads the webhooks' signing keys too, so a missing one stops the start here.
        config.notify.check().map_err(invalid)?;
        Ok(config)
    }
}

#[cfg(test)]
mod audit_config_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn audit(text: &str) -> Result<crate::audit_log::CheckpointSettings, String> {
        toml::from_str::<AuditConfig>(text).unwrap().checkpoints()
    }

    #[test]
    fn audit_section_sets_checkpoints() {
        let settings = audit("checkpoint_every = 50\ncheckpoint_interval = \"2m\"").unwrap();
        assert_eq!(settings.every, 50);
        assert_eq!(settings.interval, std::time::Duration::from_secs(120));
        assert_eq!(
            AuditConfig::default().checkpoints().unwrap(),
            crate::audit_log::CheckpointSettings::default()
        );
    }

    #[test]
    fn audit_section_rejects_zero_and_bad_durations() {
        assert_eq!(
            audit("checkpoint_every = 0\ncheckpoint_interval = \"60s\"").unwrap_err(),
            "`audit.checkpoint_every` is 0; set it to 1 or more, such as 1000"
        );
        assert!(
            audit("checkpoint_every = 5\ncheckpoint_interval = \"0s\"")
                .unwrap_err()
                .contains("under one second"),
        );
        assert!(
            audit("checkpoint_every = 5\ncheckpoint_interval = \"soon\"")
                .unwrap_err()
                .starts_with("`audit.checkpoint_interval`: "),
        );
    }
}
