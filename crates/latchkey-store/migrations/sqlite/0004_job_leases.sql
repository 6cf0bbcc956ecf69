-- Leases that let one server at a time run each background job, and the markers of the
-- token expiry job. Lease times are unix milliseconds by the database clock.

CREATE TABLE job_leases (
    job        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,          -- id of the server process holding the lease
    expires_at INTEGER NOT NULL        -- another server may take the lease from this time on
) STRICT;

-- Unix seconds. A job sets `expiry_claimed_at` before it writes the token's `token.expire`
-- audit event and `expiry_recorded_at` after the event is stored.
ALTER TABLE tokens ADD COLUMN expiry_claimed_at INTEGER;
ALTER TABLE tokens ADD COLUMN expiry_recorded_at INTEGER;
CREATE INDEX tokens_expiry_unrecorded ON tokens (expires_at) WHERE expiry_recorded_at IS NULL;
