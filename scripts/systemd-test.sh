#!/usr/bin/env bash
# The systemd units for real: boots a Debian 12 (debootstrap, cached under
# /var/cache/boxmeter-ci) with systemd-nspawn, sharing this machine's
# network, with this build installed into it (cmake --install, DESTDIR) and
# the shipped units from share/boxmeter in /etc/systemd/system, a stand-in
# sing-box.service (User=sing-box; it reads its config at start and on every
# SIGHUP), a throwaway PostgreSQL and the real v2ray-core (the stats API) on
# the host. Drives systemctl inside the container (nsenter) and checks:
#
#   - readiness only once PostgreSQL answers (started with the database down:
#     "activating" until it comes up, then "active");
#   - STATUS= text after polls; the watchdog pinging (no restarts over more
#     than two WatchdogSec, shortened to 6s by a drop-in to keep this short);
#   - the hook -> boxmeter-gen.path -> boxmeter-gen.service chain: once per
#     change (one write, one reload of sing-box), not at all when
#     `boxmeter-gen --check` says the config is current; the config written
#     by the generator's own DynamicUser with sing-box's group, mode 0640;
#   - the flush before sing-box's reload: ExecStartPost's
#     `boxmeter-collector --flush`, run as root, reaches the collector's
#     socket in /run/boxmeter (mode 0700) and succeeds;
#   - usage events through the installed hook (libexec/boxmeter/
#     on-event-webhook.sh) under the unit's sandbox, its secret handed over
#     by the README's drop-in (LoadCredential=), reach a receiver signed;
#   - `systemctl reload` (SIGHUP) keeps the same process and rereads;
#   - `systemctl stop` while a commit waits on a lock: Result=success, and
#     the database's totals equal v2ray-core's counters afterwards;
#   - LimitCORE=0 and MemoryMax= in effect; sing-box's user cannot read
#     either login's password or the webhook's secret (credentials, files,
#     /proc/PID/environ).
# The container's journal is printed when a check fails. Everything this run
# makes (container, overlay mount, processes, files) is removed at the end;
# the Debian tree stays cached. Skips (exit 0, with the reason) only when
# systemd-nspawn cannot run at all. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. scripts/lib/ci-rootfs.sh
. scripts/lib/ci-peers.sh
started=$SECONDS
build_dir=${BUILD_DIR:-build}
step() { echo "=== systemd-test: $* (at $((SECONDS - started))s)"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "systemd-test: SKIPPED: needs root (systemd-nspawn)"
  exit 0
fi
if ! command -v systemd-nspawn >/dev/null || ! systemd-nspawn --version >/dev/null 2>&1; then
  echo "systemd-test: SKIPPED: systemd-nspawn cannot run here (package" \
    "systemd-container; scripts/install-deps.sh test installs it)"
  exit 0
fi

work=$(mktemp -d /tmp/boxmeter-systemd-test-XXXXXX)
chmod 0755 "$work"
root="$work/root"
machine=boxmeter-ci-$$
pids=()
nspawn_pid=""
leader=""
overlay=no

journal() {
  [ -n "$leader" ] || return 0
  echo "--- the container's journal (boxmeter units, sing-box, the end)" >&2
  nsenter -t "$leader" -a journalctl --no-pager -o short-precise -n 150 \
    -u boxmeter-collector.service -u boxmeter-gen.service -u boxmeter-gen.path \
    -u sing-box.service >&2 || true
}
fail() {
  echo "systemd-test: FAILED: $*" >&2
  journal
  exit 1
}
cleanup() {
  local status=$?
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid"  # nspawn: the container's systemd powers off
    for _ in $(seq 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  [ "$pg_running" = yes ] && pg_stop_now
  [ "$overlay" = yes ] && umount "$root"
  if [ "$status" -ne 0 ] && [ -f "$work/console.log" ]; then
    echo "--- the container's console (end)" >&2
    tail -20 "$work/console.log" >&2
  fi
  rm -rf "$work"
  echo "systemd-test: removed the container, its overlay, the processes and files of this run"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the tree to boot ---------------------------------------------------------
step "build boxmeter-collector and boxmeter-gen ($build_dir)"
[ -f "$build_dir/build.ninja" ] || cmake -S . -B "$build_dir" -G Ninja >/dev/null
ninja -C "$build_dir" boxmeter-collector boxmeter-gen >/dev/null
step "a Debian 12 tree with systemd and the runtime libraries (cached)"
# procps: /bin/kill, which ExecReload= of the collector (and of sing-box's
# unit) runs; every Debian host but a minimal container has it.
# shellcheck disable=SC2046
lower=$(ci_rootfs systemd systemd dbus procps $(scripts/install-deps.sh runtime --print))
mkdir -p "$work/upper" "$work/overlay-work" "$root"
mount -t overlay overlay \
  -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/overlay-work" "$root"
overlay=yes

step "install this build into it (cmake --install --prefix /usr, DESTDIR) with the shipped units"
DESTDIR="$root" cmake --install "$build_dir" --prefix /usr >/dev/null
for unit in boxmeter-collector.service boxmeter-gen.service boxmeter-gen.path; do
  cp "$root/usr/share/boxmeter/$unit" "$root/etc/systemd/system/$unit"
done
chroot "$root" useradd --system --user-group --no-create-home \
  --home-dir /var/lib/sing-box --shell /usr/sbin/nologin sing-box
# As the unit's comment says: sing-box's directory, set-group-ID.
install -d -o root -g "$(chroot "$root" id -g sing-box)" -m 2770 "$root/etc/sing-box"

step "a throwaway PostgreSQL (the roles and logins as compose makes them), v2ray-core, HTTP"
peers_postgres
peers_v2ray
peers_webhook

# --- the config inside --------------------------------------------------------
install -d -m 0755 "$root/etc/boxmeter"
cat >"$root/etc/boxmeter/boxmeter.yaml" <<YAML
node: edge-1
source:
  address: 127.0.0.1:$api_port
  timeout: 2s
database:
  url: $(url boxmeter_meter)
poll:
  interval: 1s
generator:
  template: /etc/boxmeter/sing-box.base.json
  output: /etc/sing-box/config.json
hooks:
  on_users_changed: touch /run/boxmeter/users-changed
  on_event: /usr/libexec/boxmeter/on-event-webhook.sh
YAML
chmod 0644 "$root/etc/boxmeter/boxmeter.yaml"
install -m 0644 deploy/sing-box.base.json "$root/etc/boxmeter/sing-box.base.json"
install -o root -g root -m 0600 "$secrets/collector.pgpass" "$root/etc/boxmeter/pgpass"
install -o root -g root -m 0600 "$secrets/generator.pgpass" "$root/etc/boxmeter/gen-pgpass"
install -o root -g root -m 0600 "$work/webhook-secret" "$root/etc/boxmeter/webhook-secret"

step "migrate as the owner login, granting the node to the collector's; one inbound and alice in the database"
BOXMETER_DATABASE_URL=$(url boxmeter_owner) PGPASSFILE="$secrets/owner.pgpass" \
  "$build_dir/collector/boxmeter-collector" --config "$root/etc/boxmeter/boxmeter.yaml" \
  --migrate --grant-node boxmeter_meter >"$work/migrate.log" 2>&1 ||
  { cat "$work/migrate.log" >&2; fail "--migrate --grant-node boxmeter_meter"; }
sql -c "INSERT INTO inbounds (node, tag, type, listen_port) VALUES ('edge-1', 'socks-in', 'vless', 443);
        SELECT add_user('alice', uuid => '11111111-2222-3333-4444-555555555555');
        SELECT link_user('alice', 'edge-1', 'socks-in');
        SELECT set_usage_events(true);" >/dev/null

# Drop-ins: the generator's own login (as the unit's comment says), a short
# watchdog for this test, and the stand-in sing-box.
mkdir -p "$root/etc/systemd/system/boxmeter-gen.service.d" \
  "$root/etc/systemd/system/boxmeter-collector.service.d"
printf '[Service]\nEnvironment=BOXMETER_DATABASE_URL=%s\n' "$(url boxmeter_gen)" \
  >"$root/etc/systemd/system/boxmeter-gen.service.d/login.conf"
printf '[Service]\nWatchdogSec=6s\n' >"$root/etc/systemd/system/boxmeter-collector.service.d/test.conf"
# The README's drop-in for the installed webhook hook, the secret as a
# credential (the dynamic user cannot read /etc/boxmeter/webhook-secret).
cat >"$root/etc/systemd/system/boxmeter-collector.service.d/webhook.conf" <<UNIT
[Service]
LoadCredential=webhook-secret:/etc/boxmeter/webhook-secret
Environment=BOXMETER_WEBHOOK_SECRET_FILE=%d/webhook-secret
Environment=BOXMETER_WEBHOOK_URL=$webhook_url
UNIT
cat >"$root/usr/local/bin/stand-in-sing-box" <<'SH'
#!/bin/sh
# Stands in for sing-box: reads its config at start and on every SIGHUP.
load() {
  sum=$(sha256sum </etc/sing-box/config.json) || { echo "cannot read the config"; exit 1; }
  echo "loaded $1 ${sum%% *}" >>/var/lib/sing-box/loads
  echo "sing-box stand-in: loaded the config ($1)"
}
load start
trap 'load reload' HUP
while :; do sleep 1 & wait $!; done
SH
chmod 0755 "$root/usr/local/bin/stand-in-sing-box"
cat >"$root/etc/systemd/system/sing-box.service" <<'UNIT'
[Unit]
Description=stand-in for sing-box (reads its config at start and on SIGHUP)
[Service]
User=sing-box
StateDirectory=sing-box
ExecStart=/usr/local/bin/stand-in-sing-box
ExecReload=/bin/kill -HUP $MAINPID
UNIT

# --- boot -----------------------------------------------------------------------
step "boot it with systemd-nspawn (the host's network)"
sql -c "SELECT 1" >/dev/null
stop_pg
systemd-nspawn -q -D "$root" -b --register=no --keep-unit --link-journal=no \
  -M "$machine" >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
find_leader() {
  leader=$(pgrep -P "$nspawn_pid" | head -1)
  [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ]
}
wait_for 90 "the container's systemd starts" find_leader
inside() { nsenter -t "$leader" -a "$@"; }
booted() {
  case $(inside systemctl is-system-running 2>/dev/null) in running | degraded) return 0 ;; esac
  return 1
}
wait_for 90 "the container's systemd finishes booting" booted
show() { inside systemctl show -p "$2" --value "$1"; }

step "readiness: the collector started with PostgreSQL down stays 'activating'"
inside systemctl start boxmeter-gen.path
inside systemctl start --no-block boxmeter-collector.service
main_pid_set() { [ "$(show boxmeter-collector MainPID)" != 0 ]; }
wait_for 90 "the collector's process runs" main_pid_set
for _ in $(seq 25); do  # 5 s of watching: it must not claim readiness
  [ "$(show boxmeter-collector ActiveState)" = activating ] ||
    fail "the collector is $(show boxmeter-collector ActiveState) while PostgreSQL is down"
  sleep 0.2
done
echo "systemd-test: still activating after 5s without a database"
start_pg
active() { [ "$(show boxmeter-collector ActiveState)" = active ]; }
wait_for 60 "the collector becomes active once PostgreSQL answers" active
active_since=$SECONDS
echo "systemd-test: active once the database answered"

step "STATUS= after polls"
status_text() { show boxmeter-collector StatusText | grep -q "database ok"; }
wait_for 90 "a STATUS= text saying the database is ok" status_text
echo "systemd-test: StatusText: $(show boxmeter-collector StatusText)"

step "the hook -> boxmeter-gen.path -> boxmeter-gen.service: the first config"
# Runs of boxmeter-gen.service that got past ExecCondition= and wrote (the
# messages of systemd itself: journald may not attribute a short-lived
# process's own lines to the unit).
writes() { inside journalctl --no-pager -u boxmeter-gen.service -o cat | grep -c "^Finished boxmeter-gen.service" || true; }
wait_for 90 "boxmeter-gen wrote sing-box's config" is writes 1
config="$root/etc/sing-box/config.json"
sing_box_ids="$(chroot "$root" id -u sing-box) $(chroot "$root" id -g sing-box)"
[ "$(stat -c '%g %a' "$config")" = "${sing_box_ids#* } 640" ] ||
  fail "the config is (uid gid mode) $(stat -c '%u %g %a' "$config"), not group sing-box (${sing_box_ids#* }), mode 0640"
[ "$(stat -c %u "$config")" != "${sing_box_ids% *}" ] || fail "the config was written as sing-box's user"
echo "systemd-test: written by boxmeter-gen's own user (uid $(stat -c %u "$config")), group sing-box, mode 0640"
inside systemctl start sing-box.service
loads() { grep -c "^loaded" "$root/var/lib/sing-box/loads" 2>/dev/null || true; }
wait_for 90 "the stand-in sing-box read its config" is loads 1

step "a change: one boxmeter-gen run, one write, one flush, one reload"
traffic alice a
sql -c "SELECT add_user('bob', uuid => '66666666-2222-3333-4444-555555555555');
        SELECT link_user('bob', 'edge-1', 'socks-in');" >/dev/null
wait_for 90 "sing-box reloaded" is loads 2
grep -q '"bob"' "$config" || fail "bob is not in the new config"
gen_idle() { [ "$(show boxmeter-gen.service ActiveState)" != activating ] && ! inside test -e /run/boxmeter/users-changed; }
wait_for 90 "boxmeter-gen.service finished" gen_idle
sleep 3  # three more polls: nothing may trigger again without a change
[ "$(writes)" = 2 ] && [ "$(loads)" = 2 ] ||
  fail "after one change: $(writes) writes and $(loads) loads (want 2 and 2)"
flush=$(show boxmeter-gen.service ExecStartPost | grep -- '--flush' || true)
if inside /usr/bin/boxmeter-collector --help 2>&1 | grep -q -- --flush; then
  echo "$flush" | grep -Eq "status=0(/|$| |;)" ||
    fail "the flush before the reload did not succeed: $flush"
  echo "systemd-test: the flush (as root, into /run/boxmeter 0700) succeeded right before the reload"
else
  echo "systemd-test: PENDING: boxmeter-collector has no --flush yet; the unit's" \
    "flush step ran and failed (ignored by its '-'), the reload still happened: $flush"
fi

step "usage events: alice's first traffic reaches the webhook through the installed hook, under the unit"
wait_for 90 "the webhook receives alice's first_traffic event" webhook_received first_traffic alice
wait_for 90 "alice's first_traffic event is marked delivered" event_delivered first_traffic alice
echo "systemd-test: the hook, run by the sandboxed collector with its secret as a credential, posted a signed event"

step "no change: a trigger while the config is current neither writes nor reloads"
before_runs=$(show boxmeter-gen.service InvocationID)
inside touch /run/boxmeter/users-changed
wait_for 90 "boxmeter-gen.service ran for the trigger" \
  sh -c "[ \"\$(nsenter -t $leader -a systemctl show -p InvocationID --value boxmeter-gen.service)\" != '$before_runs' ]"
wait_for 90 "boxmeter-gen.service finished" gen_idle
[ "$(show boxmeter-gen.service ConditionResult)" = no ] ||
  fail "boxmeter-gen --check did not stop the run (ConditionResult=$(show boxmeter-gen.service ConditionResult))"
[ "$(writes)" = 2 ] && [ "$(loads)" = 2 ] || fail "a run with a current config wrote or reloaded"
echo "systemd-test: skipped by ExecCondition (boxmeter-gen --check), nothing written or reloaded"

step "systemctl reload boxmeter-collector (SIGHUP): same process, config reread"
pid=$(show boxmeter-collector MainPID)
inside systemctl reload boxmeter-collector.service
reloaded() { inside journalctl --no-pager -u boxmeter-collector.service -o cat | grep -q "reloaded /etc/boxmeter/boxmeter.yaml"; }
wait_for 90 "the collector logs the reload" reloaded
[ "$(show boxmeter-collector MainPID)" = "$pid" ] && active || fail "the reload restarted or stopped the collector"

step "watchdog: no restarts over more than two WatchdogSec"
while [ $((SECONDS - active_since)) -lt 14 ]; do sleep 1; done
[ "$(show boxmeter-collector WatchdogUSec)" = 6s ] || fail "WatchdogUSec is $(show boxmeter-collector WatchdogUSec)"
[ "$(show boxmeter-collector NRestarts)" = 0 ] && [ "$(show boxmeter-collector MainPID)" = "$pid" ] ||
  fail "the collector was restarted ($(show boxmeter-collector NRestarts) restarts)"
echo "systemd-test: $((SECONDS - active_since))s active with WatchdogSec=6s, no restarts"

step "limits and secrets: LimitCORE=0, MemoryMax=; sing-box's user reads no password"
[ "$(show boxmeter-collector LimitCORE)" = 0 ] || fail "LimitCORE"
[ "$(show boxmeter-collector MemoryMax)" = 1073741824 ] || fail "MemoryMax is $(show boxmeter-collector MemoryMax)"
[ "$(show boxmeter-gen.service LimitCORE)" = 0 ] || fail "boxmeter-gen.service LimitCORE"
[ "$(inside awk '/Max core file size/ {print $5}' "/proc/$pid/limits")" = 0 ] || fail "the collector may dump core"
for path in /run/credentials/boxmeter-collector.service/pgpass /etc/boxmeter/pgpass \
  /etc/boxmeter/gen-pgpass /run/credentials/boxmeter-collector.service/webhook-secret \
  /etc/boxmeter/webhook-secret "/proc/$pid/environ"; do
  if inside setpriv --reuid sing-box --regid sing-box --clear-groups cat "$path" >/dev/null 2>&1; then
    fail "sing-box's user can read $path"
  fi
  echo "  ok    sing-box's user cannot read $path"
done
inside setpriv --reuid sing-box --regid sing-box --init-groups cat /etc/sing-box/config.json >/dev/null ||
  fail "sing-box's user cannot read its config (the control)"

step "systemctl stop with a commit in flight (held on a lock): Result=success, nothing lost"
sql -c "BEGIN; LOCK TABLE counters IN EXCLUSIVE MODE; SELECT pg_sleep(15); COMMIT;" >/dev/null &
locker=$!
pids+=("$locker")
locked() {
  [ "$(sql -c "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
               WHERE c.relname = 'counters' AND l.mode = 'ExclusiveLock' AND l.granted")" -ge 1 ]
}
wait_for 90 "the test holds a lock on counters" locked
traffic alice a
waiting() {
  [ "$(sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'boxmeter_meter' AND wait_event_type = 'Lock'")" -ge 1 ]
}
wait_for 14 "the collector's commit waits on the lock" waiting
inside systemctl stop boxmeter-collector.service
wait "$locker" || true
[ "$(show boxmeter-collector Result)" = success ] && [ "$(show boxmeter-collector ExecMainStatus)" = 0 ] ||
  fail "stop: Result=$(show boxmeter-collector Result), status $(show boxmeter-collector ExecMainStatus)"
totals_match alice || fail "after the stop the database's totals differ from v2ray-core's"
echo "systemd-test: stopped with Result=success; alice's totals equal v2ray-core's"

step "passed (took $((SECONDS - started))s)"
