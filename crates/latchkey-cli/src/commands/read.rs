//! `lk read`: print one field's value.

use std::io::{IsTerminal, Write};

use clap::Args;
use latchkey_core::reference::SecretRef;

use crate::commands::resolve::read_all_waiting;
use crate::error::{CliError, CliResult};

#[derive(Args)]
pub struct ReadArgs {
    /// The reference, such as `lk://prod/db/password` or `lk://prod/db/password?version=2`.
    reference: String,
    /// Do not add a newline after the value on a terminal.
    #[arg(short = 'n', long)]
    no_newline: bool,
    #[command(flatten)]
    workload: crate::commands::login::WorkloadLogin,
    #[command(flatten)]
    access: crate::commands::access::WaitArgs,
}

pub async fn run(args: ReadArgs) -> CliResult<()> {
    let reference =
        SecretRef::parse(&args.reference).map_err(|e| CliError::usage(e.to_string()))?;
    reference
        .require_field()
        .map_err(|e| CliError::usage(e.to_string()))?;
    let (client, session) = args.workload.client().await?;
    let values = read_all_waiting(&client, vec![reference.clone()], &args.access).await;
    crate::commands::login::end_session(&client, session).await;
    let value = values?
        .remove(&reference)
        .ok_or_else(|| CliError::other("the server returned no value"))?;
    // The bytes go out unchanged so binary values survive a pipe; a terminal gets a newline.
    let mut out = std::io::stdout().lock();
    out.write_all(&value)?;
    if out.is_terminal() && !args.no_newline && !value.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
