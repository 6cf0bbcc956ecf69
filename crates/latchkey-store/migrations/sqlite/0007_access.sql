-- Just-in-time access: requests for time-boxed access with a reason, the reviews of other
-- principals, and the grants an approved request becomes. Resources are JSON arrays of
-- {"vault": NAME} or {"vault": NAME, "secret": NAME}.

-- Access settings of a vault (JSON: approvals needed, longest grant, request lifetime,
-- whether a reason is required). A vault without a row uses the defaults.
CREATE TABLE vault_settings (
    vault_id   TEXT PRIMARY KEY REFERENCES vaults(id),
    settings   TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE access_requests (
    id                 TEXT PRIMARY KEY,
    requester_id       TEXT NOT NULL REFERENCES principals(id),
    requester          TEXT NOT NULL,     -- Cedar uid text, as audit events name principals
    resources          TEXT NOT NULL,     -- JSON array
    duration           INTEGER NOT NULL,  -- seconds of access asked for
    reason             TEXT NOT NULL,
    ticket             TEXT,
    kind               TEXT NOT NULL,     -- review, auto or break_glass
    approvals_required INTEGER NOT NULL,
    status             TEXT NOT NULL,     -- pending, approved, denied, expired, cancelled
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,  -- a request still pending then expires
    decided_at         INTEGER,
    decided_by         TEXT,
    grant_id           TEXT
) STRICT;
CREATE INDEX access_requests_pending ON access_requests (status, expires_at);
CREATE INDEX access_requests_requester ON access_requests (requester_id, created_at);

CREATE TABLE access_reviews (
    request_id  TEXT NOT NULL REFERENCES access_requests(id),
    reviewer_id TEXT NOT NULL REFERENCES principals(id),
    reviewer    TEXT NOT NULL,
    verdict     TEXT NOT NULL,             -- approve or deny
    comment     TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (request_id, reviewer_id)
) STRICT;

CREATE TABLE grants (
    id                 TEXT PRIMARY KEY,
    request_id         TEXT NOT NULL REFERENCES access_requests(id),
    principal_id       TEXT NOT NULL REFERENCES principals(id),
    principal          TEXT NOT NULL,      -- the grantee's Cedar uid text
    resources          TEXT NOT NULL,      -- JSON array, as requested
    approved_by        TEXT NOT NULL,      -- comma-separated reviewers, or policy ids
    reason             TEXT NOT NULL,
    kind               TEXT NOT NULL,      -- review, auto or break_glass
    starts_at          INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    revoked_at         INTEGER,
    revoked_by         TEXT,
    revoke_reason      TEXT,
    expiry_recorded_at INTEGER             -- when the expiry's audit event was written
) STRICT;
CREATE INDEX grants_principal ON grants (principal_id, expires_at);
CREATE INDEX grants_unrecorded ON grants (expires_at) WHERE revoked_at IS NULL AND expiry_recorded_at IS NULL;
