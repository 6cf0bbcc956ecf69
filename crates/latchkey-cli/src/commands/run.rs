//! `lk run`: start a command with `lk://` references in its environment resolved.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;
use latchkey_core::reference::SecretRef;
use zeroize::Zeroizing;

use crate::child::{ChildError, ChildSpec, run_child};
use crate::commands::resolve::read_all_waiting;
use crate::error::{CliError, CliResult};

#[derive(Args)]
pub struct RunArgs {
    /// A dotenv file whose variables are added to the environment (they win over inherited
    /// ones); values may be `lk://` references.
    #[arg(long)]
    env_file: Vec<PathBuf>,
    /// Show secret values in the command's output instead of `***`.
    #[arg(long)]
    no_masking: bool,
    #[command(flatten)]
    workload: crate::commands::login::WorkloadLogin,
    #[command(flatten)]
    access: crate::commands::access::WaitArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

pub async fn run(args: RunArgs) -> CliResult<i32> {
    let mut environment: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for path in &args.env_file {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!("cannot read env file `{}`: {e}", path.display()))
        })?);
        let entries = latchkey_core::dotenv::parse(&text)
            .map_err(|e| CliError::usage(format!("env file `{}`: {e}", path.display())))?;
        for (key, value) in entries {
            environment.insert(OsString::from(key), OsString::from(value));
        }
    }

    let mut wanted: Vec<(OsString, SecretRef)> = Vec::new();
    for (key, value) in &environment {
        let Some(text) = value.to_str() else { continue };
        if !SecretRef::is_reference(text) {
            continue;
        }
        let name = key.to_string_lossy();
        let reference = SecretRef::parse(text)
            .map_err(|e| CliError::usage(format!("variable `{name}`: {e}")))?;
        reference
            .require_field()
            .map_err(|e| CliError::usage(format!("variable `{name}`: {e}")))?;
        wanted.push((key.clone(), reference));
    }

    let mut masks = Vec::new();
    if !wanted.is_empty() {
        let (client, session) = args.workload.client().await?;
        let values = read_all_waiting(
            &client,
            wanted.iter().map(|(_, r)| r.clone()).collect(),
            &args.access,
        )
        .await;
        // The child never sees the token, so it ends as soon as the values are in hand.
        crate::commands::login::end_session(&client, session).await;
        let values = values?;
        for (key, reference) in &wanted {
            let Some(value) = values.get(reference) else {
                continue;
            };
            if value.contains(&0) {
                return Err(CliError::usage(format!(
                    "variable `{}`: `{reference}` contains a NUL byte, which an environment variable cannot hold; use `lk inject` to write it to a file",
                    key.to_string_lossy()
                )));
            }
            let text = std::str::from_utf8(value).map(str::to_string).map_err(|_| {
                CliError::usage(format!(
                    "variable `{}`: `{reference}` is not UTF-8 text; use `lk inject` to write it to a file",
                    key.to_string_lossy()
                ))
            })?;
            environment.insert(key.clone(), OsString::from(text));
            masks.push(value.clone());
        }
    }

    // The command gets the secrets it references, not the token that can fetch any other.
    environment.remove(&OsString::from("LATCHKEY_TOKEN"));

    let mut command = args.command.into_iter();
    let program = command
        .next()
        .ok_or_else(|| CliError::usage("give the command to run after `--`"))?;
    let spec = ChildSpec {
        program,
        args: command.collect(),
        env: environment.into_iter().collect(),
        masks,
        masking: !args.no_masking,
    };
    run_child(spec).await.map_err(|error| {
        // The shell's conventions: 127 for a command that was not found, 126 for one that
        // could not be executed.
        let exit_code = match error {
            ChildError::NotFound { .. } => 127,
            ChildError::PermissionDenied { .. } => 126,
            _ => crate::error::EXIT_ERROR,
        };
        CliError {
            exit_code,
            message: error.to_string(),
        }
    })
}
