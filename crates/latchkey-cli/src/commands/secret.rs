//! `lk secret`: put, get, list, history, rm and import.

use std::io::Read;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Subcommand;
use latchkey_core::reference::SecretRef;
use reqwest::Method;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::commands::{parse_tags, text};
use crate::error::{CliError, CliResult};
use crate::output::{self, Format, tags_text};

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Write a new version: `lk secret put lk://VAULT/SECRET field=value field=@file field=-`.
    ///
    /// `field=@path` reads the value from a file and `field=-` from standard input, byte for
    /// byte. Write `field=\@text` for a literal value that starts with `@`.
    Put {
        reference: String,
        /// Fields as `name=value`, `name=@file` or `name=-`.
        #[arg(required = true)]
        fields: Vec<String>,
        /// Replace the secret's tags (`env=prod`); repeat for more.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Keep the current version's other fields.
        #[arg(long)]
        merge: bool,
    },
    /// Show a secret's fields (`?version=N` or `--version N` for an older version).
    Get {
        reference: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// List the secrets in a vault: `lk secret list lk://VAULT` (or just `VAULT`).
    List { vault: String },
    /// List a secret's versions.
    History { reference: String },
    /// Delete a secret with all its versions.
    Rm { reference: String },
    /// Import a dotenv file: one secret per variable, its value in the field `value`
    /// (or, with `--secret NAME`, one secret with one field per variable).
    Import {
        #[arg(long)]
        vault: String,
        /// Store every variable as a field of this one secret.
        #[arg(long)]
        secret: Option<String>,
        file: PathBuf,
    },
}

fn secret_ref(text: &str) -> CliResult<(String, String, Option<String>, Option<u32>)> {
    let reference = SecretRef::parse(text).map_err(|e| CliError::usage(e.to_string()))?;
    let secret = reference.secret.clone().ok_or_else(|| {
        CliError::usage(format!(
            "invalid reference `{text}`: name a secret, such as lk://{}/SECRET",
            reference.vault
        ))
    })?;
    Ok((reference.vault, secret, reference.field, reference.version))
}

/// Reads the value of one `name=value` argument.
fn field_value(arg: &str, stdin_used: &mut bool) -> CliResult<(String, Zeroizing<Vec<u8>>)> {
    let (name, value) = arg.split_once('=').ok_or_else(|| {
        CliError::usage(format!(
            "invalid field `{arg}`: write it as name=value, name=@file or name=-"
        ))
    })?;
    if name.is_empty() {
        return Err(CliError::usage(format!(
            "invalid field `{arg}`: the field name is empty"
        )));
    }
    let bytes =
        if value == "-" {
            if *stdin_used {
                return Err(CliError::usage(
                    "only one field can read standard input (`name=-`)",
                ));
            }
            *stdin_used = true;
            let mut buffer = Zeroizing::new(Vec::new());
            std::io::stdin().read_to_end(&mut buffer)?;
            buffer
        } else if let Some(literal) = value.strip_prefix("\\@") {
            Zeroizing::new(format!("@{literal}").into_bytes())
        } else if let Some(path) = value.strip_prefix('@') {
            Zeroizing::new(std::fs::read(path).map_err(|e| {
                CliError::usage(format!("field `{name}`: cannot read `{path}`: {e}"))
            })?)
        } else {
            Zeroizing::new(value.as_bytes().to_vec())
        };
    Ok((name.to_string(), bytes))
}

async fn put_fields(
    client: &Client,
    vault: &str,
    secret: &str,
    fields: Vec<(String, Zeroizing<Vec<u8>>)>,
    tags: Option<serde_json::Map<String, serde_json::Value>>,
    merge: bool,
) -> CliResult<serde_json::Value> {
    let mut body_fields = serde_json::Map::new();
    for (name, value) in &fields {
        body_fields.insert(
            name.clone(),
            serde_json::json!({"base64": BASE64.encode(value.as_slice())}),
        );
    }
    let mut body = serde_json::json!({"fields": body_fields, "merge": merge});
    if let Some(tags) = tags {
        body["tags"] = serde_json::Value::Object(tags);
    }
    let url = client.url(&["v1", "vaults", vault, "secrets", secret])?;
    let response = client.send(Method::PUT, url, Some(&body)).await;
    // The request body held secret values; clear the copies serde_json made.
    if let Some(map) = body["fields"].as_object_mut() {
        for value in map.values_mut() {
            if let Some(serde_json::Value::String(s)) = value.get_mut("base64") {
                zeroize::Zeroize::zeroize(s);
            }
        }
    }
    response
}

/// Prints imported variables as a dotenv file of references, for `lk run --env-file`.
fn print_reference_env(written: &[(String, String, String)]) {
    let pairs: Vec<(String, String)> = written
        .iter()
        .map(|(key, reference, _)| (key.clone(), reference.clone()))
        .collect();
    out!("{}", latchkey_core::dotenv::render(&pairs));
}

fn decoded(field: &serde_json::Value) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        BASE64
            .decode(field["base64"].as_str().unwrap_or_default())
            .unwrap_or_default(),
    )
}

pub async fn run(command: SecretCommand, format: Format) -> CliResult<()> {
    let client = Client::from_env()?;
    match command {
        SecretCommand::Put {
            reference,
            fields,
            tags,
            merge,
        } => {
            let (vault, secret, field, _) = secret_ref(&reference)?;
            if let Some(field) = field {
                let secret_only = SecretRef {
                    vault,
                    secret: Some(secret),
                    field: None,
                    version: None,
                };
                return Err(CliError::usage(format!(
                    "`{reference}` names the field `{field}`: give the secret ({secret_only}) and fields as name=value"
                )));
            }
            let mut stdin_used = false;
            let values = fields
                .iter()
                .map(|f| field_value(f, &mut stdin_used))
                .collect::<CliResult<Vec<_>>>()?;
            for (i, (name, _)) in values.iter().enumerate() {
                if values[..i].iter().any(|(earlier, _)| earlier == name) {
                    return Err(CliError::usage(format!(
                        "the field `{name}` is given twice: give each field once"
                    )));
                }
            }
            let tags = if tags.is_empty() {
                None
            } else {
                Some(parse_tags(&tags)?)
            };
            let response = put_fields(&client, &vault, &secret, values, tags, merge).await?;
            if format == Format::Json {
                output::json(&response);
            } else {
                outln!(
                    "wrote {} version {}",
                    text(&response, "reference"),
                    text(&response, "version")
                );
            }
        }
        SecretCommand::Get { reference, version } => {
            let (vault, secret, field, ref_version) = secret_ref(&reference)?;
            if let (Some(flag), Some(in_reference)) = (version, ref_version)
                && flag != in_reference
            {
                return Err(CliError::usage(format!(
                    "`{reference}` asks for version {in_reference} but `--version` asks for {flag}: give one"
                )));
            }
            let version = version.or(ref_version);
            let mut url = client.url(&["v1", "vaults", &vault, "secrets", &secret])?;
            if let Some(version) = version {
                url.query_pairs_mut()
                    .append_pair("version", &version.to_string());
            }
            let response: serde_json::Value = client.send::<(), _>(Method::GET, url, None).await?;
            if let Some(field) = field {
                let value = response["fields"].get(&field).ok_or_else(|| CliError {
                    exit_code: crate::error::EXIT_NOT_FOUND,
                    message: format!(
                        "field `{field}` not found in `{}`",
                        text(&response, "reference")
                    ),
                })?;
                use std::io::Write;
                std::io::stdout().write_all(&decoded(value))?;
                return Ok(());
            }
            if format == Format::Json {
                output::json(&response);
                return Ok(());
            }
            outln!(
                "{} (version {})",
                text(&response, "reference"),
                text(&response, "version")
            );
            let rows: Vec<Vec<String>> = response["fields"]
                .as_object()
                .map(|fields| {
                    fields
                        .iter()
                        .map(|(name, value)| {
                            let shown = match value["text"].as_str() {
                                Some(t) => t.to_string(),
                                None => format!(
                                    "<{} bytes, binary; base64 {}>",
                                    decoded(value).len(),
                                    value["base64"].as_str().unwrap_or_default()
                                ),
                            };
                            vec![name.clone(), shown]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(&["FIELD", "VALUE"], &rows);
        }
        SecretCommand::List { vault } => {
            let vault = if SecretRef::is_reference(&vault) {
                let parsed =
                    SecretRef::parse(&vault).map_err(|e| CliError::usage(e.to_string()))?;
                if parsed.secret.is_some() {
                    let vault_only = SecretRef {
                        vault: parsed.vault,
                        secret: None,
                        field: None,
                        version: None,
                    };
                    return Err(CliError::usage(format!(
                        "`{vault}` names a secret: `lk secret list` takes a vault ({vault_only}), and `lk secret get` shows one secret"
                    )));
                }
                parsed.vault
            } else {
                vault
            };
            let list: serde_json::Value = client.get(&["v1", "vaults", &vault, "secrets"]).await?;
            if format == Format::Json {
                output::json(&list["secrets"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list["secrets"]
                .as_array()
                .map(|secrets| {
                    secrets
                        .iter()
                        .map(|s| {
                            vec![
                                text(s, "reference"),
                                text(s, "version"),
                                s["tags"].as_object().map(tags_text).unwrap_or_default(),
                                text(s, "updated_at"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(&["SECRET", "VERSION", "TAGS", "UPDATED"], &rows);
        }
        SecretCommand::History { reference } => {
            let (vault, secret, _, _) = secret_ref(&reference)?;
            let history: serde_json::Value = client
                .get(&["v1", "vaults", &vault, "secrets", &secret, "versions"])
                .await?;
            if format == Format::Json {
                output::json(&history);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = history["versions"]
                .as_array()
                .map(|versions| {
                    versions
                        .iter()
                        .map(|v| {
                            let fields = v["fields"]
                                .as_array()
                                .map(|f| {
                                    f.iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default();
                            vec![
                                text(v, "version"),
                                fields,
                                text(v, "created_at"),
                                text(v, "created_by"),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::table(&["VERSION", "FIELDS", "CREATED", "BY"], &rows);
        }
        SecretCommand::Rm { reference } => {
            let (vault, secret, field, version) = secret_ref(&reference)?;
            if field.is_some() || version.is_some() {
                return Err(CliError::usage(format!(
                    "`{reference}` names a field or a version, but `lk secret rm` deletes the whole secret with all its versions; give lk://VAULT/SECRET, or write a new version without the field"
                )));
            }
            client
                .delete(&["v1", "vaults", &vault, "secrets", &secret])
                .await?;
            outln!(
                "deleted lk://{}/{}",
                latchkey_core::reference::encode_component(&vault),
                latchkey_core::reference::encode_component(&secret)
            );
        }
        SecretCommand::Import {
            vault,
            secret,
            file,
        } => {
            let text_input = if file.as_os_str() == "-" {
                let mut buffer = Zeroizing::new(String::new());
                std::io::stdin().read_to_string(&mut buffer)?;
                buffer
            } else {
                Zeroizing::new(std::fs::read_to_string(&file).map_err(|e| {
                    CliError::usage(format!("cannot read `{}`: {e}", file.display()))
                })?)
            };
            let entries = latchkey_core::dotenv::parse(&text_input)
                .map_err(|e| CliError::usage(format!("`{}`: {e}", file.display())))?;
            if entries.is_empty() {
                return Err(CliError::usage(format!(
                    "`{}` defines no variables",
                    file.display()
                )));
            }
            // Later definitions of a name win, as in a shell.
            let mut latest: Vec<(String, Zeroizing<Vec<u8>>)> = Vec::new();
            for (key, value) in entries {
                latest.retain(|(k, _)| *k != key);
                latest.push((key, Zeroizing::new(value.into_bytes())));
            }
            let mut written = Vec::new();
            match secret {
                Some(secret) => {
                    let names: Vec<String> = latest.iter().map(|(k, _)| k.clone()).collect();
                    let response = put_fields(&client, &vault, &secret, latest, None, true).await?;
                    for name in names {
                        written.push((
                            name.clone(),
                            SecretRef::field(vault.clone(), secret.clone(), name).to_string(),
                            text(&response, "version"),
                        ));
                    }
                }
                None => {
                    let total = latest.len();
                    for (key, value) in latest {
                        match put_fields(
                            &client,
                            &vault,
                            &key,
                            vec![("value".to_string(), value)],
                            None,
                            false,
                        )
                        .await
                        {
                            Ok(response) => {
                                written.push((
                                    key.clone(),
                                    SecretRef::field(vault.clone(), key, "value").to_string(),
                                    text(&response, "version"),
                                ));
                            }
                            Err(error) => {
                                if !written.is_empty() {
                                    eprintln!(
                                        "imported {} of {total} variables before `{key}` failed; their references:",
                                        written.len()
                                    );
                                    print_reference_env(&written);
                                }
                                return Err(error.context(format!("importing `{key}`")));
                            }
                        }
                    }
                }
            }
            if format == Format::Json {
                let list: Vec<_> = written.iter().map(|(k, r, v)| serde_json::json!({"variable": k, "reference": r, "version": v})).collect();
                output::json(&list);
            } else {
                let noun = if written.len() == 1 {
                    "variable"
                } else {
                    "variables"
                };
                eprintln!(
                    "imported {} {noun} into vault {vault}; an env file for `lk run --env-file` follows:",
                    written.len()
                );
                print_reference_env(&written);
            }
        }
    }
    Ok(())
}
