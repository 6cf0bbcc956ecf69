//! Fetching secret fields by reference, shared by `read`, `run` and `inject`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use latchkey_core::reference::SecretRef;
use reqwest::Method;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::error::{CliError, CliResult};

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

/// Reads many fields concurrently, each distinct reference once.
pub async fn read_all(
    client: &Client,
    references: Vec<SecretRef>,
) -> CliResult<HashMap<SecretRef, Zeroizing<Vec<u8>>>> {
    let mut unique = references;
    unique.sort();
    unique.dedup();
    let fetches = unique.into_iter().map(|reference| async move {
        let value = read_field(client, &reference)
            .await
            .map_err(|e| e.context(&reference))?;
        Ok::<_, CliError>((reference, value))
    });
    let pairs = futures::future::try_join_all(fetches).await?;
    Ok(pairs.into_iter().collect())
}
