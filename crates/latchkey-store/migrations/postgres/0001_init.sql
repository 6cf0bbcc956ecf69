-- Latchkey schema, version 1 (PostgreSQL). Same tables and meaning as the SQLite schema.
-- Times are unix seconds (BIGINT) except audit event times, which are part of the hashed
-- record and kept as the exact RFC 3339 text that was hashed.
-- Names that lists sort by use COLLATE "C", so they sort by bytes as SQLite does, whatever
-- the database's default collation.
-- JSON is kept as TEXT, byte for byte as written: JSONB would reject the escaped NUL
-- character (\u0000) that a JSON string may hold.

CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE vaults (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    tags        TEXT NOT NULL,          -- JSON object of string tags
    wrapped_key BYTEA NOT NULL,         -- the vault's data key, sealed under the root key
    created_at  BIGINT NOT NULL
);

CREATE TABLE secrets (
    id              TEXT COLLATE "C" PRIMARY KEY,
    vault_id        TEXT COLLATE "C" NOT NULL REFERENCES vaults(id),
    name            TEXT COLLATE "C" NOT NULL,
    tags            TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (vault_id, name)
);

CREATE TABLE secret_versions (
    secret_id   TEXT COLLATE "C" NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    field_names TEXT NOT NULL,          -- JSON array; names are metadata, values are sealed
    ciphertext  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (secret_id, version)
);

CREATE TABLE principals (
    id         TEXT COLLATE "C" PRIMARY KEY,
    kind       TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE group_members (
    group_name   TEXT COLLATE "C" NOT NULL,
    principal_id TEXT COLLATE "C" NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    PRIMARY KEY (group_name, principal_id)
);
CREATE INDEX group_members_principal ON group_members (principal_id);

CREATE TABLE policies (
    name       TEXT COLLATE "C" PRIMARY KEY,
    text       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    accessor       TEXT COLLATE "C" PRIMARY KEY,
    hash           BYTEA NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
                                      -- SHA-256 of the token; the token itself is never stored
    principal_id   TEXT COLLATE "C" NOT NULL REFERENCES principals(id),
    kind           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    ttl            BIGINT NOT NULL,      -- seconds a renewal without an increment adds
    expires_at     BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    revoked_at     BIGINT,
    created_by     TEXT
);
CREATE INDEX tokens_principal ON tokens (principal_id);

CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
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
);
