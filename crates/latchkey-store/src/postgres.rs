//! PostgreSQL implementation of [`Store`], for deployments whose server nodes share one
//! database.
//!
//! It behaves as the SQLite implementation does, down to sort order: names sort by bytes
//! (`COLLATE "C"` in the schema) whatever the database's default collation. Audit appends
//! hold a transaction-scoped advisory lock, so nodes that share the database never fork the
//! chain. Connections are plain TCP or Unix sockets: the crate enables no TLS support for
//! PostgreSQL, so a URL that requires TLS fails to connect.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use latchkey_core::audit::{AuditEvent, AuditRecord, Checkpoint};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use crate::sqlite::{json_tags, outcome_from_str, outcome_str, parse_json, version_u32};
use crate::{
    AccessRequestFilter, AccessRequestRow, AccessReviewRow, AuditFilter, ConnectorRow, ExpiryClaim,
    GrantFilter, GrantRow, LoginAttemptRow, Offboarding, PolicyRow, PrincipalRow, ReviewOutcome,
    ScimGroupRow, ScimLink, ScimTokenRow, ScimUserRow, SecretForRead, SecretRow, SecretVersionMeta,
    SecretVersionRow, Store, StoreError, StoreResult, TokenRow, VaultRow,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Parameters bound per audit row.
const AUDIT_COLUMNS: usize = 14;
/// Rows per INSERT statement; PostgreSQL accepts at most 65,535 bound parameters.
const AUDIT_ROWS_PER_INSERT: usize = 500;
const _: () = assert!(AUDIT_ROWS_PER_INSERT * AUDIT_COLUMNS <= 65_535);

/// The database clock in unix milliseconds, as SQL. `clock_timestamp()` is read when the
/// statement runs, unlike `now()`, which stays at the start of the transaction.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Key of the advisory lock that serializes audit appends. Advisory locks belong to one
/// database, so deployments in different databases never wait for each other.
const AUDIT_LOCK_KEY: i64 = i64::from_be_bytes(*b"lk-audit");

/// Number of times `put_policy` retries when a concurrent delete removes the row between its
/// insert and its update.
const POLICY_ATTEMPTS: usize = 3;

/// A [`Store`] backed by a PostgreSQL database. Cloning shares the connection pool.
///
/// It derives no `Debug`: the pool's connect options hold the database password.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url`, e.g. `postgres://latchkey@db.internal:5432/latchkey`,
    /// and applies pending migrations. The database must exist; the tables are created in
    /// the connection's default schema. Migrations take a lock of their own, so nodes that
    /// start together apply each one once.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the URL does not parse or the server cannot be reached
    /// within 10 seconds; [`StoreError::Migrate`] when a migration fails. Neither message
    /// contains the URL; pass it through [`redact_url`] before showing it next to them.
    pub async fn open(url: &str) -> StoreResult<PostgresStore> {
        let options = PgConnectOptions::from_str(url)?;
        tracing::debug!(url = %redact_url(url), "opening the PostgreSQL store");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// Returns the underlying pool, for tests that need to reach under the Store trait.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Returns `url` with every password in it replaced by `***`, so that the URL can appear in
/// errors and logs.
///
/// The password of the user-info part (`postgres://user:PASSWORD@host/db`) is found even
/// when it contains unencoded `@`, `/`, `?` or `#`: everything between the first `:` after the
/// scheme and the last `@` is hidden. Query parameters whose name ends in `password` (in any
/// case), or whose name is percent-encoded, get `***` as their value. Text without `://` is
/// treated as `key=value` pairs separated by spaces. When unsure, it hides too much rather
/// than too little: a URL with no password but an `@` in its query may lose its host.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_key_values(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let rest = match rest.rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            match user_info.find(':') {
                Some(colon) => format!("{}:***{}", &user_info[..colon], &rest[at..]),
                None => rest.to_string(),
            }
        }
        None => rest.to_string(),
    };
    format!("{scheme}{}", redact_query(&rest))
}

fn is_password_key(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with("password") || key.contains('%')
}

/// Redacts password parameters after the first `?` of `text`. A `#` does not end the
/// query here, so a password containing an unencoded `#` is hidden whole.
fn redact_query(text: &str) -> String {
    let Some((before, query)) = text.split_once('?') else {
        return text.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{before}?{}", pairs.join("&"))
}

/// Redacts `password=...` values in libpq-style `key=value` text. A value in single quotes
/// runs to the closing quote; any other value runs to the next whitespace.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].split_whitespace().last().unwrap_or("");
        out.push_str(&rest[..=eq]);
        let value = &rest[eq + 1..];
        let value_end = if let Some(quoted) = value.strip_prefix('\'') {
            closing_quote(quoted).map_or(value.len(), |i| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        if is_password_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_end]);
        }
        rest = &value[value_end..];
    }
    out.push_str(rest);
    out
}

/// Byte index of the first single quote in `text` that no backslash escapes.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => return Some(i),
            _ => {}
        }
    }
    None
}

fn vault_from_row(row: &PgRow) -> StoreResult<VaultRow> {
    Ok(VaultRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tags: parse_json(row.try_get("tags")?, "vault tags")?,
        wrapped_key: row.try_get("wrapped_key")?,
        created_at: row.try_get("created_at")?,
    })
}

fn secret_from_row(row: &PgRow) -> StoreResult<SecretRow> {
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

fn secret_for_read_from_row(row: &PgRow) -> StoreResult<SecretForRead> {
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

/// Reads a row of [`PRINCIPAL_COLUMNS`].
fn principal_from_row(row: &PgRow) -> StoreResult<PrincipalRow> {
    Ok(PrincipalRow {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        active: row.try_get("active")?,
        groups: row.try_get("groups")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Columns of `principals p` with the principal's groups as a sorted array, so that one
/// statement (one snapshot) reads both.
const PRINCIPAL_COLUMNS: &str = "p.id, p.kind, p.name, p.active, p.created_at, \
     ARRAY(SELECT g.group_name FROM group_members g WHERE g.principal_id = p.id \
     ORDER BY g.group_name) AS groups";

fn policy_from_row(row: &PgRow) -> StoreResult<PolicyRow> {
    Ok(PolicyRow {
        name: row.try_get("name")?,
        text: row.try_get("text")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn connector_from_row(row: &PgRow) -> StoreResult<ConnectorRow> {
    Ok(ConnectorRow {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        config: row.try_get("config")?,
        sealed_secret: row.try_get("sealed_secret")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn login_attempt_from_row(row: &PgRow) -> StoreResult<LoginAttemptRow> {
    Ok(LoginAttemptRow {
        id_hash: row.try_get("id_hash")?,
        connector: row.try_get("connector")?,
        flow: row.try_get("flow")?,
        sealed: row.try_get("sealed")?,
        redirect_uri: row.try_get("redirect_uri")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn token_from_row(row: &PgRow) -> StoreResult<TokenRow> {
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

pub(crate) fn audit_from_row(row: &PgRow) -> StoreResult<AuditEvent> {
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

async fn audit_head(
    executor: impl sqlx::Executor<'_, Database = Postgres>,
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
    executor: impl sqlx::Executor<'_, Database = Postgres>,
    token: &TokenRow,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO tokens (accessor, hash, principal_id, kind, created_at, ttl, expires_at, \
         max_expires_at, revoked_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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

#[async_trait]
impl Store for PostgresStore {
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
        let mut tx = self.pool.begin().await?;
        let inserted =
            sqlx::query("INSERT INTO meta (key, value) VALUES ('seal', $1) ON CONFLICT DO NOTHING")
                .bind(seal_config)
                .execute(&mut *tx)
                .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyInitialized);
        }
        sqlx::query(
            "INSERT INTO principals (id, kind, name, active, created_at) \
             VALUES ($1, $2, $3, TRUE, $4) ON CONFLICT DO NOTHING",
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
            "INSERT INTO vaults (id, name, tags, wrapped_key, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
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
        let row = sqlx::query("SELECT * FROM vaults WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vault_from_row).transpose()
    }

    async fn vault_by_id(&self, id: &str) -> StoreResult<Option<VaultRow>> {
        let row = sqlx::query("SELECT * FROM vaults WHERE id = $1")
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
        let row = sqlx::query("SELECT * FROM secrets WHERE vault_id = $1 AND name = $2")
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
        let vaults: Vec<&str> = requested.iter().map(|(vault, _)| *vault).collect();
        let secrets: Vec<&str> = requested.iter().map(|(_, secret)| *secret).collect();
        let rows = sqlx::query(
            "SELECT w.i AS w_index, v.id AS v_id, v.name AS v_name, v.tags AS v_tags, \
             v.wrapped_key AS v_wrapped_key, v.created_at AS v_created_at, s.id AS s_id, \
             s.name AS s_name, s.tags AS s_tags, s.current_version AS s_current_version, \
             s.created_at AS s_created_at, s.updated_at AS s_updated_at, \
             sv.field_names AS sv_field_names, sv.ciphertext AS sv_ciphertext, \
             sv.created_at AS sv_created_at, sv.created_by AS sv_created_by \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(vault, secret, i) \
             JOIN vaults v ON v.name = w.vault \
             LEFT JOIN secrets s ON s.vault_id = v.id AND s.name = w.secret \
             LEFT JOIN secret_versions sv \
             ON sv.secret_id = s.id AND sv.version = s.current_version",
        )
        .bind(&vaults)
        .bind(&secrets)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            // WITH ORDINALITY counts from 1.
            let index: i64 = row.try_get("w_index")?;
            let entry = crate::batch_entry(&mut found, index - 1)?;
            *entry = Some(secret_for_read_from_row(row)?);
        }
        Ok(found)
    }

    async fn list_secrets(&self, vault_id: &str) -> StoreResult<Vec<SecretRow>> {
        let rows = sqlx::query("SELECT * FROM secrets WHERE vault_id = $1 ORDER BY name")
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
        let mut tx = self.pool.begin().await?;
        let changed = match expected {
            None => sqlx::query(
                "INSERT INTO secrets (id, vault_id, name, tags, current_version, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&secret.id)
            .bind(&secret.vault_id)
            .bind(&secret.name)
            .bind(json_tags(&secret.tags)?)
            .bind(i64::from(secret.current_version))
            .bind(secret.created_at)
            .bind(secret.updated_at)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            // Under READ COMMITTED a concurrent writer's UPDATE makes this one wait, then
            // re-check the version against the committed row, so exactly one of them wins.
            Some(old) => sqlx::query(
                "UPDATE secrets SET current_version = $1, tags = $2, updated_at = $3 \
                 WHERE id = $4 AND current_version = $5",
            )
            .bind(i64::from(secret.current_version))
            .bind(json_tags(&secret.tags)?)
            .bind(secret.updated_at)
            .bind(&old.id)
            .bind(i64::from(old.current_version))
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };

        if changed == 0 {
            return Err(StoreError::Concurrent(format!("secret `{}`", secret.name)));
        }

        let field_names = serde_json::to_string(&version.field_names)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO secret_versions (secret_id, version, field_names, ciphertext, \
             created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&version.secret_id)
        .bind(i64::from(version.version))
        .bind(field_names)
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
        let row =
            sqlx::query("SELECT * FROM secret_versions WHERE secret_id = $1 AND version = $2")
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
             WHERE secret_id = $1 ORDER BY version DESC",
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM secret_versions WHERE secret_id = $1")
            .bind(secret_id)
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query("DELETE FROM secrets WHERE id = $1")
            .bind(secret_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn create_principal(&self, principal: &PrincipalRow) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "INSERT INTO principals (id, kind, name, active, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
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
            sqlx::query("INSERT INTO group_members (group_name, principal_id) VALUES ($1, $2)")
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
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.kind = $1 AND p.name = $2"
        ))
        .bind(kind)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn principal_by_id(&self, id: &str) -> StoreResult<Option<PrincipalRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.id = $1"
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM group_members WHERE principal_id = $1")
            .bind(principal_id)
            .execute(&mut *tx)
            .await?;
        for group in groups {
            sqlx::query(
                "INSERT INTO group_members (group_name, principal_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
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
        // Each statement is atomic on its own: the insert reports whether this call created
        // the policy, and the update runs only when the name was taken.
        for _ in 0..POLICY_ATTEMPTS {
            let inserted = sqlx::query(
                "INSERT INTO policies (name, text, created_at, updated_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(text)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() > 0 {
                return Ok(true);
            }
            let updated =
                sqlx::query("UPDATE policies SET text = $2, updated_at = $3 WHERE name = $1")
                    .bind(name)
                    .bind(text)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
            if updated.rows_affected() > 0 {
                return Ok(false);
            }
        }
        Err(StoreError::Concurrent(format!("policy `{name}`")))
    }

    async fn policy(&self, name: &str) -> StoreResult<Option<PolicyRow>> {
        let row = sqlx::query("SELECT * FROM policies WHERE name = $1")
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
        let result = sqlx::query("DELETE FROM policies WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn insert_token(&self, token: &TokenRow) -> StoreResult<()> {
        insert_token(&self.pool, token).await
    }

    async fn token_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE hash = $1")
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn token_by_accessor(&self, accessor: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE accessor = $1")
            .bind(accessor)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self, principal_id: Option<&str>) -> StoreResult<Vec<TokenRow>> {
        let rows =
            match principal_id {
                Some(id) => sqlx::query(
                    "SELECT * FROM tokens WHERE principal_id = $1 ORDER BY created_at, accessor",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?,
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
            "UPDATE tokens SET revoked_at = $1 WHERE accessor = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(accessor)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn set_token_expiry(&self, accessor: &str, expires_at: i64) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE tokens SET expires_at = $1 WHERE accessor = $2 AND revoked_at IS NULL",
        )
        .bind(expires_at)
        .bind(accessor)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn put_connector(&self, connector: &ConnectorRow) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let existed =
            sqlx::query("SELECT 1 FROM auth_connectors WHERE kind = $1 AND name = $2 FOR UPDATE")
                .bind(&connector.kind)
                .bind(&connector.name)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        sqlx::query(
            "INSERT INTO auth_connectors (kind, name, config, sealed_secret, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, name) DO UPDATE SET \
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
        let result = sqlx::query("DELETE FROM auth_connectors WHERE kind = $1 AND name = $2")
            .bind(kind)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn insert_login_attempt(&self, attempt: &LoginAttemptRow, now: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM login_attempts WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO login_attempts (id_hash, connector, flow, sealed, redirect_uri, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
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
        let row = sqlx::query("SELECT * FROM login_attempts WHERE id_hash = $1")
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(login_attempt_from_row).transpose()
    }

    async fn take_login_attempt(&self, id_hash: &str) -> StoreResult<Option<LoginAttemptRow>> {
        let row = sqlx::query("DELETE FROM login_attempts WHERE id_hash = $1 RETURNING *")
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
        let mut tx = self.pool.begin().await?;
        // Held until commit or rollback. Under READ COMMITTED the head query below takes a
        // fresh snapshot, so it reads every append committed before the lock was granted.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        crate::check_continues_head(audit_head(&mut *tx).await?, first)?;
        for chunk in events.chunks(AUDIT_ROWS_PER_INSERT) {
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
            let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO audit_events (seq, time, request_id, principal, action, resource, \
                 outcome, reason, policies, client_addr, token_id, detail, prev_hash, hash) ",
            );
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
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }
    async fn search_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let mut q: QueryBuilder<Postgres> =
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
            q.push(" AND (detail::jsonb ->> 'grant') = ")
                .push_bind(grant.clone());
        }
        if let Some(request) = &filter.access_request {
            q.push(" AND (detail::jsonb ->> 'access_request') = ")
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
            "INSERT INTO meta (key, value) VALUES ('audit_signing_key', $1) ON CONFLICT DO NOTHING",
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
             VALUES ($1, $2, $3, $4, $5)",
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
            sqlx::query("SELECT * FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2")
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
        // On a conflict PostgreSQL locks the existing row and evaluates the WHERE clause on
        // its latest committed version, so two nodes racing for one lease cannot both win.
        let result = sqlx::query(&format!(
            "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, {NOW_MS} + $3) \
             ON CONFLICT (job) DO UPDATE SET holder = EXCLUDED.holder, \
             expires_at = EXCLUDED.expires_at \
             WHERE job_leases.expires_at <= {NOW_MS} OR job_leases.holder = EXCLUDED.holder"
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
            "UPDATE job_leases SET expires_at = {NOW_MS} + $3 \
             WHERE job = $1 AND holder = $2 AND expires_at > {NOW_MS}"
        ))
        .bind(job)
        .bind(holder)
        .bind(crate::lease_millis(ttl))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn release_lease(&self, job: &str, holder: &str) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2")
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
        // SKIP LOCKED leaves rows another node is claiming to that node instead of waiting
        // for it, and the outer UPDATE returns each row's claim time from before this call.
        let rows = sqlx::query(
            "WITH picked AS ( \
                 SELECT accessor, expiry_claimed_at AS previous FROM tokens \
                 WHERE expires_at <= $1 AND revoked_at IS NULL AND expiry_recorded_at IS NULL \
                 AND (expiry_claimed_at IS NULL OR expiry_claimed_at < $2) \
                 ORDER BY expires_at, accessor LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE tokens t SET expiry_claimed_at = $1 FROM picked \
             WHERE t.accessor = picked.accessor \
             RETURNING t.accessor, t.principal_id, t.expires_at, picked.previous",
        )
        .bind(now)
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claims = rows
            .iter()
            .map(|row| {
                Ok(ExpiryClaim {
                    accessor: row.try_get("accessor")?,
                    principal_id: row.try_get("principal_id")?,
                    expires_at: row.try_get("expires_at")?,
                    reclaimed: row.try_get::<Option<i64>, _>("previous")?.is_some(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        claims.sort_by(|a, b| (a.expires_at, &a.accessor).cmp(&(b.expires_at, &b.accessor)));
        Ok(claims)
    }

    async fn mark_expiry_recorded(&self, accessor: &str, now: i64) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE tokens SET expiry_recorded_at = $1 \
             WHERE accessor = $2 AND expiry_recorded_at IS NULL",
        )
        .bind(now)
        .bind(accessor)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn scim_user(&self, id: &str) -> StoreResult<Option<ScimUserRow>> {
        crate::scim::postgres::scim_user(&self.pool, id).await
    }
    async fn scim_users(&self) -> StoreResult<Vec<ScimUserRow>> {
        crate::scim::postgres::scim_users(&self.pool).await
    }
    async fn find_scim_user(&self, link: ScimLink<'_>) -> StoreResult<Option<ScimUserRow>> {
        crate::scim::postgres::find_scim_user(&self.pool, link).await
    }
    async fn put_scim_user(
        &self,
        user: &ScimUserRow,
        expected_version: Option<i64>,
    ) -> StoreResult<()> {
        crate::scim::postgres::put_scim_user(&self.pool, user, expected_version).await
    }
    async fn delete_scim_user(&self, id: &str) -> StoreResult<bool> {
        crate::scim::postgres::delete_scim_user(&self.pool, id).await
    }
    async fn scim_group(&self, id: &str) -> StoreResult<Option<ScimGroupRow>> {
        crate::scim::postgres::scim_group(&self.pool, id).await
    }
    async fn scim_groups(&self) -> StoreResult<Vec<ScimGroupRow>> {
        crate::scim::postgres::scim_groups(&self.pool).await
    }
    async fn put_scim_group(
        &self,
        group: &ScimGroupRow,
        expected_version: Option<i64>,
    ) -> StoreResult<()> {
        crate::scim::postgres::put_scim_group(&self.pool, group, expected_version).await
    }
    async fn delete_scim_group(&self, id: &str) -> StoreResult<bool> {
        crate::scim::postgres::delete_scim_group(&self.pool, id).await
    }
    async fn offboard_principal(&self, principal_id: &str, now: i64) -> StoreResult<Offboarding> {
        crate::scim::postgres::offboard_principal(&self.pool, principal_id, now).await
    }

    async fn vault_settings(&self, vault_id: &str) -> StoreResult<Option<String>> {
        crate::access::postgres::vault_settings(&self.pool, vault_id).await
    }
    async fn put_vault_settings(
        &self,
        vault_id: &str,
        settings: &str,
        now: i64,
    ) -> StoreResult<()> {
        crate::access::postgres::put_vault_settings(&self.pool, vault_id, settings, now).await
    }
    async fn insert_access_request(
        &self,
        request: &AccessRequestRow,
        grant: Option<&GrantRow>,
    ) -> StoreResult<()> {
        crate::access::postgres::insert_access_request(&self.pool, request, grant).await
    }
    async fn access_request(&self, id: &str) -> StoreResult<Option<AccessRequestRow>> {
        crate::access::postgres::access_request(&self.pool, id).await
    }
    async fn list_access_requests(
        &self,
        filter: &AccessRequestFilter,
    ) -> StoreResult<Vec<AccessRequestRow>> {
        crate::access::postgres::list_access_requests(&self.pool, filter).await
    }
    async fn review_access_request(
        &self,
        review: &AccessReviewRow,
        grant: &GrantRow,
        now: i64,
    ) -> StoreResult<ReviewOutcome> {
        crate::access::postgres::review_access_request(&self.pool, review, grant, now).await
    }
    async fn cancel_access_request(
        &self,
        id: &str,
        by: &str,
        now: i64,
    ) -> StoreResult<Option<AccessRequestRow>> {
        crate::access::postgres::cancel_access_request(&self.pool, id, by, now).await
    }
    async fn expire_access_requests(
        &self,
        now: i64,
        limit: u32,
    ) -> StoreResult<Vec<AccessRequestRow>> {
        crate::access::postgres::expire_access_requests(&self.pool, now, limit).await
    }
    async fn live_grants(&self, principal_id: &str, now: i64) -> StoreResult<Vec<GrantRow>> {
        crate::access::postgres::live_grants(&self.pool, principal_id, now).await
    }
    async fn grant(&self, id: &str) -> StoreResult<Option<GrantRow>> {
        crate::access::postgres::grant(&self.pool, id).await
    }
    async fn list_grants(&self, filter: &GrantFilter) -> StoreResult<Vec<GrantRow>> {
        crate::access::postgres::list_grants(&self.pool, filter).await
    }
    async fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> StoreResult<Option<GrantRow>> {
        crate::access::postgres::revoke_grant(&self.pool, id, by, reason, now).await
    }
    async fn unrecorded_grant_expiries(&self, now: i64, limit: u32) -> StoreResult<Vec<GrantRow>> {
        crate::access::postgres::unrecorded_grant_expiries(&self.pool, now, limit).await
    }
    async fn mark_grant_expiry_recorded(&self, id: &str, now: i64) -> StoreResult<bool> {
        crate::access::postgres::mark_grant_expiry_recorded(&self.pool, id, now).await
    }
    async fn insert_scim_token(&self, token: &ScimTokenRow) -> StoreResult<()> {
        crate::scim::postgres::insert_scim_token(&self.pool, token).await
    }
    async fn scim_token_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ScimTokenRow>> {
        crate::scim::postgres::scim_token_by_hash(&self.pool, hash).await
    }
    async fn list_scim_tokens(&self) -> StoreResult<Vec<ScimTokenRow>> {
        crate::scim::postgres::list_scim_tokens(&self.pool).await
    }
    async fn revoke_scim_token(&self, accessor: &str, now: i64) -> StoreResult<bool> {
        crate::scim::postgres::revoke_scim_token(&self.pool, accessor, now).await
    }
}

pub(crate) fn checkpoint_from_row(row: &PgRow) -> StoreResult<Checkpoint> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::redact_url;

    #[test]
    fn redact_hides_user_info_password() {
        assert_eq!(
            redact_url("postgres://latchkey:hunter2@db.internal:5432/latchkey"),
            "postgres://latchkey:***@db.internal:5432/latchkey"
        );
        assert_eq!(
            redact_url("postgresql://u:p%40ss@127.0.0.1/db?sslmode=disable"),
            "postgresql://u:***@127.0.0.1/db?sslmode=disable"
        );
    }

    #[test]
    fn redact_keeps_url_without_password() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://127.0.0.1/test",
            "postgres:///test?host=/run/postgresql",
            "postgres://postgres@127.0.0.1/test?application_name=latchkey&sslmode=disable",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn redact_hides_unencoded_delimiters() {
        assert_eq!(
            redact_url("postgres://u:a@b/c?d#e@127.0.0.1:5432/db"),
            "postgres://u:***@127.0.0.1:5432/db"
        );
    }

    #[test]
    fn redact_hides_password_parameters() {
        assert_eq!(
            redact_url("postgres://u@h/db?password=hunter2&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://h/db?sslmode=disable&PASSWORD=x#y"),
            "postgres://h/db?sslmode=disable&PASSWORD=***"
        );
        assert_eq!(
            redact_url("postgres://h/db?pass%77ord=x"),
            "postgres://h/db?pass%77ord=***",
            "an encoded name could decode to `password`"
        );
    }

    #[test]
    fn redact_hides_key_value_password() {
        assert_eq!(
            redact_url("host=127.0.0.1 user=u password=hunter2 dbname=test"),
            "host=127.0.0.1 user=u password=*** dbname=test"
        );
        assert_eq!(
            redact_url("host=h password='a b\\' c' dbname=test"),
            "host=h password=*** dbname=test"
        );
        assert_eq!(
            redact_url("password='unterminated and more"),
            "password=***"
        );
    }

    proptest! {
        #[test]
        fn redact_hides_any_user_info_password(
            user in "[a-z]{1,8}",
            password in "[A-Z0-9@:/?#&=% ]{1,16}",
            host in "[a-z]{1,8}",
            db in "[a-z]{1,8}",
        ) {
            let url = format!("postgres://{user}:{password}@{host}:5432/{db}");
            prop_assert_eq!(
                redact_url(&url),
                format!("postgres://{user}:***@{host}:5432/{db}")
            );
        }

        #[test]
        fn redact_hides_any_query_password(
            host in "[a-z]{1,8}",
            password in "[A-Z0-9@:/?%=+]{1,16}",
        ) {
            let url = format!("postgres://u@{host}/db?sslmode=disable&password={password}&x=1");
            prop_assert_eq!(
                redact_url(&url),
                format!("postgres://u@{host}/db?sslmode=disable&password=***&x=1")
            );
        }

        #[test]
        fn redact_accepts_any_text(text in "\\PC{0,40}") {
            let _ = redact_url(&text);
        }
    }
}
