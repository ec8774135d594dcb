#!/usr/bin/env bash
# The container images for real: builds deploy/docker/Dockerfile's boxmeter
# and sing-box-runtime targets with buildah (--isolation chroot: no daemon,
# no user namespaces or cgroups needed) and runs them the way
# deploy/docker/compose.yaml does, against a throwaway PostgreSQL and the
# real v2ray-core (standing in for sing-box's stats API) with real traffic:
#
#   - compose.yaml and the k8s example checked against the built images
#     (scripts/lib/check_deploy_layout.py): paths, users, volumes, secrets,
#     ports, environment variables, no shared PID namespace, no superuser;
#   - compose's PostgreSQL setup (initdb/boxmeter-roles.sh, make-secrets.sh):
#     --migrate as the owner login, boxmeter-gen as the generator's, the
#     collector as its own;
#   - the collector runs as uid 10001 and meters exactly what v2ray-core
#     counted; boxmeter-healthcheck says healthy after a poll and unhealthy
#     once the database is stopped; boxmeter-regenerate writes the config
#     (0640, sing-box's group) and has sing-box-reloader, in a container of
#     the sing-box-runtime image as uid 10002, send SIGHUP only when it
#     changed; SIGTERM ends the collector with 0 after its final commit;
#   - the image's usage-event hook (/usr/libexec/boxmeter/on-event-webhook.sh,
#     as deploy/docker/boxmeter.yaml shows it) posts alice's first_traffic
#     event, signed, to a receiver on the host;
#   - a process with sing-box's uid (even in the same PID namespace, which
#     the shipped layouts do not share) cannot read the collector's password:
#     not its secret files, not /proc/PID/environ, not /proc/PID/root; no
#     password is in any boxmeter process's environment.
#
# The sing-box-build and sing-box stages are not built: they need Go modules
# from the network (proxy.golang.org), which is not reachable here. The
# Dockerfile's guard for them stays: the build clones a tag and fails unless
# it is the pinned commit (SING_BOX_COMMIT).
#
#   scripts/image-test.sh                   the build stage compiles boxmeter
#   scripts/image-test.sh --prebuilt BUILD  it takes BUILD's binaries instead
#                                           (installed with --prefix /usr):
#                                           what CI does, having just built
#                                           and tested them (the Dockerfile's
#                                           BOXMETER_PREBUILT)
#
# Cached between runs on this machine: the Debian 12 tree (debootstrap, under
# /var/cache/boxmeter-ci), the base images made from it (debian:12 and
# debian:12-slim in buildah's storage) and buildah's layer cache (the
# package layers). Removed at the end: every container, image tag, process,
# mount and file this run made. Skips (exit 0, with the reason) only when
# buildah cannot run at all. Needs root.
set -euo pipefail
# A shell cannot trap a signal that was ignored when it started, and every
# process of this run inherits what this one ignores: run under nohup (SIGHUP
# ignored), the stand-in sing-box below would never see its reloads. Start
# again with SIGHUP at its default.
if [ -z "${BOXMETER_IMAGE_TEST_HUP:-}" ]; then
  BOXMETER_IMAGE_TEST_HUP=default exec env --default-signal=HUP "$0" "$@"
fi
cd "$(dirname "$0")/.."
repo=$(pwd)
. scripts/lib/ci-rootfs.sh
. scripts/lib/ci-peers.sh
started=$SECONDS
step() { echo "=== image-test: $* (at $((SECONDS - started))s)"; }
fail() {
  echo "image-test: FAILED: $*" >&2
  exit 1
}

prebuilt_build=
case "${1:-}" in
  "") ;;
  --prebuilt)
    prebuilt_build=${2:?"image-test: --prebuilt needs a build directory, e.g. --prebuilt build"}
    [ -f "$prebuilt_build/CMakeCache.txt" ] ||
      fail "--prebuilt $prebuilt_build: no CMakeCache.txt there; give a directory scripts/build.sh built (BUILD_DIR)"
    ;;
  *)
    echo "usage: $0 [--prebuilt BUILD_DIR] (got \"$*\")" >&2
    exit 64
    ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "image-test: SKIPPED: needs root (buildah --isolation chroot)"
  exit 0
fi
if ! command -v buildah >/dev/null || ! buildah info >/dev/null 2>&1; then
  echo "image-test: SKIPPED: buildah cannot run here" \
    "(scripts/install-deps.sh test installs it); the images were not tested"
  exit 0
fi

tag=$$-$(date +%s)
boxmeter_image=localhost/boxmeter-ci:$tag
sing_box_image=localhost/boxmeter-ci-sing-box-runtime:$tag
work=$(mktemp -d /tmp/boxmeter-image-test-XXXXXX)
chmod 0755 "$work"
prebuilt_dir=  # the staged install of --prebuilt, inside the build context
containers=()
pids=()        # processes started here (buildah run, v2ray, the HTTP server)
inner_pids=()  # the processes buildah run started (pid files), ended first
mounts=()

cleanup() {
  local status=$?
  set +e
  for pid in "${inner_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  for c in "${mounts[@]}"; do buildah umount "$c" >/dev/null 2>&1; done
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1; done
  buildah rmi "$boxmeter_image" "$sing_box_image" >/dev/null 2>&1
  [ "$pg_running" = yes ] && pg_stop_now
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] || continue
      echo "--- $log (end)" >&2
      tail -25 "$log" >&2
    done
    # What the stand-in sing-box read, and what it was given to read.
    if [ -n "${vol:-}" ] && [ -d "$vol" ]; then
      echo "--- $vol/sing-box-state/loads" >&2
      cat "$vol/sing-box-state/loads" >&2 2>/dev/null
      ls -ln "$vol/sing-box-config" >&2 2>/dev/null
    fi
  fi
  rm -rf "$work"
  [ -n "$prebuilt_dir" ] && rm -rf "$repo/$prebuilt_dir"
  echo "image-test: removed this run's containers, image tags, processes and files"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- base images --------------------------------------------------------------
step "base images debian:12 and debian:12-slim from a debootstrapped tree (no registry here)"
rootfs=$(ci_rootfs base)
if [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "boxmeter-ci.rootfs"}}' \
  docker.io/library/debian:12 2>/dev/null)" != "$rootfs" ]; then
  echo "image-test: making them from $rootfs (kept for later runs)"
  base=boxmeter-ci-base-$tag
  containers+=("$base")
  buildah from --name "$base" scratch >/dev/null
  buildah add --quiet "$base" "$rootfs" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --annotation "boxmeter-ci.rootfs=$rootfs" "$base"
  buildah commit --quiet "$base" docker.io/library/debian:12 >/dev/null
  buildah tag docker.io/library/debian:12 docker.io/library/debian:12-slim
else
  echo "image-test: cached in buildah's storage"
fi

# --- build ----------------------------------------------------------------------
build_args=()
if [ -n "$prebuilt_build" ]; then
  prebuilt_dir=.image-test-prebuilt-$tag
  step "install $prebuilt_build's binaries (--prefix /usr) for the build stage"
  DESTDIR="$repo/$prebuilt_dir" cmake --install "$prebuilt_build" --prefix /usr \
    --strip >"$work/install-prebuilt.log" 2>&1 ||
    fail "cmake --install $prebuilt_build (its log: $work/install-prebuilt.log)"
  build_args=(--build-arg "BOXMETER_PREBUILT=$prebuilt_dir")
fi
build() {
  buildah bud --isolation chroot --network host --pull=never --layers \
    "${build_args[@]}" -f deploy/docker/Dockerfile --target "$1" -t "$2" . \
    >"$work/build-$1.log" 2>&1 ||
    fail "buildah bud --target $1 (its log: $work/build-$1.log)"
}
if [ -n "$prebuilt_build" ]; then
  step "build the Dockerfile's boxmeter target (its build stage takes $prebuilt_build's binaries)"
else
  step "build the Dockerfile's boxmeter target (the build stage compiles boxmeter)"
fi
build boxmeter "$boxmeter_image"
step "build the Dockerfile's sing-box-runtime target (the sing-box image without sing-box)"
build sing-box-runtime "$sing_box_image"
echo "image-test: NOT BUILT: the sing-box-build and sing-box stages (Go modules" \
  "need proxy.golang.org, unreachable here); their guard is the Dockerfile's" \
  "pinned-commit check ($(grep -o 'SING_BOX_COMMIT=[0-9a-f]*' deploy/docker/Dockerfile))"

# The working containers, named so that cleanup removes exactly these.
bm=boxmeter-ci-boxmeter-$tag
sb=boxmeter-ci-sing-box-$tag
containers+=("$bm" "$sb")
buildah from --pull=never --name "$bm" "$boxmeter_image" >/dev/null
buildah from --pull=never --name "$sb" "$sing_box_image" >/dev/null

# --- the layout against the images -------------------------------------------------
step "check compose.yaml and the k8s example against the images"
bm_root=$(buildah mount "$bm")
mounts+=("$bm")
sb_root=$(buildah mount "$sb")
mounts+=("$sb")
buildah inspect --type image "$boxmeter_image" >"$work/boxmeter.json"
buildah inspect --type image "$sing_box_image" >"$work/sing-box.json"
python3 scripts/lib/check_deploy_layout.py "$repo" "$bm_root" "$work/boxmeter.json" \
  "$sb_root" "$work/sing-box.json" || fail "the layout checks above"

# --- the peers: PostgreSQL, v2ray-core, an HTTP server --------------------------------
step "start a throwaway PostgreSQL 15 and set it up as compose's initdb script does"
peers_postgres

step "start v2ray-core (the stats API, a socks inbound for alice and bob) and an HTTP server"
peers_v2ray
step "start a webhook receiver for the image's usage-event hook"
peers_webhook

# --- the volumes and the config, as compose mounts them ------------------------------------
vol="$work/volumes"
install -d -m 0755 "$vol"
install -d -o 10001 -g 10002 -m 2750 "$vol/sing-box-config"   # a named volume starts as the image's directory
install -d -o 10001 -g 10002 -m 2770 "$vol/sing-box-reload"
install -d -o 10001 -g 10001 -m 0700 "$vol/run-boxmeter"      # compose: tmpfs uid=10001,mode=0700
install -d -o 10001 -g 10001 -m 0700 "$vol/boxmeter-tmp"      # compose: tmpfs /tmp
install -d -o 10002 -g 10002 -m 0700 "$vol/sing-box-tmp"
sed -e "s|address: 127.0.0.1:8080|address: 127.0.0.1:$api_port|" \
  -e "s|interval: 10s|interval: 1s|" \
  -e "s|^  #   on_event: \(.*\)|  on_event: \1|" deploy/docker/boxmeter.yaml >"$work/boxmeter.yaml"
grep -q '^  on_event: /usr/libexec/boxmeter/on-event-webhook.sh$' "$work/boxmeter.yaml" ||
  fail "deploy/docker/boxmeter.yaml no longer shows hooks.on_event with the image's webhook hook"
install -o 10001 -g 10001 -m 0600 "$work/webhook-secret" "$vol/boxmeter-tmp/webhook-secret"
chmod 0644 "$work/boxmeter.yaml"
boxmeter_mounts=(
  -v "$work/boxmeter.yaml:/etc/boxmeter/boxmeter.yaml:ro"
  -v "$repo/deploy/sing-box.base.json:/etc/boxmeter/sing-box.base.json:ro"
  -v "$vol/sing-box-config:/etc/sing-box"
  -v "$vol/sing-box-reload:/run/sing-box-reload"
  -v "$vol/run-boxmeter:/run/boxmeter"
  -v "$vol/boxmeter-tmp:/tmp"
  -v "$secrets:/run/secrets:ro"
)
# run_boxmeter ENV... -- COMMAND...: one command in the boxmeter container, as
# compose's x-boxmeter services run (uid 10001, host network here).
run_boxmeter() {
  local env=()
  while [ "$1" != -- ]; do env+=(--env "$1"); shift; done
  shift
  buildah run --isolation chroot --network host --user 10001:10001 "${env[@]}" \
    "${boxmeter_mounts[@]}" "$bm" -- "$@"
}

step "compose's migrate service: its command as boxmeter_owner"
mapfile -t migrate_command < <(python3 -c '
import sys, yaml
print("\n".join(yaml.safe_load(open(sys.argv[1]))["services"]["migrate"]["command"]))' \
  deploy/docker/compose.yaml)
run_boxmeter "BOXMETER_DATABASE_URL=$(url boxmeter_owner)" PGPASSFILE=/run/secrets/owner.pgpass -- \
  /usr/bin/boxmeter-collector "${migrate_command[@]}" >"$work/migrate.log" 2>&1 ||
  fail "boxmeter-collector ${migrate_command[*]} as the owner"
sql -c "INSERT INTO inbounds (node, tag, type, listen_port) VALUES ('edge-1', 'socks-in', 'vless', 443);
        SELECT add_user('alice', uuid => '11111111-2222-3333-4444-555555555555');
        SELECT link_user('alice', 'edge-1', 'socks-in');
        SELECT set_usage_events(true);" >/dev/null

step "compose's init service: boxmeter-gen as boxmeter_gen writes the first config"
run_boxmeter "BOXMETER_DATABASE_URL=$(url boxmeter_gen)" PGPASSFILE=/run/secrets/generator.pgpass -- \
  /usr/bin/boxmeter-gen >"$work/init.log" 2>&1 || fail "boxmeter-gen as the generator login"
config="$vol/sing-box-config/config.json"
[ "$(stat -c '%u %g %a' "$config")" = "10001 10002 640" ] ||
  fail "the generated config is $(stat -c '%u %g %a' "$config"), not 10001 10002 640"

step "start sing-box's container: sing-box-reloader (uid 10002) over a stand-in sing-box"
cat >"$work/stand-in-sing-box" <<'SH'
#!/bin/sh
# Stands in for sing-box: reads its config at start and on every SIGHUP (so
# an unreadable config fails), and logs each load.
load() {
  if sum=$(sha256sum </etc/sing-box/config.json); then
    echo "loaded $1 ${sum%% *}" >>/var/lib/sing-box/loads
  else
    echo "cannot read /etc/sing-box/config.json" >>/var/lib/sing-box/loads
    exit 1
  fi
}
load start
trap 'load reload' HUP
trap 'echo stopped >>/var/lib/sing-box/loads; exit 0' TERM
while :; do sleep 1 & wait $!; done
SH
chmod 0755 "$work/stand-in-sing-box"
install -d -o 10002 -g 10002 -m 0700 "$vol/sing-box-state"
buildah run --isolation chroot --network host --user 10002:10002 \
  -v "$work/stand-in-sing-box:/usr/local/bin/sing-box:ro" \
  -v "$vol/sing-box-config:/etc/sing-box:ro" \
  -v "$vol/sing-box-reload:/run/sing-box-reload" \
  -v "$vol/sing-box-state:/var/lib/sing-box" \
  -v "$vol/sing-box-tmp:/tmp" \
  "$sb" -- /bin/sh -c 'echo $$ >/tmp/reloader.pid; exec "$@"' sh \
  /usr/local/bin/sing-box-reloader /usr/local/bin/sing-box \
  -D /var/lib/sing-box -c /etc/sing-box/config.json run >"$work/sing-box.log" 2>&1 &
pids+=($!)
wait_for 90 "sing-box-reloader writes its pid" test -s "$vol/sing-box-tmp/reloader.pid"
inner_pids+=("$(cat "$vol/sing-box-tmp/reloader.pid")")
loads() { grep -c "^loaded" "$vol/sing-box-state/loads" 2>/dev/null || true; }
wait_for 90 "the stand-in sing-box read the config" is loads 1

step "start the collector as compose's collector service (uid 10001, its own login)"
collector_env=(
  "BOXMETER_DATABASE_URL=$(url boxmeter_meter)" PGPASSFILE=/run/secrets/collector.pgpass
  "BOXMETER_GENERATOR_DATABASE_URL=$(url boxmeter_gen)"
  BOXMETER_GENERATOR_PGPASSFILE=/run/secrets/generator.pgpass
  "BOXMETER_WEBHOOK_URL=$webhook_url" BOXMETER_WEBHOOK_SECRET_FILE=/tmp/webhook-secret
)
run_boxmeter "${collector_env[@]}" -- /bin/sh -c 'echo $$ >/tmp/collector.pid; exec /usr/bin/boxmeter-collector' \
  >"$work/collector.log" 2>&1 &
collector_runner=$!
pids+=("$collector_runner")
wait_for 90 "the collector writes its pid" test -s "$vol/boxmeter-tmp/collector.pid"
collector=$(cat "$vol/boxmeter-tmp/collector.pid")
inner_pids+=("$collector")
[ "$(awk '/^Uid:/ {print $2}' "/proc/$collector/status")" = 10001 ] || fail "the collector's uid is not 10001"
echo "image-test: the collector is pid $collector, uid 10001"

healthcheck() {
  run_boxmeter BOXMETER_HEALTH_FILE=/tmp/boxmeter-healthy BOXMETER_HEALTH_MAX_AGE=3 -- \
    /usr/local/bin/boxmeter-healthcheck
}
step "boxmeter-healthcheck: healthy once a poll reached both v2ray-core and PostgreSQL"
wait_for 90 "boxmeter-healthcheck reports healthy" healthcheck >/dev/null

step "real traffic: the database's totals equal v2ray-core's counters"
traffic alice a
traffic alice a
wait_for 90 "the database's totals for alice equal v2ray-core's" totals_match alice
echo "image-test: alice: $(sql -c "SELECT uplink || ' up, ' || downlink || ' down' FROM user_traffic WHERE name = 'alice'"), as v2ray-core counted"

step "usage events: alice's first traffic reaches the webhook through the image's hook, signed"
wait_for 90 "the webhook receives alice's first_traffic event" webhook_received first_traffic alice
wait_for 90 "alice's first_traffic event is marked delivered" event_delivered first_traffic alice
echo "image-test: /usr/libexec/boxmeter/on-event-webhook.sh posted event $webhook_event_id with a valid signature; delivered_at is set"

step "boxmeter-regenerate: a new user changes the config once, and sing-box gets one SIGHUP"
[ "$(loads)" = 1 ] || fail "sing-box was reloaded although the config had not changed"
sql -c "SELECT add_user('bob', uuid => '66666666-2222-3333-4444-555555555555');
        SELECT link_user('bob', 'edge-1', 'socks-in');" >/dev/null
wait_for 90 "sing-box reloaded with bob in its config" is loads 2
grep -q '"bob"' "$config" || fail "bob is not in the regenerated config"
[ "$(stat -c '%u %g %a' "$config")" = "10001 10002 640" ] || fail "the regenerated config's owner or mode"
grep -q "sent SIGHUP" "$work/sing-box.log" || fail "sing-box-reloader did not log its SIGHUP"
step "boxmeter-regenerate by hand with nothing changed: no SIGHUP"
run_boxmeter "${collector_env[@]}" -- /usr/local/bin/boxmeter-regenerate >"$work/regenerate.log" 2>&1 ||
  fail "boxmeter-regenerate with nothing to do"
[ "$(loads)" = 2 ] || fail "sing-box was reloaded although the config was current"

step "security: a process with sing-box's uid (10002) cannot read the collector's password"
as_sing_box() { setpriv --reuid 10002 --regid 10002 --clear-groups "$@"; }
password=$(cut -d: -f5 "$secrets/collector.pgpass")
for path in "/proc/$collector/environ" "/proc/$collector/root/run/secrets/collector.pgpass" "/proc/$collector/mem" \
  "$secrets/collector.pgpass" "$secrets/generator.pgpass" "$secrets/owner.pgpass" \
  "$vol/run-boxmeter" "$vol/boxmeter-tmp"; do
  if [ -d "$path" ]; then read=(ls -A); else read=(cat); fi
  if as_sing_box "${read[@]}" "$path" >/dev/null 2>&1; then
    fail "uid 10002 (sing-box) can read $path"
  fi
  echo "  ok    uid 10002 cannot read $path"
done
for pid in $(pgrep -u 10001); do
  if tr '\0' '\n' <"/proc/$pid/environ" | grep -q -F -e "$password" -e PGPASSWORD; then
    fail "a password is in the environment of pid $pid ($(cat "/proc/$pid/comm"))"
  fi
done
echo "  ok    no boxmeter process has a password in its environment"
as_sing_box cat "$config" >/dev/null || fail "uid 10002 cannot read sing-box's config (the control)"
setpriv --reuid 10001 --regid 10001 --clear-groups cat "$secrets/collector.pgpass" >/dev/null ||
  fail "uid 10001 cannot read its own secret (the control)"
echo "  ok    controls: uid 10002 reads sing-box's config, uid 10001 its secret"

step "SIGTERM (the image's STOPSIGNAL) with traffic not yet committed: exit 0 after the final commit"
traffic alice a
kill -TERM "$collector"
status=0
wait "$collector_runner" || status=$?
[ "$status" = 0 ] || fail "the collector exited with $status after SIGTERM"
totals_match alice || fail "after SIGTERM the database's totals differ from v2ray-core's"
echo "image-test: exit 0, and alice's total equals v2ray-core's counter"

step "boxmeter-healthcheck: unhealthy once the database is stopped"
rm -f "$vol/boxmeter-tmp/collector.pid" "$vol/boxmeter-tmp/boxmeter-healthy"
run_boxmeter "${collector_env[@]}" -- /bin/sh -c \
  'echo $$ >/tmp/collector.pid; exec /usr/bin/boxmeter-collector' >>"$work/collector.log" 2>&1 &
pids+=($!)
wait_for 90 "the collector writes its pid" test -s "$vol/boxmeter-tmp/collector.pid"
inner_pids+=("$(cat "$vol/boxmeter-tmp/collector.pid")")
wait_for 90 "healthy again after the restart" healthcheck >/dev/null
stop_pg
traffic alice a  # with nothing to commit, an idle collector would not notice
unhealthy() { ! healthcheck >/dev/null 2>&1; }
wait_for 90 "boxmeter-healthcheck reports unhealthy" unhealthy
echo "image-test: unhealthy: $(healthcheck 2>&1 || true)"
start_pg

step "passed (took $((SECONDS - started))s)"
