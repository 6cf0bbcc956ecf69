//! `lk operator migrate`: move a stopped SQLite deployment to PostgreSQL.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use latchkey_store::transfer::{self, CopyReport, Progress, TransferError};
use latchkey_store::{SqliteStore, redact_url};

use crate::error::{CliError, CliResult, EXIT_UNAVAILABLE};
use crate::output::{self, Format};

#[derive(Args)]
pub struct MigrateArgs {
    /// The SQLite database to copy, as sqlite:PATH, such as
    /// sqlite:/var/lib/latchkey/latchkey.db. The server using it must be stopped.
    #[arg(long, value_name = "sqlite:PATH")]
    from: String,
    /// An empty PostgreSQL database, as postgres://USER:PASSWORD@HOST:PORT/DATABASE.
    #[arg(long, value_name = "postgres://...")]
    to: String,
    /// Also check the audit checkpoint signatures with this public key (from
    /// `lk audit key -o FILE`, taken before the server was stopped).
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

/// Reads the path out of `sqlite:PATH` or `sqlite://PATH`.
fn source_path(from: &str) -> CliResult<PathBuf> {
    let path = from
        .strip_prefix("sqlite://")
        .or_else(|| from.strip_prefix("sqlite:"))
        .filter(|path| !path.is_empty())
        .ok_or_else(|| {
            CliError::usage(format!(
                "invalid `--from` `{from}`: give the SQLite database as sqlite:PATH, such as sqlite:/var/lib/latchkey/latchkey.db"
            ))
        })?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(CliError::usage(format!(
            "the source database `{}` does not exist; give the `latchkey.db` file in the server's data directory",
            path.display()
        )));
    }
    Ok(path)
}

/// Returns the data directory that `lk server` locks: the one containing the database file.
fn data_dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Maps a copy failure to a CLI error, naming the database it is about.
fn transfer_error(error: TransferError, from: &str, to: &str) -> CliError {
    match &error {
        TransferError::InvalidUrl(_) => CliError::usage(format!("invalid `--to` `{to}`: {error}")),
        TransferError::DestinationNotEmpty { .. } | TransferError::ForeignTable { .. } => {
            CliError::usage(format!(
                "refusing to copy into `{to}`: {error}; give a new database (CREATE DATABASE ...)"
            ))
        }
        TransferError::Store(store) if store.is_unavailable() => CliError {
            exit_code: EXIT_UNAVAILABLE,
            message: format!("cannot reach `{to}`: {error}"),
        },
        TransferError::Audit(_) => CliError::other(format!(
            "{error}; nothing was written to `{to}`. Check the source with `lk audit verify` on a server started on `{from}`"
        )),
        TransferError::UnknownTable { side, .. }
        | TransferError::MissingTable { side, .. }
        | TransferError::ColumnMismatch { side, .. } => {
            let name = match side {
                transfer::Side::Source => from,
                transfer::Side::Destination => to,
            };
            CliError::other(format!("`{name}`: {error}"))
        }
        _ => CliError::other(format!(
            "copying `{from}` to `{to}` failed: {error}; nothing was written"
        )),
    }
}

/// Shows copy progress on standard error when it is a terminal.
struct ProgressLine {
    enabled: bool,
    current: Option<String>,
}

impl ProgressLine {
    fn show(&mut self, progress: Progress<'_>) {
        if !self.enabled {
            return;
        }
        let (label, done, total) = match progress {
            Progress::Copying { table, done, total } => (format!("copying {table}"), done, total),
            Progress::Verifying { done, total } => {
                ("verifying the audit chain".to_string(), done, total)
            }
        };
        let mut err = std::io::stderr().lock();
        if self.current.as_deref().is_some_and(|c| c != label) {
            let _ = writeln!(err);
        }
        let _ = write!(err, "\r\x1b[2K{label}: {done}/{total}");
        let _ = err.flush();
        self.current = Some(label);
    }

    fn finish(&mut self) {
        if self.enabled && self.current.take().is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

pub async fn run(args: MigrateArgs, format: Format) -> CliResult<()> {
    let to = redact_url(&args.to);
    transfer::parse_destination_url(&args.to).map_err(|e| transfer_error(e, &args.from, &to))?;
    let path = source_path(&args.from)?;
    let public_key = args
        .public_key
        .as_deref()
        .map(crate::commands::audit::decode_public_key)
        .transpose()?;

    let data_dir = data_dir_of(&path);
    let _lock = latchkey_server::serve::try_lock_data_dir(data_dir)?.ok_or_else(|| {
        CliError::other(format!(
            "the data directory `{}` is in use by a running `lk server`; stop it before migrating",
            data_dir.display()
        ))
    })?;

    let source = SqliteStore::open(&path)
        .await
        .map_err(|e| CliError::other(format!("cannot open `{}`: {e}", path.display())))?;
    let destination = transfer::open_destination(&args.to)
        .await
        .map_err(|e| transfer_error(e, &args.from, &to))?;

    let mut line = ProgressLine {
        enabled: std::io::stderr().is_terminal(),
        current: None,
    };
    let result =
        transfer::copy_to_postgres(&source, &destination, public_key.as_deref(), &mut |p| {
            line.show(p)
        })
        .await;
    line.finish();
    let report = result.map_err(|e| transfer_error(e, &args.from, &to))?;
    print_report(&report, &args.from, &to, format);
    Ok(())
}

fn print_report(report: &CopyReport, from: &str, to: &str, format: Format) {
    let summary = &report.audit;
    if format == Format::Json {
        let tables: serde_json::Map<String, serde_json::Value> = report
            .tables
            .iter()
            .map(|(name, rows)| (name.to_string(), (*rows).into()))
            .collect();
        output::json(&serde_json::json!({
            "from": from, "to": to, "tables": tables,
            "events": summary.chain.events, "last_seq": summary.chain.last_seq,
            "head_hash": summary.chain.head_hash, "checkpoints": summary.checkpoints,
            "signatures_checked": report.signatures_checked,
        }));
        return;
    }
    outln!("copied {from} to {to}");
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|(name, rows)| vec![name.to_string(), rows.to_string()])
        .collect();
    output::table(&["TABLE", "ROWS"], &rows);
    outln!(
        "audit chain verified at the destination: {} events, last sequence {}, head hash {}",
        summary.chain.events,
        summary.chain.last_seq,
        summary.chain.head_hash
    );
    if summary.checkpoints == 0 {
        outln!(
            "no signed checkpoints to match yet (by default a server signs one every 1000 events or 60 seconds)"
        );
    } else {
        let signatures = if report.signatures_checked {
            "signatures verified"
        } else {
            "signatures not checked (give `--public-key` to check them)"
        };
        outln!(
            "{} checkpoints match the chain, the last at sequence {}; {signatures}",
            summary.checkpoints,
            summary.last_checkpoint_seq
        );
    }
    outln!(
        "start every `lk server` with storage = \"{to}\", and keep the SQLite file until the new deployment works"
    );
}
