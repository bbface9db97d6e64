-- 0001: tenants, their app credentials, current tokens and renewal jobs.
-- All times are integer milliseconds since the Unix epoch (UTC).
-- Secrets and tokens are stored only sealed (XChaCha20-Poly1305 envelopes,
-- associated data = tenant id + field name); see src/crypto/mod.rs.

CREATE TABLE tenants (
    tenant_id            TEXT    NOT NULL PRIMARY KEY,
    display_name         TEXT    NOT NULL DEFAULT '',
    pbx_base_url         TEXT    NOT NULL,
    -- host[:port] of pbx_base_url: the unit of rate limiting.
    pbx_host             TEXT    NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN (
                             'pending_authorization', 'active', 'renewal_failing',
                             'credentials_rejected', 'disabled')),
    consecutive_failures INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_error           TEXT,
    last_refresh_at      INTEGER,
    -- JSON of domain::PbxUser, NULL until known.
    pbx_user             TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;

-- ListTenants filtered by state, keyset-paginated by id.
CREATE INDEX tenants_state_id ON tenants (state, tenant_id);
-- Per-host load reports.
CREATE INDEX tenants_host ON tenants (pbx_host);

CREATE TABLE credentials (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (kind IN ('trusted', 'public')),
    -- Not secret: the PBX shows it in its UI and logs.
    client_id     TEXT    NOT NULL,
    secret_sealed BLOB    NOT NULL,
    -- Only for kind = 'public' (the authorization flow's redirect URI).
    redirect_uri  TEXT,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind)
) STRICT;

CREATE TABLE tokens (
    tenant_id    TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    token_sealed BLOB    NOT NULL,
    token_type   TEXT    NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE renewal_jobs (
    tenant_id TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    -- Copy of tenants.pbx_host so the scheduler groups by host without a join.
    pbx_host  TEXT    NOT NULL,
    due_at    INTEGER NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0)
) STRICT;

-- The scheduler reads jobs earliest first.
CREATE INDEX renewal_jobs_due ON renewal_jobs (due_at, tenant_id);
