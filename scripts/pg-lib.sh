# Sourced by the benchmark scripts: a throw-away PostgreSQL in a temp dir.
# The server runs with its durable defaults (fsync, synchronous_commit);
# only initdb and the base backup skip their final sync.
# As root, PostgreSQL runs as `postgres` (or `nobody`) through runuser:
# it refuses to run as root. Needs PG_BIN (default: the newest
# /usr/lib/postgresql/*/bin) and python3 (free ports).
#
#   pg_init DIR            initdb into DIR/primary
#   pg_start DIR NAME PORT start DIR/NAME on 127.0.0.1:PORT (waits); extra
#                          server options from PG_EXTRA_OPTS (e.g.
#                          "-c shared_preload_libraries=pg_stat_statements")
#   pg_standby DIR PORT    pg_basebackup -R of the primary into DIR/standby
#   pg_stop DIR NAME       immediate stop (if running)
#   asuser CMD..           CMD as the PostgreSQL user
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PG_BIN/initdb" ] || { echo "no PostgreSQL 15+ binaries: apt-get install -y postgresql, or set PG_BIN" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then
  PG_OS_USER=$(getent passwd postgres >/dev/null && echo postgres || echo nobody)
  asuser() { runuser -u "$PG_OS_USER" -- "$@"; }
else
  PG_OS_USER=$(id -un)
  asuser() { "$@"; }
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_init() {
  mkdir -p "$1"; chmod 755 "$1"; chown "$PG_OS_USER" "$1"
  asuser "$PG_BIN/initdb" -D "$1/primary" -U postgres -A trust -E UTF8 --no-sync --no-instructions >"$1/initdb.log" 2>&1 \
    || { cat "$1/initdb.log" >&2; echo "initdb failed (every directory above $1 must be searchable by $PG_OS_USER)" >&2; return 1; }
}
pg_start() {
  asuser "$PG_BIN/pg_ctl" -D "$1/$2" -l "$1/$2.log" -w -t 60 \
    -o "-p $3 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$1 -c max_connections=200 ${PG_EXTRA_OPTS:-}" start >/dev/null
}
pg_standby() {
  asuser "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$2" -U postgres -R -X stream --no-sync -D "$1/standby" >"$1/basebackup.log" 2>&1
}
pg_stop() { [ -f "$1/$2/postmaster.pid" ] && asuser "$PG_BIN/pg_ctl" -D "$1/$2" -m immediate stop >/dev/null 2>&1 || true; }
