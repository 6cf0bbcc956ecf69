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
    /// The grants it revoked.
    pub revoked_grants: Vec<GrantRow>,
    /// The pending access requests it cancelled.
    pub cancelled_requests: Vec<AccessRequestRow>,
}

/// What an access request or grant covers: a whole vault, or one secret in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct AccessResource {
    pub vault: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl AccessResource {
    /// True when this covers secret `secret` of vault `vault`.
    pub fn covers(&self, vault: &str, secret: &str) -> bool {
        self.vault == vault && self.secret.as_deref().is_none_or(|s| s == secret)
    }
}

/// A principal's request for time-boxed access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequestRow {
    pub id: String,
    pub requester_id: String,
    /// The requester's Cedar uid text, e.g. `User::"alice"`.
    pub requester: String,
    pub resources: Vec<AccessResource>,
    /// Seconds of access asked for.
    pub duration: i64,
    pub reason: String,
    pub ticket: Option<String>,
    /// `review` (approved by others), `auto` (approved by policy) or `break_glass`.
    pub kind: String,
    pub approvals_required: i64,
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub status: String,
    pub created_at: i64,
    /// When a request still pending expires.
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    /// Who decided: the last approver, the denier, the canceller, or `system` for expiry.
    pub decided_by: Option<String>,
    pub grant_id: Option<String>,
    /// The reviews so far, oldest first.
    pub reviews: Vec<AccessReviewRow>,
}

impl AccessRequestRow {
    /// Distinct approvals so far.
    pub fn approvals(&self) -> i64 {
        self.reviews
            .iter()
            .filter(|r| r.verdict == "approve")
            .count() as i64
    }
}

/// One principal's verdict on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessReviewRow {
    pub request_id: String,
    pub reviewer_id: String,
    /// The reviewer's Cedar uid text.
    pub reviewer: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub comment: Option<String>,
    pub created_at: i64,
}

/// Time-boxed access an approved request became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRow {
    pub id: String,
    pub request_id: String,
    pub principal_id: String,
    /// The grantee's Cedar uid text.
    pub principal: String,
    pub resources: Vec<AccessResource>,
    /// Comma-separated reviewer uids, or the policy ids that approved it.
    pub approved_by: String,
    pub reason: String,
    /// As the request's kind.
    pub kind: String,
    pub starts_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

impl GrantRow {
    /// True while the grant gives access at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.starts_at <= now && now < self.expires_at
    }
}

/// Filters of [`Store::list_access_requests`](crate::Store::list_access_requests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRequestFilter {
    pub status: Option<String>,
    pub requester_id: Option<String>,
    pub limit: u32,
}

/// Filters of [`Store::list_grants`](crate::Store::list_grants).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantFilter {
    pub principal_id: Option<String>,
    pub request_id: Option<String>,
    /// Only grants live at this time.
    pub live_at: Option<i64>,
    pub limit: u32,
}

/// What [`Store::review_access_request`](crate::Store::review_access_request) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per review; boxing buys nothing
pub enum ReviewOutcome {
    /// The review was stored; `request` is the request afterwards, and `grant` the grant
    /// it created when this was the last approval needed.
    Recorded {
        request: AccessRequestRow,
        grant: Option<GrantRow>,
    },
    /// The request is no longer pending; nothing was stored.
    NotPending(AccessRequestRow),
    /// The request's pending time ran out; it is now marked expired and nothing else was
    /// stored.
    Expired(AccessRequestRow),
    /// The reviewer already reviewed this request; nothing was stored.
    AlreadyReviewed(AccessRequestRow),
    /// No request has that id.
    NotFound,
}
