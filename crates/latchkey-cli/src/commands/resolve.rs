//! Fetching secret fields by reference, shared by `read`, `run` and `inject`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use latchkey_core::reference::SecretRef;
use reqwest::Method;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::commands::access::{WaitArgs, ask_and_wait, grant_error};
use crate::error::{CliError, CliResult, EXIT_GRANT_REQUIRED};

/// Reads one field. The server parses the reference with the same parser.
pub async fn read_field(client: &Client, reference: &SecretRef) -> CliResult<Zeroizing<Vec<u8>>> {
    reference
        .require_field()
        .map_err(|e| CliError::usage(e.to_string()))?;
    let mut url = client.url(&["v1", "read"])?;
    url.query_pairs_mut()
        .append_pair("ref", &reference.to_string());
    let response = client.raw::<()>(Method::GET, url, None).await?;
    let body = Zeroizing::new(
        response
            .bytes()
            .await
            .map_err(|e| CliError::other(format!("reading the response failed: {e}")))?
            .to_vec(),
    );
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| CliError::other(format!("unreadable response from the server: {e}")))?;
    let encoded = Zeroizing::new(
        value["value"]["base64"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    BASE64
        .decode(encoded.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| CliError::other("the server sent a value that is not base64"))
}

/// What reading many fields gave.
pub enum ReadOutcome {
    Values(HashMap<SecretRef, Zeroizing<Vec<u8>>>),
    /// These references need approved access; every other read succeeded.
    NeedsGrant(Vec<SecretRef>),
}

/// Reads many fields concurrently, each distinct reference once. Reads that need approved
/// access are collected, so one access request can cover them all; any other failure
/// is returned as it is.
pub async fn read_all_or_needed(
    client: &Client,
    references: Vec<SecretRef>,
) -> CliResult<ReadOutcome> {
    let mut unique = references;
    unique.sort();
    unique.dedup();
    let fetches = unique.into_iter().map(|reference| async move {
        let value = read_field(client, &reference).await;
        (reference, value)
    });
    let several = fetches.len() > 1;
    let mut values = HashMap::new();
    let mut needed = Vec::new();
    for (reference, value) in futures::future::join_all(fetches).await {
        match value {
            Ok(value) => {
                values.insert(reference, value);
            }
            Err(error) if error.exit_code == EXIT_GRANT_REQUIRED => needed.push(reference),
            // With one reference the message needs no prefix saying which one failed.
            Err(error) if several => return Err(error.context(&reference)),
            Err(error) => return Err(error),
        }
    }
    if needed.is_empty() {
        Ok(ReadOutcome::Values(values))
    } else {
        Ok(ReadOutcome::NeedsGrant(needed))
    }
}

/// Reads many fields; with `wait` set, asks for the approved access a read needs, waits
/// for the approval, and reads again.
pub async fn read_all_waiting(
    client: &Client,
    references: Vec<SecretRef>,
    wait: &WaitArgs,
) -> CliResult<HashMap<SecretRef, Zeroizing<Vec<u8>>>> {
    match read_all_or_needed(client, references.clone()).await? {
        ReadOutcome::Values(values) => Ok(values),
        ReadOutcome::NeedsGrant(needed) if wait.wait => {
            ask_and_wait(client, &needed, wait).await?;
            read_all(client, references).await
        }
        ReadOutcome::NeedsGrant(needed) => Err(grant_error(&needed)),
    }
}

/// Reads many fields concurrently, each distinct reference once.
pub async fn read_all(
    client: &Client,
    references: Vec<SecretRef>,
) -> CliResult<HashMap<SecretRef, Zeroizing<Vec<u8>>>> {
    match read_all_or_needed(client, references).await? {
        ReadOutcome::Values(values) => Ok(values),
        ReadOutcome::NeedsGrant(needed) => Err(grant_error(&needed)),
    }
}
