//! `lk inject`: render `{{ lk://... }}` placeholders into a file created with mode 0600.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Args;
use latchkey_core::template::Template;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::commands::resolve::read_all;
use crate::error::{CliError, CliResult};

#[derive(Args)]
pub struct InjectArgs {
    /// The template file; `-` or none reads standard input.
    #[arg(short = 'i', long = "in-file")]
    input: Option<PathBuf>,
    /// The output file (mode 0600, replaced atomically); none writes standard output.
    #[arg(short = 'o', long = "out-file")]
    output: Option<PathBuf>,
}

pub async fn run(args: InjectArgs) -> CliResult<()> {
    let source = match &args.input {
        Some(path) if path.as_os_str() != "-" => std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!("cannot read template `{}`: {e}", path.display()))
        })?,
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        }
    };
    let name = args
        .input
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "standard input".into());
    let template =
        Template::parse(&source).map_err(|e| CliError::usage(format!("template `{name}`: {e}")))?;

    let references = template
        .references()
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    let values = if references.is_empty() {
        Default::default()
    } else {
        read_all(&Client::from_env()?, references).await?
    };
    let rendered = Zeroizing::new(
        template
            .render(|r| values.get(r).map(|v| v.as_slice()))
            .map_err(|e| CliError::other(format!("template `{name}`: {e}")))?,
    );

    match &args.output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&rendered)?;
            out.flush()?;
        }
        Some(path) => write_private(path, &rendered)?,
    }
    Ok(())
}

/// Writes `bytes` to a new 0600 file beside `path`, then renames it over `path`, so the
/// output is never visible half-written or with wider permissions.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> CliResult<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| CliError::usage(format!("`{}` is not a file path", path.display())))?;
    let temporary = dir.join(format!(
        ".{}.lk-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(CliError::other(format!(
            "cannot write `{}`: {error}",
            path.display()
        )));
    }
    Ok(())
}
