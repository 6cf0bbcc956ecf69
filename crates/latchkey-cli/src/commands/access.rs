//! Just-in-time access: `lk request`, `lk requests`, `lk approve`, `lk deny`, `lk grants`
//! and `lk grant revoke`, and the wait for an approval that `--wait` adds to `lk read` and
//! `lk run`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use latchkey_core::reference::SecretRef;

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult, EXIT_GRANT_REQUIRED, EXIT_PERMISSION_DENIED};
use crate::output::{self, Format};

/// Seconds the server holds each status call of a wait open until the request changes.
const WAIT_SECS: &str = "25";
/// Pause between status calls that returned at once, so a server that ignores `wait`
/// is not asked in a tight loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct RequestArgs {
    /// Vaults (`lk://prod`) or secrets (`lk://prod/db`) to request access to. A field in a
    /// reference is ignored, because access covers the whole secret.
    #[arg(required_unless_present = "cancel")]
    resources: Vec<String>,
    /// How long access lasts once approved, such as `30m` or `1h` (default: 1h, or the
    /// vault's longest grant when that is shorter).
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// Why you need it; approvers see it, and the audit log keeps it.
    #[arg(long)]
    reason: Option<String>,
    /// A link to the ticket or incident.
    #[arg(long)]
    ticket: Option<String>,
    /// Take short access at once without approval, where a policy allows `break_glass`.
    /// Approvers are told, and the audit log flags every use.
    #[arg(long)]
    break_glass: bool,
    /// Wait until the request is approved, denied or expires.
    #[arg(long)]
    wait: bool,
    /// Withdraw your pending request with this id instead.
    #[arg(long, value_name = "ID", conflicts_with_all = ["resources", "break_glass", "wait"])]
    cancel: Option<String>,
}

#[derive(Args)]
pub struct RequestsArgs {
    /// Show this one request with its reviews.
    id: Option<String>,
    /// Only pending requests.
    #[arg(long, conflicts_with = "status")]
    pending: bool,
    /// Only your own requests.
    #[arg(long)]
    mine: bool,
    /// Only requests with this status.
    #[arg(long, value_parser = ["pending", "approved", "denied", "expired", "cancelled"])]
    status: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Args)]
pub struct ReviewArgs {
    /// The request id (`lk requests --pending` lists them).
    id: String,
    /// Why; the requester sees it, and the audit log keeps it.
    #[arg(long, short = 'm')]
    comment: Option<String>,
}

#[derive(Args)]
pub struct GrantsArgs {
    /// Every grant you may see (yours, those you may approve, or all for an
    /// administrator), not only your own.
    #[arg(long)]
    all: bool,
    /// Only grants live now.
    #[arg(long)]
    live: bool,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum GrantCommand {
    /// End a live grant now: yours, or one you may approve. Reads under it stop at once.
    Revoke {
        id: String,
        /// Why; kept with the grant and in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show one grant.
    Show { id: String },
}

/// Flags that let `lk read` and `lk run` ask for access and wait when they need it.
#[derive(Args, Clone)]
pub struct WaitArgs {
    /// When a reference needs approved access, ask for it and wait for the approval
    /// (with `--for`, `--reason` and `--ticket`).
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: how long access lasts once approved (default: 1h, or the vault's
    /// longest grant when that is shorter).
    #[arg(long = "for", value_name = "DURATION", requires = "wait")]
    pub duration: Option<String>,
    /// With `--wait`: why you need access.
    #[arg(long, requires = "wait")]
    pub reason: Option<String>,
    /// With `--wait`: a link to the ticket or incident.
    #[arg(long, requires = "wait")]
    pub ticket: Option<String>,
}

/// Returns the secrets (without field or version) that `references` read.
pub fn secrets_of(references: &[SecretRef]) -> Vec<SecretRef> {
    let mut secrets: Vec<SecretRef> = references
        .iter()
        .map(|r| SecretRef {
            vault: r.vault.clone(),
            secret: r.secret.clone(),
            field: None,
            version: None,
        })
        .collect();
    secrets.sort();
    secrets.dedup();
    secrets
}

/// The error of a read that needs approved access, with the command that asks for it.
pub fn grant_error(needed: &[SecretRef]) -> CliError {
    let list = secrets_of(needed)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    CliError {
        exit_code: EXIT_GRANT_REQUIRED,
        message: format!(
            "reading {list} needs approved access: ask with `lk request {list} --for 1h --reason \"...\"`, or add `--wait` to ask and wait for the approval"
        ),
    }
}

fn duration_check(duration: Option<&str>) -> CliResult<()> {
    match duration {
        None => Ok(()),
        Some(duration) => latchkey_core::duration::parse_duration(duration)
            .map(|_| ())
            .map_err(|e| CliError::usage(format!("--for `{duration}`: {e}"))),
    }
}

fn limit_check(limit: u32) -> CliResult<()> {
    if limit == 0 {
        return Err(CliError::usage("`--limit` is 0; give 1 or more"));
    }
    Ok(())
}

/// Joins a JSON array of strings with `separator`.
fn joined(value: &serde_json::Value, separator: &str) -> String {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(separator)
        })
        .unwrap_or_default()
}

/// Files a request for `needed` and waits for its decision; Ok once approved.
pub async fn ask_and_wait(client: &Client, needed: &[SecretRef], args: &WaitArgs) -> CliResult<()> {
    duration_check(args.duration.as_deref())?;
    let resources: Vec<String> = secrets_of(needed).iter().map(ToString::to_string).collect();
    let body = serde_json::json!({
        "resources": resources,
        "duration": args.duration,
        "reason": args.reason.clone().unwrap_or_default(),
        "ticket": args.ticket,
    });
    let request: serde_json::Value = client.post(&["v1", "requests"], &body).await?;
    let id = text(&request, "id");
    eprintln!(
        "lk: asked for access to {} for {} (request {id})",
        resources.join(" "),
        text(&request, "duration")
    );
    wait(client, request).await.map(|_| ())
}

fn status_line(request: &serde_json::Value) -> String {
    let expires = chrono::DateTime::parse_from_rfc3339(&text(request, "expires_at"))
        .map(|t| {
            (t.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .num_seconds()
                .max(0)
        })
        .unwrap_or(0);
    format!(
        "waiting for approval of {}: {}/{} approvals, expires in {}",
        text(request, "id"),
        request["approvals"].as_i64().unwrap_or(0),
        request["approvals_required"].as_i64().unwrap_or(1),
        latchkey_core::duration::format_duration(Duration::from_secs(expires as u64)),
    )
}

/// Waits for a request's decision with a live status line on stderr. Returns the request
/// once approved; a denied request exits 4, an expired or cancelled one 7.
pub async fn wait(client: &Client, mut request: serde_json::Value) -> CliResult<serde_json::Value> {
    let id = text(&request, "id");
    let terminal = std::io::stderr().is_terminal();
    let mut last = String::new();
    if text(&request, "status") == "pending" {
        eprintln!(
            "lk: waiting for approval; Ctrl-C stops waiting and leaves the request pending (`lk request --cancel {id}` withdraws it)"
        );
    }
    loop {
        let status = text(&request, "status");
        if status != "pending" {
            if terminal {
                eprint!("\r\x1b[2K");
            }
            return match status.as_str() {
                "approved" => {
                    let approvers = request["reviews"]
                        .as_array()
                        .map(|reviews| {
                            reviews
                                .iter()
                                .filter(|r| text(r, "verdict") == "approve")
                                .map(|r| text(r, "reviewer"))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    let by = if approvers.is_empty() {
                        text(&request, "decided_by")
                    } else {
                        approvers.join(", ")
                    };
                    eprintln!(
                        "lk: request {id} approved by {by}; access lasts {}",
                        text(&request, "duration")
                    );
                    Ok(request)
                }
                "denied" => {
                    let comment = request["reviews"]
                        .as_array()
                        .and_then(|r| r.iter().find(|r| text(r, "verdict") == "deny"))
                        .map(|r| text(r, "comment"))
                        .filter(|c| !c.is_empty())
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    Err(CliError {
                        exit_code: EXIT_PERMISSION_DENIED,
                        message: format!(
                            "request {id} was denied by {}{comment}",
                            text(&request, "decided_by")
                        ),
                    })
                }
                other => Err(CliError {
                    exit_code: EXIT_GRANT_REQUIRED,
                    message: format!("request {id} was {other} before it was approved"),
                }),
            };
        }
        let line = status_line(&request);
        if terminal {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if line.split(", expires").next() != last.split(", expires").next() {
            eprintln!("lk: {line}");
        }
        last = line;
        let started = std::time::Instant::now();
        let mut url = client.url(&["v1", "requests", &id])?;
        url.query_pairs_mut().append_pair("wait", WAIT_SECS);
        request = client
            .send::<(), _>(reqwest::Method::GET, url, None)
            .await?;
        if let Some(rest) = MIN_INTERVAL.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

fn request_row(r: &serde_json::Value) -> Vec<String> {
    vec![
        text(r, "id"),
        text(r, "status"),
        text(r, "requester"),
        r["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        text(r, "duration"),
        format!(
            "{}/{}",
            r["approvals"].as_i64().unwrap_or(0),
            r["approvals_required"].as_i64().unwrap_or(1)
        ),
        text(r, "reason"),
        if r["can_review"].as_bool() == Some(true) {
            "yes".into()
        } else {
            String::new()
        },
    ]
}

fn print_request(r: &serde_json::Value) {
    let mut lines = vec![
        ("id", text(r, "id")),
        ("status", text(r, "status")),
        ("kind", text(r, "kind")),
        ("requester", text(r, "requester")),
        (
            "resources",
            r["resources"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        ),
        ("duration", text(r, "duration")),
        ("reason", text(r, "reason")),
        ("ticket", text(r, "ticket")),
        (
            "approvals",
            format!(
                "{}/{}",
                r["approvals"].as_i64().unwrap_or(0),
                r["approvals_required"].as_i64().unwrap_or(1)
            ),
        ),
        ("created", text(r, "created_at")),
        (
            "expires",
            if text(r, "status") == "pending" {
                text(r, "expires_at")
            } else {
                String::new()
            },
        ),
        ("decided", text(r, "decided_at")),
        ("decided by", text(r, "decided_by")),
        ("grant", text(r, "grant")),
    ];
    lines.retain(|(_, v)| !v.is_empty());
    for (key, value) in lines {
        outln!("{:<11} {value}", format!("{key}:"));
    }
    if let Some(reviews) = r["reviews"].as_array() {
        for review in reviews {
            let comment = text(review, "comment");
            let verdict = match text(review, "verdict").as_str() {
                "approve" => "approved",
                "deny" => "denied",
                _ => "reviewed",
            };
            outln!(
                "{:<11} {} {verdict} at {}{}",
                "review:",
                text(review, "reviewer"),
                text(review, "time"),
                if comment.is_empty() {
                    String::new()
                } else {
                    format!(": {comment}")
                }
            );
        }
    }
}

pub async fn request(args: RequestArgs, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    if let Some(id) = args.cancel {
        let request: serde_json::Value = client
            .post(&["v1", "requests", &id, "cancel"], &serde_json::json!({}))
            .await?;
        if format == Format::Json {
            output::json(&request);
        } else {
            outln!("cancelled request {id}");
        }
        return Ok(());
    }
    duration_check(args.duration.as_deref())?;
    let body = serde_json::json!({
        "resources": args.resources,
        "duration": args.duration,
        "reason": args.reason.unwrap_or_default(),
        "ticket": args.ticket,
        "break_glass": args.break_glass,
    });
    let mut request: serde_json::Value = client.post(&["v1", "requests"], &body).await?;
    let id = text(&request, "id");
    if format != Format::Json {
        match text(&request, "kind").as_str() {
            "break_glass" => outln!(
                "break-glass access granted until {} (grant {}); every read under it is flagged in the audit log, and configured webhooks are notified",
                grant_end(&client, &request).await,
                text(&request, "grant")
            ),
            "auto" => outln!(
                "request {id} approved by policy; access lasts {} (grant {})",
                text(&request, "duration"),
                text(&request, "grant")
            ),
            _ => outln!(
                "request {id} is pending: it needs {} approval(s) before {}",
                request["approvals_required"].as_i64().unwrap_or(1),
                text(&request, "expires_at")
            ),
        }
    }
    if args.wait && text(&request, "status") == "pending" {
        request = wait(&client, request).await?;
    }
    if format == Format::Json {
        output::json(&request);
    }
    Ok(())
}

async fn grant_end(client: &Client, request: &serde_json::Value) -> String {
    let grant = text(request, "grant");
    match client
        .get::<serde_json::Value>(&["v1", "grants", &grant])
        .await
    {
        Ok(grant) => text(&grant, "expires_at"),
        Err(_) => format!("{} from now", text(request, "duration")),
    }
}

pub async fn requests(args: RequestsArgs, format: Format) -> CliResult<()> {
    limit_check(args.limit)?;
    let client = Client::from_env()?;
    if let Some(id) = args.id {
        let request: serde_json::Value = client.get(&["v1", "requests", &id]).await?;
        if format == Format::Json {
            output::json(&request);
        } else {
            print_request(&request);
        }
        return Ok(());
    }
    let mut url = client.url(&["v1", "requests"])?;
    {
        let mut query = url.query_pairs_mut();
        if args.pending {
            query.append_pair("status", "pending");
        } else if let Some(status) = &args.status {
            query.append_pair("status", status);
        }
        if args.mine {
            query.append_pair("mine", "true");
        }
        query.append_pair("limit", &args.limit.to_string());
    }
    let list: serde_json::Value = client
        .send::<(), _>(reqwest::Method::GET, url, None)
        .await?;
    if format == Format::Json {
        output::json(&list["requests"]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["requests"]
        .as_array()
        .map(|a| a.iter().map(request_row).collect())
        .unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no requests");
        return Ok(());
    }
    output::table(
        &[
            "ID",
            "STATUS",
            "REQUESTER",
            "RESOURCES",
            "FOR",
            "APPROVALS",
            "REASON",
            "YOU CAN REVIEW",
        ],
        &rows,
    );
    Ok(())
}

pub async fn review(args: ReviewArgs, approve: bool, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    let verb = if approve { "approve" } else { "deny" };
    let body = serde_json::json!({ "comment": args.comment });
    let request: serde_json::Value = client
        .post(&["v1", "requests", &args.id, verb], &body)
        .await?;
    if format == Format::Json {
        output::json(&request);
        return Ok(());
    }
    match text(&request, "status").as_str() {
        "approved" => outln!(
            "approved request {}: grant {} for {} gives {} access to {}",
            args.id,
            text(&request, "grant"),
            text(&request, "duration"),
            text(&request, "requester"),
            request["resources"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        ),
        "denied" => outln!("denied request {}", args.id),
        _ => outln!(
            "approved request {}: {}/{} approvals so far",
            args.id,
            request["approvals"].as_i64().unwrap_or(0),
            request["approvals_required"].as_i64().unwrap_or(1)
        ),
    }
    Ok(())
}

fn grant_row(g: &serde_json::Value) -> Vec<String> {
    vec![
        text(g, "id"),
        text(g, "status"),
        text(g, "holder"),
        g["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        text(g, "expires_at"),
        joined(&g["approved_by"], ", "),
        text(g, "reason"),
    ]
}

pub async fn grants(args: GrantsArgs, format: Format) -> CliResult<()> {
    limit_check(args.limit)?;
    let client = Client::from_env()?;
    let mut url = client.url(&["v1", "grants"])?;
    {
        let mut query = url.query_pairs_mut();
        if args.all {
            query.append_pair("all", "true");
        }
        if args.live {
            query.append_pair("live", "true");
        }
        query.append_pair("limit", &args.limit.to_string());
    }
    let list: serde_json::Value = client
        .send::<(), _>(reqwest::Method::GET, url, None)
        .await?;
    if format == Format::Json {
        output::json(&list["grants"]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["grants"]
        .as_array()
        .map(|a| a.iter().map(grant_row).collect())
        .unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no grants");
        return Ok(());
    }
    output::table(
        &[
            "ID",
            "STATUS",
            "HOLDER",
            "RESOURCES",
            "EXPIRES",
            "APPROVED BY",
            "REASON",
        ],
        &rows,
    );
    Ok(())
}

pub async fn grant(command: GrantCommand, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    let grant: serde_json::Value = match &command {
        GrantCommand::Revoke { id, reason } => {
            client
                .post(
                    &["v1", "grants", id, "revoke"],
                    &serde_json::json!({ "reason": reason }),
                )
                .await?
        }
        GrantCommand::Show { id } => client.get(&["v1", "grants", id]).await?,
    };
    if format == Format::Json {
        output::json(&grant);
        return Ok(());
    }
    if let GrantCommand::Revoke { id, .. } = &command {
        outln!("revoked grant {id}");
        return Ok(());
    }
    let mut lines = vec![
        ("id", text(&grant, "id")),
        ("status", text(&grant, "status")),
        ("holder", text(&grant, "holder")),
        (
            "resources",
            grant["resources"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        ),
        ("request", text(&grant, "access_request")),
        ("approved by", joined(&grant["approved_by"], ", ")),
        ("reason", text(&grant, "reason")),
        ("kind", text(&grant, "kind")),
        ("starts", text(&grant, "starts_at")),
        ("expires", text(&grant, "expires_at")),
        ("revoked", text(&grant, "revoked_at")),
        ("revoked by", text(&grant, "revoked_by")),
        ("why", text(&grant, "revoke_reason")),
    ];
    lines.retain(|(_, v)| !v.is_empty());
    for (key, value) in lines {
        outln!("{:<12} {value}", format!("{key}:"));
    }
    Ok(())
}
