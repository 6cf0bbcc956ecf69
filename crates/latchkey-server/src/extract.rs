//! Request extractors whose rejections use the API's error format.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// JSON body; unknown fields, bad syntax, a wrong content type and oversized bodies are 4xx.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the server's limit (`max_body_bytes`)",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!(
                    "invalid JSON body: {}",
                    without_quoted_values(&rejection.body_text())
                ),
            ),
        }
    }
}

/// Replaces every double-quoted string in a serde message with `"…"`. serde quotes the
/// offending input (`invalid type: string "hunter2"`), and that input may be a secret value;
/// field names stay, because serde writes them in backticks.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        out.push_str("\"…\"");
        let mut escaped = false;
        for inner in chars.by_ref() {
            match inner {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => break,
                _ => escaped = false,
            }
        }
    }
    out
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    }
}

/// Checks a vault, secret, field or tag name: non-empty, at most 256 bytes, no control
/// characters, and not `.` or `..` (HTTP clients normalize those away in URL paths).
pub fn validate_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request(format!("the {what} name is empty")));
    }
    if name.len() > 256 {
        return Err(ApiError::bad_request(format!(
            "the {what} name `{}…` is longer than 256 bytes",
            name.chars().take(32).collect::<String>()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the {what} name {name:?} contains a control character"
        )));
    }
    if name == "." || name == ".." {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a valid {what} name"
        )));
    }
    Ok(())
}

/// Checks a principal or group name: letters, digits and `_ . @ -`, starting with a letter
/// or digit, at most 128 bytes (so it fits in a Cedar entity id and an email address works).
pub fn validate_identifier(what: &str, name: &str) -> Result<(), ApiError> {
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let valid_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if !valid_start || !valid_rest || name.len() > 128 {
        return Err(ApiError::bad_request(format!(
            "invalid {what} name `{name}`: use letters, digits and `_ . @ -`, starting with a letter or digit, at most 128 characters"
        )));
    }
    Ok(())
}

pub fn validate_tags(tags: &std::collections::BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in tags {
        validate_name("tag", key)?;
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "the value of tag `{key}` must be at most 256 bytes without control characters"
            )));
        }
    }
    Ok(())
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub fn format_unix(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_removed() {
        let message =
            r#"fields.pw: invalid type: string "hunter2 \"x\"", expected struct FieldValueBody"#;
        assert_eq!(
            without_quoted_values(message),
            r#"fields.pw: invalid type: string "…", expected struct FieldValueBody"#
        );
        assert_eq!(
            without_quoted_values("unknown field `colour`"),
            "unknown field `colour`"
        );
    }
}
