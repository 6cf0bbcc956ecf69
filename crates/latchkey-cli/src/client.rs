//! The HTTP client: where the server is, who we are, and API errors as CLI errors.

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{CliError, CliResult};

pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8740";
const TOKEN_FILE: &str = "token";

/// Returns the directory where `lk login` keeps the token: `$LATCHKEY_CONFIG_DIR`, else the user's config
/// directory (`~/.config/latchkey` on Linux).
pub fn config_dir() -> CliResult<PathBuf> {
    if let Some(dir) = std::env::var_os("LATCHKEY_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    dirs::config_dir()
        .map(|d| d.join("latchkey"))
        .ok_or_else(|| CliError::other("cannot find a config directory: set LATCHKEY_CONFIG_DIR"))
}

pub fn token_file() -> CliResult<PathBuf> {
    Ok(config_dir()?.join(TOKEN_FILE))
}

fn load_token() -> CliResult<Option<Zeroizing<String>>> {
    if let Ok(token) = std::env::var("LATCHKEY_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(Some(Zeroizing::new(token.trim().to_string())));
    }
    let path = token_file()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(Zeroizing::new(text.trim().to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::other(format!(
            "cannot read `{}`: {e}",
            path.display()
        ))),
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<std::sync::Arc<Zeroizing<String>>>,
}

#[derive(serde::Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

#[derive(serde::Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
}

impl Client {
    /// Builds a client for `LATCHKEY_ADDR` (default http://127.0.0.1:8740) with the token from
    /// `LATCHKEY_TOKEN` or the `lk login` file. `LATCHKEY_CACERT` names a PEM file of
    /// extra trusted CA certificates.
    pub fn from_env() -> CliResult<Client> {
        let token = load_token()?.map(std::sync::Arc::new);
        Client::new(token)
    }

    pub fn new(token: Option<std::sync::Arc<Zeroizing<String>>>) -> CliResult<Client> {
        let base = std::env::var("LATCHKEY_ADDR")
            .ok()
            .filter(|addr| !addr.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "LATCHKEY_ADDR `{base}` must start with http:// or https://"
            )));
        }
        let mut builder =
            reqwest::Client::builder().user_agent(concat!("lk/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = std::env::var_os("LATCHKEY_CACERT") {
            let pem = std::fs::read(&path).map_err(|e| {
                CliError::usage(format!(
                    "LATCHKEY_CACERT `{}`: {e}",
                    PathBuf::from(&path).display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CliError::usage(format!(
                    "LATCHKEY_CACERT `{}` is not a PEM certificate: {e}",
                    PathBuf::from(&path).display()
                ))
            })?;
            if certificates.is_empty() {
                return Err(CliError::usage(format!(
                    "LATCHKEY_CACERT `{}` contains no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                    PathBuf::from(&path).display()
                )));
            }
            for cert in certificates {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn with_token(&self, token: Zeroizing<String>) -> Client {
        Client {
            token: Some(std::sync::Arc::new(token)),
            ..self.clone()
        }
    }

    /// Builds a URL from path segments, percent-encoding each one.
    pub fn url(&self, segments: &[&str]) -> CliResult<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| {
            CliError::usage(format!("LATCHKEY_ADDR `{}` is not a URL: {e}", self.base))
        })?;
        url.path_segments_mut()
            .map_err(|_| {
                CliError::usage(format!("LATCHKEY_ADDR `{}` cannot take a path", self.base))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    pub async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&B>,
    ) -> CliResult<T> {
        let response = self.raw(method, url, body).await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| CliError::other(format!("unexpected empty response: {e}")));
        }
        response
            .json::<T>()
            .await
            .map_err(|e| CliError::other(format!("unreadable response from the server: {e}")))
    }

    /// Sends a request and turns an error status into a [`CliError`].
    pub async fn raw<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&B>,
    ) -> CliResult<reqwest::Response> {
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.as_str());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let envelope = serde_json::from_str::<ErrorEnvelope>(&text);
        if status == StatusCode::UNAUTHORIZED {
            // A failed login explains itself; a refused token gets a hint on what to do.
            if let Ok(envelope) = &envelope
                && envelope.error.code != "unauthenticated"
            {
                return Err(CliError::api(
                    401,
                    &envelope.error.code,
                    &envelope.error.message,
                ));
            }
            return Err(CliError::api(
                401,
                "unauthenticated",
                &self.unauthenticated_message(),
            ));
        }
        match envelope {
            Ok(envelope) => Err(CliError::api(
                status.as_u16(),
                &envelope.error.code,
                &envelope.error.message,
            )),
            Err(_) => Err(CliError::api(status.as_u16(), "unknown", text.trim())),
        }
    }

    fn unauthenticated_message(&self) -> String {
        match &self.token {
            None => "not signed in: run `lk login` (or `lk login --token TOKEN`, or set LATCHKEY_TOKEN)".to_string(),
            Some(_) => "the server rejected the token (invalid, expired or revoked): sign in again with `lk login`, or set LATCHKEY_TOKEN to a valid token".to_string(),
        }
    }

    /// Explains a request that got no HTTP response: a TLS verification failure, or no server.
    fn transport_error(&self, error: &reqwest::Error) -> CliError {
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        let message = if chain.to_ascii_lowercase().contains("certificate")
            || chain.contains("UnknownIssuer")
        {
            format!(
                "TLS certificate verification failed for {}: {chain}; set LATCHKEY_CACERT to the PEM file of the CA that signed the server's certificate (the server certificate itself must be a leaf, CA:FALSE)",
                self.base
            )
        } else {
            format!(
                "cannot reach the server at {}: {chain}; is `lk server` running and LATCHKEY_ADDR right?",
                self.base
            )
        };
        CliError {
            exit_code: crate::error::EXIT_UNAVAILABLE,
            message,
        }
    }

    /// GETs JSON whatever the status (health returns 503 with a body when sealed).
    pub async fn get_any_status(&self, segments: &[&str]) -> CliResult<(u16, serde_json::Value)> {
        let url = self.url(segments)?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or_default();
        Ok((status, value))
    }

    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> CliResult<T> {
        let url = self.url(segments)?;
        self.send::<(), T>(Method::GET, url, None).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> CliResult<T> {
        let url = self.url(segments)?;
        self.send(Method::POST, url, Some(body)).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> CliResult<T> {
        let url = self.url(segments)?;
        self.send(Method::PUT, url, Some(body)).await
    }

    pub async fn delete(&self, segments: &[&str]) -> CliResult<()> {
        let url = self.url(segments)?;
        self.raw::<()>(Method::DELETE, url, None).await?;
        Ok(())
    }
}
