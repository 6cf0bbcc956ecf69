//! SCIM 2.0 protocol pieces that need no network or database: attribute paths, the filter
//! language (RFC 7644 section 3.4.2.2), PATCH operations (RFC 7644 section 3.5.2) and the
//! `attributes`/`excludedAttributes` projection (RFC 7644 section 3.9).
//!
//! Resources are plain JSON objects. Attribute names compare case-insensitively, as
//! RFC 7643 section 2.1 requires.

pub mod filter;
pub mod patch;
pub mod path;
pub mod projection;

pub use filter::{CompareOp, Filter};
pub use patch::{PatchOp, PatchOperation, apply_patch};
pub use path::{AttrPath, PatchPath};
pub use projection::project;

/// Schema URN of the core User resource.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Schema URN of the core Group resource.
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// A protocol error, with the `scimType` keyword RFC 7644 section 3.12 assigns to it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScimError {
    /// The filter text does not parse, or compares in a way the attribute does not allow.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// An attribute path does not parse.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The request body has the wrong structure (an unknown PATCH `op`, a missing field).
    #[error("invalid syntax: {0}")]
    InvalidSyntax(String),
    /// A value has the wrong type or form for its attribute.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A `replace` or `remove` path matched nothing it could change.
    #[error("no target: {0}")]
    NoTarget(String),
    /// The request tries to change an attribute the server controls (`id`, `meta`).
    #[error("mutability: {0}")]
    Mutability(String),
}

impl ScimError {
    /// Returns the `scimType` keyword of this error.
    pub fn scim_type(&self) -> &'static str {
        match self {
            ScimError::InvalidFilter(_) => "invalidFilter",
            ScimError::InvalidPath(_) => "invalidPath",
            ScimError::InvalidSyntax(_) => "invalidSyntax",
            ScimError::InvalidValue(_) => "invalidValue",
            ScimError::NoTarget(_) => "noTarget",
            ScimError::Mutability(_) => "mutability",
        }
    }
}

/// Finds the key of `object` that equals `name` ignoring ASCII case.
pub fn find_key<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a String> {
    object.keys().find(|key| key.eq_ignore_ascii_case(name))
}

/// Reads a boolean that providers may send as JSON `true`/`false` or as the strings
/// `"True"`/`"False"` in any letter case (Microsoft Entra ID sends strings).
pub fn lenient_bool(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}
