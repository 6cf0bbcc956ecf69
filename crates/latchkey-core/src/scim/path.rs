//! Attribute paths: `userName`, `name.givenName`, a schema URN prefix such as
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`, and the PATCH
//! form `emails[type eq "work"].value`.

use std::fmt;

use super::ScimError;
use super::filter::{Filter, parse_filter_tokens, tokenize};

/// An attribute, an optional sub-attribute, and the schema URN it was qualified with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URN prefix, without the trailing `:`, when one was given.
    pub schema: Option<String>,
    pub attr: String,
    pub sub: Option<String>,
}

impl AttrPath {
    /// Parses `attr`, `attr.sub` or `urn:...:attr[.sub]`.
    pub fn parse(text: &str) -> Result<AttrPath, ScimError> {
        let invalid = || ScimError::InvalidPath(format!("`{text}` is not an attribute path"));
        let (schema, rest) = if text.to_ascii_lowercase().starts_with("urn:") {
            // The attribute name follows the last `:`; the URN itself may contain dots
            // (`...:core:2.0:User`), so split at the colon before looking for a dot.
            let colon = text.rfind(':').ok_or_else(invalid)?;
            (Some(text[..colon].to_string()), &text[colon + 1..])
        } else {
            (None, text)
        };
        let (attr, sub) = match rest.split_once('.') {
            Some((attr, sub)) => (attr, Some(sub)),
            None => (rest, None),
        };
        if !is_attr_name(attr) || sub.is_some_and(|s| !is_attr_name(s)) {
            return Err(invalid());
        }
        Ok(AttrPath {
            schema,
            attr: attr.to_string(),
            sub: sub.map(str::to_string),
        })
    }

    /// A path to `attr` with no schema and no sub-attribute.
    pub fn simple(attr: &str) -> AttrPath {
        AttrPath {
            schema: None,
            attr: attr.to_string(),
            sub: None,
        }
    }

    /// True when this path names `attr` (ignoring case), with no sub-attribute.
    pub fn is(&self, attr: &str) -> bool {
        self.sub.is_none() && self.attr.eq_ignore_ascii_case(attr)
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{schema}:")?;
        }
        write!(f, "{}", self.attr)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// RFC 7643 `ATTRNAME`: a letter, then letters, digits, `_`, `-`, and `$` for `$ref`.
fn is_attr_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '$');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A PATCH `path`: an attribute, optionally narrowed by a value filter and followed by a
/// sub-attribute (`members[value eq "2819c223"]`, `emails[type eq "work"].value`).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after `]`, for a filtered path.
    pub sub_after_filter: Option<String>,
}

impl PatchPath {
    /// Parses a PATCH path.
    pub fn parse(text: &str) -> Result<PatchPath, ScimError> {
        let text = text.trim();
        let Some(open) = text.find('[') else {
            return Ok(PatchPath {
                attr: AttrPath::parse(text)?,
                filter: None,
                sub_after_filter: None,
            });
        };
        let close = text
            .rfind(']')
            .ok_or_else(|| ScimError::InvalidPath(format!("`{text}` has `[` without `]`")))?;
        if close < open {
            return Err(ScimError::InvalidPath(format!(
                "`{text}` has `]` before `[`"
            )));
        }
        let attr = AttrPath::parse(&text[..open])?;
        if attr.sub.is_some() {
            return Err(ScimError::InvalidPath(format!(
                "`{text}`: a value filter applies to a multi-valued attribute, not to a sub-attribute"
            )));
        }
        let tokens = tokenize(&text[open + 1..close])
            .map_err(|e| ScimError::InvalidPath(format!("`{text}`: {e}")))?;
        let filter = parse_filter_tokens(&tokens)
            .map_err(|e| ScimError::InvalidPath(format!("`{text}`: {e}")))?;
        let after = &text[close + 1..];
        let sub_after_filter = if after.is_empty() {
            None
        } else {
            let sub = after.strip_prefix('.').filter(|s| is_attr_name(s));
            Some(
                sub.ok_or_else(|| {
                    ScimError::InvalidPath(format!("`{text}`: expected `.subAttribute` after `]`"))
                })?
                .to_string(),
            )
        };
        Ok(PatchPath {
            attr,
            filter: Some(filter),
            sub_after_filter,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn attr_path_forms() {
        let path = AttrPath::parse("name.givenName").unwrap();
        assert_eq!(path.attr, "name");
        assert_eq!(path.sub.as_deref(), Some("givenName"));

        let path = AttrPath::parse("urn:ietf:params:scim:schemas:core:2.0:User:userName").unwrap();
        assert_eq!(
            path.schema.as_deref(),
            Some("urn:ietf:params:scim:schemas:core:2.0:User")
        );
        assert_eq!(path.attr, "userName");

        let path = AttrPath::parse("members.$ref").unwrap();
        assert_eq!(path.sub.as_deref(), Some("$ref"));
    }

    #[test]
    fn attr_path_rejects_junk() {
        for text in ["", "1abc", "a..b", "a b", "name.", "emails["] {
            assert!(AttrPath::parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn patch_path_with_filter_and_sub() {
        let path = PatchPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(path.attr.attr, "emails");
        assert!(path.filter.is_some());
        assert_eq!(path.sub_after_filter.as_deref(), Some("value"));
    }

    #[test]
    fn patch_path_rejects_unclosed_filter() {
        let error = PatchPath::parse(r#"members[value eq "x""#).unwrap_err();
        assert_eq!(error.scim_type(), "invalidPath");
    }
}
