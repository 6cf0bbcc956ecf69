//! `lk://` secret references, the one parser shared by the CLI, the server, env files and
//! templates.
//!
//! Grammar: `lk://VAULT[/SECRET[/FIELD]][?version=N]`.
//!
//! - The scheme is matched case-insensitively, as URL schemes are, so `LK://prod` is accepted.
//!   [`SecretRef`]'s `Display` always writes `lk://`.
//! - Each name is non-empty and percent-decoded as UTF-8. The characters `/`, `?`, `#` and `%`
//!   cannot appear raw in a name and are written `%2F`, `%3F`, `%23` and `%25`. Any other
//!   `%XX` is decoded too, so `%20` is a space. Everything else may appear raw, including
//!   spaces, dots, quotes, `&`, `=`, `}` and non-ASCII text.
//! - A decoded name contains no control characters (Unicode category Cc: U+0000–U+001F and
//!   U+007F–U+009F), is not `.` or `..` (URL path normalization would remove those), and is
//!   at most [`MAX_NAME_BYTES`] bytes long.
//! - The only query is `version=N` with N from 1 to `u32::MAX`, and it needs a secret name.
//!   Fragments (`#...`) are rejected.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use thiserror::Error;

/// Scheme prefix of every reference, in its canonical lowercase form.
pub const SCHEME: &str = "lk://";

/// Maximum length of one decoded name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 256;

/// Reference to a vault, a secret in a vault, or one field of a secret, optionally pinned to a
/// secret version.
///
/// The fields are public, so a value built by hand may break the grammar (for example an empty
/// name, or a field without a secret). [`SecretRef::validate`] checks one; values returned by
/// [`SecretRef::parse`] always pass it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// Decoded vault name.
    pub vault: String,
    /// Decoded secret name, absent when the reference names only a vault.
    pub secret: Option<String>,
    /// Decoded field name, absent when the reference names a whole secret or vault.
    pub field: Option<String>,
    /// Pinned secret version, 1 or more. `None` means the current version.
    pub version: Option<u32>,
}

/// Component of a reference named in a [`ReferenceError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReferencePart {
    Scheme,
    Vault,
    Secret,
    Field,
    Version,
}

impl fmt::Display for ReferencePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReferencePart::Scheme => "scheme",
            ReferencePart::Vault => "vault name",
            ReferencePart::Secret => "secret name",
            ReferencePart::Field => "field name",
            ReferencePart::Version => "version",
        })
    }
}

/// Reason a reference was rejected. Every variant carries the whole input, and its message
/// starts with "invalid reference `INPUT`: ". Control characters in the input are shown
/// escaped (`\n`, `\u{1b}`) so that a message cannot move the cursor of a terminal.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReferenceError {
    #[error(
        "invalid reference `{}`: it does not start with `lk://`; write lk://VAULT/SECRET/FIELD",
        printable(.input)
    )]
    MissingScheme { input: String },

    #[error(
        "invalid reference `{}`: the {part} is empty; write lk://VAULT/SECRET/FIELD",
        printable(.input)
    )]
    EmptyName { input: String, part: ReferencePart },

    #[error(
        "invalid reference `{}`: the path has {count} parts separated by `/` but at most 3 are \
         allowed (vault, secret, field); write a `/` inside a name as %2F",
        printable(.input)
    )]
    TooManyParts { input: String, count: usize },

    #[error(
        "invalid reference `{}`: the {part} has an invalid percent-encoding at `{}`; write `%` \
         as %25 and follow every other `%` with two hex digits",
        printable(.input),
        printable(.sequence)
    )]
    InvalidPercentEncoding {
        input: String,
        part: ReferencePart,
        sequence: String,
    },

    #[error(
        "invalid reference `{}`: the {part} decodes to bytes that are not UTF-8; \
         percent-encode only UTF-8 text",
        printable(.input)
    )]
    InvalidUtf8 { input: String, part: ReferencePart },

    #[error(
        "invalid reference `{}`: the {part} contains the control character U+{:04X}; \
         remove it from the name",
        printable(.input),
        u32::from(*.character)
    )]
    ControlCharacter {
        input: String,
        part: ReferencePart,
        character: char,
    },

    #[error(
        "invalid reference `{}`: the {part} `{name}` is not allowed because URL path \
         normalization removes `.` and `..`; choose another name",
        printable(.input)
    )]
    DotName {
        input: String,
        part: ReferencePart,
        name: String,
    },

    #[error(
        "invalid reference `{}`: the {part} is {length} bytes long after decoding, more than \
         the maximum of 256 bytes; choose a shorter name",
        printable(.input)
    )]
    NameTooLong {
        input: String,
        part: ReferencePart,
        length: usize,
    },

    #[error(
        "invalid reference `{}`: the query `{}` is not supported; the only query is \
         ?version=N",
        printable(.input),
        printable(.query)
    )]
    InvalidQuery { input: String, query: String },

    #[error(
        "invalid reference `{}`: the version `{}` is not a whole number from 1 to 4294967295; \
         write ?version=N",
        printable(.input),
        printable(.value)
    )]
    InvalidVersion { input: String, value: String },

    #[error(
        "invalid reference `{}`: a version applies to a secret but the reference names only a \
         vault; write lk://VAULT/SECRET?version=N",
        printable(.input)
    )]
    VersionWithoutSecret { input: String },

    #[error(
        "invalid reference `{}`: it contains `#`, which would start a URL fragment; write `#` \
         inside a name as %23",
        printable(.input)
    )]
    Fragment { input: String },

    /// Returned by [`SecretRef::require_field`] for a reference that is valid but does not
    /// name a field.
    #[error(
        "invalid reference `{}`: the {part} is missing; write lk://VAULT/SECRET/FIELD",
        printable(.input)
    )]
    MissingPart { input: String, part: ReferencePart },
}

impl ReferenceError {
    /// Returns the component that is wrong. [`ReferenceError::TooManyParts`] and
    /// [`ReferenceError::Fragment`] concern the reference as a whole and return `None`.
    pub fn part(&self) -> Option<ReferencePart> {
        match self {
            ReferenceError::MissingScheme { .. } => Some(ReferencePart::Scheme),
            ReferenceError::EmptyName { part, .. }
            | ReferenceError::InvalidPercentEncoding { part, .. }
            | ReferenceError::InvalidUtf8 { part, .. }
            | ReferenceError::ControlCharacter { part, .. }
            | ReferenceError::DotName { part, .. }
            | ReferenceError::NameTooLong { part, .. }
            | ReferenceError::MissingPart { part, .. } => Some(*part),
            ReferenceError::InvalidQuery { .. }
            | ReferenceError::InvalidVersion { .. }
            | ReferenceError::VersionWithoutSecret { .. } => Some(ReferencePart::Version),
            ReferenceError::TooManyParts { .. } | ReferenceError::Fragment { .. } => None,
        }
    }

    /// Returns the rejected input as given.
    pub fn input(&self) -> &str {
        match self {
            ReferenceError::MissingScheme { input }
            | ReferenceError::EmptyName { input, .. }
            | ReferenceError::TooManyParts { input, .. }
            | ReferenceError::InvalidPercentEncoding { input, .. }
            | ReferenceError::InvalidUtf8 { input, .. }
            | ReferenceError::ControlCharacter { input, .. }
            | ReferenceError::DotName { input, .. }
            | ReferenceError::NameTooLong { input, .. }
            | ReferenceError::InvalidQuery { input, .. }
            | ReferenceError::InvalidVersion { input, .. }
            | ReferenceError::VersionWithoutSecret { input }
            | ReferenceError::Fragment { input }
            | ReferenceError::MissingPart { input, .. } => input,
        }
    }
}

impl SecretRef {
    /// Parses a reference in the grammar described in the module documentation.
    ///
    /// Names are checked from left to right and the first problem found is returned.
    pub fn parse(input: &str) -> Result<SecretRef, ReferenceError> {
        let Some(rest) = strip_scheme(input) else {
            return Err(ReferenceError::MissingScheme {
                input: input.to_owned(),
            });
        };
        if rest.contains('#') {
            return Err(ReferenceError::Fragment {
                input: input.to_owned(),
            });
        }

        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };

        let raw_names: Vec<&str> = path.split('/').collect();
        let parts = [
            ReferencePart::Vault,
            ReferencePart::Secret,
            ReferencePart::Field,
        ];
        let mut names = Vec::with_capacity(parts.len());
        for (raw, part) in raw_names.iter().zip(parts) {
            names.push(decode_name(input, part, raw)?);
        }
        if raw_names.len() > parts.len() {
            return Err(ReferenceError::TooManyParts {
                input: input.to_owned(),
                count: raw_names.len(),
            });
        }

        let mut names = names.into_iter();
        let vault = names.next().unwrap_or_default();
        let secret = names.next();
        let field = names.next();

        let version = match query {
            Some(query) => Some(parse_version(input, query)?),
            None => None,
        };
        if version.is_some() && secret.is_none() {
            return Err(ReferenceError::VersionWithoutSecret {
                input: input.to_owned(),
            });
        }

        Ok(SecretRef {
            vault,
            secret,
            field,
            version,
        })
    }

    /// Builds a reference to one field of the current version of a secret. The names are not
    /// checked; see [`SecretRef::validate`].
    pub fn field(
        vault: impl Into<String>,
        secret: impl Into<String>,
        field: impl Into<String>,
    ) -> SecretRef {
        SecretRef {
            vault: vault.into(),
            secret: Some(secret.into()),
            field: Some(field.into()),
            version: None,
        }
    }

    /// Returns whether `value` starts with the `lk://` scheme, matched case-insensitively like
    /// [`SecretRef::parse`] does. It does not check the rest, so a `true` result can still fail
    /// to parse.
    pub fn is_reference(value: &str) -> bool {
        strip_scheme(value).is_some()
    }

    /// Returns `(vault, secret, field)`, or [`ReferenceError::MissingPart`] naming the secret
    /// or field when the reference does not reach down to a field.
    pub fn require_field(&self) -> Result<(&str, &str, &str), ReferenceError> {
        match (&self.secret, &self.field) {
            (Some(secret), Some(field)) => Ok((&self.vault, secret, field)),
            (None, _) => Err(ReferenceError::MissingPart {
                input: self.to_string(),
                part: ReferencePart::Secret,
            }),
            (Some(_), None) => Err(ReferenceError::MissingPart {
                input: self.to_string(),
                part: ReferencePart::Field,
            }),
        }
    }

    /// Checks that this reference follows the grammar, by parsing its canonical form.
    ///
    /// Use it on references built from separate names (for example from an HTTP path or a
    /// JSON body) before trusting them. The error's input is the canonical form.
    pub fn validate(&self) -> Result<(), ReferenceError> {
        SecretRef::parse(&self.to_string()).map(|_| ())
    }
}

/// Writes the canonical form: lowercase `lk://`, names encoded by [`encode_component`], and
/// `?version=N` when a version is pinned. For every reference that [`SecretRef::validate`]
/// accepts, parsing the output returns an equal reference.
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        f.write_str(&encode_component(&self.vault))?;
        if self.secret.is_some() || self.field.is_some() {
            f.write_char('/')?;
            f.write_str(&encode_component(
                self.secret.as_deref().unwrap_or_default(),
            ))?;
        }
        if let Some(field) = &self.field {
            f.write_char('/')?;
            f.write_str(&encode_component(field))?;
        }
        if let Some(version) = self.version {
            write!(f, "?version={version}")?;
        }
        Ok(())
    }
}

impl FromStr for SecretRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<SecretRef, ReferenceError> {
        SecretRef::parse(input)
    }
}

/// Percent-encodes `%`, `/`, `?`, `#` and control characters (Unicode category Cc) in a name,
/// with uppercase hex digits, and leaves every other character as it is.
pub fn encode_component(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for character in name.chars() {
        if matches!(character, '%' | '/' | '?' | '#') || character.is_control() {
            let mut buffer = [0u8; 4];
            for byte in character.encode_utf8(&mut buffer).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(encoded, "%{byte:02X}");
            }
        } else {
            encoded.push(character);
        }
    }
    encoded
}

/// Returns the text after a case-insensitive `lk://`, or `None` when the prefix is missing.
fn strip_scheme(input: &str) -> Option<&str> {
    let prefix = input.as_bytes().get(..SCHEME.len())?;
    if prefix.eq_ignore_ascii_case(SCHEME.as_bytes()) {
        // The prefix matched ASCII bytes, so the slice ends on a character boundary.
        input.get(SCHEME.len()..)
    } else {
        None
    }
}

/// Percent-decodes and checks one raw name.
fn decode_name(input: &str, part: ReferencePart, raw: &str) -> Result<String, ReferenceError> {
    if raw.is_empty() {
        return Err(ReferenceError::EmptyName {
            input: input.to_owned(),
            part,
        });
    }

    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte != b'%' {
            decoded.push(byte);
            index += 1;
            continue;
        }
        let high = bytes.get(index + 1).and_then(|&digit| hex_value(digit));
        let low = bytes.get(index + 2).and_then(|&digit| hex_value(digit));
        match (high, low) {
            (Some(high), Some(low)) => {
                decoded.push(high << 4 | low);
                index += 3;
            }
            _ => {
                // `index` is at an ASCII `%`, so it is a character boundary.
                let sequence = raw
                    .get(index..)
                    .unwrap_or_default()
                    .chars()
                    .take(3)
                    .collect();
                return Err(ReferenceError::InvalidPercentEncoding {
                    input: input.to_owned(),
                    part,
                    sequence,
                });
            }
        }
    }

    let Ok(name) = String::from_utf8(decoded) else {
        return Err(ReferenceError::InvalidUtf8 {
            input: input.to_owned(),
            part,
        });
    };
    if let Some(character) = name.chars().find(|character| character.is_control()) {
        return Err(ReferenceError::ControlCharacter {
            input: input.to_owned(),
            part,
            character,
        });
    }
    if name == "." || name == ".." {
        return Err(ReferenceError::DotName {
            input: input.to_owned(),
            part,
            name,
        });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ReferenceError::NameTooLong {
            input: input.to_owned(),
            part,
            length: name.len(),
        });
    }
    Ok(name)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// Parses the query after `?`, which must be exactly `version=N`.
fn parse_version(input: &str, query: &str) -> Result<u32, ReferenceError> {
    let invalid_query = || ReferenceError::InvalidQuery {
        input: input.to_owned(),
        query: query.to_owned(),
    };
    let Some(value) = query.strip_prefix("version=") else {
        return Err(invalid_query());
    };
    if value.contains('&') {
        return Err(invalid_query());
    }

    let invalid_version = || ReferenceError::InvalidVersion {
        input: input.to_owned(),
        value: value.to_owned(),
    };
    // `u32::from_str` would also accept a leading `+`.
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid_version());
    }
    match value.parse::<u32>() {
        Ok(version) if version >= 1 => Ok(version),
        _ => Err(invalid_version()),
    }
}

/// Escapes control characters so that user input inside an error message stays on one line
/// and cannot send terminal escape sequences.
fn printable(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn reference(vault: &str, secret: Option<&str>, field: Option<&str>) -> SecretRef {
        SecretRef {
            vault: vault.to_owned(),
            secret: secret.map(str::to_owned),
            field: field.map(str::to_owned),
            version: None,
        }
    }

    #[test]
    fn parse_vault_secret_field() {
        let parsed = SecretRef::parse("lk://prod/db/password").unwrap();
        assert_eq!(parsed, SecretRef::field("prod", "db", "password"));
    }

    #[test]
    fn parse_vault_only_and_secret_only() {
        assert_eq!(
            SecretRef::parse("lk://prod").unwrap(),
            reference("prod", None, None)
        );
        assert_eq!(
            SecretRef::parse("lk://prod/db").unwrap(),
            reference("prod", Some("db"), None)
        );
    }

    #[test]
    fn parse_version_query() {
        let parsed = SecretRef::parse("lk://prod/db/password?version=7").unwrap();
        assert_eq!(parsed.version, Some(7));
        let max = SecretRef::parse("lk://prod/db?version=4294967295").unwrap();
        assert_eq!(max.version, Some(u32::MAX));
    }

    #[test]
    fn parse_raw_special_characters() {
        let parsed = SecretRef::parse("lk://prod/my db.conf/pass word").unwrap();
        assert_eq!(parsed, SecretRef::field("prod", "my db.conf", "pass word"));

        let parsed = SecretRef::parse("lk://a&b/it's \"q\"/k=v}").unwrap();
        assert_eq!(parsed, SecretRef::field("a&b", "it's \"q\"", "k=v}"));
    }

    #[test]
    fn parse_unicode_names() {
        let parsed = SecretRef::parse("lk://équipe/clé/mot de passe").unwrap();
        assert_eq!(parsed, SecretRef::field("équipe", "clé", "mot de passe"));
        assert_eq!(parsed.to_string(), "lk://équipe/clé/mot de passe");
    }

    #[test]
    fn parse_percent_encoded_reserved() {
        let parsed = SecretRef::parse("lk://a%2Fb/c%3Fd/e%23f%25g%20h").unwrap();
        assert_eq!(parsed, SecretRef::field("a/b", "c?d", "e#f%g h"));
    }

    #[test]
    fn parse_lowercase_hex_and_encoded_utf8() {
        let parsed = SecretRef::parse("lk://a%2fb/cl%C3%A9/x").unwrap();
        assert_eq!(parsed, SecretRef::field("a/b", "clé", "x"));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        let parsed = SecretRef::parse("LK://prod/db/password").unwrap();
        assert_eq!(parsed, SecretRef::field("prod", "db", "password"));
        assert_eq!(parsed.to_string(), "lk://prod/db/password");
        assert!(SecretRef::is_reference("Lk://x"));
    }

    #[test]
    fn is_reference_checks_prefix_only() {
        assert!(SecretRef::is_reference("lk://prod/db/password"));
        assert!(SecretRef::is_reference("lk://"));
        assert!(!SecretRef::is_reference("lk:/prod"));
        assert!(!SecretRef::is_reference("postgres://u:p@h/db"));
        assert!(!SecretRef::is_reference(" lk://prod"));
        assert!(!SecretRef::is_reference("lk:"));
        assert!(!SecretRef::is_reference("é"));
    }

    #[test]
    fn from_str_matches_parse() {
        let parsed: SecretRef = "lk://prod/db/password?version=2".parse().unwrap();
        assert_eq!(parsed.version, Some(2));
        let error = "nope".parse::<SecretRef>().unwrap_err();
        assert!(matches!(error, ReferenceError::MissingScheme { .. }));
    }

    #[test]
    fn missing_scheme_rejected() {
        for input in ["prod/db/password", "lk:/prod", "http://prod", "", "lk:"] {
            let error = SecretRef::parse(input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::MissingScheme {
                    input: input.to_owned()
                },
                "{input}"
            );
            assert_eq!(error.part(), Some(ReferencePart::Scheme));
        }
    }

    #[test]
    fn empty_names_rejected() {
        let cases = [
            ("lk://", ReferencePart::Vault),
            ("lk:///db/x", ReferencePart::Vault),
            ("lk://prod//x", ReferencePart::Secret),
            ("lk://prod/", ReferencePart::Secret),
            ("lk://prod/db/", ReferencePart::Field),
            ("lk://prod/db/?version=1", ReferencePart::Field),
        ];
        for (input, part) in cases {
            let error = SecretRef::parse(input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::EmptyName {
                    input: input.to_owned(),
                    part
                },
                "{input}"
            );
        }
    }

    #[test]
    fn empty_secret_message() {
        let error = SecretRef::parse("lk://prod//x").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid reference `lk://prod//x`: the secret name is empty; write \
             lk://VAULT/SECRET/FIELD"
        );
    }

    #[test]
    fn too_many_parts_rejected() {
        let error = SecretRef::parse("lk://a/b/c/d").unwrap_err();
        assert_eq!(
            error,
            ReferenceError::TooManyParts {
                input: "lk://a/b/c/d".to_owned(),
                count: 4
            }
        );
        let error = SecretRef::parse("lk://a/b/c/").unwrap_err();
        assert!(matches!(
            error,
            ReferenceError::TooManyParts { count: 4, .. }
        ));
        assert_eq!(error.part(), None);
    }

    #[test]
    fn invalid_percent_encoding_rejected() {
        let cases = [
            ("lk://prod/db/pass%zz", ReferencePart::Field, "%zz"),
            ("lk://prod/db/pass%4", ReferencePart::Field, "%4"),
            ("lk://prod/db%/x", ReferencePart::Secret, "%"),
            ("lk://pr%4god/db/x", ReferencePart::Vault, "%4g"),
            ("lk://a/b/%é1", ReferencePart::Field, "%é1"),
        ];
        for (input, part, sequence) in cases {
            let error = SecretRef::parse(input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::InvalidPercentEncoding {
                    input: input.to_owned(),
                    part,
                    sequence: sequence.to_owned(),
                },
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_percent_encoding_message() {
        let error = SecretRef::parse("lk://prod/db/pass%zz").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid reference `lk://prod/db/pass%zz`: the field name has an invalid \
             percent-encoding at `%zz`; write `%` as %25 and follow every other `%` with two \
             hex digits"
        );
    }

    #[test]
    fn non_utf8_decoding_rejected() {
        let error = SecretRef::parse("lk://prod/%FF%FE/x").unwrap_err();
        assert_eq!(
            error,
            ReferenceError::InvalidUtf8 {
                input: "lk://prod/%FF%FE/x".to_owned(),
                part: ReferencePart::Secret,
            }
        );
    }

    #[test]
    fn control_characters_rejected() {
        let cases = [
            ("lk://prod/db/a%0Ab", ReferencePart::Field, '\n'),
            ("lk://pr\tod/db/x", ReferencePart::Vault, '\t'),
            ("lk://prod/%7F/x", ReferencePart::Secret, '\u{7f}'),
            ("lk://prod/db/%00", ReferencePart::Field, '\0'),
            ("lk://prod/db/%C2%9B", ReferencePart::Field, '\u{9b}'),
        ];
        for (input, part, character) in cases {
            let error = SecretRef::parse(input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::ControlCharacter {
                    input: input.to_owned(),
                    part,
                    character,
                },
                "{input}"
            );
        }
    }

    #[test]
    fn control_character_message_escaped() {
        let error = SecretRef::parse("lk://prod/db/a\u{1b}[2Jb").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid reference `lk://prod/db/a\\u{1b}[2Jb`: the field name contains the control \
             character U+001B; remove it from the name"
        );
    }

    #[test]
    fn dot_names_rejected() {
        let cases = [
            ("lk://./db/x", ReferencePart::Vault, "."),
            ("lk://prod/../x", ReferencePart::Secret, ".."),
            ("lk://prod/db/%2E", ReferencePart::Field, "."),
            ("lk://prod/db/%2e.", ReferencePart::Field, ".."),
        ];
        for (input, part, name) in cases {
            let error = SecretRef::parse(input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::DotName {
                    input: input.to_owned(),
                    part,
                    name: name.to_owned(),
                },
                "{input}"
            );
        }
        assert!(SecretRef::parse("lk://prod/.../.env").is_ok());
    }

    #[test]
    fn name_length_limit() {
        let longest = "a".repeat(MAX_NAME_BYTES);
        let input = format!("lk://prod/{longest}/x");
        assert_eq!(SecretRef::parse(&input).unwrap().secret, Some(longest));

        let too_long = "é".repeat(129);
        let input = format!("lk://prod/db/{too_long}");
        let error = SecretRef::parse(&input).unwrap_err();
        assert_eq!(
            error,
            ReferenceError::NameTooLong {
                input,
                part: ReferencePart::Field,
                length: 258,
            }
        );
    }

    #[test]
    fn encoded_length_counts_decoded_bytes() {
        // 256 encoded spaces are 768 raw bytes but decode to 256 bytes.
        let input = format!("lk://prod/{}/x", "%20".repeat(MAX_NAME_BYTES));
        assert_eq!(
            SecretRef::parse(&input).unwrap().secret,
            Some(" ".repeat(MAX_NAME_BYTES))
        );
    }

    #[test]
    fn invalid_versions_rejected() {
        for value in ["0", "-1", "abc", "", "+1", "4294967296", "1.0", " 1"] {
            let input = format!("lk://prod/db/x?version={value}");
            let error = SecretRef::parse(&input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::InvalidVersion {
                    input: input.clone(),
                    value: value.to_owned(),
                },
                "{input}"
            );
            assert_eq!(error.part(), Some(ReferencePart::Version));
        }
    }

    #[test]
    fn invalid_queries_rejected() {
        for query in [
            "foo=1",
            "",
            "version",
            "Version=1",
            "version=1&foo=2",
            "a&version=1",
        ] {
            let input = format!("lk://prod/db/x?{query}");
            let error = SecretRef::parse(&input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::InvalidQuery {
                    input: input.clone(),
                    query: query.to_owned(),
                },
                "{input}"
            );
        }
    }

    #[test]
    fn version_needs_secret() {
        let error = SecretRef::parse("lk://prod?version=2").unwrap_err();
        assert_eq!(
            error,
            ReferenceError::VersionWithoutSecret {
                input: "lk://prod?version=2".to_owned()
            }
        );
    }

    #[test]
    fn fragment_rejected() {
        for input in [
            "lk://prod/db/x#frag",
            "lk://prod#",
            "lk://prod/db?version=1#x",
        ] {
            let error = SecretRef::parse(input).unwrap_err();
            assert_eq!(
                error,
                ReferenceError::Fragment {
                    input: input.to_owned()
                },
                "{input}"
            );
        }
    }

    #[test]
    fn display_is_canonical() {
        let reference = SecretRef {
            vault: "a/b".to_owned(),
            secret: Some("50% off?".to_owned()),
            field: Some("#1 é\n".to_owned()),
            version: Some(3),
        };
        assert_eq!(
            reference.to_string(),
            "lk://a%2Fb/50%25 off%3F/%231 é%0A?version=3"
        );
    }

    #[test]
    fn display_of_partial_references() {
        assert_eq!(reference("prod", None, None).to_string(), "lk://prod");
        assert_eq!(
            reference("prod", Some("db"), None).to_string(),
            "lk://prod/db"
        );
    }

    #[test]
    fn encode_component_only_reserved() {
        assert_eq!(encode_component("a b&c=d'\"}é"), "a b&c=d'\"}é");
        assert_eq!(encode_component("%/?#"), "%25%2F%3F%23");
        assert_eq!(encode_component("\u{9b}\t"), "%C2%9B%09");
    }

    #[test]
    fn require_field_names_missing_part() {
        let full = SecretRef::parse("lk://prod/db/password").unwrap();
        assert_eq!(full.require_field().unwrap(), ("prod", "db", "password"));

        let secret_only = SecretRef::parse("lk://prod/db").unwrap();
        let error = secret_only.require_field().unwrap_err();
        assert_eq!(
            error,
            ReferenceError::MissingPart {
                input: "lk://prod/db".to_owned(),
                part: ReferencePart::Field,
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid reference `lk://prod/db`: the field name is missing; write \
             lk://VAULT/SECRET/FIELD"
        );

        let vault_only = SecretRef::parse("lk://prod").unwrap();
        let error = vault_only.require_field().unwrap_err();
        assert_eq!(error.part(), Some(ReferencePart::Secret));
    }

    #[test]
    fn validate_rejects_hand_built_errors() {
        assert_eq!(SecretRef::field("prod", "db", "x").validate(), Ok(()));

        let error = SecretRef::field("prod", "", "x").validate().unwrap_err();
        assert!(matches!(
            error,
            ReferenceError::EmptyName {
                part: ReferencePart::Secret,
                ..
            }
        ));

        let field_without_secret = reference("prod", None, Some("x"));
        let error = field_without_secret.validate().unwrap_err();
        assert_eq!(error.part(), Some(ReferencePart::Secret));

        let mut zero_version = SecretRef::field("prod", "db", "x");
        zero_version.version = Some(0);
        let error = zero_version.validate().unwrap_err();
        assert!(matches!(error, ReferenceError::InvalidVersion { .. }));

        let error = SecretRef::field("prod", "db", "..").validate().unwrap_err();
        assert!(matches!(error, ReferenceError::DotName { .. }));
    }

    #[test]
    fn error_input_accessor() {
        let error = SecretRef::parse("lk://prod//x").unwrap_err();
        assert_eq!(error.input(), "lk://prod//x");
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        let character = prop_oneof![
            4 => any::<char>().prop_filter("no control characters", |c| !c.is_control()),
            1 => prop::sample::select(vec!['%', '/', '?', '#', '.', ' ', '=', '&', '}', 'é']),
        ];
        prop::collection::vec(character, 1..40)
            .prop_map(|characters| characters.into_iter().collect::<String>())
            .prop_filter("valid name", |name| {
                name != "." && name != ".." && name.len() <= MAX_NAME_BYTES
            })
    }

    fn reference_strategy() -> impl Strategy<Value = SecretRef> {
        (
            name_strategy(),
            proptest::option::of((name_strategy(), proptest::option::of(name_strategy()))),
            proptest::option::of(1..=u32::MAX),
        )
            .prop_map(|(vault, secret_and_field, version)| {
                let (secret, field) = match secret_and_field {
                    Some((secret, field)) => (Some(secret), field),
                    None => (None, None),
                };
                let version = secret.as_ref().and(version);
                SecretRef {
                    vault,
                    secret,
                    field,
                    version,
                }
            })
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(reference in reference_strategy()) {
            let text = reference.to_string();
            prop_assert_eq!(SecretRef::parse(&text), Ok(reference));
        }

        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = SecretRef::parse(&input);
        }

        #[test]
        fn parse_with_scheme_never_panics(rest in any::<String>()) {
            let input = format!("lk://{rest}");
            let _ = SecretRef::parse(&input);
        }

        #[test]
        fn parse_of_reserved_mix_never_panics(
            rest in "[a-c/?#%=&.0-9A-Fé\u{7f}\n-]{0,30}"
        ) {
            let input = format!("lk://{rest}");
            if let Ok(reference) = SecretRef::parse(&input) {
                prop_assert_eq!(SecretRef::parse(&reference.to_string()), Ok(reference));
            }
        }
    }
}
