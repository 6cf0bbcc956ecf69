-- SCIM 2.0 provisioning: users and groups pushed by an identity provider, and the bearer
-- tokens the provider authenticates with. A SCIM user is a `user` principal; its id is the
-- principal's id. Resources are the JSON the provider sent, without `id` and `meta`.

CREATE TABLE scim_users (
    principal_id  TEXT PRIMARY KEY REFERENCES principals(id),
    external_id   TEXT,
    user_name     TEXT NOT NULL,
    user_name_key TEXT NOT NULL UNIQUE,  -- lowercase userName: SCIM userNames are case-insensitive
    email         TEXT,                  -- lowercase primary email, for linking OIDC logins
    resource      TEXT NOT NULL,         -- JSON
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX scim_users_external_id ON scim_users (external_id);
CREATE INDEX scim_users_email ON scim_users (email);

CREATE TABLE scim_groups (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL UNIQUE,   -- the Cedar group name of its members
    external_id  TEXT,
    resource     TEXT NOT NULL,          -- JSON
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE scim_group_members (
    group_id     TEXT NOT NULL REFERENCES scim_groups(id) ON DELETE CASCADE,
    principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, principal_id)
) STRICT;
CREATE INDEX scim_group_members_principal ON scim_group_members (principal_id);

-- Tokens accepted only on /scim/v2, stored as SHA-256 hashes.
CREATE TABLE scim_tokens (
    accessor   TEXT PRIMARY KEY,
    hash       BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,                  -- NULL: no expiry
    revoked_at INTEGER,
    created_by TEXT NOT NULL
) STRICT;
