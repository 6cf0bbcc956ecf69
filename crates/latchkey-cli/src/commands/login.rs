//! `lk login`, `lk logout` and `lk whoami`.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use clap::Args;
use zeroize::Zeroizing;

use crate::client::{Client, config_dir, token_file};
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

#[derive(Args)]
pub struct LoginArgs {
    /// Store this token instead of signing in; `-` reads it from standard input.
    #[arg(long, conflicts_with_all = ["device", "connector", "port", "no_browser"])]
    token: Option<String>,
    /// Sign in with the device flow: print a code to enter on another device's browser.
    #[arg(long)]
    device: bool,
    /// The OIDC connector to sign in with, when the server has several.
    #[arg(long)]
    connector: Option<String>,
    /// The loopback port the browser is sent back to (it must be one the connector allows).
    #[arg(long, env = "LATCHKEY_OIDC_PORT", default_value_t = 8250)]
    port: u16,
    /// Print the sign-in URL without trying to open a browser.
    #[arg(long)]
    no_browser: bool,
    #[command(flatten)]
    workload: WorkloadLogin,
}

/// Logging in as a workload or agent with a JWT its platform issued. `lk login`, `lk read`
/// and `lk run` take these, so a CI step needs one line.
#[derive(Args, Default)]
pub struct WorkloadLogin {
    /// A file that contains the JWT to exchange for a Latchkey token (LATCHKEY_JWT contains
    /// the JWT itself).
    #[arg(long, env = "LATCHKEY_JWT_FILE", requires = "role")]
    jwt_file: Option<PathBuf>,
    /// The JWT role to log in with.
    #[arg(long, env = "LATCHKEY_ROLE")]
    role: Option<String>,
}

impl WorkloadLogin {
    /// Rejects a role together with LATCHKEY_TOKEN, because running as whichever identity
    /// wins silently would be worse than stopping.
    fn reject_with_token(&self) -> CliResult<()> {
        if let Some(role) = &self.role
            && std::env::var("LATCHKEY_TOKEN").is_ok_and(|t| !t.trim().is_empty())
        {
            return Err(CliError::usage(format!(
                "both LATCHKEY_TOKEN and the JWT role `{role}` (--role or LATCHKEY_ROLE) are set: unset LATCHKEY_TOKEN to log in with the role, or drop the role to use the token"
            )));
        }
        Ok(())
    }

    /// Returns the role and the JWT to exchange, when a role is named: from `--jwt-file`,
    /// else LATCHKEY_JWT.
    fn jwt(&self) -> CliResult<Option<(String, Zeroizing<String>)>> {
        let Some(role) = &self.role else {
            return Ok(None);
        };
        let jwt = match &self.jwt_file {
            Some(path) => Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        CliError::usage(format!("cannot read --jwt-file `{}`: {e}", path.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => match std::env::var("LATCHKEY_JWT") {
                Ok(text) if !text.trim().is_empty() => Zeroizing::new(text.trim().to_string()),
                _ => {
                    return Err(CliError::usage(format!(
                        "role `{role}` is set but no JWT is: pass --jwt-file FILE or set LATCHKEY_JWT"
                    )));
                }
            },
        };
        if jwt.is_empty() {
            return Err(CliError::usage("the JWT to log in with is empty"));
        }
        Ok(Some((role.clone(), jwt)))
    }

    /// Returns a client for one command: with a token from a JWT login when a role is
    /// named, otherwise from LATCHKEY_TOKEN or `lk login`. The second value is the token to
    /// revoke when the command ends, because no other command uses it.
    pub async fn client(&self) -> CliResult<(Client, Option<Zeroizing<String>>)> {
        self.reject_with_token()?;
        match self.jwt()? {
            None => Ok((Client::from_env()?, None)),
            Some((role, jwt)) => {
                let session = jwt_login(&Client::new(None)?, &role, &jwt).await?;
                let token = session.token.clone();
                Ok((Client::new(None)?.with_token(session.token), Some(token)))
            }
        }
    }
}

/// Revokes a token a command obtained for itself; a failure only warns, since the token
/// expires on its own.
pub async fn end_session(client: &Client, token: Option<Zeroizing<String>>) {
    let Some(token) = token else { return };
    let client = client.with_token(token);
    let Ok(url) = client.url(&["v1", "tokens", "self", "revoke"]) else {
        return;
    };
    if let Err(error) = client.raw::<()>(reqwest::Method::POST, url, None).await {
        eprintln!("lk: warning: could not revoke the workload token: {error}");
    }
}

/// A token a login returned, with the facts to show.
struct Session {
    token: Zeroizing<String>,
    body: serde_json::Value,
}

fn session_from(mut body: serde_json::Value) -> CliResult<Session> {
    let token = body
        .get_mut("token")
        .and_then(|t| t.as_str().map(str::to_string))
        .ok_or_else(|| CliError::other("the server's login response contains no token"))?;
    body["token"] = serde_json::Value::Null;
    Ok(Session {
        token: Zeroizing::new(token),
        body,
    })
}

async fn jwt_login(client: &Client, role: &str, jwt: &str) -> CliResult<Session> {
    let body: serde_json::Value = client
        .post(
            &["v1", "auth", "jwt", "login"],
            &serde_json::json!({"role": role, "jwt": jwt}),
        )
        .await?;
    session_from(body)
}

pub async fn login(args: LoginArgs, format: Format) -> CliResult<()> {
    if let Some(given) = &args.token {
        let token = if given == "-" {
            let mut text = Zeroizing::new(String::new());
            std::io::stdin().read_to_string(&mut text)?;
            Zeroizing::new(text.trim().to_string())
        } else {
            Zeroizing::new(given.trim().to_string())
        };
        latchkey_core::token::RawToken::parse(&token)
            .map_err(|e| CliError::usage(format!("invalid token: {e}")))?;
        let client = Client::new(None)?.with_token(token.clone());
        let me: serde_json::Value = client.get(&["v1", "tokens", "self"]).await?;
        let path = store_token(&token)?;
        if format == Format::Json {
            output::json(&me);
        } else {
            outln!(
                "signed in as {} (token {} expires {})",
                text(&me, "principal"),
                text(&me["token"], "accessor"),
                text(&me["token"], "expires_at")
            );
            outln!("token stored in {}", path.display());
        }
        return Ok(());
    }
    let jwt = args.workload.jwt()?;
    if jwt.is_some() && (args.device || args.connector.is_some() || args.no_browser) {
        return Err(CliError::usage(
            "--role/--jwt-file logs in with a JWT; --device, --connector and --no-browser are for signing in through an OIDC provider: give one or the other",
        ));
    }
    args.workload.reject_with_token()?;
    let client = Client::new(None)?;
    let session = match jwt {
        Some((role, jwt)) => jwt_login(&client, &role, &jwt).await?,
        None if args.device => device_login(&client, args.connector.as_deref()).await?,
        None => browser_login(&client, &args).await?,
    };
    let previous = std::fs::read_to_string(token_file()?)
        .ok()
        .map(|text| Zeroizing::new(text.trim().to_string()));
    let path = store_token(&session.token)?;
    // The replaced session has no other copy, so end it rather than leave it live.
    if let Some(previous) =
        previous.filter(|p| !p.is_empty() && p.as_str() != session.token.as_str())
    {
        let previous = client.with_token(previous);
        if let Ok(url) = previous.url(&["v1", "tokens", "self", "revoke"]) {
            // An expired or already revoked token has nothing left to end.
            let _ = previous.raw::<()>(reqwest::Method::POST, url, None).await;
        }
    }
    if std::env::var("LATCHKEY_TOKEN").is_ok_and(|t| !t.trim().is_empty()) {
        eprintln!(
            "lk: note: LATCHKEY_TOKEN is set and takes precedence over the stored token; unset it to use this session"
        );
    }
    if format == Format::Json {
        output::json(&session.body);
    } else {
        let groups = session.body["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        outln!(
            "signed in as {} ({}; groups: {})",
            text(&session.body, "principal"),
            describe_method(&text(&session.body, "method")),
            if groups.is_empty() {
                "-".to_string()
            } else {
                groups
            }
        );
        outln!(
            "token {} expires {}; stored in {}",
            text(&session.body, "accessor"),
            text(&session.body, "expires_at"),
            path.display()
        );
    }
    Ok(())
}

/// Writes the token to the `lk login` file: 0600, through a temporary file and a rename.
fn store_token(token: &str) -> CliResult<PathBuf> {
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
    Ok(path)
}

/// Says how a session was obtained, from the token's `created_by`.
fn describe_method(method: &str) -> String {
    if let Some(role) = method.strip_prefix("jwt:") {
        format!("JWT login with role `{role}`")
    } else if let Some(connector) = method.strip_prefix("oidc-device:") {
        format!("device sign-in through OIDC connector `{connector}`")
    } else if let Some(connector) = method.strip_prefix("oidc:") {
        format!("browser sign-in through OIDC connector `{connector}`")
    } else if method.is_empty() {
        "created at server initialization".to_string()
    } else {
        format!("token created by {method}")
    }
}

/// Tries to open a URL in the user's browser; false when there is none to open.
fn open_browser(url: &str) -> bool {
    let graphical = cfg!(target_os = "macos")
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !graphical {
        return false;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// Runs the authorization-code flow: listens on a loopback port, sends the user to the
/// provider, and passes the code the browser brings back to the server, which redeems it.
async fn browser_login(client: &Client, args: &LoginArgs) -> CliResult<Session> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| {
            CliError::usage(format!(
                "cannot listen on 127.0.0.1:{} for the sign-in redirect: {e}; pass another allowed port with --port, or use `lk login --device`",
                args.port
            ))
        })?;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", args.port);
    let start: serde_json::Value = client
        .post(
            &["v1", "auth", "oidc", "start"],
            &serde_json::json!({"connector": args.connector, "redirect_uri": redirect_uri}),
        )
        .await?;
    let auth_url = text(&start, "auth_url");
    let expected_state = text(&start, "state");
    let opened = !args.no_browser && open_browser(&auth_url);
    if opened {
        eprintln!("Opened a browser to sign in. If it did not open, visit:\n\n    {auth_url}\n");
    } else {
        eprintln!("To sign in, open this URL in a browser on this machine:\n\n    {auth_url}\n");
    }
    eprintln!("Waiting for the sign-in to finish (Ctrl-C to cancel)...");
    let (code, state, browser) = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        wait_for_callback(listener, &expected_state),
    )
    .await
    .map_err(|_| {
        CliError::other("the sign-in was not finished within 10 minutes; run `lk login` again")
    })??;
    // The browser waits for the server's result, so its page shows the real outcome.
    let result = client
        .post::<_, serde_json::Value>(
            &["v1", "auth", "oidc", "callback"],
            &serde_json::json!({"state": state, "code": code.as_str()}),
        )
        .await;
    match &result {
        Ok(_) => {
            answer_browser(
                browser,
                "200 OK",
                "Signed in. You can close this window and return to the terminal.",
            )
            .await
        }
        Err(_) => {
            answer_browser(
                browser,
                "401 Unauthorized",
                "Sign-in failed. The terminal says why.",
            )
            .await
        }
    }
    session_from(result?)
}

/// Writes a one-line page to the browser and closes the connection.
async fn answer_browser(mut stream: tokio::net::TcpStream, status: &str, page: &str) {
    use tokio::io::AsyncWriteExt;
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Latchkey</title></head><body><p>{page}</p></body></html>"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{html}",
        html.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves the loopback redirect until one arrives with the expected state.
async fn wait_for_callback(
    listener: tokio::net::TcpListener,
    expected_state: &str,
) -> CliResult<(Zeroizing<String>, String, tokio::net::TcpStream)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = vec![0u8; 16 * 1024];
        let mut read = 0;
        // The request line is all that is needed; browsers send it first.
        while read < buffer.len() {
            let n = stream.read(&mut buffer[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
            if buffer[..read].windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
        let request = String::from_utf8_lossy(&buffer[..read]).to_string();
        buffer.iter_mut().for_each(|b| *b = 0);
        let target = request
            .lines()
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .unwrap_or("/");
        let parsed = reqwest::Url::parse(&format!("http://127.0.0.1{target}")).ok();
        let Some(url) = parsed.filter(|u| u.path() == "/callback") else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let query: std::collections::HashMap<String, String> =
            url.query_pairs().into_owned().collect();
        let matches = query.get("state").is_some_and(|s| s == expected_state);
        match (query.get("code"), query.get("error")) {
            (_, Some(error)) if matches => {
                answer_browser(
                    stream,
                    "400 Bad Request",
                    "Sign-in failed. Return to the terminal.",
                )
                .await;
                return Err(CliError::other(format!(
                    "the identity provider rejected the sign-in: {error} {}",
                    query
                        .get("error_description")
                        .map(String::as_str)
                        .unwrap_or("")
                )));
            }
            (Some(code), None) if matches => {
                return Ok((
                    Zeroizing::new(code.clone()),
                    expected_state.to_string(),
                    stream,
                ));
            }
            _ => {
                answer_browser(
                    stream,
                    "400 Bad Request",
                    "This sign-in link does not match the one lk started. Return to the terminal.",
                )
                .await;
            }
        }
    }
}

/// Runs the device flow: shows a code for the user to enter elsewhere, then polls until
/// the provider reports the login approved, denied or expired.
async fn device_login(client: &Client, connector: Option<&str>) -> CliResult<Session> {
    let start: serde_json::Value = client
        .post(
            &["v1", "auth", "oidc", "device"],
            &serde_json::json!({"connector": connector}),
        )
        .await?;
    let login_id = text(&start, "login_id");
    let complete = start["verification_uri_complete"].as_str();
    eprintln!(
        "To sign in, open {} on any device and enter the code {}",
        text(&start, "verification_uri"),
        text(&start, "user_code")
    );
    if let Some(complete) = complete {
        eprintln!("(or open {complete} directly)");
    }
    eprintln!("Waiting for approval (Ctrl-C to cancel)...");
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(start["expires_in"].as_u64().unwrap_or(600));
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
        if std::time::Instant::now() > deadline {
            return Err(CliError::other(
                "the device code expired before it was approved; run `lk login --device` again",
            ));
        }
        let url = client.url(&["v1", "auth", "oidc", "device", "poll"])?;
        let response = client
            .raw(
                reqwest::Method::POST,
                url,
                Some(&serde_json::json!({"login_id": login_id})),
            )
            .await?;
        let accepted = response.status() == reqwest::StatusCode::ACCEPTED;
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| CliError::other(format!("unreadable response from the server: {e}")))?;
        if !accepted {
            return session_from(body);
        }
        interval = body["interval"].as_u64().unwrap_or(interval).max(1);
    }
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
        Ok(_) => outln!("token revoked and removed"),
        Err(_) => outln!("the stored token was no longer valid; removed it"),
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
    outln!("principal:  {}", text(&me, "principal"));
    outln!(
        "groups:     {}",
        if groups.is_empty() {
            "-".to_string()
        } else {
            groups
        }
    );
    outln!(
        "token:      {} ({})",
        text(&me["token"], "accessor"),
        text(&me["token"], "kind")
    );
    outln!("expires:    {}", text(&me["token"], "expires_at"));
    outln!("max expiry: {}", text(&me["token"], "max_expires_at"));
    outln!(
        "session:    {}",
        describe_method(&text(&me["token"], "created_by"))
    );
    Ok(())
}
