//! `lk report access`: the access review report as Markdown, CSV or one HTML file.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use latchkey_server::access_report::AccessReport;

use crate::client::Client;
use crate::error::{CliError, CliResult};
use crate::output::Format;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown tables, for a ticket or a wiki page.
    Md,
    /// One row per finding, for a spreadsheet.
    Csv,
    /// One self-contained page (inline CSS, no scripts or links) with a sign-off block.
    Html,
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Report who read each secret, how often and under which grant, with denied attempts,
    /// break-glass reads and permissions that went unused in the period.
    Access {
        /// Start of the period: RFC 3339, or a duration before now such as `7d`.
        #[arg(long, default_value = "7d")]
        since: String,
        /// End of the period (exclusive), written like `--since`; now by default.
        #[arg(long)]
        until: Option<String>,
        /// Report format (default md); `--format md|csv|html` says the same.
        #[arg(long, value_enum)]
        file_format: Option<ReportFormat>,
        /// Output file; standard output when omitted.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub async fn run(command: ReportCommand, format: Format) -> CliResult<()> {
    let ReportCommand::Access {
        since,
        until,
        file_format,
        output,
    } = command;
    let file_format = match (file_format, format) {
        (Some(chosen), _) => chosen,
        (None, Format::Table | Format::Md) => ReportFormat::Md,
        (None, Format::Csv) => ReportFormat::Csv,
        (None, Format::Html) => ReportFormat::Html,
        (None, other) => {
            return Err(CliError::usage(format!(
                "`lk report access` writes md, csv or html, not `--format {}`",
                other.name()
            )));
        }
    };
    let client = Client::from_env()?;
    let mut url = client.url(&["v1", "reports", "access"])?;
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("since", &since);
        if let Some(until) = &until {
            pairs.append_pair("until", until);
        }
    }
    let report: AccessReport = client
        .send::<(), _>(reqwest::Method::GET, url, None)
        .await?;
    let text = match file_format {
        ReportFormat::Md => markdown(&report),
        ReportFormat::Csv => csv(&report),
        ReportFormat::Html => html(&report),
    };
    match output {
        Some(path) => {
            std::fs::write(&path, text)
                .map_err(|e| CliError::usage(format!("cannot write `{}`: {e}", path.display())))?;
            eprintln!("wrote the access report to {}", path.display());
        }
        None => out!("{text}"),
    }
    Ok(())
}

fn secret_label(resource: &str, vault: &str, secret: &str) -> String {
    if vault.is_empty() {
        format!("{resource} (deleted)")
    } else {
        format!("{vault}/{secret}")
    }
}

/// Escapes `|` and line breaks so text stays inside one Markdown table cell.
fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// Renders Markdown: a section per table.
pub fn markdown(report: &AccessReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Access review\n");
    let _ = writeln!(
        out,
        "Period: {} to {} (read events {} to {}). Generated {}.\n",
        report.since, report.until, report.first_seq, report.last_seq, report.generated_at
    );
    let _ = writeln!(out, "## Reads\n");
    let _ = writeln!(
        out,
        "| secret | principal | reads | first | last | grant | approved by | reason | policies |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for secret in &report.secrets {
        let label = secret_label(&secret.resource, &secret.vault, &secret.secret);
        if secret.reads.is_empty() {
            let _ = writeln!(out, "| {} | - | 0 | | | | | | |", md_cell(&label));
        }
        for read in &secret.reads {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                md_cell(&label),
                md_cell(&read.principal),
                read.count,
                read.first_time,
                read.last_time,
                md_cell(or_dash(&read.grant)),
                md_cell(or_dash(&read.approved_by)),
                md_cell(or_dash(&read.approval_reason)),
                md_cell(&read.policies.join(", "))
            );
        }
    }

    let _ = writeln!(out, "\n## Denied reads\n");
    let denied: Vec<_> = report
        .secrets
        .iter()
        .flat_map(|s| s.denied.iter().map(move |d| (s, d)))
        .collect();
    if denied.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(out, "| secret | principal | attempts | last |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (secret, entry) in denied {
            let label = secret_label(&secret.resource, &secret.vault, &secret.secret);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                md_cell(&label),
                md_cell(&entry.principal),
                entry.count,
                entry.last_time
            );
        }
    }

    let _ = writeln!(out, "\n## Break-glass reads\n");
    let uses: Vec<_> = report
        .secrets
        .iter()
        .flat_map(|s| s.break_glass.iter().map(move |b| (s, b)))
        .collect();
    if uses.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(out, "| seq | time | secret | principal | reason |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for (secret, entry) in uses {
            let label = secret_label(&secret.resource, &secret.vault, &secret.secret);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                entry.seq,
                entry.time,
                md_cell(&label),
                md_cell(&entry.principal),
                md_cell(or_dash(&entry.approval_reason))
            );
        }
    }

    let _ = writeln!(out, "\n## Unused read access\n");
    let _ = writeln!(
        out,
        "Principals whose policies allow reading a secret without a grant, who did not read it in the period.\n"
    );
    if report.unused_access.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(out, "| principal | secret | allowed by |");
        let _ = writeln!(out, "|---|---|---|");
        for finding in &report.unused_access {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                md_cell(&finding.principal),
                md_cell(&finding.resource),
                md_cell(&finding.policies.join(", "))
            );
        }
    }
    if !report.excluded_principals.is_empty() {
        let _ = writeln!(
            out,
            "\nNot evaluated: {}.",
            report.excluded_principals.join("; ")
        );
    }
    out
}

/// Quotes a CSV field when it contains a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

const CSV_HEADER: &str =
    "kind,resource,principal,count,first_time,last_time,grant,approved_by,reason,policies";

/// Renders one CSV row per read summary, denied summary, break-glass read and unused
/// permission, distinguished by the `kind` column.
pub fn csv(report: &AccessReport) -> String {
    let mut rows = vec![CSV_HEADER.to_owned()];
    let mut push = |fields: [&str; 10]| {
        rows.push(
            fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
    };
    for secret in &report.secrets {
        for read in &secret.reads {
            push([
                "read",
                &secret.resource,
                &read.principal,
                &read.count.to_string(),
                &read.first_time,
                &read.last_time,
                &read.grant,
                &read.approved_by,
                &read.approval_reason,
                &read.policies.join(";"),
            ]);
        }
        for denied in &secret.denied {
            push([
                "denied",
                &secret.resource,
                &denied.principal,
                &denied.count.to_string(),
                "",
                &denied.last_time,
                "",
                "",
                "",
                "",
            ]);
        }
        for entry in &secret.break_glass {
            push([
                "break_glass",
                &secret.resource,
                &entry.principal,
                "1",
                &entry.time,
                &entry.time,
                "",
                "",
                &entry.approval_reason,
                "",
            ]);
        }
    }
    for finding in &report.unused_access {
        push([
            "unused_access",
            &finding.resource,
            &finding.principal,
            "0",
            "",
            "",
            "",
            "",
            "",
            &finding.policies.join(";"),
        ]);
    }
    let mut text = rows.join("\n");
    text.push('\n');
    text
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const HTML_STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#111}\
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}\
th,td{border:1px solid #999;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}\
th{background:#eee}.none{color:#555}\
.signoff{border:2px solid #111;padding:1rem;margin-top:2rem;max-width:40rem}\
.signoff td{border:none;padding:0.5rem 0.5rem 0.5rem 0}\
.line{border-bottom:1px solid #111;min-width:20rem;display:inline-block}\
@media print{body{margin:0.5in}}";

fn html_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("<p class=\"none\">None.</p>\n");
        return;
    }
    out.push_str("<table>\n<tr>");
    for cell in header {
        let _ = write!(out, "<th>{}</th>", escape_html(cell));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape_html(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// Renders one HTML file with inline CSS, no scripts and no links, ending in a sign-off
/// block for the reviewer.
pub fn html(report: &AccessReport) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(
        out,
        "<title>Access review {} to {}</title>",
        escape_html(&report.since),
        escape_html(&report.until)
    );
    let _ = writeln!(out, "<style>{HTML_STYLE}</style>\n</head>\n<body>");
    out.push_str("<h1>Access review</h1>\n");
    let _ = writeln!(
        out,
        "<p>Period: {} to {} (read events {} to {}). Generated {}.</p>",
        escape_html(&report.since),
        escape_html(&report.until),
        report.first_seq,
        report.last_seq,
        escape_html(&report.generated_at)
    );

    let mut reads = Vec::new();
    let mut denied = Vec::new();
    let mut uses = Vec::new();
    for secret in &report.secrets {
        let label = secret_label(&secret.resource, &secret.vault, &secret.secret);
        if secret.reads.is_empty() {
            reads.push(vec![
                label.clone(),
                "-".into(),
                "0".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for read in &secret.reads {
            reads.push(vec![
                label.clone(),
                read.principal.clone(),
                read.count.to_string(),
                read.first_time.clone(),
                read.last_time.clone(),
                or_dash(&read.grant).to_owned(),
                or_dash(&read.approved_by).to_owned(),
                or_dash(&read.approval_reason).to_owned(),
                read.policies.join(", "),
            ]);
        }
        for entry in &secret.denied {
            denied.push(vec![
                label.clone(),
                entry.principal.clone(),
                entry.count.to_string(),
                entry.last_time.clone(),
            ]);
        }
        for entry in &secret.break_glass {
            uses.push(vec![
                entry.seq.to_string(),
                entry.time.clone(),
                label.clone(),
                entry.principal.clone(),
                or_dash(&entry.approval_reason).to_owned(),
            ]);
        }
    }
    out.push_str("<h2>Reads</h2>\n");
    html_table(
        &mut out,
        &[
            "secret",
            "principal",
            "reads",
            "first",
            "last",
            "grant",
            "approved by",
            "reason",
            "policies",
        ],
        &reads,
    );
    out.push_str("<h2>Denied reads</h2>\n");
    html_table(
        &mut out,
        &["secret", "principal", "attempts", "last"],
        &denied,
    );
    out.push_str("<h2>Break-glass reads</h2>\n");
    html_table(
        &mut out,
        &["seq", "time", "secret", "principal", "reason"],
        &uses,
    );
    out.push_str("<h2>Unused read access</h2>\n<p>Principals whose policies allow reading a secret without a grant, who did not read it in the period.</p>\n");
    let unused: Vec<Vec<String>> = report
        .unused_access
        .iter()
        .map(|f| {
            vec![
                f.principal.clone(),
                f.resource.clone(),
                f.policies.join(", "),
            ]
        })
        .collect();
    html_table(&mut out, &["principal", "secret", "allowed by"], &unused);
    if !report.excluded_principals.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"none\">Not evaluated: {}.</p>",
            escape_html(&report.excluded_principals.join("; "))
        );
    }
    out.push_str(
        "<div class=\"signoff\">\n<h2>Sign-off</h2>\n<p>I reviewed the access above for this period. \
Findings that need action are noted below.</p>\n<table>\n\
<tr><td>Reviewer</td><td><span class=\"line\">&nbsp;</span></td></tr>\n\
<tr><td>Role</td><td><span class=\"line\">&nbsp;</span></td></tr>\n\
<tr><td>Date</td><td><span class=\"line\">&nbsp;</span></td></tr>\n\
<tr><td>Signature</td><td><span class=\"line\">&nbsp;</span></td></tr>\n\
<tr><td>Actions</td><td><span class=\"line\">&nbsp;</span></td></tr>\n\
</table>\n</div>\n</body>\n</html>\n",
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Loads the server's snapshot report. Each test renders it in one format and compares
    /// the output with a checked-in file; `UPDATE_SNAPSHOTS=1` rewrites the files, so review
    /// the diff before committing.
    fn fixture() -> AccessReport {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../latchkey-server/tests/fixtures/access_report.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn assert_snapshot(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            expected == actual,
            "{} differs from the output:\n{actual}",
            path.display()
        );
    }

    #[test]
    fn markdown_matches_snapshot() {
        assert_snapshot("access_report.md", &markdown(&fixture()));
    }

    #[test]
    fn csv_matches_snapshot() {
        let text = csv(&fixture());
        assert_snapshot("access_report.csv", &text);
        let columns = CSV_HEADER.split(',').count();
        for line in text.lines() {
            // Some fields contain commas inside quotes, so count with a small RFC 4180 reader.
            let mut fields = 1;
            let mut quoted = false;
            for c in line.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields += 1,
                    _ => {}
                }
            }
            assert_eq!(fields, columns, "{line}");
        }
    }

    #[test]
    fn html_is_self_contained_with_sign_off() {
        let text = html(&fixture());
        assert_snapshot("access_report.html", &text);
        let lower = text.to_lowercase();
        for banned in [
            "<script", "<link", "src=", "href=", "http://", "https://", "@import",
        ] {
            assert!(!lower.contains(banned), "found `{banned}`");
        }
        assert!(text.contains("<h2>Sign-off</h2>"));
        assert!(
            text.contains("User::&quot;alice&quot;"),
            "names are escaped"
        );
    }
}
