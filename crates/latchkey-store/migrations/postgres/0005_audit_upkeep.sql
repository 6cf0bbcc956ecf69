-- Audit upkeep: where each streaming sink has shipped up to, and which exports were written.

CREATE TABLE audit_sink_cursors (
    name        TEXT COLLATE "C" PRIMARY KEY, -- the sink's `name` in the server config
    seq         BIGINT NOT NULL,       -- last sequence number the sink delivered
    owner       TEXT NOT NULL,         -- id of the server node that ships this sink
    lease_until BIGINT NOT NULL,       -- unix seconds; after it another node may take over
    updated_at  BIGINT NOT NULL
);

CREATE TABLE audit_exports (
    id          BIGSERIAL PRIMARY KEY,
    first_seq   BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL,
    events      BIGINT NOT NULL,
    sha256      TEXT NOT NULL,         -- hex SHA-256 of the export file as written
    file_name   TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    recorded_by TEXT NOT NULL
);
