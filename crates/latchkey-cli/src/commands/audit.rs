//! `lk audit`: tail, export and verify the hash-chained audit log.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use clap::Subcommand;
use latchkey_core::audit::{AuditEvent, ChainVerifier};

use crate::client::Client;
use crate::error::{CliError, CliResult, EXIT_ERROR};
use crate::output::{self, Format};

const PAGE: u32 = 5000;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show the latest events.
    Tail {
        /// How many events.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Keep printing new events as they are written.
        #[arg(short, long)]
        follow: bool,
    },
    /// Check the hash chain: of the live log, or of an export (`--file`). Exits 0 when
    /// intact, 1 naming the first bad sequence number otherwise.
    Verify {
        /// A JSON Lines export to check offline.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write the whole log as JSON Lines, one event per line, in order.
    Export {
        /// Output file; standard output when omitted.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(serde::Deserialize)]
struct Page {
    events: Vec<AuditEvent>,
    last_seq: u64,
    head_seq: u64,
}

async fn page(client: &Client, after: u64, limit: u32) -> CliResult<Page> {
    let mut url = client.url(&["v1", "audit", "events"])?;
    url.query_pairs_mut()
        .append_pair("after", &after.to_string())
        .append_pair("limit", &limit.to_string());
    client
        .send::<(), Page>(reqwest::Method::GET, url, None)
        .await
}

fn print_event(event: &AuditEvent, format: Format) {
    if format == Format::Json {
        if let Ok(line) = serde_json::to_string(event) {
            println!("{line}");
        }
        return;
    }
    let r = &event.record;
    let outcome = serde_json::to_value(r.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut line = format!(
        "{:>6}  {}  {:<7}  {}  {}  {}",
        event.seq, r.time, outcome, r.principal, r.action, r.resource
    );
    if let Some(reason) = &r.reason {
        line.push_str(&format!("  reason={reason}"));
    }
    if !r.policies.is_empty() {
        line.push_str(&format!("  policies={}", r.policies.join(",")));
    }
    for (key, value) in &r.detail {
        line.push_str(&format!("  {key}={value}"));
    }
    println!("{line}");
}

/// Walks the live log page by page up to the head seen at the start, handing each event to
/// `visit`. Reading the log is itself audited, so "until a page comes back empty" would
/// never end.
async fn each_event(
    client: &Client,
    mut visit: impl FnMut(&AuditEvent) -> CliResult<()>,
) -> CliResult<u64> {
    let mut after = 0;
    let mut count = 0;
    let mut stop_at = None;
    loop {
        let page = page(client, after, PAGE).await?;
        let head = *stop_at.get_or_insert(page.head_seq);
        for event in page.events.iter().take_while(|e| e.seq <= head) {
            visit(event)?;
            count += 1;
        }
        if page.events.is_empty() || page.last_seq >= head {
            return Ok(count);
        }
        after = page.last_seq;
    }
}

pub async fn run(command: AuditCommand, format: Format) -> CliResult<i32> {
    match command {
        AuditCommand::Tail { lines, follow } => {
            let client = Client::from_env()?;
            let head = page(&client, u64::MAX - 1, 1).await?.head_seq;
            let mut after = head.saturating_sub(lines);
            loop {
                let page = page(&client, after, PAGE).await?;
                for event in &page.events {
                    print_event(event, format);
                }
                after = page.last_seq;
                if !follow {
                    return Ok(0);
                }
                if page.events.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        AuditCommand::Export { output } => {
            let client = Client::from_env()?;
            let sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
                    CliError::usage(format!("cannot create `{}`: {e}", path.display()))
                })?),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut writer = BufWriter::new(sink);
            let count = each_event(&client, |event| {
                let line =
                    serde_json::to_string(event).map_err(|e| CliError::other(e.to_string()))?;
                writeln!(writer, "{line}")?;
                Ok(())
            })
            .await?;
            writer.flush()?;
            if output.is_some() {
                eprintln!("exported {count} events");
            }
            Ok(0)
        }
        AuditCommand::Verify { file } => {
            let mut verifier = ChainVerifier::new();
            let mut first_break = None;
            let mut check = |event: &AuditEvent| -> CliResult<()> {
                if first_break.is_none()
                    && let Err(error) = verifier.push(event)
                {
                    first_break = Some(error);
                }
                Ok(())
            };
            let source = match &file {
                Some(path) => {
                    let handle = std::fs::File::open(path).map_err(|e| {
                        CliError::usage(format!("cannot open `{}`: {e}", path.display()))
                    })?;
                    for (number, line) in std::io::BufReader::new(handle).lines().enumerate() {
                        let line = line?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        let event: AuditEvent = serde_json::from_str(&line).map_err(|e| {
                            CliError::other(format!(
                                "`{}` line {}: not an audit event: {e}",
                                path.display(),
                                number + 1
                            ))
                        })?;
                        check(&event)?;
                    }
                    path.display().to_string()
                }
                None => {
                    let client = Client::from_env()?;
                    each_event(&client, check).await?;
                    client.base().to_string()
                }
            };
            match first_break {
                Some(error) => {
                    if format == Format::Json {
                        output::json(
                            &serde_json::json!({"intact": false, "first_bad_seq": error.seq, "message": error.to_string()}),
                        );
                    } else {
                        eprintln!("lk: {error}");
                    }
                    Ok(EXIT_ERROR)
                }
                None => {
                    let summary = verifier.finish();
                    if format == Format::Json {
                        output::json(
                            &serde_json::json!({"intact": true, "events": summary.events, "last_seq": summary.last_seq, "head_hash": summary.head_hash}),
                        );
                    } else {
                        println!(
                            "audit chain intact: {} events from {source}, last sequence {}, head hash {}",
                            summary.events, summary.last_seq, summary.head_hash
                        );
                    }
                    Ok(0)
                }
            }
        }
    }
}
