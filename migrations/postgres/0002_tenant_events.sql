-- PostgreSQL 0002: tenant events and the webhook outbox, equal to SQLite's
-- 0008_tenant_events.sql. event_id comes from an identity sequence; since
-- sequence values are taken before commit, writers of events take
-- transaction-level advisory lock EVENTS_LOCK first (see
-- src/store/postgres/events.rs), so ids commit in increasing order and a
-- reader resuming after id N never skips one that commits later.

CREATE TABLE tenant_events (
    event_id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      TEXT COLLATE "C" NOT NULL,
    kind           TEXT   NOT NULL,
    previous_state TEXT,
    state          TEXT,
    message        TEXT   NOT NULL,
    at             BIGINT NOT NULL
);

CREATE INDEX tenant_events_by_time ON tenant_events (at);

CREATE TABLE webhook_outbox (
    event_id        BIGINT NOT NULL PRIMARY KEY REFERENCES tenant_events (event_id),
    tenant_id       TEXT COLLATE "C" NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_by_tenant ON webhook_outbox (tenant_id, event_id);

CREATE TABLE event_retention (
    id             BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT NOT NULL
);

INSERT INTO event_retention (id, pruned_through) VALUES (1, 0);
