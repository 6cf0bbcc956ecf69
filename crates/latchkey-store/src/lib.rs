//! Latchkey's storage layer: the [`Store`] trait and its SQLite and PostgreSQL
//! implementations.
//!
//! The store keeps rows and enforces uniqueness and transactions; it never receives a key or a
//! plaintext secret. Sealing, policy and audit hashing happen above it.

mod access;
mod model;
mod postgres;
mod postgres_upkeep;
mod scim;
mod sqlite;
mod sqlite_upkeep;
pub mod transfer;
mod upkeep;

pub use model::*;
pub use postgres::{PostgresStore, redact_url};
pub use sqlite::SqliteStore;
pub use upkeep::{AuditUpkeep, ExportRow, SinkCursorRow};

use std::time::Duration;

use async_trait::async_trait;
use latchkey_core::audit::{AuditEvent, Checkpoint, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("the store is already initialized")]
    AlreadyInitialized,
    #[error("{0} changed concurrently; retry")]
    Concurrent(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True when the database could not be reached or refused the connection, as opposed
    /// to a query that failed: the request may succeed once the database is back.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 is a connection exception; 57P01-57P03 are an administrator
            // or crash shutdown and "cannot connect now"; 3D000 is a missing database; 53300
            // is too many connections.
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "3D000" | "53300"
                    )
            }),
            _ => false,
        }
    }
}

/// Returns the entry of `found` for the pair at `index` of a batched secret read, or an
/// error when the database returned an index outside the request.
pub(crate) fn batch_entry(
    found: &mut [Option<SecretForRead>],
    index: i64,
) -> StoreResult<&mut Option<SecretForRead>> {
    let requested = found.len();
    usize::try_from(index)
        .ok()
        .and_then(|i| found.get_mut(i))
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "batched secret read returned index {index} for {requested} requested secrets"
            ))
        })
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Persistent state of one Latchkey deployment. Audit upkeep (sink cursors, exports,
/// purging) is in the [`AuditUpkeep`] supertrait.
#[async_trait]
pub trait Store: AuditUpkeep + Send + Sync + 'static {
    /// Returns the stored seal configuration (JSON written by the server at init).
    async fn seal_config(&self) -> StoreResult<Option<String>>;
    /// Stores the seal configuration, the root principal and the root token in one
    /// transaction; fails with [`StoreError::AlreadyInitialized`] when a seal exists.
    async fn initialize(
        &self,
        seal_config: &str,
        root: &PrincipalRow,
        root_token: &TokenRow,
    ) -> StoreResult<()>;

    async fn create_vault(&self, vault: &VaultRow) -> StoreResult<()>;
    async fn vault_by_name(&self, name: &str) -> StoreResult<Option<VaultRow>>;
    async fn vault_by_id(&self, id: &str) -> StoreResult<Option<VaultRow>>;
    async fn list_vaults(&self) -> StoreResult<Vec<VaultRow>>;

    async fn secret_by_name(&self, vault_id: &str, name: &str) -> StoreResult<Option<SecretRow>>;
    /// Reads the vault `vault_name`, its secret `secret_name` and that secret's current
    /// version in one query, which is what a read of an uncached secret needs. Returns None
    /// when the vault does not exist.
    async fn secret_for_read(
        &self,
        vault_name: &str,
        secret_name: &str,
    ) -> StoreResult<Option<SecretForRead>> {
        let mut found = self.secrets_for_read(&[(vault_name, secret_name)]).await?;
        Ok(found.pop().flatten())
    }
    /// Reads like [`Store::secret_for_read`] for each (vault name, secret name) pair of
    /// `requested`, in one query. Returns one entry per pair, in the same order.
    async fn secrets_for_read(
        &self,
        requested: &[(&str, &str)],
    ) -> StoreResult<Vec<Option<SecretForRead>>>;
    async fn list_secrets(&self, vault_id: &str) -> StoreResult<Vec<SecretRow>>;
    /// Writes a new version. `expected` is the secret as the caller read it, or None when it
    /// did not exist. When the stored secret differs, nothing is written and
    /// [`StoreError::Concurrent`] is returned, so the caller can seal again and retry.
    async fn put_secret_version(
        &self,
        expected: Option<&SecretRow>,
        secret: &SecretRow,
        version: &SecretVersionRow,
    ) -> StoreResult<()>;
    async fn secret_version(
        &self,
        secret_id: &str,
        version: u32,
    ) -> StoreResult<Option<SecretVersionRow>>;
    /// Lists versions, newest first, without their ciphertexts.
    async fn secret_versions(&self, secret_id: &str) -> StoreResult<Vec<SecretVersionMeta>>;
    /// Deletes a secret and all its versions; returns false when it did not exist.
    async fn delete_secret(&self, secret_id: &str) -> StoreResult<bool>;

    async fn create_principal(&self, principal: &PrincipalRow) -> StoreResult<()>;
    async fn principal_by_name(&self, kind: &str, name: &str) -> StoreResult<Option<PrincipalRow>>;
    async fn principal_by_id(&self, id: &str) -> StoreResult<Option<PrincipalRow>>;
    async fn list_principals(&self) -> StoreResult<Vec<PrincipalRow>>;
    /// Replaces a principal's group memberships.
    async fn set_groups(&self, principal_id: &str, groups: &[String]) -> StoreResult<()>;

    /// Creates or replaces a policy; returns true when it was created.
    async fn put_policy(&self, name: &str, text: &str, now: i64) -> StoreResult<bool>;
    async fn policy(&self, name: &str) -> StoreResult<Option<PolicyRow>>;
    async fn list_policies(&self) -> StoreResult<Vec<PolicyRow>>;
    async fn delete_policy(&self, name: &str) -> StoreResult<bool>;

    async fn insert_token(&self, token: &TokenRow) -> StoreResult<()>;
    async fn token_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<TokenRow>>;
    async fn token_by_accessor(&self, accessor: &str) -> StoreResult<Option<TokenRow>>;
    async fn list_tokens(&self, principal_id: Option<&str>) -> StoreResult<Vec<TokenRow>>;
    /// Marks a token revoked; returns false when it was unknown or already revoked.
    async fn revoke_token(&self, accessor: &str, now: i64) -> StoreResult<bool>;
    /// Moves a live token's expiry; returns false when it is unknown or revoked.
    async fn set_token_expiry(&self, accessor: &str, expires_at: i64) -> StoreResult<bool>;

    /// Creates or replaces a connector, keeping its creation time; returns true when it was
    /// created.
    async fn put_connector(&self, connector: &ConnectorRow) -> StoreResult<bool>;
    /// Lists connectors by kind, then name.
    async fn list_connectors(&self) -> StoreResult<Vec<ConnectorRow>>;
    /// Deletes a connector; returns false when it did not exist.
    async fn delete_connector(&self, kind: &str, name: &str) -> StoreResult<bool>;

    /// Stores a login in progress, and deletes the ones that expired before `now`.
    async fn insert_login_attempt(&self, attempt: &LoginAttemptRow, now: i64) -> StoreResult<()>;
    /// Returns a login in progress without ending it.
    async fn login_attempt(&self, id_hash: &str) -> StoreResult<Option<LoginAttemptRow>>;
    /// Deletes a login in progress and returns it. When two requests race, only one gets
    /// it, so each login completes at most once.
    async fn take_login_attempt(&self, id_hash: &str) -> StoreResult<Option<LoginAttemptRow>>;

    /// Returns the last audit event's sequence number and hash.
    async fn audit_head(&self) -> StoreResult<Option<(u64, String)>>;
    /// Appends events in one durable transaction; they must continue the stored chain.
    ///
    /// Inside that transaction, with other writers shut out, the first event's `seq` must be
    /// the stored head's plus one (1 for an empty log). Its `prev_hash` must equal the head's
    /// hash, or the hex of [`GENESIS_HASH`](latchkey_core::audit::GENESIS_HASH) for an empty
    /// log, in either hex case. Otherwise nothing is written and [`StoreError::Concurrent`]
    /// is returned, because another writer moved the head: the caller reloads it with
    /// [`Store::audit_head`] and seals the batch again. The store checks neither the links
    /// nor the hashes inside the batch.
    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()> {
        self.append_audit_with_tokens(events, &[]).await
    }
    /// Like [`Store::append_audit`], and stores `tokens` in the same transaction, so a new
    /// token exists exactly when the audit event of its issue does, and both cost one
    /// durable commit shared with the rest of the batch.
    async fn append_audit_with_tokens(
        &self,
        events: &[AuditEvent],
        tokens: &[TokenRow],
    ) -> StoreResult<()>;
    /// Returns up to `limit` events with a sequence number above `after`, in order.
    async fn audit_events(&self, after: u64, limit: u32) -> StoreResult<Vec<AuditEvent>>;
    /// Returns up to `filter.limit` events with a sequence number above `filter.after` that
    /// match every filter given, in sequence order.
    async fn search_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>>;

    /// Returns the audit signing key as stored: sealed by the server under the root key.
    async fn audit_signing_key(&self) -> StoreResult<Option<Vec<u8>>>;
    /// Stores the sealed audit signing key unless one exists. Returns false and stores
    /// nothing when one exists, so two servers racing to create it agree on one key.
    async fn insert_audit_signing_key(&self, sealed: &[u8]) -> StoreResult<bool>;
    /// Stores a signed checkpoint. A second checkpoint at the same `seq` fails with
    /// [`StoreError::Conflict`]. The store checks neither the signature nor the hash.
    async fn append_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()>;
    /// Returns up to `limit` checkpoints with `seq` above `after_seq`, in order.
    async fn checkpoints(&self, after_seq: u64, limit: u32) -> StoreResult<Vec<Checkpoint>>;
    /// Returns the checkpoint with the highest `seq`.
    async fn last_checkpoint(&self) -> StoreResult<Option<Checkpoint>>;

    /// Takes the lease on background job `job` for `holder` until `ttl` from now, by the
    /// database clock. Returns true when the lease is `holder`'s afterwards, because it was
    /// free, had expired, or was `holder`'s already (then it is extended). Returns false while
    /// another holder's lease runs. The check and the write are one statement, so two
    /// holders never both get a lease.
    async fn take_lease(&self, job: &str, holder: &str, ttl: Duration) -> StoreResult<bool>;
    /// Extends `holder`'s lease on `job` to `ttl` from now. Returns false when the lease
    /// expired or belongs to another holder, and the caller should stop the job.
    async fn renew_lease(&self, job: &str, holder: &str, ttl: Duration) -> StoreResult<bool>;
    /// Ends `holder`'s lease on `job`, so that any holder may take it at once. Returns false
    /// when `holder` did not hold it.
    async fn release_lease(&self, job: &str, holder: &str) -> StoreResult<bool>;
    /// Claims up to `limit` unrevoked tokens whose expiry passed at `now` and was not yet
    /// recorded, oldest expiry first, by setting their claim time to `now`. A token claimed
    /// before `stale_before` whose expiry is still not recorded is claimed again, with
    /// [`ExpiryClaim::reclaimed`] set. Concurrent callers get disjoint sets.
    async fn claim_expired_tokens(
        &self,
        now: i64,
        stale_before: i64,
        limit: u32,
    ) -> StoreResult<Vec<ExpiryClaim>>;
    /// Marks a token's expiry recorded; returns false when it already was.
    async fn mark_expiry_recorded(&self, accessor: &str, now: i64) -> StoreResult<bool>;

    /// Returns a SCIM user by its id (the principal's id).
    async fn scim_user(&self, id: &str) -> StoreResult<Option<ScimUserRow>>;
    /// Lists SCIM users, oldest first.
    async fn scim_users(&self) -> StoreResult<Vec<ScimUserRow>>;
    /// Finds the one SCIM user a login links to; None when none or several match.
    async fn find_scim_user(&self, link: ScimLink<'_>) -> StoreResult<Option<ScimUserRow>>;
    /// Creates (`expected_version` None) or updates a SCIM user, and creates or updates its
    /// principal (name and `active`) in the same transaction. An update whose stored
    /// version differs from `expected_version` writes nothing and returns
    /// [`StoreError::Concurrent`]; a taken userName returns [`StoreError::Conflict`].
    async fn put_scim_user(
        &self,
        user: &ScimUserRow,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    /// Deletes a SCIM user and its group memberships, keeping its principal (deactivated by
    /// the caller) for the audit trail. Returns false when it did not exist.
    async fn delete_scim_user(&self, id: &str) -> StoreResult<bool>;
    /// Returns a SCIM group with its members.
    async fn scim_group(&self, id: &str) -> StoreResult<Option<ScimGroupRow>>;
    /// Lists SCIM groups with their members, oldest first.
    async fn scim_groups(&self) -> StoreResult<Vec<ScimGroupRow>>;
    /// Creates or updates a SCIM group like [`Store::put_scim_user`], replaces its members,
    /// and sets the Cedar groups of every principal that joined or left, in one transaction.
    async fn put_scim_group(
        &self,
        group: &ScimGroupRow,
        expected_version: Option<i64>,
    ) -> StoreResult<()>;
    /// Deletes a SCIM group and removes it from its members' Cedar groups.
    async fn delete_scim_group(&self, id: &str) -> StoreResult<bool>;
    /// Deactivates a principal and revokes everything it holds, in one transaction: its
    /// live tokens and grants, and its pending access requests. Returns what was revoked.
    async fn offboard_principal(&self, principal_id: &str, now: i64) -> StoreResult<Offboarding>;

    /// Returns a vault's access settings as stored (JSON), or None for the defaults.
    async fn vault_settings(&self, vault_id: &str) -> StoreResult<Option<String>>;
    /// Creates or replaces a vault's access settings.
    async fn put_vault_settings(&self, vault_id: &str, settings: &str, now: i64)
    -> StoreResult<()>;
    /// Stores a new access request, and in the same transaction the grant it became when
    /// policy approved it at once. A taken id returns [`StoreError::Conflict`].
    async fn insert_access_request(
        &self,
        request: &AccessRequestRow,
        grant: Option<&GrantRow>,
    ) -> StoreResult<()>;
    /// Returns an access request with its reviews.
    async fn access_request(&self, id: &str) -> StoreResult<Option<AccessRequestRow>>;
    /// Lists access requests with their reviews, newest first.
    async fn list_access_requests(
        &self,
        filter: &AccessRequestFilter,
    ) -> StoreResult<Vec<AccessRequestRow>>;
    /// Records a review in one transaction with the request locked: a deny ends the
    /// request; the approval that reaches the request's threshold marks it approved and
    /// creates `grant` (its id kept; the rest taken from the request, the clock starting at
    /// `now`). A request that is no longer pending, whose pending time ran out, or that the
    /// reviewer already reviewed is left unchanged, and the outcome says which.
    async fn review_access_request(
        &self,
        review: &AccessReviewRow,
        grant: &GrantRow,
        now: i64,
    ) -> StoreResult<ReviewOutcome>;
    /// Cancels a pending request; returns it afterwards, or None when it was not pending.
    async fn cancel_access_request(
        &self,
        id: &str,
        by: &str,
        now: i64,
    ) -> StoreResult<Option<AccessRequestRow>>;
    /// Marks up to `limit` requests still pending at their expiry (before `now`) expired,
    /// and returns them.
    async fn expire_access_requests(
        &self,
        now: i64,
        limit: u32,
    ) -> StoreResult<Vec<AccessRequestRow>>;
    /// Returns a principal's grants that are live at `now`.
    async fn live_grants(&self, principal_id: &str, now: i64) -> StoreResult<Vec<GrantRow>>;
    async fn grant(&self, id: &str) -> StoreResult<Option<GrantRow>>;
    /// Lists grants, newest first.
    async fn list_grants(&self, filter: &GrantFilter) -> StoreResult<Vec<GrantRow>>;
    /// Revokes a live grant; returns it afterwards, or None when it was not live.
    async fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> StoreResult<Option<GrantRow>>;
    /// Up to `limit` grants that ran out before `now`, unrevoked, whose expiry has no
    /// audit event yet, oldest first.
    async fn unrecorded_grant_expiries(&self, now: i64, limit: u32) -> StoreResult<Vec<GrantRow>>;
    /// Marks a grant's expiry recorded; returns false when it already was.
    async fn mark_grant_expiry_recorded(&self, id: &str, now: i64) -> StoreResult<bool>;

    async fn insert_scim_token(&self, token: &ScimTokenRow) -> StoreResult<()>;
    async fn scim_token_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ScimTokenRow>>;
    async fn list_scim_tokens(&self) -> StoreResult<Vec<ScimTokenRow>>;
    /// Marks a SCIM token revoked; returns false when it was unknown or already revoked.
    async fn revoke_scim_token(&self, accessor: &str, now: i64) -> StoreResult<bool>;
}

/// Converts a lease lifetime to whole milliseconds, capped at about 292 million years.
fn lease_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Filters of [`Store::search_audit`]. A `None` filter matches every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events with a sequence number above this one.
    pub after: u64,
    /// Maximum events returned.
    pub limit: u32,
    /// Exact principal, e.g. `User::"alice"`.
    pub principal: Option<String>,
    /// Resource prefix, compared byte for byte, e.g. `Secret::"prod/`.
    pub resource_prefix: Option<String>,
    /// Exact action, e.g. `read`.
    pub action: Option<String>,
    /// Exact request id, as error bodies and the `x-request-id` header give it.
    pub request_id: Option<String>,
    /// Exact grant id, from the event's `grant` detail.
    pub grant: Option<String>,
    /// Exact access request id, from the event's `access_request` detail.
    pub access_request: Option<String>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// Events at or after this time, formatted by
    /// [`format_time`](latchkey_core::audit::format_time).
    pub since: Option<String>,
    /// Events before this time, formatted like `since`.
    pub until: Option<String>,
}

/// Checks that a batch whose first event is `first` continues the chain whose last event is
/// `head` (None for an empty log). Both implementations call it inside their append
/// transaction, after shutting out other writers.
fn check_continues_head(head: Option<(u64, String)>, first: &AuditEvent) -> StoreResult<()> {
    let (head_seq, head_hash) = match head {
        Some(head) => head,
        None => (0, hex_lower(&latchkey_core::audit::GENESIS_HASH)),
    };
    if head_seq.checked_add(1) == Some(first.seq)
        && first.prev_hash.eq_ignore_ascii_case(&head_hash)
    {
        Ok(())
    } else {
        Err(StoreError::Concurrent("audit chain head".into()))
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex_value(text: &str) -> StoreResult<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return Err(StoreError::Corrupt(
            "stored audit signing key is not hex".into(),
        ));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| StoreError::Corrupt("stored audit signing key is not hex".into()))
        })
        .collect()
}
