-- The per-host PBX request budget shared by every replica (several
-- replicas on PostgreSQL): the recent request starts of each host (a
-- sliding window), its 429 reset time, and the requests in flight as slots
-- with an expiry (a replica that died frees its slots by their expiry).
-- pbx_take_host_slot takes one slot atomically, on the database's clock,
-- in one round trip.

CREATE TABLE host_budget (
    pbx_host        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    starts          BIGINT[] NOT NULL DEFAULT '{}',
    throttled_until BIGINT   NOT NULL DEFAULT 0
);

CREATE TABLE host_slots (
    slot_id    BIGSERIAL PRIMARY KEY,
    pbx_host   TEXT COLLATE "C" NOT NULL,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX host_slots_by_host ON host_slots (pbx_host);

-- outcome: 'granted' (slot = the slot id), 'throttled' (wait_ms = until
-- the 429's reset time), 'rate' (wait_ms = until the window has room),
-- 'busy' (every concurrency slot is taken). Waits are relative, so the
-- replicas' clocks need not agree with the database's.
CREATE FUNCTION pbx_take_host_slot(
    p_host TEXT, p_holder TEXT, p_rps INT, p_concurrent INT,
    p_window_ms BIGINT, p_slot_ttl_ms BIGINT)
RETURNS TABLE (outcome TEXT, slot BIGINT, wait_ms BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_now       BIGINT;
    v_starts    BIGINT[];
    v_throttled BIGINT;
    v_inflight  BIGINT;
    v_slot      BIGINT;
BEGIN
    INSERT INTO host_budget (pbx_host) VALUES (p_host) ON CONFLICT (pbx_host) DO NOTHING;
    SELECT b.starts, b.throttled_until INTO v_starts, v_throttled
        FROM host_budget b WHERE b.pbx_host = p_host FOR UPDATE;
    -- After the lock wait: the time this decision is made.
    v_now := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    IF v_throttled > v_now THEN
        RETURN QUERY SELECT 'throttled'::text, NULL::bigint, v_throttled - v_now;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(s ORDER BY s), '{}') INTO v_starts
        FROM unnest(v_starts) AS s WHERE s > v_now - p_window_ms;
    IF cardinality(v_starts) >= p_rps THEN
        UPDATE host_budget SET starts = v_starts WHERE pbx_host = p_host;
        RETURN QUERY SELECT 'rate'::text, NULL::bigint,
            v_starts[cardinality(v_starts) - p_rps + 1] + p_window_ms - v_now;
        RETURN;
    END IF;
    DELETE FROM host_slots WHERE pbx_host = p_host AND expires_at <= v_now;
    SELECT count(*) INTO v_inflight FROM host_slots WHERE pbx_host = p_host;
    IF v_inflight >= p_concurrent THEN
        RETURN QUERY SELECT 'busy'::text, NULL::bigint, 0::bigint;
        RETURN;
    END IF;
    UPDATE host_budget SET starts = array_append(v_starts, v_now) WHERE pbx_host = p_host;
    INSERT INTO host_slots (pbx_host, holder, expires_at)
        VALUES (p_host, p_holder, v_now + p_slot_ttl_ms) RETURNING slot_id INTO v_slot;
    RETURN QUERY SELECT 'granted'::text, v_slot, 0::bigint;
END
$$;
