//! Rows as the store keeps them.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultRow {
    pub id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// The vault's data key sealed under the root key; opaque here.
    pub wrapped_key: Vec<u8>,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRow {
    pub id: String,
    pub vault_id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub current_version: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One sealed version of a secret. The ciphertext contains every field's value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretVersionRow {
    pub secret_id: String,
    pub version: u32,
    pub field_names: Vec<String>,
    pub ciphertext: Vec<u8>,
    pub created_at: i64,
    pub created_by: String,
}

/// A vault with one of its secrets and that secret's current version, read in one query
/// by [`Store::secret_for_read`](crate::Store::secret_for_read).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretForRead {
    pub vault: VaultRow,
    /// None when the vault has no secret of that name.
    pub secret: Option<SecretRow>,
    /// The secret's current version; None when there is no secret.
    pub current: Option<SecretVersionRow>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretVersionMeta {
    pub version: u32,
    pub field_names: Vec<String>,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRow {
    pub id: String,
    /// `user`, `workload`, `agent` or `service_account`.
    pub kind: String,
    pub name: String,
    pub active: bool,
    pub groups: Vec<String>,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRow {
    pub name: String,
    pub text: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A token as stored: its SHA-256 hash and public accessor, never the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub accessor: String,
    pub hash: [u8; 32],
    pub principal_id: String,
    /// `root` or `user`.
    pub kind: String,
    pub created_at: i64,
    /// Seconds a renewal without an explicit increment adds.
    pub ttl: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    pub revoked_at: Option<i64>,
    pub created_by: Option<String>,
}

/// An identity connector: an OIDC provider people sign in with (`kind` `oidc`), or a JWT
/// role workloads and agents log in with (`kind` `jwt`).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectorRow {
    pub kind: String,
    pub name: String,
    /// Settings as JSON, never a secret.
    pub config: String,
    /// An OIDC client secret, sealed by the server under the root key; opaque here.
    pub sealed_secret: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A login between its start and its completion: an authorization-code login waiting for
/// its callback, or a device login waiting for the user's approval.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginAttemptRow {
    /// Hex SHA-256 of the value the client holds: the OAuth `state` or the device login id.
    pub id_hash: String,
    pub connector: String,
    /// `code` or `device`.
    pub flow: String,
    /// What must stay private (PKCE verifier, nonce, device code), sealed by the server.
    pub sealed: Vec<u8>,
    pub redirect_uri: Option<String>,
    pub expires_at: i64,
}

/// A token whose expiry a job claimed to record, from [`Store::claim_expired_tokens`].
///
/// [`Store::claim_expired_tokens`]: crate::Store::claim_expired_tokens
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryClaim {
    pub accessor: String,
    pub principal_id: String,
    pub expires_at: i64,
    /// True when an earlier claim was abandoned (its holder stopped before marking the
    /// expiry recorded), so its audit event may already be stored.
    pub reclaimed: bool,
}

/// A user provisioned over SCIM. Its id is the id of the `user` principal it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScimUserRow {
    pub principal_id: String,
    pub external_id: Option<String>,
    /// The userName as sent; it is also the principal's name.
    pub user_name: String,
    /// The primary email in lowercase, used to link OIDC logins.
    pub email: Option<String>,
    /// The resource as JSON, without `id` and `meta`.
    pub resource: String,
    /// Incremented by every write, for `meta.version` and concurrent-update checks.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The principal's `active` flag.
    pub active: bool,
}

/// A group provisioned over SCIM; its display name is the Cedar group of its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScimGroupRow {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// The resource as JSON, without `id` and `meta`.
    pub resource: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Principal ids of the members, sorted.
    pub members: Vec<String>,
}

/// A bearer token accepted only by the SCIM service, stored as its SHA-256 hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScimTokenRow {
    pub accessor: String,
    pub hash: [u8; 32],
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_by: String,
}

/// How an OIDC login is matched to a SCIM user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScimLink<'a> {
    ExternalId(&'a str),
    /// Compared ignoring case.
    UserName(&'a str),
    /// Compared ignoring case against the user's primary email.
    Email(&'a str),
}

/// What [`Store::offboard_principal`](crate::Store::offboard_principal) revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offboarding {
    /// Accessors of the tokens it revoked.
    pub revoked_tokens: Vec<String>,
}
