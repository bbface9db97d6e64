# Shared by the benchmark scripts (sourced): waiting for a loopback port,
# and the daemon config they all start from.

# wait_port PORT: until something listens on 127.0.0.1:PORT (30 s at most).
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}

# bench_daemon_toml STATE_DIR PORT RPS [LEVEL]: a daemon on loopback that
# may reach the simulator over plain HTTP, with the per-host rate RPS and
# 64 requests in flight; callers append their own sections.
bench_daemon_toml() {
  cat <<TOML
state_dir = "$1"
[grpc]
listen = "127.0.0.1:$2"
[log]
level = "${4:-warn}"
[pbx]
allow_insecure_http = true
allow_private_addresses = true
[limits]
per_host_requests_per_second = $3
per_host_concurrent = 64
TOML
}
