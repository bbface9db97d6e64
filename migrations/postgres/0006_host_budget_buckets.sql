-- PostgreSQL 0006: the per-host request window of the shared budget
-- (0003_host_budget.sql) counted in buckets instead of one entry per
-- request start. Every take holds the host's budget row lock, so every
-- request to a host, from every replica, queues behind the one before it:
-- the work done under that lock caps the host's request rate. With one
-- entry per start, that work grew with the rate itself (at 750 starts a
-- second the array was 6 KB, TOASTed, decompressed, sorted and rewritten
-- on every take: about 1 ms under the lock, so about 1,000 takes a
-- second at most). Now the window is at most 52 buckets of 1/50 of the
-- window each (start time, count), a few hundred bytes whatever the rate,
-- and expired slots are only pruned when the host looks busy. And one call
-- takes slots for several requests (a replica's requests to one host that
-- arrive while its previous call runs, `store/postgres/budget.rs`), each
-- request answered on its own as if it had called alone, one after the
-- other: the lock is taken once per call instead of once per request.
--
-- The limit stays a hard one: a bucket counts while any part of it is
-- inside the window, so the count is never below the true number of
-- starts in the window. At worst a request waits up to one bucket (20 ms
-- of a 1 s window) longer than an exact count would make it; never
-- sooner.

ALTER TABLE host_budget
    DROP COLUMN starts,
    -- Bucket start times (ms on the database clock, multiples of the
    -- bucket width), oldest first, and the request starts in each.
    ADD COLUMN bucket_at BIGINT[] NOT NULL DEFAULT '{}',
    ADD COLUMN bucket_n  BIGINT[] NOT NULL DEFAULT '{}';

DROP FUNCTION pbx_take_host_slot(TEXT, TEXT, INT, INT, BIGINT, BIGINT);

-- p_n requests at once, answered in order, as p_n calls of 0003's
-- pbx_take_host_slot one after the other would be: outcome 'granted'
-- (slot = the slot id), 'throttled' (wait_ms = until the 429's reset
-- time), 'rate' (wait_ms = until the window has room), 'busy' (every
-- concurrency slot is taken). Waits are relative to the database's now.
CREATE FUNCTION pbx_take_host_slots(
    p_host TEXT, p_holder TEXT, p_rps INT, p_concurrent INT,
    p_window_ms BIGINT, p_slot_ttl_ms BIGINT, p_n INT)
RETURNS TABLE (outcome TEXT, slot BIGINT, wait_ms BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_now       BIGINT;
    v_width     BIGINT := greatest(p_window_ms / 50, 1);
    v_at        BIGINT[];
    v_n         BIGINT[];
    v_throttled BIGINT;
    v_keep      INT;
    v_count     BIGINT := 0;
    v_left      BIGINT;
    v_inflight  BIGINT;
    v_bucket    BIGINT;
    v_last      INT;
    i           INT;
    k           INT;
BEGIN
    SELECT b.bucket_at, b.bucket_n, b.throttled_until INTO v_at, v_n, v_throttled
        FROM host_budget b WHERE b.pbx_host = p_host FOR UPDATE;
    IF NOT FOUND THEN
        -- Only a host's first request: a conflicting insert would wait for
        -- the lock holder's commit on every call.
        INSERT INTO host_budget (pbx_host) VALUES (p_host) ON CONFLICT (pbx_host) DO NOTHING;
        SELECT b.bucket_at, b.bucket_n, b.throttled_until INTO v_at, v_n, v_throttled
            FROM host_budget b WHERE b.pbx_host = p_host FOR UPDATE;
    END IF;
    -- After the lock wait: the time this decision is made.
    v_now := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    IF v_throttled > v_now THEN
        RETURN QUERY SELECT 'throttled'::text, NULL::bigint, v_throttled - v_now
            FROM generate_series(1, p_n);
        RETURN;
    END IF;
    -- Buckets wholly before the window are dropped (oldest first).
    v_keep := 1;
    WHILE v_keep <= coalesce(cardinality(v_at), 0)
          AND v_at[v_keep] + v_width <= v_now - p_window_ms LOOP
        v_keep := v_keep + 1;
    END LOOP;
    IF v_keep > 1 THEN
        v_at := v_at[v_keep:];
        v_n := v_n[v_keep:];
    END IF;
    FOR i IN 1 .. coalesce(cardinality(v_n), 0) LOOP
        v_count := v_count + v_n[i];
    END LOOP;
    -- The newest bucket takes this call's starts (after the clock stepped
    -- back, the latest one there is).
    v_bucket := v_now - v_now % v_width;
    IF coalesce(cardinality(v_at), 0) = 0 OR v_at[cardinality(v_at)] < v_bucket THEN
        v_at := array_append(v_at, v_bucket);
        v_n := array_append(v_n, 0::bigint);
    END IF;
    v_last := cardinality(v_at);
    SELECT count(*) INTO v_inflight
        FROM (SELECT 1 FROM host_slots WHERE pbx_host = p_host LIMIT p_concurrent) s;
    IF v_inflight + p_n > p_concurrent THEN
        -- Slots of a replica that died free themselves by their expiry.
        DELETE FROM host_slots WHERE pbx_host = p_host AND expires_at <= v_now;
        SELECT count(*) INTO v_inflight FROM host_slots WHERE pbx_host = p_host;
    END IF;
    FOR k IN 1 .. p_n LOOP
        slot := NULL; wait_ms := 0;
        IF v_count >= p_rps THEN
            -- Until enough of the oldest buckets have left the window.
            outcome := 'rate'; wait_ms := p_window_ms;
            v_left := v_count;
            FOR i IN 1 .. v_last LOOP
                v_left := v_left - v_n[i];
                IF v_left < p_rps THEN
                    wait_ms := v_at[i] + v_width + p_window_ms - v_now;
                    EXIT;
                END IF;
            END LOOP;
        ELSIF v_inflight >= p_concurrent THEN
            outcome := 'busy';
        ELSE
            INSERT INTO host_slots (pbx_host, holder, expires_at)
                VALUES (p_host, p_holder, v_now + p_slot_ttl_ms) RETURNING slot_id INTO slot;
            outcome := 'granted';
            v_count := v_count + 1;
            v_inflight := v_inflight + 1;
            v_n[v_last] := v_n[v_last] + 1;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_n[v_last] = 0 THEN
        v_at := v_at[1:v_last - 1];
        v_n := v_n[1:v_last - 1];
    END IF;
    UPDATE host_budget SET bucket_at = v_at, bucket_n = v_n WHERE pbx_host = p_host;
END
$$;
