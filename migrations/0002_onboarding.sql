-- 0002: the authorization-code onboarding flow, one row per tenant (the
-- latest BeginAuthorization). Each step's outcome is committed here before
-- the next step starts, so a flow resumes after a crash from its last step.
-- The `state` itself is never stored, only its SHA-256. Tokens and the new
-- trusted app's secret are sealed like every other secret (associated data =
-- tenant id + field name); see src/store/sealed.rs.

CREATE TABLE onboarding_flows (
    tenant_id               TEXT    NOT NULL PRIMARY KEY
                                    REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    -- SHA-256 of the one-time state handed out by BeginAuthorization.
    state_hash              BLOB    NOT NULL UNIQUE CHECK (length(state_hash) = 32),
    -- The state cannot start a flow after this time (a flow already past
    -- the code exchange resumes whatever the time).
    state_expires_at        INTEGER NOT NULL,
    step                    TEXT    NOT NULL CHECK (step IN (
                                'issued', 'code_exchanged', 'creating_app', 'app_stored',
                                'token_obtained', 'user_verified', 'completed', 'failed')),
    -- Step 1: the public app's access token (wiped when the flow ends).
    public_token_sealed     BLOB,
    public_token_type       TEXT,
    public_token_issued_at  INTEGER,
    public_token_expires_at INTEGER,
    -- Step 2: the name of the application being (or last) created.
    app_name                TEXT,
    -- Step 3: the new trusted application (moved to `credentials` at the end).
    app_client_id           TEXT,
    app_secret_sealed       BLOB,
    -- Step 4: the first client_credentials token.
    token_sealed            BLOB,
    token_type              TEXT,
    token_issued_at         INTEGER,
    token_expires_at        INTEGER,
    -- Step 5: JSON of domain::PbxUser.
    pbx_user                TEXT,
    -- JSON array of application names that may exist in the PBX without
    -- their credentials having been stored (for the operator to delete).
    orphaned_apps           TEXT    NOT NULL DEFAULT '[]',
    -- What went wrong last (cleared when a step succeeds).
    error                   TEXT,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
) STRICT;

-- Start-up looks for flows interrupted in the middle.
CREATE INDEX onboarding_flows_step ON onboarding_flows (step);
