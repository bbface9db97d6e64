-- PostgreSQL 0005: refresh outcomes recorded in batches, one call per
-- batch (src/store/postgres/refresh_batch.rs groups the outcomes that
-- arrive while a commit runs, as SQLite's group commit does). Per outcome
-- the function does what one transaction of statements did before: the
-- write fence, the tenant update, the token and job upserts and the
-- STATE_CHANGED event, with the same rules as src/store/postgres/tokens.rs
-- and src/store/sqlite/tokens.rs. An outcome that cannot apply (tenant
-- gone, fence moved) is answered with a status, never an exception, so it
-- leaves the others of its batch alone; an unexpected error aborts the
-- whole call and the caller retries each outcome alone.
--
-- Locks: every tenant row of the batch first, in id order (two batches or
-- a batch and a single write never wait on each other in a cycle), then
-- per outcome the lease row shared (a claim by another replica waits for
-- this commit), then, at the first event, the transaction-level advisory
-- lock event writers take (src/store/postgres/events.rs): no row lock is
-- ever awaited while that lock is held. Each statement of a PL/pgSQL
-- function takes a new snapshot under READ COMMITTED, so the checks see
-- every write committed before their row locks were granted.
--
-- outcome: 'ok' (failures = consecutive_failures after the update,
-- event_id = the event written, if any), 'not_found', 'moved' (host = the
-- tenant's host now), 'lease' (holder, epoch = the lease as it is),
-- 'token' (stored_issued = the stored token's issued_at, NULL: none).

CREATE FUNCTION pbx_record_refreshes(
    p_tenant        TEXT[],
    -- 'none', 'lease' (p_fence_host, _holder, _epoch) or 'issued'
    -- (p_fence_issued: the issued_at of the token expected, NULL: none).
    p_fence         TEXT[],
    p_fence_host    TEXT[],
    p_fence_holder  TEXT[],
    p_fence_epoch   BIGINT[],
    p_fence_issued  BIGINT[],
    -- true: a new token (p_token .. p_expires); false: a failure
    -- (p_state, p_error).
    p_ok            BOOLEAN[],
    p_state         TEXT[],
    p_error         TEXT[],
    p_token         BYTEA[],
    p_token_type    TEXT[],
    p_issued        BIGINT[],
    p_expires       BIGINT[],
    -- The job's next due time (renew_at or retry_at) and the outcome's now.
    p_due           BIGINT[],
    p_now           BIGINT[],
    p_event_kind    TEXT,
    p_recovered     TEXT,
    p_outbox        BOOLEAN,
    p_events_lock   BIGINT)
RETURNS TABLE (r_ord INT, r_outcome TEXT, r_failures BIGINT, r_event_id BIGINT,
               r_host TEXT, r_holder TEXT, r_epoch BIGINT, r_stored_issued BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_host     TEXT;
    v_before   TEXT;
    v_after    TEXT;
    v_failures BIGINT;
    v_holder   TEXT;
    v_epoch    BIGINT;
    v_stored   BIGINT;
    v_event    BIGINT;
    v_locked   BOOLEAN := false;
BEGIN
    PERFORM 1 FROM tenants WHERE tenant_id = ANY (p_tenant) ORDER BY tenant_id FOR UPDATE;
    FOR i IN 1 .. coalesce(cardinality(p_tenant), 0) LOOP
        r_ord := i; r_failures := NULL; r_event_id := NULL; r_host := NULL;
        r_holder := NULL; r_epoch := NULL; r_stored_issued := NULL;
        SELECT t.pbx_host, t.state INTO v_host, v_before
            FROM tenants t WHERE t.tenant_id = p_tenant[i];
        IF NOT FOUND THEN
            r_outcome := 'not_found'; RETURN NEXT; CONTINUE;
        END IF;
        IF p_fence[i] = 'lease' THEN
            IF v_host IS DISTINCT FROM p_fence_host[i] THEN
                r_outcome := 'moved'; r_host := v_host; RETURN NEXT; CONTINUE;
            END IF;
            SELECT l.holder, l.epoch INTO v_holder, v_epoch
                FROM host_leases l WHERE l.pbx_host = p_fence_host[i] FOR SHARE;
            IF NOT FOUND THEN
                v_holder := 'nobody'; v_epoch := 0;
            END IF;
            IF v_holder IS DISTINCT FROM p_fence_holder[i]
               OR v_epoch IS DISTINCT FROM p_fence_epoch[i] THEN
                r_outcome := 'lease'; r_holder := v_holder; r_epoch := v_epoch;
                RETURN NEXT; CONTINUE;
            END IF;
        ELSIF p_fence[i] = 'issued' THEN
            -- No row leaves v_stored NULL: "no token stored".
            SELECT k.issued_at INTO v_stored FROM tokens k WHERE k.tenant_id = p_tenant[i];
            IF v_stored IS DISTINCT FROM p_fence_issued[i] THEN
                r_outcome := 'token'; r_stored_issued := v_stored; RETURN NEXT; CONTINUE;
            END IF;
        ELSIF p_fence[i] IS DISTINCT FROM 'none' THEN
            RAISE EXCEPTION 'pbx_record_refreshes: unknown fence %', p_fence[i];
        END IF;
        -- A tenant an operator disabled, or sent back to authorization,
        -- while the refresh was in flight keeps that state.
        IF p_ok[i] THEN
            UPDATE tenants SET
                    state = CASE WHEN state IN ('disabled', 'pending_authorization')
                                 THEN state ELSE 'active' END,
                    consecutive_failures = 0, last_error = NULL,
                    last_refresh_at = p_issued[i], updated_at = p_now[i]
                WHERE tenant_id = p_tenant[i]
                RETURNING consecutive_failures, state INTO v_failures, v_after;
            -- Update, else insert: no other writer can insert these rows
            -- meanwhile (every token and job write holds the tenant's row
            -- lock, taken above), and a plain update is cheaper than an
            -- INSERT .. ON CONFLICT that conflicts on nearly every renewal.
            UPDATE tokens SET token_sealed = p_token[i], token_type = p_token_type[i],
                    issued_at = p_issued[i], expires_at = p_expires[i]
                WHERE tenant_id = p_tenant[i];
            IF NOT FOUND THEN
                INSERT INTO tokens (tenant_id, token_sealed, token_type, issued_at, expires_at)
                    VALUES (p_tenant[i], p_token[i], p_token_type[i], p_issued[i], p_expires[i]);
            END IF;
            UPDATE renewal_jobs SET pbx_host = v_host, due_at = p_due[i], attempts = 0
                WHERE tenant_id = p_tenant[i];
            IF NOT FOUND THEN
                INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts)
                    VALUES (p_tenant[i], v_host, p_due[i], 0);
            END IF;
        ELSE
            UPDATE tenants SET
                    state = CASE WHEN state IN ('disabled', 'pending_authorization')
                                 THEN state ELSE p_state[i] END,
                    consecutive_failures = consecutive_failures + 1, last_error = p_error[i],
                    updated_at = p_now[i]
                WHERE tenant_id = p_tenant[i]
                RETURNING consecutive_failures, state INTO v_failures, v_after;
            UPDATE renewal_jobs SET pbx_host = v_host, due_at = p_due[i],
                    attempts = attempts + 1
                WHERE tenant_id = p_tenant[i];
            IF NOT FOUND THEN
                INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts)
                    VALUES (p_tenant[i], v_host, p_due[i], 1);
            END IF;
        END IF;
        IF v_after IS DISTINCT FROM v_before THEN
            IF NOT v_locked THEN
                PERFORM pg_advisory_xact_lock(p_events_lock);
                v_locked := true;
            END IF;
            INSERT INTO tenant_events (tenant_id, kind, previous_state, state, message, at)
                VALUES (p_tenant[i], p_event_kind, v_before, v_after,
                        CASE WHEN p_ok[i] THEN p_recovered ELSE p_error[i] END, p_now[i])
                RETURNING event_id INTO v_event;
            IF p_outbox THEN
                INSERT INTO webhook_outbox (event_id, tenant_id, next_attempt_at)
                    VALUES (v_event, p_tenant[i], p_now[i]);
            END IF;
            r_event_id := v_event;
        END IF;
        r_outcome := 'ok'; r_failures := v_failures;
        RETURN NEXT;
    END LOOP;
END
$$;
