//! Moving a deployment from SQLite to PostgreSQL: a table-driven copy of every row, and a
//! check of the copy at the destination.
//!
//! [`TABLES`] lists every table the migrations create, with its columns, in an order that
//! satisfies the foreign keys. [`check_schema`] rejects a database that has a table or
//! column the list lacks, so a new migration cannot be left out of the copy unnoticed.
//!
//! The copy runs in one PostgreSQL transaction and is verified inside it before the commit:
//! row counts per table, then the audit hash chain and the checkpoints over it. When any
//! step fails the transaction rolls back and the destination stays empty.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use latchkey_core::audit::{
    AuditBreak, AuditEvent, AuditSummary, AuditVerifier, ChainVerifier, Checkpoint,
    CheckpointBreak, CheckpointFault,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use crate::{PostgresStore, SqliteStore, StoreError};

/// SQL type of a copied column, the same on both backends up to spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    /// INTEGER on SQLite, BIGINT on PostgreSQL.
    Integer,
    /// BLOB on SQLite, BYTEA on PostgreSQL.
    Bytes,
    /// INTEGER 0 or 1 on SQLite, BOOLEAN on PostgreSQL.
    Boolean,
}

#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: ColumnType,
}

/// A table copied by [`copy_to_postgres`].
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
}

const fn col(name: &'static str, kind: ColumnType) -> Column {
    Column { name, kind }
}

use ColumnType::{Boolean, Bytes, Integer, Text};

/// Every table of the schema, parents before the tables whose foreign keys point at them.
/// A migration that adds a table or a column must add it here too; the store's schema test
/// and [`check_schema`] fail until it does.
pub const TABLES: &[Table] = &[
    Table {
        name: "meta",
        columns: &[col("key", Text), col("value", Text)],
    },
    Table {
        name: "vaults",
        columns: &[
            col("id", Text),
            col("name", Text),
            col("tags", Text),
            col("wrapped_key", Bytes),
            col("created_at", Integer),
        ],
    },
    Table {
        name: "secrets",
        columns: &[
            col("id", Text),
            col("vault_id", Text),
            col("name", Text),
            col("tags", Text),
            col("current_version", Integer),
            col("created_at", Integer),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "secret_versions",
        columns: &[
            col("secret_id", Text),
            col("version", Integer),
            col("field_names", Text),
            col("ciphertext", Bytes),
            col("created_at", Integer),
            col("created_by", Text),
        ],
    },
    Table {
        name: "principals",
        columns: &[
            col("id", Text),
            col("kind", Text),
            col("name", Text),
            col("active", Boolean),
            col("created_at", Integer),
        ],
    },
    Table {
        name: "group_members",
        columns: &[col("group_name", Text), col("principal_id", Text)],
    },
    Table {
        name: "policies",
        columns: &[
            col("name", Text),
            col("text", Text),
            col("created_at", Integer),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "tokens",
        columns: &[
            col("accessor", Text),
            col("hash", Bytes),
            col("principal_id", Text),
            col("kind", Text),
            col("created_at", Integer),
            col("ttl", Integer),
            col("expires_at", Integer),
            col("max_expires_at", Integer),
            col("revoked_at", Integer),
            col("created_by", Text),
            col("expiry_claimed_at", Integer),
            col("expiry_recorded_at", Integer),
        ],
    },
    Table {
        name: "audit_events",
        columns: &[
            col("seq", Integer),
            col("time", Text),
            col("request_id", Text),
            col("principal", Text),
            col("action", Text),
            col("resource", Text),
            col("outcome", Text),
            col("reason", Text),
            col("policies", Text),
            col("client_addr", Text),
            col("token_id", Text),
            col("detail", Text),
            col("prev_hash", Text),
            col("hash", Text),
        ],
    },
    Table {
        name: "audit_checkpoints",
        columns: &[
            col("seq", Integer),
            col("head_hash", Text),
            col("time", Text),
            col("key_id", Text),
            col("signature", Text),
        ],
    },
    Table {
        name: "auth_connectors",
        columns: &[
            col("kind", Text),
            col("name", Text),
            col("config", Text),
            col("sealed_secret", Bytes),
            col("created_at", Integer),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "login_attempts",
        columns: &[
            col("id_hash", Text),
            col("connector", Text),
            col("flow", Text),
            col("sealed", Bytes),
            col("redirect_uri", Text),
            col("expires_at", Integer),
        ],
    },
    Table {
        name: "audit_sink_cursors",
        columns: &[
            col("name", Text),
            col("seq", Integer),
            col("owner", Text),
            col("lease_until", Integer),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "audit_exports",
        columns: &[
            col("id", Integer),
            col("first_seq", Integer),
            col("last_seq", Integer),
            col("events", Integer),
            col("sha256", Text),
            col("file_name", Text),
            col("recorded_at", Integer),
            col("recorded_by", Text),
        ],
    },
    Table {
        name: "job_leases",
        columns: &[
            col("job", Text),
            col("holder", Text),
            col("expires_at", Integer),
        ],
    },
    Table {
        name: "scim_users",
        columns: &[
            col("principal_id", Text),
            col("external_id", Text),
            col("user_name", Text),
            col("user_name_key", Text),
            col("email", Text),
            col("resource", Text),
            col("version", Integer),
            col("created_at", Integer),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "scim_groups",
        columns: &[
            col("id", Text),
            col("display_name", Text),
            col("external_id", Text),
            col("resource", Text),
            col("version", Integer),
            col("created_at", Integer),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "scim_group_members",
        columns: &[col("group_id", Text), col("principal_id", Text)],
    },
    Table {
        name: "scim_tokens",
        columns: &[
            col("accessor", Text),
            col("hash", Bytes),
            col("created_at", Integer),
            col("expires_at", Integer),
            col("revoked_at", Integer),
            col("created_by", Text),
        ],
    },
    Table {
        name: "vault_settings",
        columns: &[
            col("vault_id", Text),
            col("settings", Text),
            col("updated_at", Integer),
        ],
    },
    Table {
        name: "access_requests",
        columns: &[
            col("id", Text),
            col("requester_id", Text),
            col("requester", Text),
            col("resources", Text),
            col("duration", Integer),
            col("reason", Text),
            col("ticket", Text),
            col("kind", Text),
            col("approvals_required", Integer),
            col("status", Text),
            col("created_at", Integer),
            col("expires_at", Integer),
            col("decided_at", Integer),
            col("decided_by", Text),
            col("grant_id", Text),
        ],
    },
    Table {
        name: "access_reviews",
        columns: &[
            col("request_id", Text),
            col("reviewer_id", Text),
            col("reviewer", Text),
            col("verdict", Text),
            col("comment", Text),
            col("created_at", Integer),
        ],
    },
    Table {
        name: "grants",
        columns: &[
            col("id", Text),
            col("request_id", Text),
            col("principal_id", Text),
            col("principal", Text),
            col("resources", Text),
            col("approved_by", Text),
            col("reason", Text),
            col("kind", Text),
            col("starts_at", Integer),
            col("expires_at", Integer),
            col("revoked_at", Integer),
            col("revoked_by", Text),
            col("revoke_reason", Text),
            col("expiry_recorded_at", Integer),
        ],
    },
];

/// Columns that PostgreSQL fills from a sequence (`BIGSERIAL`), as (table, column).
const SERIAL_COLUMNS: &[(&str, &str)] = &[("audit_exports", "id")];

/// Tables that belong to one database and are never copied: the migration ledger, which
/// the destination writes for itself when it is opened.
pub const LOCAL_TABLES: &[&str] = &["_sqlx_migrations"];

/// Rows read from SQLite per query.
const READ_BATCH: i64 = 1000;
/// PostgreSQL accepts at most 65,535 bound parameters per statement.
const MAX_BIND_PARAMETERS: usize = 65_535;
/// Rows per INSERT statement, unless the table's columns need fewer.
const ROWS_PER_INSERT: usize = 500;
/// Audit events read back per query while verifying.
const VERIFY_BATCH: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    #[error(
        "the {side} database has a table `{table}` that this `lk` cannot copy; use the `lk` release that created the database"
    )]
    UnknownTable { side: Side, table: String },
    #[error(
        "the {side} database has no table `{table}`; it was created by another Latchkey release"
    )]
    MissingTable { side: Side, table: String },
    #[error(
        "table `{table}` in the {side} database has the columns {found:?}, but this `lk` copies {expected:?}; use the `lk` release that created the database"
    )]
    ColumnMismatch {
        side: Side,
        table: String,
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("the destination database is not empty: table `{table}` has rows")]
    DestinationNotEmpty { table: String },
    #[error(
        "the destination database has a table `{table}` that Latchkey did not create; give an empty database"
    )]
    ForeignTable { table: String },
    #[error(
        "table `{table}` has {source_rows} rows in the source but {destination_rows} at the destination"
    )]
    CountMismatch {
        table: String,
        source_rows: i64,
        destination_rows: i64,
    },
    #[error("the audit log at the destination does not verify: {0}")]
    Audit(#[from] AuditBreak),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TransferError {
    fn from(error: sqlx::Error) -> TransferError {
        TransferError::Store(StoreError::Database(error))
    }
}

/// The end of the copy that a schema error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// A step of the copy, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress<'a> {
    /// `done` of `total` rows of `table` copied.
    Copying {
        table: &'a str,
        done: u64,
        total: u64,
    },
    /// `done` of `total` audit events verified at the destination.
    Verifying { done: u64, total: u64 },
}

/// Summary of the rows that [`copy_to_postgres`] copied and of the chain it verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows per table, in copy order, equal at both ends.
    pub tables: Vec<(&'static str, u64)>,
    /// The verified audit chain and the checkpoints matched against it.
    pub audit: AuditSummary,
    /// True when the checkpoint signatures were checked with a public key.
    pub signatures_checked: bool,
}

/// Columns of each table: table name to column names in declaration order.
pub type Schema = BTreeMap<String, Vec<String>>;

/// Reads the tables and columns of a SQLite database, without SQLite's own tables.
pub async fn sqlite_schema(pool: &SqlitePool) -> Result<Schema, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(pool)
    .await?;
    let mut schema = Schema::new();
    for name in names {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(&name)
                .fetch_all(pool)
                .await?;
        schema.insert(name, columns);
    }
    Ok(schema)
}

/// Reads the tables and columns in the current schema of a PostgreSQL database.
pub async fn postgres_schema(pool: &PgPool) -> Result<Schema, StoreError> {
    let rows = sqlx::query(
        "SELECT c.table_name::text AS table_name, c.column_name::text AS column_name \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(pool)
    .await?;
    let mut schema = Schema::new();
    for row in rows {
        schema
            .entry(row.try_get("table_name")?)
            .or_default()
            .push(row.try_get("column_name")?);
    }
    Ok(schema)
}

/// Checks that `schema` has exactly the tables of [`TABLES`] (and [`LOCAL_TABLES`]), each
/// with exactly the listed columns in any order.
///
/// # Errors
/// The first table that is unknown, missing or has other columns, in name order.
pub fn check_schema(schema: &Schema, side: Side) -> Result<(), TransferError> {
    for (table, columns) in schema {
        if LOCAL_TABLES.contains(&table.as_str()) {
            continue;
        }
        let Some(known) = TABLES.iter().find(|t| t.name == table) else {
            return Err(TransferError::UnknownTable {
                side,
                table: table.clone(),
            });
        };
        let found: BTreeSet<&str> = columns.iter().map(String::as_str).collect();
        let expected: BTreeSet<&str> = known.columns.iter().map(|c| c.name).collect();
        if found != expected {
            return Err(TransferError::ColumnMismatch {
                side,
                table: table.clone(),
                found: columns.clone(),
                expected: known.columns.iter().map(|c| c.name.to_string()).collect(),
            });
        }
    }
    if let Some(missing) = TABLES.iter().find(|t| !schema.contains_key(t.name)) {
        return Err(TransferError::MissingTable {
            side,
            table: missing.name.to_string(),
        });
    }
    Ok(())
}

/// Parses a `postgres://` or `postgresql://` URL without connecting.
///
/// # Errors
/// [`TransferError::InvalidUrl`] with a reason that does not contain the URL.
pub fn parse_destination_url(url: &str) -> Result<PgConnectOptions, TransferError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(TransferError::InvalidUrl(
            "it must start with postgres:// or postgresql://".into(),
        ));
    }
    PgConnectOptions::from_str(url).map_err(|e| TransferError::InvalidUrl(e.to_string()))
}

/// Opens the destination store at `url`, first checking, before the migrations create
/// anything, that the database contains no tables other than Latchkey's own.
///
/// # Errors
/// [`TransferError::ForeignTable`] naming such a table; [`TransferError::Store`] when the
/// database cannot be reached or migrated.
pub async fn open_destination(url: &str) -> Result<PostgresStore, TransferError> {
    let options = parse_destination_url(url)?;
    let probe = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(StoreError::from)?;
    let schema = postgres_schema(&probe).await;
    probe.close().await;
    let known = |name: &str| LOCAL_TABLES.contains(&name) || TABLES.iter().any(|t| t.name == name);
    if let Some(table) = schema?.into_keys().find(|name| !known(name)) {
        return Err(TransferError::ForeignTable { table });
    }
    Ok(PostgresStore::open(url).await?)
}

/// Copies every row of `source` into `destination` and verifies the copy, all in one
/// transaction, so the destination is either a verified copy or left as it was.
///
/// The destination must be empty: its tables are locked and checked for rows first. The
/// audit chain is verified from its first event, and every checkpoint must match the
/// chain's hash at its sequence. With `public_key` (raw Ed25519, from `lk audit key`) the
/// checkpoint signatures are checked too; without it they are copied unchecked, because
/// the signing key is sealed under the root key, which the copy never sees.
///
/// # Errors
/// A [`TransferError`]; [`TransferError::Audit`] names the first bad sequence number.
pub async fn copy_to_postgres(
    source: &SqliteStore,
    destination: &PostgresStore,
    public_key: Option<&[u8]>,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<CopyReport, TransferError> {
    check_schema(&sqlite_schema(source.pool()).await?, Side::Source)?;
    check_schema(
        &postgres_schema(destination.pool()).await?,
        Side::Destination,
    )?;

    let mut tx = destination.pool().begin().await?;
    lock_and_check_empty(&mut tx).await?;

    let mut tables = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let total = count_sqlite(source.pool(), table).await?;
        copy_table(source.pool(), &mut tx, table, total, progress).await?;
        let copied = count_postgres(&mut tx, table).await?;
        if copied != total {
            return Err(TransferError::CountMismatch {
                table: table.name.to_string(),
                source_rows: total,
                destination_rows: copied,
            });
        }
        tables.push((table.name, u64::try_from(total).unwrap_or(0)));
    }
    // Rows were copied with their ids, so the identity sequences must continue after them.
    for (table, column) in SERIAL_COLUMNS {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *tx)
        .await?;
    }

    let events = tables
        .iter()
        .find(|(name, _)| *name == "audit_events")
        .map_or(0, |(_, rows)| *rows);
    let audit = verify_audit(&mut tx, public_key, events, progress).await?;
    tx.commit().await?;
    Ok(CopyReport {
        tables,
        audit,
        signatures_checked: public_key.is_some(),
    })
}

/// Locks every table against writers (a server started on the destination waits) and
/// fails when any of them has a row.
async fn lock_and_check_empty(tx: &mut PgConnection) -> Result<(), TransferError> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        names.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    for table in TABLES {
        let has_rows: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name))
                .fetch_one(&mut *tx)
                .await?;
        if has_rows {
            return Err(TransferError::DestinationNotEmpty {
                table: table.name.to_string(),
            });
        }
    }
    Ok(())
}

async fn count_sqlite(pool: &SqlitePool, table: &Table) -> Result<i64, TransferError> {
    Ok(
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
            .fetch_one(pool)
            .await?,
    )
}

async fn count_postgres(tx: &mut PgConnection, table: &Table) -> Result<i64, TransferError> {
    Ok(
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
            .fetch_one(tx)
            .await?,
    )
}

/// One column value as read from SQLite.
enum Value {
    Text(Option<String>),
    Integer(Option<i64>),
    Bytes(Option<Vec<u8>>),
    Boolean(Option<bool>),
}

/// Copies one table in batches, reading SQLite by rowid so each read resumes where the
/// last one ended.
///
/// NOTE: a table declared `WITHOUT ROWID` has no rowid; such a table would fail here and
/// needs reading by its primary key instead.
async fn copy_table(
    source: &SqlitePool,
    tx: &mut PgConnection,
    table: &Table,
    total: i64,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<(), TransferError> {
    let column_list = table
        .columns
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ");
    let select = format!(
        "SELECT rowid AS copy_rowid, {column_list} FROM {} WHERE rowid > ? ORDER BY rowid LIMIT ?",
        table.name
    );
    let rows_per_insert = ROWS_PER_INSERT.min(MAX_BIND_PARAMETERS / table.columns.len().max(1));
    let total = u64::try_from(total).unwrap_or(0);
    let mut last_rowid = i64::MIN;
    let mut done = 0u64;
    progress(Progress::Copying {
        table: table.name,
        done,
        total,
    });
    loop {
        let rows = sqlx::query(&select)
            .bind(last_rowid)
            .bind(READ_BATCH)
            .fetch_all(source)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        last_rowid = last.try_get("copy_rowid")?;
        let mut values = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut row_values = Vec::with_capacity(table.columns.len());
            for column in table.columns {
                row_values.push(match column.kind {
                    Text => Value::Text(row.try_get(column.name)?),
                    Integer => Value::Integer(row.try_get(column.name)?),
                    Bytes => Value::Bytes(row.try_get(column.name)?),
                    Boolean => Value::Boolean(row.try_get(column.name)?),
                });
            }
            values.push(row_values);
        }
        for chunk in values.chunks(rows_per_insert) {
            let mut insert: QueryBuilder<Postgres> =
                QueryBuilder::new(format!("INSERT INTO {} ({column_list}) ", table.name));
            insert.push_values(chunk, |mut b, row| {
                for value in row {
                    match value {
                        Value::Text(v) => b.push_bind(v.clone()),
                        Value::Integer(v) => b.push_bind(*v),
                        Value::Bytes(v) => b.push_bind(v.clone()),
                        Value::Boolean(v) => b.push_bind(*v),
                    };
                }
            });
            insert.build().execute(&mut *tx).await?;
        }
        done += u64::try_from(rows.len()).unwrap_or(0);
        progress(Progress::Copying {
            table: table.name,
            done,
            total,
        });
    }
}

/// Verifies the audit events and checkpoints as the transaction sees them.
async fn verify_audit(
    tx: &mut PgConnection,
    public_key: Option<&[u8]>,
    total: u64,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<AuditSummary, TransferError> {
    let checkpoints = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(crate::postgres::checkpoint_from_row)
        .collect::<Result<Vec<Checkpoint>, StoreError>>()?;
    let mut verifier = match public_key {
        Some(key) => {
            CopyVerifier::Signed(AuditVerifier::new(key, ChainVerifier::new(), checkpoints)?)
        }
        None => CopyVerifier::Unsigned {
            chain: ChainVerifier::new(),
            checkpoints: checkpoints.into_iter().map(|c| (c.seq, c)).collect(),
            matched: 0,
            last_matched: 0,
        },
    };

    let mut after = 0i64;
    let mut done = 0u64;
    progress(Progress::Verifying { done, total });
    loop {
        let events = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(VERIFY_BATCH)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(crate::postgres::audit_from_row)
            .collect::<Result<Vec<AuditEvent>, StoreError>>()?;
        let Some(last) = events.last() else {
            break;
        };
        after = i64::try_from(last.seq).unwrap_or(i64::MAX);
        for event in &events {
            verifier.push(event)?;
        }
        done += u64::try_from(events.len()).unwrap_or(0);
        progress(Progress::Verifying { done, total });
    }
    Ok(verifier.finish()?)
}

/// Chain verification with checkpoints matched against the chain, with or without their
/// signatures.
enum CopyVerifier {
    Signed(AuditVerifier),
    Unsigned {
        chain: ChainVerifier,
        checkpoints: BTreeMap<u64, Checkpoint>,
        matched: u64,
        last_matched: u64,
    },
}

impl CopyVerifier {
    fn push(&mut self, event: &AuditEvent) -> Result<(), AuditBreak> {
        match self {
            CopyVerifier::Signed(verifier) => verifier.push(event),
            CopyVerifier::Unsigned {
                chain,
                checkpoints,
                matched,
                last_matched,
            } => {
                chain.push(event)?;
                if let Some(checkpoint) = checkpoints.remove(&event.seq) {
                    if !checkpoint.head_hash.eq_ignore_ascii_case(&event.hash) {
                        return Err(CheckpointBreak {
                            seq: event.seq,
                            fault: CheckpointFault::HeadMismatch,
                        }
                        .into());
                    }
                    *matched += 1;
                    *last_matched = event.seq;
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<AuditSummary, AuditBreak> {
        match self {
            CopyVerifier::Signed(verifier) => verifier.finish(),
            CopyVerifier::Unsigned {
                chain,
                checkpoints,
                matched,
                last_matched,
            } => {
                let chain = chain.finish();
                // Every checkpoint at or below the last event was matched and removed, so
                // one left over lies beyond the end of the chain.
                if let Some((&seq, _)) = checkpoints.iter().next() {
                    return Err(CheckpointBreak {
                        seq,
                        fault: CheckpointFault::Truncated {
                            last_seq: chain.last_seq,
                        },
                    }
                    .into());
                }
                Ok(AuditSummary {
                    chain,
                    checkpoints: matched,
                    last_checkpoint_seq: last_matched,
                })
            }
        }
    }
}
