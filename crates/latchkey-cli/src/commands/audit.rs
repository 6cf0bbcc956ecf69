//! `lk audit`: tail, search, export and verify the hash-chained, signed audit log.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Subcommand, ValueEnum};
use latchkey_core::audit::{
    AuditBreak, AuditEvent, AuditSummary, AuditVerifier, ChainVerifier, Checkpoint, Outcome,
    parse_time_bound,
};

use crate::client::Client;
use crate::error::{CliError, CliResult, EXIT_ERROR};
use crate::output::{self, Format};

const PAGE: u32 = 5000;

/// Export file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line: events, and `{"checkpoint": {...}}` lines after the event
    /// each checkpoint signs.
    Jsonl,
    /// A header row and one row per event; checkpoints are left out.
    Csv,
}

/// Outcome filter for `lk audit search`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    Allowed,
    Denied,
    Failed,
}

impl OutcomeArg {
    fn as_str(self) -> &'static str {
        match self {
            OutcomeArg::Allowed => "allowed",
            OutcomeArg::Denied => "denied",
            OutcomeArg::Failed => "failed",
        }
    }
}

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
    /// Check the hash chain and the signed checkpoints: of the live log with the server's
    /// key, or of an export (`--file`) with `--public-key`. Exits 0 when intact, 1 naming
    /// the first bad sequence number otherwise.
    Verify {
        /// A JSON Lines export to check offline.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The public key file written by `lk audit key -o FILE`; required to check the
        /// checkpoints of an export.
        #[arg(long, requires = "file")]
        public_key: Option<PathBuf>,
    },
    /// Write the log, or the events of a time range, with its checkpoints.
    Export {
        /// Output file; standard output when omitted.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// First event time: RFC 3339, or a duration before now such as `7d`.
        #[arg(long)]
        since: Option<String>,
        /// End of the range (exclusive), written like `--since`.
        #[arg(long)]
        until: Option<String>,
        /// File format (default jsonl); `--format jsonl|csv` says the same.
        #[arg(long, value_enum)]
        file_format: Option<ExportFormat>,
    },
    /// Find events by principal, resource prefix, action, outcome and time.
    Search {
        /// Exact principal, such as `User::"alice"`.
        #[arg(long)]
        principal: Option<String>,
        /// Resource prefix, such as `Secret::"prod/`.
        #[arg(long)]
        resource: Option<String>,
        /// Exact action, such as `read`.
        #[arg(long)]
        action: Option<String>,
        /// The request id an error message or the `x-request-id` header gave.
        #[arg(long)]
        request_id: Option<String>,
        /// A grant id: the events of that grant and of the reads under it.
        #[arg(long)]
        grant: Option<String>,
        /// An access request id: every step of that request, from asking to the reads
        /// under its grant.
        #[arg(long)]
        access_request: Option<String>,
        #[arg(long, value_enum)]
        outcome: Option<OutcomeArg>,
        /// RFC 3339 time, or a duration before now such as `7d`.
        #[arg(long)]
        since: Option<String>,
        /// End of the range (exclusive), written like `--since`.
        #[arg(long)]
        until: Option<String>,
        /// Maximum events shown.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delete events past `[audit] retention` that a recorded export covers, up to a
    /// signed checkpoint. Shows the plan only, unless `--yes` is given.
    Purge {
        /// Delete the events instead of only showing what would be deleted.
        #[arg(long)]
        yes: bool,
    },
    /// Show the public key that verifies checkpoints, or write it to a file.
    Key {
        /// Write the key as JSON to this file.
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

#[derive(serde::Deserialize)]
struct CheckpointPage {
    checkpoints: Vec<Checkpoint>,
    last_seq: u64,
}

/// The key file written by `lk audit key -o FILE`, as the server returns it.
#[derive(serde::Deserialize, serde::Serialize)]
struct PublicKeyFile {
    public_key: String,
    key_id: String,
    algorithm: String,
}

/// Filters sent to `GET /v1/audit/events`.
#[derive(Default)]
struct Filters {
    principal: Option<String>,
    resource: Option<String>,
    action: Option<String>,
    request_id: Option<String>,
    grant: Option<String>,
    access_request: Option<String>,
    outcome: Option<&'static str>,
    since: Option<String>,
    until: Option<String>,
}

async fn page(client: &Client, after: u64, limit: u32, filters: &Filters) -> CliResult<Page> {
    let mut url = client.url(&["v1", "audit", "events"])?;
    {
        let mut pairs = url.query_pairs_mut();
        pairs
            .append_pair("after", &after.to_string())
            .append_pair("limit", &limit.to_string());
        let optional = [
            ("principal", filters.principal.as_deref()),
            ("resource", filters.resource.as_deref()),
            ("action", filters.action.as_deref()),
            ("request_id", filters.request_id.as_deref()),
            ("grant", filters.grant.as_deref()),
            ("access_request", filters.access_request.as_deref()),
            ("outcome", filters.outcome),
            ("since", filters.since.as_deref()),
            ("until", filters.until.as_deref()),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.append_pair(name, value);
            }
        }
    }
    client
        .send::<(), Page>(reqwest::Method::GET, url, None)
        .await
}

async fn all_checkpoints(client: &Client) -> CliResult<Vec<Checkpoint>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let mut url = client.url(&["v1", "audit", "checkpoints"])?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("limit", &PAGE.to_string());
        let page: CheckpointPage = client
            .send::<(), _>(reqwest::Method::GET, url, None)
            .await?;
        if page.checkpoints.is_empty() {
            return Ok(out);
        }
        after = page.last_seq;
        out.extend(page.checkpoints);
    }
}

fn print_event(event: &AuditEvent, format: Format) {
    if format == Format::Json {
        if let Ok(line) = serde_json::to_string(event) {
            outln!("{line}");
        }
        return;
    }
    let r = &event.record;
    let mut line = format!(
        "{:>6}  {}  {:<7}  {}  {}  {}",
        event.seq,
        r.time,
        outcome_name(r.outcome),
        r.principal,
        r.action,
        r.resource
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
    outln!("{line}");
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::Failed => "failed",
    }
}

/// Walks the live log page by page from event `after + 1` up to the head seen at the start,
/// handing each event to `visit` until it returns false. Reading the log is itself audited,
/// so "until a page comes back empty" would never end.
async fn each_event(
    client: &Client,
    mut after: u64,
    mut visit: impl FnMut(&AuditEvent) -> CliResult<bool>,
) -> CliResult<u64> {
    let mut count = 0;
    let mut stop_at = None;
    let none = Filters::default();
    loop {
        let page = page(client, after, PAGE, &none).await?;
        let head = *stop_at.get_or_insert(page.head_seq);
        for event in page.events.iter().take_while(|e| e.seq <= head) {
            if !visit(event)? {
                return Ok(count);
            }
            count += 1;
        }
        if page.events.is_empty() || page.last_seq >= head {
            return Ok(count);
        }
        after = page.last_seq;
    }
}

/// Quotes a CSV field when it contains a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

const CSV_HEADER: &str = "seq,time,request_id,principal,action,resource,outcome,reason,policies,client_addr,token_id,detail,prev_hash,hash";

/// Formats one CSV row: policies joined by `;`, detail as `key=value` pairs joined by `;`.
fn csv_row(event: &AuditEvent) -> String {
    let r = &event.record;
    let detail: Vec<String> = r.detail.iter().map(|(k, v)| format!("{k}={v}")).collect();
    [
        event.seq.to_string(),
        r.time.clone(),
        r.request_id.clone(),
        r.principal.clone(),
        r.action.clone(),
        r.resource.clone(),
        outcome_name(r.outcome).to_owned(),
        r.reason.clone().unwrap_or_default(),
        r.policies.join(";"),
        r.client_addr.clone().unwrap_or_default(),
        r.token_id.clone().unwrap_or_default(),
        detail.join(";"),
        event.prev_hash.clone(),
        event.hash.clone(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

fn time_arg(name: &str, value: Option<String>) -> CliResult<Option<String>> {
    value
        .map(|text| {
            parse_time_bound(&text, chrono::Utc::now())
                .map_err(|e| CliError::usage(format!("`--{name}`: {e}")))
        })
        .transpose()
}

pub(crate) fn decode_public_key(path: &Path) -> CliResult<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read `{}`: {e}", path.display())))?;
    let encoded = match serde_json::from_str::<PublicKeyFile>(&text) {
        Ok(file) => file.public_key,
        Err(_) => text.trim().to_owned(),
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| {
            CliError::usage(format!(
                "`{}` is not an audit public key: write one with `lk audit key -o FILE`",
                path.display()
            ))
        })?;
    Ok(key)
}

/// One line of a JSON Lines export.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ExportLine {
    Checkpoint { checkpoint: Checkpoint },
    Event(Box<AuditEvent>),
}

fn read_export(path: &Path, mut visit: impl FnMut(ExportLine) -> CliResult<()>) -> CliResult<()> {
    let handle = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("cannot open `{}`: {e}", path.display())))?;
    for (number, line) in std::io::BufReader::new(handle).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line).map_err(|e| {
            CliError::usage(format!(
                "`{}` line {}: not an audit event or checkpoint: {e}",
                path.display(),
                number + 1
            ))
        })?;
        visit(parsed)?;
    }
    Ok(())
}

/// The verifier state of `lk audit verify`: with checkpoints when a key is known.
enum Check {
    Chain(ChainVerifier),
    Signed(AuditVerifier),
}

impl Check {
    fn push(&mut self, event: &AuditEvent) -> Result<(), AuditBreak> {
        match self {
            Check::Chain(v) => v.push(event).map_err(AuditBreak::from),
            Check::Signed(v) => v.push(event),
        }
    }

    fn finish(self) -> Result<Option<AuditSummary>, AuditBreak> {
        match self {
            Check::Chain(v) => {
                let chain = v.finish();
                Ok(Some(AuditSummary {
                    chain,
                    checkpoints: 0,
                    last_checkpoint_seq: 0,
                }))
            }
            Check::Signed(v) => v.finish().map(Some),
        }
    }
}

/// Starts verification at the export's first event.
///
/// NOTE: an export whose first events were deleted reads like a ranged export and still
/// verifies. Only its first sequence number (1 for a whole log) shows the cut.
fn start_for(first: Option<&AuditEvent>) -> ChainVerifier {
    first.map_or_else(ChainVerifier::new, ChainVerifier::continuing)
}

/// Returns the first stored event when retention purged the ones before it. Such a log
/// verifies from that event only when a signed checkpoint sits exactly on it, because the
/// checkpoint's signature then covers the event's hash and with it the `prev_hash` link to
/// the purged events. Without one, the missing start is a break at sequence 1.
async fn purged_start(
    client: &Client,
    checkpoints: &[Checkpoint],
) -> CliResult<Option<AuditEvent>> {
    let first = page(client, 0, 1, &Filters::default()).await?;
    let Some(event) = first.events.into_iter().next() else {
        return Ok(None);
    };
    if event.seq <= 1 {
        return Ok(None);
    }
    if !checkpoints.iter().any(|c| c.seq == event.seq) {
        return Err(CliError {
            exit_code: EXIT_ERROR,
            message: format!(
                "audit chain broken at sequence 1: events 1..{} are missing and no signed checkpoint anchors sequence {}",
                event.seq - 1,
                event.seq
            ),
        });
    }
    Ok(Some(event))
}

async fn verify(
    file: Option<PathBuf>,
    public_key: Option<PathBuf>,
    format: Format,
) -> CliResult<i32> {
    let mut first_break: Option<AuditBreak> = None;
    let mut signed = true;
    let (check, source) = match &file {
        Some(path) => {
            // First pass: the checkpoints and the first event, which sets the start of a
            // ranged export.
            let mut checkpoints = Vec::new();
            let mut first = None;
            read_export(path, |line| {
                match line {
                    ExportLine::Checkpoint { checkpoint } => checkpoints.push(checkpoint),
                    ExportLine::Event(event) => {
                        if first.is_none() {
                            first = Some(*event);
                        }
                    }
                }
                Ok(())
            })?;
            let start = start_for(first.as_ref());
            let mut check = match &public_key {
                Some(key_path) => {
                    let key = decode_public_key(key_path)?;
                    match AuditVerifier::new(&key, start, checkpoints) {
                        Ok(v) => Some(Check::Signed(v)),
                        Err(error) => {
                            first_break = Some(error);
                            None
                        }
                    }
                }
                None => {
                    signed = false;
                    Some(Check::Chain(start))
                }
            };
            if let Some(c) = check.as_mut() {
                read_export(path, |line| {
                    if let ExportLine::Event(event) = line
                        && first_break.is_none()
                        && let Err(error) = c.push(&event)
                    {
                        first_break = Some(error);
                    }
                    Ok(())
                })?;
            }
            (check, path.display().to_string())
        }
        None => {
            let client = Client::from_env()?;
            let key: PublicKeyFile = client.get(&["v1", "audit", "key"]).await?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(key.public_key.as_bytes())
                .map_err(|e| {
                    CliError::other(format!("the server's audit key is not base64: {e}"))
                })?;
            // Checkpoints first: each was stored after its event, so every one of them must
            // lie within the events read next.
            let checkpoints = all_checkpoints(&client).await?;
            let start = purged_start(&client, &checkpoints).await?;
            let after = start.as_ref().map_or(0, |event| event.seq - 1);
            let chain = match &start {
                Some(first) => ChainVerifier::continuing(first),
                None => ChainVerifier::new(),
            };
            let mut check = match AuditVerifier::new(&key, chain, checkpoints) {
                Ok(v) => Some(Check::Signed(v)),
                Err(error) => {
                    first_break = Some(error);
                    None
                }
            };
            if let Some(c) = check.as_mut() {
                each_event(&client, after, |event| {
                    if let Err(error) = c.push(event) {
                        first_break = Some(error);
                        return Ok(false);
                    }
                    Ok(true)
                })
                .await?;
            }
            (check, client.base().to_string())
        }
    };
    let summary = match (first_break, check) {
        (Some(error), _) => Err(error),
        (None, Some(check)) => check.finish(),
        (None, None) => Ok(None),
    };
    match summary {
        Err(error) => {
            if format == Format::Json {
                output::json(
                    &serde_json::json!({"intact": false, "first_bad_seq": error.seq(), "message": error.to_string()}),
                );
            } else {
                eprintln!("lk: {error}");
            }
            Ok(EXIT_ERROR)
        }
        Ok(summary) => {
            let Some(s) = summary else {
                return Err(CliError::other("nothing was verified"));
            };
            if format == Format::Json {
                output::json(&serde_json::json!({
                    "intact": true, "events": s.chain.events, "last_seq": s.chain.last_seq,
                    "head_hash": s.chain.head_hash, "checkpoints": s.checkpoints,
                    "signatures_checked": signed,
                }));
            } else {
                outln!(
                    "audit chain intact: {} events from {source}, last sequence {}, head hash {}",
                    s.chain.events,
                    s.chain.last_seq,
                    s.chain.head_hash
                );
                if signed {
                    outln!(
                        "{} signed checkpoints verified, the last at sequence {}",
                        s.checkpoints,
                        s.last_checkpoint_seq
                    );
                } else {
                    eprintln!(
                        "lk: checkpoints not checked; give `--public-key` (from `lk audit key -o FILE`) to check them"
                    );
                }
            }
            Ok(0)
        }
    }
}

async fn export(
    output: Option<PathBuf>,
    since: Option<String>,
    until: Option<String>,
    file_format: ExportFormat,
) -> CliResult<i32> {
    let since = time_arg("since", since)?;
    let until = time_arg("until", until)?;
    let client = Client::from_env()?;
    let checkpoints = if file_format == ExportFormat::Jsonl {
        all_checkpoints(&client).await?
    } else {
        Vec::new()
    };
    // The range starts at the first event at or after `since` and runs without gaps, so a
    // ranged export still verifies as a chain.
    let start_after = match &since {
        None => 0,
        Some(since) => {
            let filters = Filters {
                since: Some(since.clone()),
                ..Filters::default()
            };
            let first = page(&client, 0, 1, &filters).await?;
            match first.events.first() {
                Some(event) => event.seq - 1,
                None => first.head_seq,
            }
        }
    };
    let sink: Box<dyn Write> = match &output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::usage(format!("cannot create `{}`: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = BufWriter::new(sink);
    if file_format == ExportFormat::Csv {
        writeln!(writer, "{CSV_HEADER}")?;
    }
    let mut next_checkpoint = checkpoints.iter().peekable();
    let mut first: Option<(u64, String)> = None;
    let mut last: Option<(u64, String)> = None;
    let count = each_event(&client, start_after, |event| {
        if until
            .as_deref()
            .is_some_and(|until| event.record.time.as_str() >= until)
        {
            return Ok(false);
        }
        if first.is_none() {
            first = Some((event.seq, event.hash.clone()));
        }
        last = Some((event.seq, event.hash.clone()));
        match file_format {
            ExportFormat::Csv => writeln!(writer, "{}", csv_row(event))?,
            ExportFormat::Jsonl => {
                let line =
                    serde_json::to_string(event).map_err(|e| CliError::other(e.to_string()))?;
                writeln!(writer, "{line}")?;
                while let Some(cp) = next_checkpoint.next_if(|cp| cp.seq <= event.seq) {
                    if cp.seq == event.seq {
                        let line = serde_json::to_string(&serde_json::json!({ "checkpoint": cp }))
                            .map_err(|e| CliError::other(e.to_string()))?;
                        writeln!(writer, "{line}")?;
                    }
                }
            }
        }
        Ok(true)
    })
    .await?;
    writer.flush()?;
    drop(writer);
    let Some(path) = output else {
        return Ok(0);
    };
    eprintln!("exported {count} events");
    match (file_format, first, last) {
        (ExportFormat::Jsonl, Some(first), Some(last)) => {
            record_export(&client, &path, first, last).await?;
        }
        (ExportFormat::Csv, Some(_), Some(_)) => eprintln!(
            "lk: a CSV export has no checkpoints, so it is not recorded for retention; export JSON Lines for that"
        ),
        _ => {}
    }
    Ok(0)
}

/// Makes the written export durable, then records it on the server with its SHA-256 and
/// the hashes of its first and last events, so that retention may purge what it covers.
async fn record_export(
    client: &Client,
    path: &Path,
    first: (u64, String),
    last: (u64, String),
) -> CliResult<()> {
    let cannot =
        |e: std::io::Error| CliError::other(format!("cannot sync `{}`: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    file.sync_all().map_err(cannot)?;

    let mut reader = std::io::BufReader::new(file);
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    loop {
        let chunk = reader.fill_buf().map_err(cannot)?;
        if chunk.is_empty() {
            break;
        }
        digest.update(chunk);
        let used = chunk.len();
        reader.consume(used);
    }
    let sha256: String = digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let body = serde_json::json!({
        "first_seq": first.0, "last_seq": last.0, "events": last.0 - first.0 + 1,
        "sha256": sha256, "file_name": file_name, "first_hash": first.1, "last_hash": last.1,
    });
    let recorded: serde_json::Value = client.post(&["v1", "audit", "exports"], &body).await?;
    eprintln!(
        "recorded export {} of events {}..{} (sha256 {sha256})",
        recorded["id"], first.0, last.0
    );
    Ok(())
}

async fn purge(yes: bool, format: Format) -> CliResult<i32> {
    let client = Client::from_env()?;
    let plan: serde_json::Value = client
        .post(
            &["v1", "audit", "purge"],
            &serde_json::json!({ "dry_run": !yes }),
        )
        .await?;
    if format == Format::Json {
        output::json(&plan);
        return Ok(0);
    }
    let number = |key: &str| plan[key].as_u64().unwrap_or(0);
    outln!(
        "retention {} (events before {} are past it)",
        crate::commands::text(&plan, "retention"),
        crate::commands::text(&plan, "cutoff")
    );
    outln!(
        "stored events {}..{}; purgeable below: age {}, exports {}, sinks {}",
        number("first_seq"),
        number("head_seq"),
        number("age_bound"),
        number("export_bound"),
        number("sink_bound")
    );
    if number("events") == 0 {
        outln!(
            "nothing to purge; limited by {}",
            crate::commands::text(&plan, "limited_by")
        );
    } else if yes {
        outln!(
            "purged {} events; the log now starts at the signed checkpoint {}",
            number("events"),
            number("purge_before")
        );
    } else {
        outln!(
            "would purge {} events ({}..{}), keeping the signed checkpoint {}; limited by {}",
            number("events"),
            number("first_seq"),
            number("purge_before").saturating_sub(1),
            number("purge_before"),
            crate::commands::text(&plan, "limited_by")
        );
        outln!("run `lk audit purge --yes` to delete them");
    }
    Ok(0)
}

pub async fn run(command: AuditCommand, format: Format) -> CliResult<i32> {
    match command {
        AuditCommand::Tail { lines, follow } => {
            let client = Client::from_env()?;
            let none = Filters::default();
            let head = page(&client, u64::MAX - 1, 1, &none).await?.head_seq;

            // Reading the log is itself audited. Show the last `lines` events as they were
            // when tail started, and when following, leave out this command's own reads.
            let first = page(&client, head.saturating_sub(lines), PAGE, &none).await?;
            for event in first.events.iter().take_while(|e| e.seq <= head) {
                print_event(event, format);
            }
            if !follow {
                return Ok(0);
            }
            let me: serde_json::Value = client.get(&["v1", "tokens", "self"]).await?;
            let own_token = me["token"]["accessor"].as_str().map(str::to_string);
            let is_own_read = |event: &AuditEvent| {
                event.record.token_id == own_token
                    && matches!(event.record.action.as_str(), "audit_read" | "lookup_self")
            };
            let mut after = head;
            loop {
                let page = page(&client, after, PAGE, &none).await?;
                for event in page.events.iter().filter(|e| !is_own_read(e)) {
                    print_event(event, format);
                }
                after = page.last_seq.max(after);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        AuditCommand::Export {
            output,
            since,
            until,
            file_format,
        } => {
            let file_format = match (file_format, format) {
                (Some(chosen), _) => chosen,
                (None, Format::Table | Format::Jsonl) => ExportFormat::Jsonl,
                (None, Format::Csv) => ExportFormat::Csv,
                (None, other) => {
                    return Err(CliError::usage(format!(
                        "`lk audit export` writes jsonl or csv, not `--format {}`",
                        other.name()
                    )));
                }
            };
            export(output, since, until, file_format).await
        }
        AuditCommand::Verify { file, public_key } => verify(file, public_key, format).await,
        AuditCommand::Search {
            principal,
            resource,
            action,
            request_id,
            grant,
            access_request,
            outcome,
            since,
            until,
            limit,
        } => {
            if limit == 0 {
                return Err(CliError::usage("`--limit` is 0; give 1 or more"));
            }
            let filters = Filters {
                principal,
                resource,
                action,
                request_id,
                grant,
                access_request,
                outcome: outcome.map(OutcomeArg::as_str),
                since: time_arg("since", since)?,
                until: time_arg("until", until)?,
            };
            let client = Client::from_env()?;
            let mut after = 0;
            let mut printed = 0u32;
            while printed < limit {
                let page = page(&client, after, (limit - printed).min(PAGE), &filters).await?;
                if page.events.is_empty() {
                    break;
                }
                for event in &page.events {
                    print_event(event, format);
                }
                printed += u32::try_from(page.events.len()).unwrap_or(u32::MAX);
                after = page.last_seq;
            }
            Ok(0)
        }
        AuditCommand::Purge { yes } => purge(yes, format).await,
        AuditCommand::Key { output } => {
            let client = Client::from_env()?;
            let key: PublicKeyFile = client.get(&["v1", "audit", "key"]).await?;
            let text =
                serde_json::to_string_pretty(&key).map_err(|e| CliError::other(e.to_string()))?;
            match output {
                Some(path) => {
                    std::fs::write(&path, format!("{text}\n")).map_err(|e| {
                        CliError::usage(format!("cannot write `{}`: {e}", path.display()))
                    })?;
                    eprintln!("wrote audit key `{}` to {}", key.key_id, path.display());
                }
                None if format == Format::Json => outln!("{text}"),
                None => outln!(
                    "key id     {}\nalgorithm  {}\npublic key {}",
                    key.key_id,
                    key.algorithm,
                    key.public_key
                ),
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(r#"User::"alice""#), r#""User::""alice""""#);
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn csv_header_and_row_have_the_same_columns() {
        let record = latchkey_core::audit::AuditRecord {
            time: "2026-12-04T10:00:00.000000Z".to_owned(),
            request_id: "req-1".to_owned(),
            principal: r#"User::"alice""#.to_owned(),
            action: "read".to_owned(),
            resource: r#"Secret::"prod/db""#.to_owned(),
            outcome: Outcome::Denied,
            reason: Some("permission_denied".to_owned()),
            policies: vec!["a".to_owned(), "b".to_owned()],
            client_addr: None,
            token_id: None,
            detail: [("field".to_owned(), "password".to_owned())].into(),
        };
        let event =
            latchkey_core::audit::seal_event(1, &latchkey_core::audit::GENESIS_HASH, record);
        let row = csv_row(&event);
        assert!(row.starts_with(r#"1,2026-12-04T10:00:00.000000Z,req-1,"User::""alice""",read,"#));
        assert!(row.contains(",denied,permission_denied,a;b,,,field=password,"));
        // No field of this row contains a comma, so splitting counts its columns.
        assert_eq!(row.split(',').count(), CSV_HEADER.split(',').count());
    }
}
