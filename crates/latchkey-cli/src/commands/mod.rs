//! One module per `lk` command.

pub mod access;
pub mod audit;
pub mod auth;
pub mod inject;
pub mod login;
pub mod migrate;
pub mod operator;
pub mod policy;
pub mod read;
pub mod report;
pub mod resolve;
pub mod run;
pub mod scim;
pub mod secret;
pub mod server;
pub mod status;
pub mod token;
pub mod user;
pub mod vault;

use crate::error::{CliError, CliResult};

/// Parses `k=v` pairs such as `--tag env=prod`.
pub fn parse_tags(pairs: &[String]) -> CliResult<serde_json::Map<String, serde_json::Value>> {
    let mut tags = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "invalid tag `{pair}`: write it as KEY=VALUE, such as env=prod"
            ))
        })?;
        if key.is_empty() {
            return Err(CliError::usage(format!(
                "invalid tag `{pair}`: the key is empty"
            )));
        }
        tags.insert(
            key.to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    Ok(tags)
}

/// Reads a string field of a JSON response, or an empty string.
pub fn text(value: &serde_json::Value, key: &str) -> String {
    match value.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}
