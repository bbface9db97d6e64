#!/usr/bin/env bash
# Runs pbx-tokend under the real unit file, started by a real systemd, on a
# machine where systemd is not PID 1 (a CI VM or container with root): a
# private systemd boots as PID 1 of new PID, mount and network namespaces,
# with the unit copied verbatim into /run/systemd/system. Then it registers
# a tenant against the simulator, checks the sandbox from /proc (seccomp
# filter, no capabilities, NoNewPrivs, dynamic user, read-only /usr),
# reloads, and stops. Nothing outside the namespaces is touched except an
# empty /etc/pbx-tokend mount point, removed at the end.
#
# Usage: systemd/sandbox-check.sh [BIN_DIR]   (BIN_DIR holds pbx-tokend,
# pbx-tokenctl and pbx-sim; default target/debug). Needs root and
# /lib/systemd/systemd.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=$(realpath "${1:-target/debug}")
UNIT=$(realpath systemd/pbx-tokend.service)
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
[ -x /lib/systemd/systemd ] || { echo "needs /lib/systemd/systemd" >&2; exit 2; }

created_etc=0
if [ ! -e /etc/pbx-tokend ]; then mkdir /etc/pbx-tokend; created_etc=1; fi
WORK=$(mktemp -d)
cleanup() {
  [ -n "${NS_PID:-}" ] && kill -9 "$NS_PID" 2>/dev/null || true
  [ "$created_etc" = 1 ] && rmdir /etc/pbx-tokend 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The namespace: private /etc/pbx-tokend, /usr/local/bin, /var/lib, /var/log
# and /tmp; its own cgroup2 mount (systemd remounts the cgroup file system it
# finds, so it must not find the host's); /sys and /proc/sys read-only
# (bind remounts: per mount, not per file system) so the container-aware
# units (udev, sysctl) skip. Booted to basic.target only: no host services.
cat > "$WORK/boot.sh" <<BOOT
set -e
mount --make-rprivate /
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Copied before /tmp is covered: the checkout may live under /tmp.
mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin
cp "$BIN_DIR/pbx-tokend" "$BIN_DIR/pbx-tokenctl" "$BIN_DIR/pbx-sim" /usr/local/bin/
for d in /tmp /var/tmp /var/log; do mount -t tmpfs -o mode=1777 tmpfs \$d; done
mount -t tmpfs -o mode=0755 tmpfs /etc/pbx-tokend
head -c 32 /dev/urandom > /etc/pbx-tokend/master.key
chmod 600 /etc/pbx-tokend/master.key
printf 'state_dir = "/var/lib/pbx-tokend"\n[grpc]\nlisten = "127.0.0.1:50051"\n[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\n[metrics]\nlisten = "127.0.0.1:9464"\n' > /etc/pbx-tokend/pbx-tokend.toml
chmod 644 /etc/pbx-tokend/pbx-tokend.toml
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mount -o remount,bind,ro /sys
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
exec env container=pbx-sandbox-check /lib/systemd/systemd --system --unit=basic.target --log-target=console --log-level=warning
BOOT
unshare --pid --fork --mount --net --uts --ipc --cgroup --mount-proc bash "$WORK/boot.sh" > "$WORK/systemd.log" 2>&1 &
UNSHARE_PID=$!
for _ in $(seq 50); do
  NS_PID=$(pgrep -P "$UNSHARE_PID" -x systemd || true)
  [ -n "$NS_PID" ] && break
  sleep 0.1
done
[ -n "${NS_PID:-}" ] || { cat "$WORK/systemd.log"; echo "systemd did not start" >&2; exit 1; }
in_ns() { nsenter -t "$NS_PID" -a "$@"; }
for _ in $(seq 100); do
  in_ns systemctl is-system-running >/dev/null 2>&1 && break
  state=$(in_ns systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break;; esac
  sleep 0.2
done
echo "== systemd in the namespace: $(in_ns systemctl is-system-running 2>/dev/null || true)"

in_ns mkdir -p /run/systemd/system
# Through stdin: the namespace's /tmp is its own, and the checkout may be there.
in_ns bash -c 'cat > /run/systemd/system/pbx-tokend.service' < "$UNIT"
in_ns systemctl daemon-reload
in_ns bash -c 'nohup /usr/local/bin/pbx-sim --listen 127.0.0.1:8080 --trusted-apps 3 >/run/pbx-sim.log 2>&1 &'
if ! in_ns systemctl start pbx-tokend; then
  in_ns journalctl --no-pager -u pbx-tokend | tail -3
  if in_ns journalctl --no-pager -u pbx-tokend | grep -q 'credentials/pbx-tokend.service/master.key: Permission denied'; then
    # Seen with systemd 252 booted inside namespaces of a Firecracker VM:
    # even `systemd-run -p DynamicUser=yes -p LoadCredential=...` cannot
    # read its own credential there. Go on with the rest of the unit as is,
    # the key generated in the state directory instead (which the unit
    # forbids, so the drop-in lifts that rule too).
    echo "== the credential is unreadable under this nested systemd; retrying without LoadCredential"
    in_ns systemctl stop pbx-tokend || true
    in_ns systemctl reset-failed pbx-tokend || true
    in_ns mkdir -p /run/systemd/system/pbx-tokend.service.d
    in_ns bash -c 'printf "[Service]\nLoadCredential=\nEnvironment=PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL=false\n" > /run/systemd/system/pbx-tokend.service.d/no-credential.conf'
    in_ns systemctl daemon-reload
    in_ns systemctl start pbx-tokend
  else
    in_ns systemctl --no-pager status pbx-tokend || true
    exit 1
  fi
fi
in_ns systemctl --no-pager status pbx-tokend | head -12

MAIN=$(in_ns systemctl show -p MainPID --value pbx-tokend)
echo "== sandbox of the main process (pid $MAIN in the namespace)"
in_ns grep -E '^(Uid|Seccomp|Seccomp_filters|NoNewPrivs|CapEff|CapBnd|CapPrm)' "/proc/$MAIN/status"
in_ns bash -c "grep -E ' /usr | / ' /proc/$MAIN/mountinfo | awk '{print \$5, \$6}'"

echo "== work through it"
printf '%s' secret-000001 | in_ns /usr/local/bin/pbx-tokenctl tenant add acme --base-url http://127.0.0.1:8080 \
  --trusted-client-id app-000001 --trusted-client-secret-stdin --json | grep '"state"'
in_ns /usr/local/bin/pbx-tokenctl token get acme --json | grep -c access_token
in_ns /usr/local/bin/pbx-tokenctl status | head -4
in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; grep -E "^pbx_tokend_(tenants\{state=\"active\"\}|database_writable)" <&3'
in_ns bash -c 'ls -la /var/lib/private/pbx-tokend/ | sed 1d'
in_ns systemctl show -p WatchdogUSec -p WatchdogTimestamp -p NRestarts pbx-tokend
in_ns systemctl reload pbx-tokend
sleep 0.5
in_ns systemctl stop pbx-tokend
echo "== journal"
in_ns journalctl -u pbx-tokend --no-pager -o short-monotonic | tail -12
echo "== result: $(in_ns systemctl show -p Result --value pbx-tokend)"
