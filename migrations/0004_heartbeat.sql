-- 0002: one row the daemon rewrites every few seconds. The write proves the
-- database can still be written (disk full, read-only remount, lost lock):
-- the gRPC health status and the systemd watchdog depend on it.

CREATE TABLE heartbeat (
    id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
) STRICT;
