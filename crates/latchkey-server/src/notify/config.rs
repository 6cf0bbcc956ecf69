//! The `[notify]` section of the server config, and its checked form.

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use ring::hmac;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::AccessEventKind;

/// Default length of each webhook's queue, in events.
const DEFAULT_QUEUE: usize = 1000;
const DEFAULT_MAX_ATTEMPTS: u32 = 6;
const MAX_ATTEMPTS_LIMIT: u32 = 100;
const DEFAULT_RETRY_BASE: &str = "1s";
const DEFAULT_RETRY_MAX: &str = "5m";
const DEFAULT_TIMEOUT: &str = "10s";
/// Shortest signing key accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;

/// `[notify]` as written in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Base URL of this server as approvers reach it; payloads link to
    /// `{public_url}/approvals/requests/{id}`.
    pub public_url: Option<String>,
    /// Capacity of each webhook's queue, in events (1000 by default). New events are
    /// dropped while it is full.
    pub queue: Option<usize>,
    /// `[[notify.webhooks]]` entries.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[notify.webhooks]]` entry as written. It names where its signing key is, never
/// the key itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name; it labels health and metrics.
    pub name: String,
    /// The endpoint: `https`, or `http` to a loopback address only.
    pub url: String,
    /// `json` (the default) or `slack`.
    pub format: Option<String>,
    /// Environment variable that contains the HMAC-SHA256 signing key.
    pub secret_env: Option<String>,
    /// File that contains the HMAC-SHA256 signing key. A trailing newline is ignored.
    pub secret_file: Option<PathBuf>,
    /// Event kinds to send, such as `request.created`; every kind by default.
    pub events: Option<Vec<String>>,
    /// Attempts per event before it is given up; 6 by default.
    pub max_attempts: Option<u32>,
    /// Wait after the first failed attempt, such as `1s` or `250ms`; it doubles with each
    /// attempt.
    pub retry_base: Option<String>,
    /// Maximum wait between attempts, `Retry-After` included (5m by default).
    pub retry_max: Option<String>,
    /// Time one attempt may take, such as `10s`.
    pub timeout: Option<String>,
}

/// The shape of a webhook's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Every event field as one JSON object.
    Json,
    /// A Slack-compatible message: `text` and `blocks`.
    Slack,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
        }
    }
}

/// A webhook's HMAC-SHA256 signing key. It has no `Debug` and no `Clone`, and its bytes
/// are zeroed when it is dropped.
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl WebhookSecret {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> WebhookSecret {
        WebhookSecret(Zeroizing::new(bytes))
    }

    /// Returns the `x-latchkey-signature` value for `body` sent at `timestamp` (unix
    /// seconds): `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut context = hmac::Context::with_key(&key);
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("sha256={}", hex::encode(context.sign().as_ref()))
    }
}

/// A checked webhook.
pub struct WebhookSpec {
    pub name: String,
    pub url: reqwest::Url,
    pub format: WebhookFormat,
    pub secret: WebhookSecret,
    /// Kinds this webhook receives.
    pub events: Vec<AccessEventKind>,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookSpec {
    /// Shows the settings without the URL, which may carry a credential in its path (as
    /// Slack's do), and without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSpec")
            .field("name", &self.name)
            .field("host", &self.url.host_str())
            .field("format", &self.format)
            .field("events", &self.events)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The checked `[notify]` section.
#[derive(Debug)]
pub struct NotifySpec {
    pub public_url: Option<reqwest::Url>,
    pub queue: usize,
    pub webhooks: Vec<WebhookSpec>,
}

impl NotifyConfig {
    /// Checks the section and reads every webhook's signing key from the environment or
    /// its file.
    ///
    /// # Errors
    /// The first problem found, as a message naming the webhook and the field.
    pub fn check(&self) -> Result<NotifySpec, String> {
        self.check_with(|name| std::env::var_os(name).map(OsStringExt::into_vec))
    }

    /// Like [`NotifyConfig::check`], reading environment variables through `env`.
    ///
    /// # Errors
    /// The first problem found, as a message naming the webhook and the field.
    pub fn check_with(&self, env: impl Fn(&str) -> Option<Vec<u8>>) -> Result<NotifySpec, String> {
        let public_url = self
            .public_url
            .as_deref()
            .map(check_public_url)
            .transpose()?;
        let queue = self.queue.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            return Err("`notify.queue` is 0; give 1 or more, such as 1000".into());
        }
        let mut webhooks: Vec<WebhookSpec> = Vec::with_capacity(self.webhooks.len());
        for config in &self.webhooks {
            let spec = config.check(&env)?;
            if webhooks.iter().any(|w| w.name == spec.name) {
                return Err(format!(
                    "`notify.webhooks` name `{}` is used twice; give each webhook its own name",
                    spec.name
                ));
            }
            webhooks.push(spec);
        }
        Ok(NotifySpec {
            public_url,
            queue,
            webhooks,
        })
    }
}

fn check_public_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("`notify.public_url` `{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "`notify.public_url` `{text}` must be an http or https URL with a host, such as `https://latchkey.example.com`"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`notify.public_url` `{text}` must not have a query or fragment; give the base URL only"
        ));
    }
    Ok(url)
}

impl WebhookConfig {
    fn check(&self, env: &impl Fn(&str) -> Option<Vec<u8>>) -> Result<WebhookSpec, String> {
        let name = &self.name;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(format!(
                "`notify.webhooks` name `{name}` is invalid: use 1 to 64 letters, digits, `-`, `_` or `.`"
            ));
        }
        let field = |message: &str| format!("`notify.webhooks` `{name}`: {message}");

        let url = check_url(&self.url).map_err(|e| field(&e))?;
        let format = match self.format.as_deref().unwrap_or("json") {
            "json" => WebhookFormat::Json,
            "slack" => WebhookFormat::Slack,
            other => {
                return Err(field(&format!(
                    "`format` `{other}` is unknown; use `json` or `slack`"
                )));
            }
        };
        let secret = self.secret(env).map_err(|e| field(&e))?;
        let events = match &self.events {
            None => AccessEventKind::ALL.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(field(
                    "`events` is empty; list the kinds to send, or remove `events` to send every kind",
                ));
            }
            Some(names) => {
                let mut kinds = Vec::with_capacity(names.len());
                for text in names {
                    let kind = AccessEventKind::parse(text).ok_or_else(|| {
                        field(&format!(
                            "`events` has the unknown kind `{text}`; use {}",
                            AccessEventKind::ALL
                                .iter()
                                .map(|k| format!("`{}`", k.as_str()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
                kinds
            }
        };
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(field(&format!(
                "`max_attempts` {max_attempts} is out of range; give 1 to {MAX_ATTEMPTS_LIMIT}, such as 6"
            )));
        }
        let delay = |key: &str, text: Option<&str>, default: &str| {
            let text = text.unwrap_or(default);
            let value = parse_delay(text).map_err(|e| field(&format!("`{key}`: {e}")))?;
            if value.is_zero() {
                return Err(field(&format!(
                    "`{key}` is 0; give a duration such as `{default}`"
                )));
            }
            Ok(value)
        };
        let retry_base = delay("retry_base", self.retry_base.as_deref(), DEFAULT_RETRY_BASE)?;
        let retry_max = delay("retry_max", self.retry_max.as_deref(), DEFAULT_RETRY_MAX)?;
        if retry_base > retry_max {
            return Err(field(
                "`retry_base` is longer than `retry_max`; shorten `retry_base` or raise `retry_max`",
            ));
        }
        let timeout = delay("timeout", self.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        Ok(WebhookSpec {
            name: name.clone(),
            url,
            format,
            secret,
            events,
            max_attempts,
            retry_base,
            retry_max,
            timeout,
        })
    }

    /// Reads the signing key from `secret_env` or `secret_file`. Messages name where the
    /// key was looked for, never its value.
    fn secret(&self, env: &impl Fn(&str) -> Option<Vec<u8>>) -> Result<WebhookSecret, String> {
        let bytes = match (&self.secret_env, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err("give `secret_env` or `secret_file`, not both".into());
            }
            (None, None) => {
                return Err(
                    "the signing key is missing; set `secret_env` to an environment variable or `secret_file` to a file that holds it"
                        .into(),
                );
            }
            (Some(variable), None) => {
                let value = Zeroizing::new(env(variable).ok_or_else(|| {
                    format!("`secret_env`: the environment variable `{variable}` is not set")
                })?);
                if value.is_empty() {
                    return Err(format!(
                        "`secret_env`: the environment variable `{variable}` is empty"
                    ));
                }
                value
            }
            (None, Some(path)) => {
                let mut value = Zeroizing::new(
                    std::fs::read(path)
                        .map_err(|e| format!("`secret_file` `{}`: {e}", path.display()))?,
                );
                while value.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    value.pop();
                }
                if value.is_empty() {
                    return Err(format!("`secret_file` `{}` is empty", path.display()));
                }
                value
            }
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the signing key is {} bytes; give at least {MIN_SECRET_BYTES}, such as the output of `openssl rand -hex 32`",
                bytes.len()
            ));
        }
        Ok(WebhookSecret::new(bytes.to_vec()))
    }
}

/// Checks a webhook URL: `https`, or `http` to a loopback address only, so an event never
/// crosses a network unencrypted. Messages show the scheme and host, never the path or
/// query, which may carry a credential.
fn check_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`url` is not a valid URL: {e}"))?;
    let Some(host) = url.host() else {
        return Err("`url` has no host; give an https URL".into());
    };
    let loopback = match &host {
        url::Host::Domain(domain) => domain.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "`url` uses http to `{host}`; use https (plain http is accepted only for 127.0.0.1, ::1 and localhost)"
            ));
        }
        scheme => {
            return Err(format!(
                "`url` has the scheme `{scheme}`; use https (or http to a loopback address)"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "`url` carries a user name or password; remove them (requests are signed with the webhook's key)"
                .into(),
        );
    }
    Ok(url)
}

/// Parses a delay: whole milliseconds written `250ms`, or a duration such as `1s`, `5m`.
fn parse_delay(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Some(number) = trimmed.strip_suffix("ms")
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
    {
        let millis: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration `{trimmed}`: the number is too large"))?;
        return Ok(Duration::from_millis(millis));
    }
    latchkey_core::duration::parse_duration(trimmed).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn env(name: &str) -> Option<Vec<u8>> {
        match name {
            "HOOK_KEY" => Some(KEY.as_bytes().to_vec()),
            "SHORT_KEY" => Some(b"short".to_vec()),
            "EMPTY_KEY" => Some(Vec::new()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<NotifySpec, String> {
        let config: NotifyConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check_with(env)
    }

    fn webhook(body: &str) -> Result<NotifySpec, String> {
        parse(&format!(
            "[[webhooks]]\nname = \"approvers\"\nsecret_env = \"HOOK_KEY\"\n{body}\n"
        ))
    }

    #[test]
    fn defaults_apply() {
        let spec = webhook("url = \"https://hooks.example.com/latchkey\"").unwrap();
        assert_eq!(spec.queue, DEFAULT_QUEUE);
        assert!(spec.public_url.is_none());
        let hook = &spec.webhooks[0];
        assert_eq!(hook.format, WebhookFormat::Json);
        assert_eq!(hook.events, AccessEventKind::ALL.to_vec());
        assert_eq!(hook.max_attempts, 6);
        assert_eq!(hook.retry_base, Duration::from_secs(1));
        assert_eq!(hook.retry_max, Duration::from_secs(300));
        assert_eq!(hook.timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_field_parses() {
        let spec = parse(
            r#"
            public_url = "https://latchkey.example.com"
            queue = 5
            [[webhooks]]
            name = "chat"
            url = "http://127.0.0.1:9/hook"
            format = "slack"
            secret_env = "HOOK_KEY"
            events = ["request.created", "break_glass", "request.created"]
            max_attempts = 3
            retry_base = "10ms"
            retry_max = "2s"
            timeout = "1s"
            "#,
        )
        .unwrap();
        assert_eq!(spec.queue, 5);
        assert_eq!(
            spec.public_url.unwrap().as_str(),
            "https://latchkey.example.com/"
        );
        let hook = &spec.webhooks[0];
        assert_eq!(hook.format, WebhookFormat::Slack);
        assert_eq!(
            hook.events,
            vec![AccessEventKind::Created, AccessEventKind::BreakGlass]
        );
        assert_eq!(hook.max_attempts, 3);
        assert_eq!(hook.retry_base, Duration::from_millis(10));
        assert_eq!(hook.retry_max, Duration::from_secs(2));
        assert_eq!(hook.timeout, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_webhook_and_field() {
        let cases = [
            (
                "url = \"https://h.example/x\"\nformat = \"xml\"",
                "`notify.webhooks` `approvers`: `format` `xml` is unknown; use `json` or `slack`",
            ),
            (
                "url = \"http://hooks.example.com/x?key=abc\"",
                "`notify.webhooks` `approvers`: `url` uses http to `hooks.example.com`; use https (plain http is accepted only for 127.0.0.1, ::1 and localhost)",
            ),
            (
                "url = \"ftp://127.0.0.1/x\"",
                "`notify.webhooks` `approvers`: `url` has the scheme `ftp`; use https (or http to a loopback address)",
            ),
            (
                "url = \"https://user:pw@h.example/x\"",
                "`notify.webhooks` `approvers`: `url` carries a user name or password; remove them (requests are signed with the webhook's key)",
            ),
            (
                "url = \"https://h.example/x\"\nevents = [\"request.opened\"]",
                "`notify.webhooks` `approvers`: `events` has the unknown kind `request.opened`; use `request.created`, `request.approved`, `request.denied`, `request.expired`, `grant.revoked`, `break_glass`, `request.auto_approved`",
            ),
            (
                "url = \"https://h.example/x\"\nevents = []",
                "`notify.webhooks` `approvers`: `events` is empty; list the kinds to send, or remove `events` to send every kind",
            ),
            (
                "url = \"https://h.example/x\"\nmax_attempts = 0",
                "`notify.webhooks` `approvers`: `max_attempts` 0 is out of range; give 1 to 100, such as 6",
            ),
            (
                "url = \"https://h.example/x\"\nretry_base = \"0s\"",
                "`notify.webhooks` `approvers`: `retry_base` is 0; give a duration such as `1s`",
            ),
            (
                "url = \"https://h.example/x\"\nretry_base = \"10m\"",
                "`notify.webhooks` `approvers`: `retry_base` is longer than `retry_max`; shorten `retry_base` or raise `retry_max`",
            ),
        ];
        for (body, expected) in cases {
            let error = webhook(body).unwrap_err();
            assert_eq!(error, expected, "{body}");
            assert!(!error.contains("key=abc"), "no query string: {error}");
        }
        let error = webhook("url = \"https://h.example/x\"\ntimeout = \"soon\"").unwrap_err();
        assert!(
            error.starts_with("`notify.webhooks` `approvers`: `timeout`: invalid duration `soon`"),
            "{error}"
        );
    }

    #[test]
    fn secret_errors_name_the_source() {
        let cases = [
            (
                "url = \"https://h.example/x\"",
                "`notify.webhooks` `a`: the signing key is missing; set `secret_env` to an environment variable or `secret_file` to a file that holds it",
            ),
            (
                "url = \"https://h.example/x\"\nsecret_env = \"UNSET_KEY\"",
                "`notify.webhooks` `a`: `secret_env`: the environment variable `UNSET_KEY` is not set",
            ),
            (
                "url = \"https://h.example/x\"\nsecret_env = \"EMPTY_KEY\"",
                "`notify.webhooks` `a`: `secret_env`: the environment variable `EMPTY_KEY` is empty",
            ),
            (
                "url = \"https://h.example/x\"\nsecret_env = \"SHORT_KEY\"",
                "`notify.webhooks` `a`: the signing key is 5 bytes; give at least 16, such as the output of `openssl rand -hex 32`",
            ),
            (
                "url = \"https://h.example/x\"\nsecret_env = \"HOOK_KEY\"\nsecret_file = \"/x\"",
                "`notify.webhooks` `a`: give `secret_env` or `secret_file`, not both",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("[[webhooks]]\nname = \"a\"\n{body}\n");
            let error = parse(&text).unwrap_err();
            assert_eq!(error, expected, "{body}");
            assert!(!error.contains("short"), "the key never shows: {error}");
        }
    }

    #[test]
    fn secret_file_drops_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let text = format!(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://h.example/x\"\nsecret_file = \"{}\"\n",
            path.display()
        );
        let spec = parse(&text).unwrap();
        let direct = WebhookSecret::new(KEY.as_bytes().to_vec());
        assert_eq!(
            spec.webhooks[0].secret.sign(7, b"{}"),
            direct.sign(7, b"{}")
        );

        let missing = dir.path().join("missing");
        let text = format!(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://h.example/x\"\nsecret_file = \"{}\"\n",
            missing.display()
        );
        let error = parse(&text).unwrap_err();
        assert!(
            error.starts_with(&format!(
                "`notify.webhooks` `a`: `secret_file` `{}`: ",
                missing.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn names_must_be_unique_and_plain() {
        let hook = |name: &str| {
            format!(
                "[[webhooks]]\nname = \"{name}\"\nurl = \"https://h.example/x\"\nsecret_env = \"HOOK_KEY\"\n"
            )
        };
        assert_eq!(
            parse(&format!("{}{}", hook("a"), hook("a"))).unwrap_err(),
            "`notify.webhooks` name `a` is used twice; give each webhook its own name"
        );
        assert_eq!(
            parse(&hook("a b")).unwrap_err(),
            "`notify.webhooks` name `a b` is invalid: use 1 to 64 letters, digits, `-`, `_` or `.`"
        );
    }

    #[test]
    fn section_level_errors() {
        assert_eq!(
            parse("queue = 0").unwrap_err(),
            "`notify.queue` is 0; give 1 or more, such as 1000"
        );
        assert!(
            parse("public_url = \"latchkey.example.com\"")
                .unwrap_err()
                .starts_with("`notify.public_url` `latchkey.example.com` is not a URL"),
        );
        assert!(
            parse("public_url = \"https://x.example/?a=b\"")
                .unwrap_err()
                .contains("must not have a query"),
        );
        let unknown = parse(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://h.example/x\"\nsecret = \"inline\"\n",
        )
        .unwrap_err();
        assert!(unknown.contains("unknown field `secret`"), "{unknown}");
    }

    #[test]
    fn delays_take_milliseconds_or_durations() {
        assert_eq!(parse_delay("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_delay("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_delay("3").unwrap(), Duration::from_secs(3));
        assert!(parse_delay("ms").is_err());
        assert!(parse_delay("1.5s").is_err());
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let secret = WebhookSecret::new(KEY.as_bytes().to_vec());
        let key = hmac::Key::new(hmac::HMAC_SHA256, KEY.as_bytes());
        let expected = hmac::sign(&key, b"1700000000.{\"a\":1}");
        assert_eq!(
            secret.sign(1_700_000_000, b"{\"a\":1}"),
            format!("sha256={}", hex::encode(expected.as_ref()))
        );
        assert_ne!(
            secret.sign(1_700_000_001, b"{\"a\":1}"),
            secret.sign(1_700_000_000, b"{\"a\":1}")
        );
    }
}
