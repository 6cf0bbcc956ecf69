//! `lk status`: health and seal state.

use crate::client::Client;
use crate::commands::text;
use crate::error::{CliError, CliResult};
use crate::output::{self, Format};

/// Prints the server's state; fails with the "unavailable" exit code unless it is `ok`,
/// `sink_degraded` or `notify_degraded`.
pub async fn run(format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    let (_, health) = client.get_any_status(&["v1", "sys", "health"]).await?;
    // Both return a body even when the server is sealed or its database is down.
    let (_, seal) = client.get_any_status(&["v1", "sys", "seal-status"]).await?;
    if format == Format::Json {
        output::json(&serde_json::json!({"health": health, "seal": seal}));
        return Ok(());
    }
    outln!("address:      {}", client.base());
    outln!("status:       {}", text(&health, "status"));
    outln!("initialized:  {}", text(&seal, "initialized"));
    outln!("sealed:       {}", text(&seal, "sealed"));
    if let Some(mode) = seal["mode"].as_str() {
        outln!("seal mode:    {mode}");
    }
    if seal["mode"].as_str() == Some("shamir") && seal["sealed"].as_bool() == Some(true) {
        outln!(
            "unseal:       {}/{} shares",
            text(&seal, "progress"),
            text(&seal, "threshold")
        );
    }
    if health.get("audit_writable").is_some() {
        outln!(
            "audit log:    {} (last sequence {})",
            if health["audit_writable"].as_bool() == Some(true) {
                "writable"
            } else {
                "FAILING"
            },
            text(&health, "audit_last_seq")
        );
    }
    for sink in health["audit_sinks"].as_array().into_iter().flatten() {
        let mut line = format!(
            "audit sink:   {} ({}) {}, delivered to sequence {}",
            text(sink, "name"),
            text(sink, "type"),
            text(sink, "state"),
            text(sink, "cursor")
        );
        if let Some(error) = sink["last_error"].as_str() {
            line.push_str(&format!(": {error}"));
        }
        outln!("{line}");
    }
    for webhook in health["notify"].as_array().into_iter().flatten() {
        let mut line = format!(
            "notify:       {} ({}) {}, {} delivered, {} failed, {} dropped",
            text(webhook, "name"),
            text(webhook, "format"),
            text(webhook, "state"),
            text(webhook, "delivered"),
            text(webhook, "failed"),
            text(webhook, "dropped")
        );
        if let Some(error) = webhook["last_error"].as_str() {
            line.push_str(&format!(": {error}"));
        }
        outln!("{line}");
    }
    // A failing streaming sink or webhook leaves the server fully usable, so it is shown,
    // not fatal.
    if !matches!(
        text(&health, "status").as_str(),
        "ok" | "sink_degraded" | "notify_degraded"
    ) {
        return Err(CliError {
            exit_code: crate::error::EXIT_UNAVAILABLE,
            message: format!("the server is not ready: {}", text(&health, "status")),
        });
    }
    Ok(())
}
