-- PostgreSQL 0001: the whole schema, equal to SQLite's at version 7 (the
-- files in migrations/ 0001-0007): same tables and columns, so a SQLite
-- state copies over column by column. Times are BIGINT milliseconds since
-- the Unix epoch (UTC); sealed values are BYTEA (XChaCha20-Poly1305
-- envelopes, associated data = tenant id + field name, see
-- src/store/seal/). JSON stays TEXT, as in SQLite, so both backends store
-- the same bytes. Ids and hosts are COLLATE "C": they sort bytewise, as in
-- SQLite, whatever the database's locale (keyset pagination relies on it).

CREATE TABLE tenants (
    tenant_id            TEXT COLLATE "C"    NOT NULL PRIMARY KEY,
    display_name         TEXT    NOT NULL DEFAULT '',
    pbx_base_url         TEXT    NOT NULL,
    -- host[:port] of pbx_base_url: the unit of rate limiting.
    pbx_host             TEXT COLLATE "C"    NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN (
                             'pending_authorization', 'active', 'renewal_failing',
                             'credentials_rejected', 'disabled')),
    consecutive_failures BIGINT  NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_error           TEXT,
    last_refresh_at      BIGINT,
    -- JSON of domain::PbxUser, NULL until known.
    pbx_user             TEXT,
    created_at           BIGINT  NOT NULL,
    updated_at           BIGINT  NOT NULL
);

-- ListTenants filtered by state, keyset-paginated by id.
CREATE INDEX tenants_state_id ON tenants (state, tenant_id);
-- Per-host load reports.
CREATE INDEX tenants_host ON tenants (pbx_host);

CREATE TABLE credentials (
    tenant_id     TEXT COLLATE "C"    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (kind IN ('trusted', 'public')),
    -- Not secret: the PBX shows it in its UI and logs.
    client_id     TEXT COLLATE "C"    NOT NULL,
    secret_sealed BYTEA   NOT NULL,
    -- Only for kind = 'public' (the authorization flow's redirect URI).
    redirect_uri  TEXT,
    updated_at    BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);

CREATE TABLE tokens (
    tenant_id    TEXT COLLATE "C"    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    token_sealed BYTEA   NOT NULL,
    token_type   TEXT    NOT NULL,
    issued_at    BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);

CREATE TABLE renewal_jobs (
    tenant_id TEXT COLLATE "C"    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    -- Copy of tenants.pbx_host so the scheduler groups by host without a join.
    pbx_host  TEXT COLLATE "C"    NOT NULL,
    due_at    BIGINT  NOT NULL,
    attempts  BIGINT  NOT NULL DEFAULT 0 CHECK (attempts >= 0)
);

-- The scheduler reads jobs earliest first; the index carries the host so a
-- busy host's entries are passed over without reading rows.
CREATE INDEX renewal_jobs_due ON renewal_jobs (due_at, pbx_host, tenant_id);

-- The authorization-code onboarding flow, one row per tenant. The `state`
-- itself is never stored, only its SHA-256.
CREATE TABLE onboarding_flows (
    tenant_id               TEXT COLLATE "C"    NOT NULL PRIMARY KEY
                                    REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    state_hash              BYTEA   NOT NULL UNIQUE CHECK (length(state_hash) = 32),
    state_expires_at        BIGINT  NOT NULL,
    step                    TEXT    NOT NULL CHECK (step IN (
                                'issued', 'code_exchanged', 'creating_app', 'app_stored',
                                'token_obtained', 'user_verified', 'completed', 'failed')),
    public_token_sealed     BYTEA,
    public_token_type       TEXT,
    public_token_issued_at  BIGINT,
    public_token_expires_at BIGINT,
    app_name                TEXT,
    app_client_id           TEXT,
    app_secret_sealed       BYTEA,
    token_sealed            BYTEA,
    token_type              TEXT,
    token_issued_at         BIGINT,
    token_expires_at        BIGINT,
    pbx_user                TEXT,
    orphaned_apps           TEXT    NOT NULL DEFAULT '[]',
    error                   TEXT,
    created_at              BIGINT  NOT NULL,
    updated_at              BIGINT  NOT NULL
);

CREATE INDEX onboarding_flows_step ON onboarding_flows (step);

CREATE TABLE api_clients (
    client_id       TEXT COLLATE "C"    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('admin', 'reader')),
    tenant_patterns TEXT    NOT NULL DEFAULT '[]',
    -- SHA-256 of the whole API key. The key itself is never stored.
    key_hash        BYTEA   NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at      BIGINT  NOT NULL,
    created_by      TEXT    NOT NULL,
    revoked_at      BIGINT
);

-- Ids grow (an identity, never reused, as SQLite's AUTOINCREMENT).
CREATE TABLE audit_events (
    id        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        BIGINT  NOT NULL,
    client_id TEXT COLLATE "C"    NOT NULL,
    action    TEXT    NOT NULL,
    tenant_id TEXT,
    outcome   TEXT    NOT NULL,
    detail    TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE master_key_check (
    id     BIGINT  NOT NULL PRIMARY KEY CHECK (id = 1),
    sealed BYTEA   NOT NULL
);

CREATE TABLE heartbeat (
    id BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);

-- Renewal duty per PBX host. A normal (logged) table: an UNLOGGED one is
-- emptied by a crash or failover, which would reset the epochs.
CREATE TABLE host_leases (
    pbx_host   TEXT COLLATE "C"    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      BIGINT  NOT NULL CHECK (epoch > 0),
    expires_at BIGINT  NOT NULL
);
