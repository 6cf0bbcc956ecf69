-- Audit upkeep: where each streaming sink has shipped up to, and which exports were written.

CREATE TABLE audit_sink_cursors (
    name        TEXT PRIMARY KEY,      -- the sink's `name` in the server config
    seq         INTEGER NOT NULL,      -- last sequence number the sink delivered
    owner       TEXT NOT NULL,         -- id of the server node that ships this sink
    lease_until INTEGER NOT NULL,      -- unix seconds; after it another node may take over
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE audit_exports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    sha256      TEXT NOT NULL,         -- hex SHA-256 of the export file as written
    file_name   TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    recorded_by TEXT NOT NULL
) STRICT;
