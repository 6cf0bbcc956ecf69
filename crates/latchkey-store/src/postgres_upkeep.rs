//! [`AuditUpkeep`] for PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::upkeep::{AuditUpkeep, ExportRow, SinkCursorRow, to_i64, to_u64};
use crate::{PostgresStore, StoreResult};

#[async_trait]
impl AuditUpkeep for PostgresStore {
    async fn claim_sink(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
        initial_seq: u64,
    ) -> StoreResult<Option<u64>> {
        let row = sqlx::query(
            "INSERT INTO audit_sink_cursors (name, seq, owner, lease_until, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, \
               lease_until = excluded.lease_until, updated_at = excluded.updated_at \
             WHERE audit_sink_cursors.owner = excluded.owner \
               OR audit_sink_cursors.lease_until < excluded.updated_at \
             RETURNING seq",
        )
        .bind(name)
        .bind(to_i64(initial_seq, "sink cursor")?)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| to_u64(r.try_get("seq")?, "sink cursor"))
            .transpose()
    }

    async fn advance_sink(
        &self,
        name: &str,
        owner: &str,
        seq: u64,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE audit_sink_cursors SET seq = GREATEST(seq, $1), lease_until = $2, updated_at = $3 \
             WHERE name = $4 AND owner = $5",
        )
        .bind(to_i64(seq, "sink cursor")?)
        .bind(lease_until)
        .bind(now)
        .bind(name)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn sink_cursors(&self) -> StoreResult<Vec<SinkCursorRow>> {
        let rows = sqlx::query("SELECT * FROM audit_sink_cursors ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(cursor_from_row).collect()
    }

    async fn record_export(&self, export: &ExportRow) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO audit_exports (first_seq, last_seq, events, sha256, file_name, \
             recorded_at, recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(to_i64(export.first_seq, "export first_seq")?)
        .bind(to_i64(export.last_seq, "export last_seq")?)
        .bind(to_i64(export.events, "export events")?)
        .bind(&export.sha256)
        .bind(&export.file_name)
        .bind(export.recorded_at)
        .bind(&export.recorded_by)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("id")?)
    }

    async fn exports(&self) -> StoreResult<Vec<ExportRow>> {
        let rows = sqlx::query("SELECT * FROM audit_exports ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(export_from_row).collect()
    }

    async fn audit_first_seq(&self) -> StoreResult<Option<u64>> {
        let row = sqlx::query("SELECT MIN(seq) AS seq FROM audit_events")
            .fetch_one(self.pool())
            .await?;
        row.try_get::<Option<i64>, _>("seq")?
            .map(|seq| to_u64(seq, "audit seq"))
            .transpose()
    }

    async fn purge_audit_before(&self, before: u64) -> StoreResult<u64> {
        let result = sqlx::query(
            "DELETE FROM audit_events WHERE seq < $1 \
             AND seq < (SELECT MAX(seq) FROM audit_events)",
        )
        .bind(to_i64(before, "purge bound")?)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }
}

fn cursor_from_row(row: &PgRow) -> StoreResult<SinkCursorRow> {
    Ok(SinkCursorRow {
        name: row.try_get("name")?,
        seq: to_u64(row.try_get("seq")?, "sink cursor")?,
        owner: row.try_get("owner")?,
        lease_until: row.try_get("lease_until")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn export_from_row(row: &PgRow) -> StoreResult<ExportRow> {
    Ok(ExportRow {
        id: row.try_get("id")?,
        first_seq: to_u64(row.try_get("first_seq")?, "export first_seq")?,
        last_seq: to_u64(row.try_get("last_seq")?, "export last_seq")?,
        events: to_u64(row.try_get("events")?, "export events")?,
        sha256: row.try_get("sha256")?,
        file_name: row.try_get("file_name")?,
        recorded_at: row.try_get("recorded_at")?,
        recorded_by: row.try_get("recorded_by")?,
    })
}
