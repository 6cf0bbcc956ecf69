//! SQLite implementation of [`Store`], the embedded default.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed transaction
//! survives a crash or power loss: the audit log depends on that.
//!
//! Every query on a pooled connection is a round trip to that connection's thread, and
//! round trips, not SQL, are most of the cost of a query here. So the pool does not ping a
//! connection before handing it out, because a connection to a local file cannot go away.
//! The read of an uncached secret is one query. The audit writer appends through a
//! connection of its own in as few statements as it can (see
//! [`SqliteStore::append_audit_with_tokens`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use latchkey_core::audit::{AuditEvent, AuditRecord, Checkpoint, GENESIS_HASH, Outcome};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};

use crate::{
    AccessRequestFilter, AccessRequestRow, AccessReviewRow, AuditFilter, ConnectorRow, ExpiryClaim,
    GrantFilter, GrantRow, LoginAttemptRow, Offboarding, PolicyRow, PrincipalRow, ReviewOutcome,
    ScimGroupRow, ScimLink, ScimTokenRow, ScimUserRow, SecretForRead, SecretRow, SecretVersionMeta,
    SecretVersionRow, Store, StoreError, StoreResult, TokenRow, VaultRow,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The database clock in unix milliseconds, as SQL. `julianday('now')` has millisecond
/// precision and stays the same within one statement.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Audit rows per INSERT statement. SQLite binds at most 32,766 parameters per statement
/// and an audit row binds 14.
const AUDIT_ROWS_PER_INSERT: usize = 2000;

/// Token rows per INSERT statement; a token row binds 10 parameters.
const TOKEN_ROWS_PER_INSERT: usize = 3000;

/// Audit appends between checkpoints of the write-ahead log.
///
/// A checkpoint copies the pages the log contains into the database file and syncs it. Run by
/// the audit connection after a commit, as SQLite does by default, it would hold up every
/// request waiting for the next commit, for as long as it takes to copy hundreds of pages
/// when tokens are issued. So every this many appends a passive checkpoint runs on a pooled
/// connection beside the appends, and copies most of the log. The log can only start over
/// once a checkpoint has copied all of it, which one running beside a stream of appends
/// never does. So the audit connection then checkpoints the few pages appended since
/// itself, before its next append, and that append starts the log over.
const APPENDS_PER_CHECKPOINT: u32 = 32;

/// A vault, one of its secrets and that secret's current version.
/// The vault, secret and current version of each `[vault name, secret name]` pair in the
/// JSON array bound as `?1`, with the pair's index as `w_index`. A pair whose vault does not
/// exist has no row. `CROSS JOIN` makes the pairs the outer loop, so each pair costs
/// three index lookups.
const SECRETS_FOR_READ: &str = "SELECT w.key AS w_index, v.id AS v_id, v.name AS v_name, \
     v.tags AS v_tags, v.wrapped_key AS v_wrapped_key, v.created_at AS v_created_at, \
     s.id AS s_id, s.name AS s_name, s.tags AS s_tags, s.current_version AS s_current_version, \
     s.created_at AS s_created_at, s.updated_at AS s_updated_at, \
     sv.field_names AS sv_field_names, sv.ciphertext AS sv_ciphertext, \
     sv.created_at AS sv_created_at, sv.created_by AS sv_created_by \
     FROM json_each(?1) AS w \
     CROSS JOIN vaults v ON v.name = w.value ->> 0 \
     LEFT JOIN secrets s ON s.vault_id = v.id AND s.name = w.value ->> 1 \
     LEFT JOIN secret_versions sv ON sv.secret_id = s.id AND sv.version = s.current_version";

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The connection audit batches are appended through, outside the pool. One append runs
    /// at a time anyway. A connection of its own spares each batch the pool's hand-over, and
    /// keeps its page cache and prepared statements while it is the only writer. It is
    /// opened again after an error.
    audit: Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
    /// Options of the audit connection.
    audit_options: SqliteConnectOptions,
    /// The connection [`Store::secrets_for_read`] runs on. It is outside the pool for the
    /// same reasons, and because a pooled connection costs a round trip to its thread on
    /// release.
    reader: Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
    /// Options of the reader connection.
    reader_options: SqliteConnectOptions,
    /// Appends since the last checkpoint was started, whether one is running, and whether
    /// the audit connection should checkpoint the rest of the log.
    appends: Arc<AtomicU32>,
    checkpointing: Arc<AtomicBool>,
    finish_checkpoint: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(options).await
    }

    /// Opens a store from a `sqlite:` URL such as `sqlite:///var/lib/latchkey/latchkey.db`.
    pub async fn open_url(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> StoreResult<SqliteStore> {
        // Four connections keep two cores busy: a query waits on its thread, not on the
        // disk, once the pages are in the OS cache. Every commit (one per audit batch) makes
        // each connection drop its page cache at its next query, so a large cache per
        // connection only takes memory. 1 MiB each is enough for the pages of one query.
        let reader_options = options.clone().pragma("cache_size", "-1024");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(reader_options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        // Statement journals of the audit transactions stay in memory rather than in a
        // temporary file, and checkpoints are left to `checkpoint_beside_appends`.
        let audit_options = options
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "0");
        Ok(SqliteStore {
            pool,
            audit: Arc::new(tokio::sync::Mutex::new(None)),
            audit_options,
            reader: Arc::new(tokio::sync::Mutex::new(None)),
            reader_options,
            appends: Arc::new(AtomicU32::new(0)),
            checkpointing: Arc::new(AtomicBool::new(false)),
            finish_checkpoint: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Counts an audit append, and every [`APPENDS_PER_CHECKPOINT`] appends starts a passive
    /// checkpoint on a pooled connection unless one is still running. A passive checkpoint
    /// copies what it can without waiting for readers or writers, so the audit connection
    /// keeps appending meanwhile. Once it completed, the audit connection finishes the
    /// checkpoint before its next append.
    fn checkpoint_beside_appends(&self) {
        if self.appends.fetch_add(1, Ordering::Relaxed) + 1 < APPENDS_PER_CHECKPOINT
            || self.checkpointing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.appends.store(0, Ordering::Relaxed);
        let pool = self.pool.clone();
        let running = Arc::clone(&self.checkpointing);
        let finish = Arc::clone(&self.finish_checkpoint);
        tokio::spawn(async move {
            match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                Ok(_) => finish.store(true, Ordering::Release),
                Err(error) => tracing::warn!(%error, "checkpointing the write-ahead log failed"),
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Starts a write transaction with `BEGIN IMMEDIATE`, which takes the write lock at
    /// once and waits for it under the busy timeout. A plain deferred `BEGIN` that reads
    /// before it writes fails with "database is locked" when another connection commits
    /// in between, because SQLite cannot upgrade a stale read snapshot and does not retry.
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Returns the underlying pool, for tests that need to reach under the Store trait.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

pub(crate) fn json_tags(tags: &BTreeMap<String, String>) -> StoreResult<String> {
    serde_json::to_string(tags).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn version_u32(value: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {value}")))
}

fn vault_from_row(row: &SqliteRow) -> StoreResult<VaultRow> {
    Ok(VaultRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tags: parse_json(row.try_get("tags")?, "vault tags")?,
        wrapped_key: row.try_get("wrapped_key")?,
        created_at: row.try_get("created_at")?,
    })
}

fn secret_from_row(row: &SqliteRow) -> StoreResult<SecretRow> {
    Ok(SecretRow {
        id: row.try_get("id")?,
        vault_id: row.try_get("vault_id")?,
        name: row.try_get("name")?,
        tags: parse_json(row.try_get("tags")?, "secret tags")?,
        current_version: version_u32(row.try_get("current_version")?, "secret version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn policy_from_row(row: &SqliteRow) -> StoreResult<PolicyRow> {
    Ok(PolicyRow {
        name: row.try_get("name")?,
        text: row.try_get("text")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn connector_from_row(row: &SqliteRow) -> StoreResult<ConnectorRow> {
    Ok(ConnectorRow {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        config: row.try_get("config")?,
        sealed_secret: row.try_get("sealed_secret")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn login_attempt_from_row(row: &SqliteRow) -> StoreResult<LoginAttemptRow> {
    Ok(LoginAttemptRow {
        id_hash: row.try_get("id_hash")?,
        connector: row.try_get("connector")?,
        flow: row.try_get("flow")?,
        sealed: row.try_get("sealed")?,
        redirect_uri: row.try_get("redirect_uri")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn token_from_row(row: &SqliteRow) -> StoreResult<TokenRow> {
    let hash: Vec<u8> = row.try_get("hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))?;
    Ok(TokenRow {
        accessor: row.try_get("accessor")?,
        hash,
        principal_id: row.try_get("principal_id")?,
        kind: row.try_get("kind")?,
        created_at: row.try_get("created_at")?,
        ttl: row.try_get("ttl")?,
        expires_at: row.try_get("expires_at")?,
        max_expires_at: row.try_get("max_expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_by: row.try_get("created_by")?,
    })
}

pub(crate) fn outcome_from_str(text: &str) -> StoreResult<Outcome> {
    match text {
        "allowed" => Ok(Outcome::Allowed),
        "denied" => Ok(Outcome::Denied),
        "failed" => Ok(Outcome::Failed),
        other => Err(StoreError::Corrupt(format!(
            "unknown audit outcome `{other}`"
        ))),
    }
}

pub(crate) fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::Failed => "failed",
    }
}

fn audit_from_row(row: &SqliteRow) -> StoreResult<AuditEvent> {
    let seq: i64 = row.try_get("seq")?;
    Ok(AuditEvent {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?,
        record: AuditRecord {
            time: row.try_get("time")?,
            request_id: row.try_get("request_id")?,
            principal: row.try_get("principal")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            outcome: outcome_from_str(row.try_get("outcome")?)?,
            reason: row.try_get("reason")?,
            policies: parse_json(row.try_get("policies")?, "audit policies")?,
            client_addr: row.try_get("client_addr")?,
            token_id: row.try_get("token_id")?,
            detail: parse_json(row.try_get("detail")?, "audit detail")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    async fn seal_config(&self) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = 'seal'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn initialize(
        &self,
        seal_config: &str,
        root: &PrincipalRow,
        root_token: &TokenRow,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let inserted =
            sqlx::query("INSERT INTO meta (key, value) VALUES ('seal', ?) ON CONFLICT DO NOTHING")
                .bind(seal_config)
                .execute(&mut *tx)
                .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyInitialized);
        }
        sqlx::query(
            "INSERT INTO principals (id, kind, name, active, created_at) VALUES (?, ?, ?, 1, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&root.id)
        .bind(&root.kind)
        .bind(&root.name)
        .bind(root.created_at)
        .execute(&mut *tx)
        .await?;
        insert_token(&mut *tx, root_token).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_vault(&self, vault: &VaultRow) -> StoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO vaults (id, name, tags, wrapped_key, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&vault.id)
        .bind(&vault.name)
        .bind(json_tags(&vault.tags)?)
        .bind(&vault.wrapped_key)
        .bind(vault.created_at)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("vault `{}`", vault.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn vault_by_name(&self, name: &str) -> StoreResult<Option<VaultRow>> {
        let row = sqlx::query("SELECT * FROM vaults WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vault_from_row).transpose()
    }

    async fn vault_by_id(&self, id: &str) -> StoreResult<Option<VaultRow>> {
        let row = sqlx::query("SELECT * FROM vaults WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vault_from_row).transpose()
    }

    async fn list_vaults(&self) -> StoreResult<Vec<VaultRow>> {
        let rows = sqlx::query("SELECT * FROM vaults ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(vault_from_row).collect()
    }

    async fn secret_by_name(&self, vault_id: &str, name: &str) -> StoreResult<Option<SecretRow>> {
        let row = sqlx::query("SELECT * FROM secrets WHERE vault_id = ? AND name = ?")
            .bind(vault_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(secret_from_row).transpose()
    }

    async fn secrets_for_read(
        &self,
        requested: &[(&str, &str)],
    ) -> StoreResult<Vec<Option<SecretForRead>>> {
        let mut found: Vec<Option<SecretForRead>> = vec![None; requested.len()];
        if requested.is_empty() {
            return Ok(found);
        }
        let pairs = serde_json::to_string(requested).map_err(|e| {
            StoreError::Corrupt(format!(
                "encoding the requested secrets as JSON failed: {e}"
            ))
        })?;
        let mut slot = self.reader.lock().await;
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(self.reader_options.connect().await?),
        };
        let rows = match sqlx::query(SECRETS_FOR_READ)
            .bind(pairs)
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                // The next call starts on a new connection.
                *slot = None;
                return Err(error.into());
            }
        };
        drop(slot);
        for row in &rows {
            let index: i64 = row.try_get("w_index")?;
            let entry = crate::batch_entry(&mut found, index)?;
            *entry = Some(secret_for_read_from_row(row)?);
        }
        Ok(found)
    }

    async fn list_secrets(&self, vault_id: &str) -> StoreResult<Vec<SecretRow>> {
        let rows = sqlx::query("SELECT * FROM secrets WHERE vault_id = ? ORDER BY name")
            .bind(vault_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn put_secret_version(
        &self,
        expected: Option<&SecretRow>,
        secret: &SecretRow,
        version: &SecretVersionRow,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let changed = match expected {
            None => {
                let result = sqlx::query(
                    "INSERT INTO secrets (id, vault_id, name, tags, current_version, created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .bind(&secret.id)
                .bind(&secret.vault_id)
                .bind(&secret.name)
                .bind(json_tags(&secret.tags)?)
                .bind(i64::from(secret.current_version))
                .bind(secret.created_at)
                .bind(secret.updated_at)
                .execute(&mut *tx)
                .await?;
                result.rows_affected()
            }
            Some(old) => {
                let result = sqlx::query(
                    "UPDATE secrets SET current_version = ?, tags = ?, updated_at = ? \
                     WHERE id = ? AND current_version = ?",
                )
                .bind(i64::from(secret.current_version))
                .bind(json_tags(&secret.tags)?)
                .bind(secret.updated_at)
                .bind(&old.id)
                .bind(i64::from(old.current_version))
                .execute(&mut *tx)
                .await?;
                result.rows_affected()
            }
        };
        if changed == 0 {
            return Err(StoreError::Concurrent(format!("secret `{}`", secret.name)));
        }
        sqlx::query(
            "INSERT INTO secret_versions (secret_id, version, field_names, ciphertext, created_at, created_by) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&version.secret_id)
        .bind(i64::from(version.version))
        .bind(serde_json::to_string(&version.field_names).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(&version.ciphertext)
        .bind(version.created_at)
        .bind(&version.created_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn secret_version(
        &self,
        secret_id: &str,
        version: u32,
    ) -> StoreResult<Option<SecretVersionRow>> {
        let row = sqlx::query("SELECT * FROM secret_versions WHERE secret_id = ? AND version = ?")
            .bind(secret_id)
            .bind(i64::from(version))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SecretVersionRow {
            secret_id: row.try_get("secret_id")?,
            version: version_u32(row.try_get("version")?, "secret version")?,
            field_names: parse_json(row.try_get("field_names")?, "field names")?,
            ciphertext: row.try_get("ciphertext")?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        }))
    }

    async fn secret_versions(&self, secret_id: &str) -> StoreResult<Vec<SecretVersionMeta>> {
        let rows = sqlx::query(
            "SELECT version, field_names, created_at, created_by FROM secret_versions \
             WHERE secret_id = ? ORDER BY version DESC",
        )
        .bind(secret_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SecretVersionMeta {
                    version: version_u32(row.try_get("version")?, "secret version")?,
                    field_names: parse_json(row.try_get("field_names")?, "field names")?,
                    created_at: row.try_get("created_at")?,
                    created_by: row.try_get("created_by")?,
                })
            })
            .collect()
    }

    async fn delete_secret(&self, secret_id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM secret_versions WHERE secret_id = ?")
            .bind(secret_id)
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query("DELETE FROM secrets WHERE id = ?")
            .bind(secret_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn create_principal(&self, principal: &PrincipalRow) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "INSERT INTO principals (id, kind, name, active, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&principal.id)
        .bind(&principal.kind)
        .bind(&principal.name)
        .bind(principal.active)
        .bind(principal.created_at)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "{} `{}`",
                    principal.kind, principal.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        for group in &principal.groups {
            sqlx::query("INSERT INTO group_members (group_name, principal_id) VALUES (?, ?)")
                .bind(group)
                .bind(&principal.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn principal_by_name(&self, kind: &str, name: &str) -> StoreResult<Option<PrincipalRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.kind = ? AND p.name = ?"
        ))
        .bind(kind)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn principal_by_id(&self, id: &str) -> StoreResult<Option<PrincipalRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn list_principals(&self) -> StoreResult<Vec<PrincipalRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p ORDER BY p.kind, p.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(principal_from_row).collect()
    }

    async fn set_groups(&self, principal_id: &str, groups: &[String]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM group_members WHERE principal_id = ?")
            .bind(principal_id)
            .execute(&mut *tx)
            .await?;
        for group in groups {
            sqlx::query(
                "INSERT INTO group_members (group_name, principal_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(principal_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn put_policy(&self, name: &str, text: &str, now: i64) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let existed = sqlx::query("SELECT 1 FROM policies WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO policies (name, text, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(text)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!existed)
    }

    async fn policy(&self, name: &str) -> StoreResult<Option<PolicyRow>> {
        let row = sqlx::query("SELECT * FROM policies WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(policy_from_row).transpose()
    }

    async fn list_policies(&self) -> StoreResult<Vec<PolicyRow>> {
        let rows = sqlx::query("SELECT * FROM policies ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn delete_policy(&self, name: &str) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM policies WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn insert_token(&self, token: &TokenRow) -> StoreResult<()> {
        insert_token(&self.pool, token).await
    }

    async fn token_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE hash = ?")
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn token_by_accessor(&self, accessor: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE accessor = ?")
            .bind(accessor)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self, principal_id: Option<&str>) -> StoreResult<Vec<TokenRow>> {
        let rows = match principal_id {
            Some(id) => {
                sqlx::query(
                    "SELECT * FROM tokens WHERE principal_id = ? ORDER BY created_at, accessor",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM tokens ORDER BY created_at, accessor")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, accessor: &str, now: i64) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE tokens SET revoked_at = ? WHERE accessor = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(accessor)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn set_token_expiry(&self, accessor: &str, expires_at: i64) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE tokens SET expires_at = ? WHERE accessor = ? AND revoked_at IS NULL",
        )
        .bind(expires_at)
        .bind(accessor)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn put_connector(&self, connector: &ConnectorRow) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let existed = sqlx::query("SELECT 1 FROM auth_connectors WHERE kind = ? AND name = ?")
            .bind(&connector.kind)
            .bind(&connector.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO auth_connectors (kind, name, config, sealed_secret, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET \
             config = excluded.config, sealed_secret = excluded.sealed_secret, \
             updated_at = excluded.updated_at",
        )
        .bind(&connector.kind)
        .bind(&connector.name)
        .bind(&connector.config)
        .bind(connector.sealed_secret.as_deref())
        .bind(connector.created_at)
        .bind(connector.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!existed)
    }

    async fn list_connectors(&self) -> StoreResult<Vec<ConnectorRow>> {
        let rows = sqlx::query("SELECT * FROM auth_connectors ORDER BY kind, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(connector_from_row).collect()
    }

    async fn delete_connector(&self, kind: &str, name: &str) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM auth_connectors WHERE kind = ? AND name = ?")
            .bind(kind)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn insert_login_attempt(&self, attempt: &LoginAttemptRow, now: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM login_attempts WHERE expires_at < ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO login_attempts (id_hash, connector, flow, sealed, redirect_uri, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&attempt.id_hash)
        .bind(&attempt.connector)
        .bind(&attempt.flow)
        .bind(&attempt.sealed)
        .bind(&attempt.redirect_uri)
        .bind(attempt.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn login_attempt(&self, id_hash: &str) -> StoreResult<Option<LoginAttemptRow>> {
        let row = sqlx::query("SELECT * FROM login_attempts WHERE id_hash = ?")
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(login_attempt_from_row).transpose()
    }

    async fn take_login_attempt(&self, id_hash: &str) -> StoreResult<Option<LoginAttemptRow>> {
        let row = sqlx::query("DELETE FROM login_attempts WHERE id_hash = ? RETURNING *")
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(login_attempt_from_row).transpose()
    }

    async fn audit_head(&self) -> StoreResult<Option<(u64, String)>> {
        audit_head(&self.pool).await
    }

    /// Appends with one statement that inserts the whole batch only if the stored head is
    /// the one it continues. Without tokens that statement commits on its own, so a batch
    /// costs one round trip to the connection's thread and one fsync. With tokens (or more
    /// rows than one statement binds), the statements run in one `BEGIN IMMEDIATE`
    /// transaction.
    async fn append_audit_with_tokens(
        &self,
        events: &[AuditEvent],
        tokens: &[TokenRow],
    ) -> StoreResult<()> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let head = expected_head(first)?;
        let mut slot = self.audit.lock().await;
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(self.audit_options.connect().await?),
        };
        if self.finish_checkpoint.swap(false, Ordering::AcqRel)
            && let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *conn)
                .await
        {
            tracing::warn!(%error, "checkpointing the write-ahead log failed");
        }
        let result = append_on(conn, events, head, tokens).await;
        match &result {
            Ok(()) => self.checkpoint_beside_appends(),
            // The connection may be left inside a transaction or broken: start afresh.
            Err(StoreError::Database(_)) => *slot = None,
            Err(_) => {}
        }
        result
    }

    async fn audit_events(&self, after: u64, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }
    async fn search_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT * FROM audit_events WHERE seq > ");
        q.push_bind(i64::try_from(filter.after).unwrap_or(i64::MAX));
        if let Some(principal) = &filter.principal {
            q.push(" AND principal = ").push_bind(principal.clone());
        }
        if let Some(action) = &filter.action {
            q.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(request_id) = &filter.request_id {
            q.push(" AND request_id = ").push_bind(request_id.clone());
        }
        if let Some(grant) = &filter.grant {
            q.push(" AND json_extract(detail, '$.grant') = ")
                .push_bind(grant.clone());
        }
        if let Some(request) = &filter.access_request {
            q.push(" AND json_extract(detail, '$.access_request') = ")
                .push_bind(request.clone());
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome_str(outcome));
        }
        if let Some(prefix) = &filter.resource_prefix {
            q.push(" AND substr(resource, 1, length(")
                .push_bind(prefix.clone())
                .push(")) = ")
                .push_bind(prefix.clone());
        }
        if let Some(since) = &filter.since {
            q.push(" AND time >= ").push_bind(since.clone());
        }
        if let Some(until) = &filter.until {
            q.push(" AND time < ").push_bind(until.clone());
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_signing_key(&self) -> StoreResult<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = 'audit_signing_key'")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| crate::decode_hex_value(&r.try_get::<String, _>("value")?))
            .transpose()
    }

    async fn insert_audit_signing_key(&self, sealed: &[u8]) -> StoreResult<bool> {
        let result = sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('audit_signing_key', ?) ON CONFLICT DO NOTHING",
        )
        .bind(crate::hex_lower(sealed))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn append_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        let seq = i64::try_from(checkpoint.seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint seq {}", checkpoint.seq)))?;
        let result = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, head_hash, time, key_id, signature) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(&checkpoint.head_hash)
        .bind(&checkpoint.time)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "audit checkpoint at sequence {}",
                checkpoint.seq
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn checkpoints(&self, after_seq: u64, limit: u32) -> StoreResult<Vec<Checkpoint>> {
        let rows =
            sqlx::query("SELECT * FROM audit_checkpoints WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn last_checkpoint(&self) -> StoreResult<Option<Checkpoint>> {
        let row = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn take_lease(&self, job: &str, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let result = sqlx::query(&format!(
            "INSERT INTO job_leases (job, holder, expires_at) VALUES (?1, ?2, {NOW_MS} + ?3) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE job_leases.expires_at <= {NOW_MS} OR job_leases.holder = excluded.holder"
        ))
        .bind(job)
        .bind(holder)
        .bind(crate::lease_millis(ttl))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn renew_lease(&self, job: &str, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let result = sqlx::query(&format!(
            "UPDATE job_leases SET expires_at = {NOW_MS} + ?3 \
             WHERE job = ?1 AND holder = ?2 AND expires_at > {NOW_MS}"
        ))
        .bind(job)
        .bind(holder)
        .bind(crate::lease_millis(ttl))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn release_lease(&self, job: &str, holder: &str) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM job_leases WHERE job = ? AND holder = ?")
            .bind(job)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn claim_expired_tokens(
        &self,
        now: i64,
        stale_before: i64,
        limit: u32,
    ) -> StoreResult<Vec<ExpiryClaim>> {
        // IMMEDIATE takes the write lock before the select, so no other connection claims
        // the same tokens in between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "SELECT accessor, principal_id, expires_at, expiry_claimed_at FROM tokens \
             WHERE expires_at <= ?1 AND revoked_at IS NULL AND expiry_recorded_at IS NULL \
             AND (expiry_claimed_at IS NULL OR expiry_claimed_at < ?2) \
             ORDER BY expires_at, accessor LIMIT ?3",
        )
        .bind(now)
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;

        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            let claim = ExpiryClaim {
                accessor: row.try_get("accessor")?,
                principal_id: row.try_get("principal_id")?,
                expires_at: row.try_get("expires_at")?,
                reclaimed: row
                    .try_get::<Option<i64>, _>("expiry_claimed_at")?
                    .is_some(),
            };
            sqlx::query("UPDATE tokens SET expiry_claimed_at = ? WHERE accessor = ?")
                .bind(now)
                .bind(&claim.accessor)
                .execute(&mut *tx)
                .await?;
            claims.push(claim);
        }

        tx.commit().await?;
        Ok(claims)
    }

    async fn mark_expiry_recorded(&self, accessor: &str, now: i64) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE tokens SET expiry_recorded_at = ? \
             WHERE accessor = ? AND expiry_recorded_at IS NULL",
        )
        .bind(now)
        .bind(accessor)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn scim_user(&self, id: &str) -> StoreResult<Option<ScimUserRow>> {
        crate::scim::sqlite::scim_user(&self.pool, id).await
    }
    async fn scim_users(&self) -> StoreResult<Vec<ScimUserRow>> {
        crate::scim::sqlite::scim_users(&self.pool).await
    }
    async fn find_scim_user(&self, link: ScimLink<'_>) -> StoreResult<Option<ScimUserRow>> {
        crate::scim::sqlite::find_scim_user(&self.pool, link).await
    }
    async fn put_scim_user(
        &self,
        user: &ScimUserRow,
        expected_version: Option<i64>,
    ) -> StoreResult<()> {
        crate::scim::sqlite::put_scim_user(&self.pool, user, expected_version).await
    }
    async fn delete_scim_user(&self, id: &str) -> StoreResult<bool> {
        crate::scim::sqlite::delete_scim_user(&self.pool, id).await
    }
    async fn scim_group(&self, id: &str) -> StoreResult<Option<ScimGroupRow>> {
        crate::scim::sqlite::scim_group(&self.pool, id).await
    }
    async fn scim_groups(&self) -> StoreResult<Vec<ScimGroupRow>> {
        crate::scim::sqlite::scim_groups(&self.pool).await
    }
    async fn put_scim_group(
        &self,
        group: &ScimGroupRow,
        expected_version: Option<i64>,
    ) -> StoreResult<()> {
        crate::scim::sqlite::put_scim_group(&self.pool, group, expected_version).await
    }
    async fn delete_scim_group(&self, id: &str) -> StoreResult<bool> {
        crate::scim::sqlite::delete_scim_group(&self.pool, id).await
    }
    async fn offboard_principal(&self, principal_id: &str, now: i64) -> StoreResult<Offboarding> {
        crate::scim::sqlite::offboard_principal(&self.pool, principal_id, now).await
    }

    async fn vault_settings(&self, vault_id: &str) -> StoreResult<Option<String>> {
        crate::access::sqlite::vault_settings(&self.pool, vault_id).await
    }
    async fn put_vault_settings(
        &self,
        vault_id: &str,
        settings: &str,
        now: i64,
    ) -> StoreResult<()> {
        crate::access::sqlite::put_vault_settings(&self.pool, vault_id, settings, now).await
    }
    async fn insert_access_request(
        &self,
        request: &AccessRequestRow,
        grant: Option<&GrantRow>,
    ) -> StoreResult<()> {
        crate::access::sqlite::insert_access_request(&self.pool, request, grant).await
    }
    async fn access_request(&self, id: &str) -> StoreResult<Option<AccessRequestRow>> {
        crate::access::sqlite::access_request(&self.pool, id).await
    }
    async fn list_access_requests(
        &self,
        filter: &AccessRequestFilter,
    ) -> StoreResult<Vec<AccessRequestRow>> {
        crate::access::sqlite::list_access_requests(&self.pool, filter).await
    }
    async fn review_access_request(
        &self,
        review: &AccessReviewRow,
        grant: &GrantRow,
        now: i64,
    ) -> StoreResult<ReviewOutcome> {
        crate::access::sqlite::review_access_request(&self.pool, review, grant, now).await
    }
    async fn cancel_access_request(
        &self,
        id: &str,
        by: &str,
        now: i64,
    ) -> StoreResult<Option<AccessRequestRow>> {
        crate::access::sqlite::cancel_access_request(&self.pool, id, by, now).await
    }
    async fn expire_access_requests(
        &self,
        now: i64,
        limit: u32,
    ) -> StoreResult<Vec<AccessRequestRow>> {
        crate::access::sqlite::expire_access_requests(&self.pool, now, limit).await
    }
    async fn live_grants(&self, principal_id: &str, now: i64) -> StoreResult<Vec<GrantRow>> {
        crate::access::sqlite::live_grants(&self.pool, principal_id, now).await
    }
    async fn grant(&self, id: &str) -> StoreResult<Option<GrantRow>> {
        crate::access::sqlite::grant(&self.pool, id).await
    }
    async fn list_grants(&self, filter: &GrantFilter) -> StoreResult<Vec<GrantRow>> {
        crate::access::sqlite::list_grants(&self.pool, filter).await
    }
    async fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> StoreResult<Option<GrantRow>> {
        crate::access::sqlite::revoke_grant(&self.pool, id, by, reason, now).await
    }
    async fn unrecorded_grant_expiries(&self, now: i64, limit: u32) -> StoreResult<Vec<GrantRow>> {
        crate::access::sqlite::unrecorded_grant_expiries(&self.pool, now, limit).await
    }
    async fn mark_grant_expiry_recorded(&self, id: &str, now: i64) -> StoreResult<bool> {
        crate::access::sqlite::mark_grant_expiry_recorded(&self.pool, id, now).await
    }
    async fn insert_scim_token(&self, token: &ScimTokenRow) -> StoreResult<()> {
        crate::scim::sqlite::insert_scim_token(&self.pool, token).await
    }
    async fn scim_token_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ScimTokenRow>> {
        crate::scim::sqlite::scim_token_by_hash(&self.pool, hash).await
    }
    async fn list_scim_tokens(&self) -> StoreResult<Vec<ScimTokenRow>> {
        crate::scim::sqlite::list_scim_tokens(&self.pool).await
    }
    async fn revoke_scim_token(&self, accessor: &str, now: i64) -> StoreResult<bool> {
        crate::scim::sqlite::revoke_scim_token(&self.pool, accessor, now).await
    }
}

fn checkpoint_from_row(row: &SqliteRow) -> StoreResult<Checkpoint> {
    let seq: i64 = row.try_get("seq")?;
    Ok(Checkpoint {
        seq: u64::try_from(seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint seq {seq}")))?,
        head_hash: row.try_get("head_hash")?,
        time: row.try_get("time")?,
        key_id: row.try_get("key_id")?,
        signature: row.try_get("signature")?,
    })
}

/// A principal's columns and its groups as a JSON array, so that one query reads both.
const PRINCIPAL_COLUMNS: &str = "p.id, p.kind, p.name, p.active, p.created_at, \
     (SELECT json_group_array(g.group_name ORDER BY g.group_name) FROM group_members g \
     WHERE g.principal_id = p.id) AS groups";

/// Reads a row of [`PRINCIPAL_COLUMNS`].
fn principal_from_row(row: &SqliteRow) -> StoreResult<PrincipalRow> {
    let mut groups: Vec<String> = parse_json(row.try_get("groups")?, "group names")?;
    // Names sort by their bytes, as SQLite's default collation does.
    groups.sort_unstable();
    Ok(PrincipalRow {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        active: row.try_get("active")?,
        created_at: row.try_get("created_at")?,
        groups,
    })
}

/// The stored head a batch starting with `first` must continue, as the sequence number and
/// hash [`audit_insert`] checks: both None for an empty log. A first event that could
/// continue no head is refused here.
fn expected_head(first: &AuditEvent) -> StoreResult<(Option<i64>, Option<&str>)> {
    let moved = || StoreError::Concurrent("audit chain head".into());
    match first.seq {
        0 => Err(moved()),
        1 if first
            .prev_hash
            .eq_ignore_ascii_case(&crate::hex_lower(&GENESIS_HASH)) =>
        {
            Ok((None, None))
        }
        1 => Err(moved()),
        seq => {
            let head = i64::try_from(seq - 1)
                .map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?;
            Ok((Some(head), Some(first.prev_hash.as_str())))
        }
    }
}

/// Builds an INSERT of `events`. With `head`, the statement inserts the rows only if the
/// stored head is that sequence number and hash (both None for an empty log): it inserts
/// all of them or none.
fn audit_insert<'a>(
    events: &'a [AuditEvent],
    head: Option<(Option<i64>, Option<&'a str>)>,
) -> StoreResult<QueryBuilder<'a, Sqlite>> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let mut encoded = Vec::with_capacity(events.len());
    for event in events {
        let seq = i64::try_from(event.seq)
            .map_err(|_| StoreError::Corrupt(format!("audit seq {}", event.seq)))?;
        let policies = serde_json::to_string(&event.record.policies).map_err(corrupt)?;
        let detail = serde_json::to_string(&event.record.detail).map_err(corrupt)?;
        encoded.push((seq, policies, detail));
    }
    let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO audit_events (seq, time, request_id, principal, action, resource, \
         outcome, reason, policies, client_addr, token_id, detail, prev_hash, hash) \
         SELECT * FROM (",
    );
    builder.push_values(
        events.iter().zip(encoded),
        |mut b, (event, (seq, policies, detail))| {
            let r = &event.record;
            b.push_bind(seq)
                .push_bind(r.time.as_str())
                .push_bind(r.request_id.as_str())
                .push_bind(r.principal.as_str())
                .push_bind(r.action.as_str())
                .push_bind(r.resource.as_str())
                .push_bind(outcome_str(r.outcome))
                .push_bind(r.reason.as_deref())
                .push_bind(policies)
                .push_bind(r.client_addr.as_deref())
                .push_bind(r.token_id.as_deref())
                .push_bind(detail)
                .push_bind(event.prev_hash.as_str())
                .push_bind(event.hash.as_str());
        },
    );
    builder.push(")");
    if let Some((seq, hash)) = head {
        // The subqueries do not depend on the inserted rows, and SQLite evaluates a SELECT
        // that reads the table it inserts into before inserting, so every row sees the
        // head as it was before the statement.
        builder
            .push(" WHERE (SELECT seq FROM audit_events ORDER BY seq DESC LIMIT 1) IS ")
            .push_bind(seq)
            .push(" AND (SELECT lower(hash) FROM audit_events ORDER BY seq DESC LIMIT 1) IS lower(")
            .push_bind(hash)
            .push(")");
    }
    Ok(builder)
}

async fn append_on(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
    head: (Option<i64>, Option<&str>),
    tokens: &[TokenRow],
) -> StoreResult<()> {
    let mut chunks = events.chunks(AUDIT_ROWS_PER_INSERT);
    let Some(first) = chunks.next() else {
        return Ok(());
    };
    let check = |inserted: u64| match inserted {
        0 => Err(StoreError::Concurrent("audit chain head".into())),
        n if n == first.len() as u64 => Ok(()),
        n => Err(StoreError::Corrupt(format!(
            "{n} of {} audit events were inserted",
            first.len()
        ))),
    };
    let mut guarded = audit_insert(first, Some(head))?;
    if tokens.is_empty() && first.len() == events.len() {
        // One statement commits on its own: one round trip and one fsync.
        return check(guarded.build().execute(&mut *conn).await?.rows_affected());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // An early return drops `tx`, which rolls the transaction back.
    check(guarded.build().execute(&mut *tx).await?.rows_affected())?;
    for chunk in chunks {
        audit_insert(chunk, None)?.build().execute(&mut *tx).await?;
    }
    for chunk in tokens.chunks(TOKEN_ROWS_PER_INSERT) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO tokens (accessor, hash, principal_id, kind, created_at, ttl, \
             expires_at, max_expires_at, revoked_at, created_by) ",
        );
        builder.push_values(chunk, |mut b, t| {
            b.push_bind(t.accessor.as_str())
                .push_bind(&t.hash[..])
                .push_bind(t.principal_id.as_str())
                .push_bind(t.kind.as_str())
                .push_bind(t.created_at)
                .push_bind(t.ttl)
                .push_bind(t.expires_at)
                .push_bind(t.max_expires_at)
                .push_bind(t.revoked_at)
                .push_bind(t.created_by.as_deref());
        });
        builder.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn secret_for_read_from_row(row: &SqliteRow) -> StoreResult<SecretForRead> {
    let vault = VaultRow {
        id: row.try_get("v_id")?,
        name: row.try_get("v_name")?,
        tags: parse_json(row.try_get("v_tags")?, "vault tags")?,
        wrapped_key: row.try_get("v_wrapped_key")?,
        created_at: row.try_get("v_created_at")?,
    };
    let Some(secret_id) = row.try_get::<Option<String>, _>("s_id")? else {
        return Ok(SecretForRead {
            vault,
            secret: None,
            current: None,
        });
    };
    let secret = SecretRow {
        vault_id: vault.id.clone(),
        name: row.try_get("s_name")?,
        tags: parse_json(row.try_get("s_tags")?, "secret tags")?,
        current_version: version_u32(row.try_get("s_current_version")?, "secret version")?,
        created_at: row.try_get("s_created_at")?,
        updated_at: row.try_get("s_updated_at")?,
        id: secret_id,
    };
    let current = match row.try_get::<Option<Vec<u8>>, _>("sv_ciphertext")? {
        None => None,
        Some(ciphertext) => Some(SecretVersionRow {
            secret_id: secret.id.clone(),
            version: secret.current_version,
            field_names: parse_json(row.try_get("sv_field_names")?, "field names")?,
            ciphertext,
            created_at: row.try_get("sv_created_at")?,
            created_by: row.try_get("sv_created_by")?,
        }),
    };
    Ok(SecretForRead {
        vault,
        secret: Some(secret),
        current,
    })
}

async fn audit_head(
    executor: impl sqlx::Executor<'_, Database = Sqlite>,
) -> StoreResult<Option<(u64, String)>> {
    let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let seq: i64 = row.try_get("seq")?;
    let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?;
    Ok(Some((seq, row.try_get("hash")?)))
}

async fn insert_token(
    executor: impl sqlx::Executor<'_, Database = Sqlite>,
    token: &TokenRow,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO tokens (accessor, hash, principal_id, kind, created_at, ttl, expires_at, \
         max_expires_at, revoked_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&token.accessor)
    .bind(&token.hash[..])
    .bind(&token.principal_id)
    .bind(&token.kind)
    .bind(token.created_at)
    .bind(token.ttl)
    .bind(token.expires_at)
    .bind(token.max_expires_at)
    .bind(token.revoked_at)
    .bind(&token.created_by)
    .execute(executor)
    .await?;
    Ok(())
}
