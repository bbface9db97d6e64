-- 0003: API clients (callers of the gRPC API), the audit log of admin
-- mutations, and the master key check value.
-- Independent of 0002 (written in parallel): no table of 0002 is referenced.

CREATE TABLE api_clients (
    -- "cl_" + 16 hex characters; not secret.
    client_id       TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('admin', 'reader')),
    -- JSON array of glob patterns of tenant ids (READER only; ADMIN: []).
    tenant_patterns TEXT    NOT NULL DEFAULT '[]',
    -- SHA-256 of the whole API key. The key itself is never stored.
    key_hash        BLOB    NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at      INTEGER NOT NULL,
    -- Client id of the caller that created it ('bootstrap' for the first admin).
    created_by      TEXT    NOT NULL,
    revoked_at      INTEGER
) STRICT;

-- Every admin mutation, successful or not. No secret values: the outcome
-- is a status code name and the (secret-free) message.
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    -- Who: an api_clients.client_id, 'local:uid=N' (admin socket) or 'cli'.
    client_id TEXT    NOT NULL,
    -- What, e.g. 'tenant.create', 'client.revoke', 'master_key.rotate'.
    action    TEXT    NOT NULL,
    -- On which tenant (no foreign key: events outlive deleted tenants).
    tenant_id TEXT,
    -- 'ok' or a gRPC code name such as 'NOT_FOUND'.
    outcome   TEXT    NOT NULL,
    detail    TEXT    NOT NULL DEFAULT ''
) STRICT;

-- One row: a known value sealed under the current master key, so a wrong
-- master key is detected at start-up, before anything else is read.
CREATE TABLE master_key_check (
    id     INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    sealed BLOB    NOT NULL
) STRICT;
