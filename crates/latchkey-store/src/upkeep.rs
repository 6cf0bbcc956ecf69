//! Audit upkeep kept beside the log: streaming sink cursors, the record of written exports,
//! and purging old events.
//!
//! Every [`Store`](crate::Store) implements [`AuditUpkeep`], so the server reaches these
//! methods through the same `dyn Store`.

use async_trait::async_trait;

use crate::StoreResult;

/// The delivery position of one streaming sink, and the server node that ships it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkCursorRow {
    pub name: String,
    /// Last sequence number the sink delivered.
    pub seq: u64,
    /// Id of the node holding the lease.
    pub owner: String,
    /// Unix seconds after which another node may take the sink over.
    pub lease_until: i64,
    pub updated_at: i64,
}

/// An export file that a client wrote and acknowledged: the evidence that lets retention
/// purge the events it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRow {
    /// Assigned by the store; ignored by [`AuditUpkeep::record_export`].
    pub id: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
    /// Hex SHA-256 of the file as written.
    pub sha256: String,
    /// File name as the client reported it, for people reading the record.
    pub file_name: String,
    pub recorded_at: i64,
    /// Principal that acknowledged the export, e.g. `User::"root"`.
    pub recorded_by: String,
}

#[async_trait]
pub trait AuditUpkeep: Send + Sync {
    /// Takes or renews the lease of sink `name` for node `owner` until `lease_until`, and
    /// returns the sink's cursor. A sink with no row starts at `initial_seq`. Returns None,
    /// changing nothing, while another node holds an unexpired lease (one whose
    /// `lease_until` is at or after `now`).
    async fn claim_sink(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
        initial_seq: u64,
    ) -> StoreResult<Option<u64>>;
    /// Moves the cursor of sink `name` forward to `seq` and renews the lease, when `owner`
    /// still holds it. Returns false, changing nothing, when another node took it over.
    /// The cursor never moves backward.
    async fn advance_sink(
        &self,
        name: &str,
        owner: &str,
        seq: u64,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<bool>;
    /// Returns every sink cursor, by name.
    async fn sink_cursors(&self) -> StoreResult<Vec<SinkCursorRow>>;

    /// Records an acknowledged export and returns its id.
    async fn record_export(&self, export: &ExportRow) -> StoreResult<i64>;
    /// Returns the recorded exports, oldest first.
    async fn exports(&self) -> StoreResult<Vec<ExportRow>>;

    /// Returns the lowest stored event sequence number; None for an empty log.
    async fn audit_first_seq(&self) -> StoreResult<Option<u64>>;
    /// Deletes the events with a sequence number below `before` and returns how many. It
    /// never deletes the newest event, so the chain head survives any purge. Checkpoints
    /// are kept.
    async fn purge_audit_before(&self, before: u64) -> StoreResult<u64>;
}

pub(crate) fn to_i64(value: u64, column: &str) -> StoreResult<i64> {
    i64::try_from(value)
        .map_err(|_| crate::StoreError::Corrupt(format!("{column} {value} out of range")))
}

pub(crate) fn to_u64(value: i64, column: &str) -> StoreResult<u64> {
    u64::try_from(value)
        .map_err(|_| crate::StoreError::Corrupt(format!("{column} {value} out of range")))
}
