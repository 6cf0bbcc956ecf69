-- Latchkey schema, version 1 (SQLite).
-- Times are unix seconds (INTEGER) except audit event times, which are part of the hashed
-- record and kept as the exact RFC 3339 text that was hashed.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE vaults (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    tags        TEXT NOT NULL,          -- JSON object of string tags
    wrapped_key BLOB NOT NULL,          -- the vault's data key, sealed under the root key
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE secrets (
    id              TEXT PRIMARY KEY,
    vault_id        TEXT NOT NULL REFERENCES vaults(id),
    name            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    current_version INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (vault_id, name)
) STRICT;

CREATE TABLE secret_versions (
    secret_id   TEXT NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    field_names TEXT NOT NULL,          -- JSON array; names are metadata, values are sealed
    ciphertext  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (secret_id, version)
) STRICT;

CREATE TABLE principals (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    active     INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    UNIQUE (kind, name)
) STRICT;

CREATE TABLE group_members (
    group_name   TEXT NOT NULL,
    principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    PRIMARY KEY (group_name, principal_id)
) STRICT;

CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE tokens (
    accessor       TEXT PRIMARY KEY,
    hash           BLOB NOT NULL UNIQUE,  -- SHA-256 of the token; the token itself is never stored
    principal_id   TEXT NOT NULL REFERENCES principals(id),
    kind           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    ttl            INTEGER NOT NULL,      -- seconds a renewal without an increment adds
    expires_at     INTEGER NOT NULL,
    max_expires_at INTEGER NOT NULL,
    revoked_at     INTEGER,
    created_by     TEXT
) STRICT;
CREATE INDEX tokens_principal ON tokens (principal_id);

CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY,
    time        TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    principal   TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    policies    TEXT NOT NULL,          -- JSON array
    client_addr TEXT,
    token_id    TEXT,
    detail      TEXT NOT NULL,          -- JSON object
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
) STRICT;
