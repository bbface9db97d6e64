-- 0008: tenant events and the webhook outbox. An event is written in the
-- same transaction as the change that caused it; event_id grows with
-- commit order (AUTOINCREMENT: never reused, even after pruning), so a
-- reader resuming after id N misses nothing still retained. Events outlive
-- their tenant (no foreign key): DELETED is an event too.
--
-- webhook_outbox holds the events not yet delivered to the webhook (only
-- written while webhooks are enabled); a delivered row is deleted. Pruning
-- never deletes an event that is still in the outbox.
--
-- event_retention remembers the highest event id pruned, so a reader whose
-- cursor is below it learns that it missed events.

CREATE TABLE tenant_events (
    event_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    previous_state TEXT,
    state          TEXT,
    message        TEXT    NOT NULL,
    at             INTEGER NOT NULL
) STRICT;

CREATE INDEX tenant_events_by_time ON tenant_events (at);

CREATE TABLE webhook_outbox (
    event_id        INTEGER NOT NULL PRIMARY KEY REFERENCES tenant_events (event_id),
    tenant_id       TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT
) STRICT;

CREATE INDEX webhook_outbox_by_tenant ON webhook_outbox (tenant_id, event_id);

CREATE TABLE event_retention (
    id             INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    pruned_through INTEGER NOT NULL
) STRICT;

INSERT INTO event_retention (id, pruned_through) VALUES (1, 0);
