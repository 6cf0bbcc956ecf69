//! SQLite implementation of [`Store`], the embedded default.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed transaction
//! survives a crash or power loss: the audit log depends on that.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use latchkey_core::audit::{AuditEvent, AuditRecord, Checkpoint, Outcome};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{
    AccessRequestFilter, AccessRequestRow, AccessReviewRow, AuditFilter, ConnectorRow, ExpiryClaim,
    GrantFilter, GrantRow, LoginAttemptRow, Offboarding, PolicyRow, PrincipalRow, ReviewOutcome,
    ScimGroupRow, ScimLink, ScimTokenRow, ScimUserRow, SecretRow, SecretVersionMeta,
    SecretVersionRow, Store, StoreError, StoreResult, TokenRow, VaultRow,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The database clock in unix milliseconds, as SQL. `julianday('now')` has millisecond
/// precision and stays the same within one statement.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// SQLite allows at most 32,766 bound parameters per statement; audit rows bind 14 each.
const AUDIT_ROWS_PER_INSERT: usize = 500;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
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

async fn load_groups(
    executor: impl sqlx::Executor<'_, Database = Sqlite>,
    principal_id: &str,
) -> StoreResult<Vec<String>> {
    let rows = sqlx::query(
        "SELECT group_name FROM group_members WHERE principal_id = ? ORDER BY group_name",
    )
    .bind(principal_id)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>("group_name")
                .map_err(StoreError::from)
        })
        .collect()
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
        let row = sqlx::query("SELECT * FROM principals WHERE kind = ? AND name = ?")
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.principal_from_row(&row).await?)),
            None => Ok(None),
        }
    }

    async fn principal_by_id(&self, id: &str) -> StoreResult<Option<PrincipalRow>> {
        let row = sqlx::query("SELECT * FROM principals WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.principal_from_row(&row).await?)),
            None => Ok(None),
        }
    }

    async fn list_principals(&self) -> StoreResult<Vec<PrincipalRow>> {
        let rows = sqlx::query("SELECT * FROM principals ORDER BY kind, name")
            .fetch_all(&self.pool)
            .await?;
        let mut principals = Vec::with_capacity(rows.len());
        for row in &rows {
            principals.push(self.principal_from_row(row).await?);
        }
        Ok(principals)
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

    async fn append_audit_with_tokens(
        &self,
        events: &[AuditEvent],
        tokens: &[TokenRow],
    ) -> StoreResult<()> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        // IMMEDIATE takes the write lock before the head is read, so no other connection can
        // append between the check and the insert.
        let mut tx = self.begin_write().await?;
        crate::check_continues_head(audit_head(&mut *tx).await?, first)?;
        for chunk in events.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO audit_events (seq, time, request_id, principal, action, resource, \
                 outcome, reason, policies, client_addr, token_id, detail, prev_hash, hash) ",
            );
            let mut encoded = Vec::with_capacity(chunk.len());
            for event in chunk {
                let seq = i64::try_from(event.seq)
                    .map_err(|_| StoreError::Corrupt(format!("audit seq {}", event.seq)))?;
                let policies = serde_json::to_string(&event.record.policies)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let detail = serde_json::to_string(&event.record.detail)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                encoded.push((seq, policies, detail));
            }
            builder.push_values(
                chunk.iter().zip(encoded),
                |mut b, (event, (seq, policies, detail))| {
                    let r = &event.record;
                    b.push_bind(seq)
                        .push_bind(r.time.clone())
                        .push_bind(r.request_id.clone())
                        .push_bind(r.principal.clone())
                        .push_bind(r.action.clone())
                        .push_bind(r.resource.clone())
                        .push_bind(outcome_str(r.outcome))
                        .push_bind(r.reason.clone())
                        .push_bind(policies)
                        .push_bind(r.client_addr.clone())
                        .push_bind(r.token_id.clone())
                        .push_bind(detail)
                        .push_bind(event.prev_hash.clone())
                        .push_bind(event.hash.clone());
                },
            );
            builder.build().execute(&mut *tx).await?;
        }
        for token in tokens {
            insert_token(&mut *tx, token).await?;
        }
        tx.commit().await?;
        Ok(())
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

impl SqliteStore {
    async fn principal_from_row(&self, row: &SqliteRow) -> StoreResult<PrincipalRow> {
        let id: String = row.try_get("id")?;
        let groups = load_groups(&self.pool, &id).await?;
        Ok(PrincipalRow {
            kind: row.try_get("kind")?,
            name: row.try_get("name")?,
            active: row.try_get("active")?,
            created_at: row.try_get("created_at")?,
            groups,
            id,
        })
    }
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
