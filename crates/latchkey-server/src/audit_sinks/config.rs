//! `[[audit.sinks]]` entries of the server config, and their checked form.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default capacity of a sink's in-memory queue, in events.
const DEFAULT_QUEUE: usize = 10_000;
/// Default maximum events per delivery.
const DEFAULT_BATCH: usize = 500;
/// Default time one delivery may take before it counts as failed.
const DEFAULT_TIMEOUT: &str = "5s";
/// Default size at which a JSON Lines file is rotated: 100 MiB.
const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Syslog facility 10 is `authpriv`, for security and authorization messages (RFC 5424,
/// section 6.2.1).
const DEFAULT_FACILITY: u8 = 10;

/// Destination kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    /// JSON Lines file, rotated by size.
    File,
    /// Syslog (RFC 5424) over UDP or TCP.
    Syslog,
    /// JSON array POSTed to an HTTP endpoint.
    Webhook,
}

/// Syslog transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogProtocol {
    /// One datagram per event (RFC 5426).
    Udp,
    /// A stream with octet-counting framing (RFC 6587, section 3.4.1).
    Tcp,
}

/// One `[[audit.sinks]]` entry as written. [`SinkConfig::check`] turns it into a
/// [`SinkSpec`], rejecting fields that do not belong to its `type`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name; it labels metrics and health, and keys the sink's cursor in the store.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// `file`: the JSON Lines file to append to.
    pub path: Option<PathBuf>,
    /// `file`: rotate when the file would grow past this many bytes.
    pub max_bytes: Option<u64>,
    /// `syslog`: receiver address, such as `127.0.0.1:514`.
    pub address: Option<SocketAddr>,
    /// `syslog`: `udp` or `tcp`.
    pub protocol: Option<SyslogProtocol>,
    /// `syslog`: facility number 0 to 23; 10 (`authpriv`) by default.
    pub facility: Option<u8>,
    /// `syslog`: the HOSTNAME field; `-` (unknown) by default.
    pub hostname: Option<String>,
    /// `webhook`: the URL that receives POSTed batches (http or https).
    pub url: Option<String>,
    /// Events the sink's queue keeps in memory before it drops them and later reads them
    /// from the store instead.
    pub queue: Option<usize>,
    /// Maximum events per delivery.
    pub batch: Option<usize>,
    /// Time one delivery may take, such as `5s`.
    pub timeout: Option<String>,
}

/// A checked sink configuration.
#[derive(Clone, Debug)]
pub struct SinkSpec {
    pub name: String,
    pub target: Target,
    pub queue: usize,
    pub batch: usize,
    pub timeout: Duration,
}

/// The destination of a sink, with the settings of its kind.
#[derive(Clone, Debug)]
pub enum Target {
    File {
        path: PathBuf,
        max_bytes: u64,
    },
    Syslog {
        address: SocketAddr,
        protocol: SyslogProtocol,
        facility: u8,
        hostname: String,
    },
    Webhook {
        url: reqwest::Url,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::File { .. } => "file",
            Target::Syslog { .. } => "syslog",
            Target::Webhook { .. } => "webhook",
        }
    }
}

impl SinkConfig {
    /// Checks the entry.
    ///
    /// # Errors
    /// A message naming the sink and the bad or missing field.
    pub fn check(&self) -> Result<SinkSpec, String> {
        let name = &self.name;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(format!(
                "`audit.sinks` name `{name}` is invalid: use 1 to 64 letters, digits, `-`, `_` or `.`"
            ));
        }
        let field = |field: &str| format!("`audit.sinks` `{name}`: {field}");
        let present = [
            ("path", self.path.is_some()),
            ("max_bytes", self.max_bytes.is_some()),
            ("address", self.address.is_some()),
            ("protocol", self.protocol.is_some()),
            ("facility", self.facility.is_some()),
            ("hostname", self.hostname.is_some()),
            ("url", self.url.is_some()),
        ];
        let allowed: &[&str] = match self.kind {
            SinkType::File => &["path", "max_bytes"],
            SinkType::Syslog => &["address", "protocol", "facility", "hostname"],
            SinkType::Webhook => &["url"],
        };
        if let Some((extra, _)) = present
            .iter()
            .find(|(key, set)| *set && !allowed.contains(key))
        {
            return Err(field(&format!(
                "`{extra}` does not apply to a sink of type `{}`; remove it",
                self.kind_name()
            )));
        }

        let target = match self.kind {
            SinkType::File => {
                let path = self
                    .path
                    .clone()
                    .ok_or_else(|| field("`path` is missing; give the JSON Lines file to write"))?;
                let max_bytes = self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
                if max_bytes < 4096 {
                    return Err(field(&format!(
                        "`max_bytes` {max_bytes} is too small; give at least 4096"
                    )));
                }
                Target::File { path, max_bytes }
            }
            SinkType::Syslog => {
                let address = self.address.ok_or_else(|| {
                    field("`address` is missing; give the receiver, such as `127.0.0.1:514`")
                })?;
                let protocol = self
                    .protocol
                    .ok_or_else(|| field("`protocol` is missing; give `udp` or `tcp`"))?;
                let facility = self.facility.unwrap_or(DEFAULT_FACILITY);
                if facility > 23 {
                    return Err(field(&format!(
                        "`facility` {facility} is invalid; give 0 to 23, such as 10 (authpriv)"
                    )));
                }
                let hostname = self.hostname.clone().unwrap_or_else(|| "-".into());
                // RFC 5424 HOSTNAME: 1 to 255 printable US-ASCII characters without spaces.
                let printable = hostname.bytes().all(|b| (33..=126).contains(&b));
                if hostname.is_empty() || hostname.len() > 255 || !printable {
                    return Err(field(&format!(
                        "`hostname` `{hostname}` is invalid; use 1 to 255 printable ASCII characters without spaces"
                    )));
                }
                Target::Syslog {
                    address,
                    protocol,
                    facility,
                    hostname,
                }
            }
            SinkType::Webhook => {
                let text = self.url.as_deref().ok_or_else(|| {
                    field("`url` is missing; give the endpoint, such as `https://siem.example/ingest`")
                })?;
                let url = reqwest::Url::parse(text)
                    .map_err(|e| field(&format!("`url` `{text}` is invalid: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(field(&format!(
                        "`url` `{text}` must start with http:// or https://"
                    )));
                }
                Target::Webhook { url }
            }
        };

        let queue = self.queue.unwrap_or(DEFAULT_QUEUE);
        let batch = self.batch.unwrap_or(DEFAULT_BATCH);
        if queue == 0 || batch == 0 {
            return Err(field("`queue` and `batch` must be at least 1"));
        }
        let timeout_text = self.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT);
        let timeout = latchkey_core::duration::parse_duration(timeout_text)
            .map_err(|e| field(&format!("`timeout`: {e}")))?;
        if timeout.is_zero() {
            return Err(field("`timeout` is 0; give a duration such as `5s`"));
        }
        Ok(SinkSpec {
            name: name.clone(),
            target,
            queue,
            batch,
            timeout,
        })
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            SinkType::File => "file",
            SinkType::Syslog => "syslog",
            SinkType::Webhook => "webhook",
        }
    }
}

/// Checks every entry and that names are unique.
///
/// # Errors
/// The first problem found, as a message naming the sink.
pub fn check_all(configs: &[SinkConfig]) -> Result<Vec<SinkSpec>, String> {
    let mut specs: Vec<SinkSpec> = Vec::with_capacity(configs.len());
    for config in configs {
        let spec = config.check()?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(format!(
                "`audit.sinks` name `{}` is used twice; give each sink its own name",
                spec.name
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(text: &str) -> Result<Vec<SinkSpec>, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            sinks: Vec<SinkConfig>,
        }
        let wrapper: Wrapper = toml::from_str(text).map_err(|e| e.to_string())?;
        check_all(&wrapper.sinks)
    }

    #[test]
    fn sinks_of_each_type_parse() {
        let specs = parse(
            r#"
            [[sinks]]
            name = "local"
            type = "file"
            path = "/tmp/audit.jsonl"
            max_bytes = 8192
            [[sinks]]
            name = "syslog-tcp"
            type = "syslog"
            address = "127.0.0.1:6514"
            protocol = "tcp"
            [[sinks]]
            name = "siem"
            type = "webhook"
            url = "http://127.0.0.1:9000/ingest"
            timeout = "2s"
            batch = 50
            "#,
        )
        .unwrap();
        assert_eq!(specs.len(), 3);
        assert!(matches!(
            specs[0].target,
            Target::File {
                max_bytes: 8192,
                ..
            }
        ));
        assert!(matches!(
            specs[1].target,
            Target::Syslog {
                facility: 10,
                protocol: SyslogProtocol::Tcp,
                ..
            }
        ));
        assert_eq!(specs[2].timeout, Duration::from_secs(2));
        assert_eq!(specs[2].batch, 50);
        assert_eq!(specs[2].queue, DEFAULT_QUEUE);
    }

    #[test]
    fn sink_errors_name_the_sink_and_field() {
        let cases = [
            (
                "name = \"a\"\ntype = \"file\"",
                "`audit.sinks` `a`: `path` is missing; give the JSON Lines file to write",
            ),
            (
                "name = \"a\"\ntype = \"webhook\"\nurl = \"ftp://x\"",
                "`audit.sinks` `a`: `url` `ftp://x` must start with http:// or https://",
            ),
            (
                "name = \"a\"\ntype = \"webhook\"\nurl = \"http://x\"\npath = \"/tmp/x\"",
                "`audit.sinks` `a`: `path` does not apply to a sink of type `webhook`; remove it",
            ),
            (
                "name = \"a\"\ntype = \"syslog\"\naddress = \"127.0.0.1:514\"\nprotocol = \"udp\"\nfacility = 24",
                "`audit.sinks` `a`: `facility` 24 is invalid; give 0 to 23, such as 10 (authpriv)",
            ),
            (
                "name = \"a b\"\ntype = \"file\"\npath = \"/tmp/x\"",
                "`audit.sinks` name `a b` is invalid: use 1 to 64 letters, digits, `-`, `_` or `.`",
            ),
            (
                "name = \"a\"\ntype = \"file\"\npath = \"/tmp/x\"\ntimeout = \"0s\"",
                "`audit.sinks` `a`: `timeout` is 0; give a duration such as `5s`",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("[[sinks]]\n{body}\n");
            assert_eq!(parse(&text).unwrap_err(), expected, "{body}");
        }
    }

    #[test]
    fn duplicate_sink_names_are_rejected() {
        let text = "[[sinks]]\nname = \"a\"\ntype = \"file\"\npath = \"/tmp/x\"\n\
                    [[sinks]]\nname = \"a\"\ntype = \"file\"\npath = \"/tmp/y\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "`audit.sinks` name `a` is used twice; give each sink its own name"
        );
    }
}
