-- Identity connectors (OIDC providers and JWT roles) and logins in progress.

CREATE TABLE auth_connectors (
    kind          TEXT NOT NULL,        -- 'oidc' or 'jwt'
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,        -- JSON settings; never a secret
    sealed_secret BYTEA,                 -- an OIDC client secret, sealed under the root key
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- An authorization-code or device login between its start and its completion. The row is
-- keyed by the SHA-256 of the value the client holds (the OAuth state or the device login
-- id), and what must stay private (PKCE verifier, nonce, device code) is sealed.
CREATE TABLE login_attempts (
    id_hash      TEXT PRIMARY KEY,
    connector    TEXT NOT NULL,
    flow         TEXT NOT NULL,         -- 'code' or 'device'
    sealed       BYTEA NOT NULL,
    redirect_uri TEXT,
    expires_at   BIGINT NOT NULL
);
