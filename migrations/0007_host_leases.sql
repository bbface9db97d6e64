-- 0007: renewal duty per PBX host. One row per host: who holds it, until
-- when, and an epoch that grows by one at every change of holder (never
-- reset, so a write made under an old epoch can always be told apart). A
-- single SQLite node always holds its own leases; the table is here so
-- every backend keeps the same rules (the conformance suite checks them).

CREATE TABLE host_leases (
    pbx_host   TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL CHECK (epoch > 0),
    expires_at INTEGER NOT NULL
) STRICT;
