-- Signed checkpoints over the audit chain head, and indexes for audit search.

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,     -- sequence number of the signed chain head
    head_hash TEXT NOT NULL,
    time      TEXT NOT NULL,           -- RFC 3339 text, part of the signed message
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL            -- hex Ed25519 signature
) STRICT;

CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_principal ON audit_events (principal, seq);
