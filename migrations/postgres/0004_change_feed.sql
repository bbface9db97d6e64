-- PostgreSQL 0002: what several replicas need to keep their caches current
-- and to see each other.
--
-- `changes`: one row per change of a tenant (state, base URL, insert,
-- delete), of its token, or of an API client, written by triggers in the
-- same transaction as the change (so no write path can forget it), with an
-- id that grows. Each trigger also sends a NOTIFY on `pbx_tokend_changes`:
-- only a hint, sent at commit and lost on a disconnect; replicas read
-- `changes` after the last id they applied. Ids are taken at insert and
-- become visible at commit, so a reader can see id 12 before 11: readers
-- re-check such gaps for a while. Rows older than an hour are pruned.
--
-- `replicas`: one row per replica, rewritten by its heartbeat on the
-- database clock, with the highest change id it applied (admin calls wait
-- for every live replica to pass their change).
--
-- `onboarding_flows.exchange_claimed_until`: the atomic claim of a `state`
-- before its code is sent to the PBX (only one replica may send it).

CREATE TABLE changes (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT   NOT NULL CHECK (kind IN ('tenant', 'client')),
    key  TEXT   COLLATE "C" NOT NULL,
    at   BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);

CREATE INDEX changes_at ON changes (at);

CREATE FUNCTION pbx_tokend_tenant_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (kind, key)
        VALUES ('tenant', CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END);
    PERFORM pg_notify('pbx_tokend_changes', '');
    RETURN NULL;
END;
$$;

CREATE FUNCTION pbx_tokend_client_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (kind, key)
        VALUES ('client', CASE WHEN TG_OP = 'DELETE' THEN OLD.client_id ELSE NEW.client_id END);
    PERFORM pg_notify('pbx_tokend_changes', '');
    RETURN NULL;
END;
$$;

-- Only what a replica's cache holds: state and base URL (a renewal's
-- last_refresh_at or failure count alone is not worth a change row).
CREATE TRIGGER tenants_inserted_or_deleted AFTER INSERT OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION pbx_tokend_tenant_changed();
CREATE TRIGGER tenants_updated AFTER UPDATE ON tenants
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.pbx_base_url IS DISTINCT FROM NEW.pbx_base_url)
    EXECUTE FUNCTION pbx_tokend_tenant_changed();

CREATE TRIGGER tokens_changed AFTER INSERT OR UPDATE OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION pbx_tokend_tenant_changed();

CREATE TRIGGER api_clients_changed AFTER INSERT OR UPDATE OR DELETE ON api_clients
    FOR EACH ROW EXECUTE FUNCTION pbx_tokend_client_changed();

CREATE TABLE replicas (
    name              TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    last_heartbeat    BIGINT NOT NULL,
    applied_change_id BIGINT NOT NULL DEFAULT 0,
    started_at        BIGINT NOT NULL
);

ALTER TABLE onboarding_flows ADD COLUMN exchange_claimed_until BIGINT;
