# Sourced by scripts/image-test.sh and scripts/systemd-test.sh: the real
# peers both run on the host, loopback only, under $work (the caller's
# scratch directory, removed by its cleanup), and the checks against them.
# The caller defines fail MESSAGE (exits non-zero) and the array pids (the
# processes its cleanup ends), and stops PostgreSQL with pg_stop_now when
# $pg_running is yes.
#
#   peers_postgres   a throwaway PostgreSQL 15 on 127.0.0.1:$pg_port set up
#                    the way compose's postgres is: deploy/docker/
#                    make-secrets.sh writes the passwords into $secrets,
#                    initdb/boxmeter-roles.sh makes the logins in "boxmeter";
#                    host connections need the password (scram-sha-256)
#   peers_v2ray      an HTTP server with a 300000-byte /blob, and v2ray-core
#                    with its stats API on $api_port and a socks inbound
#                    (users alice/a and bob/b) on $socks_port
#   peers_webhook    a webhook receiver (tests/support/webhook_receiver.py)
#                    at $webhook_url, answering 200, and the shared secret in
#                    $work/webhook-secret; webhook_received checks what the
#                    installed hook (libexec/boxmeter/on-event-webhook.sh)
#                    posted to it

pg_bin=/usr/lib/postgresql/15/bin
pg_running=no

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# is FUNCTION VALUE: FUNCTION prints VALUE (for wait_for, which runs its
# command again each time: a "$(...)" argument would be expanded only once).
is() { [ "$("$1")" = "$2" ]; }

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.2 s until it
# succeeds; fails with DESCRIPTION after SECONDS.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within ${seconds}s"
    sleep 0.2
  done
}

start_pg() {
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg-run/pg.log" -w -o \
    "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$work/pg-run -c fsync=off" \
    start >/dev/null
  pg_running=yes
}
stop_pg() {
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null
  pg_running=no
}
pg_stop_now() {
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1
}
# sql ARGS...: psql as the superuser, over the Unix socket, into boxmeter.
sql() {
  runuser -u postgres -- "$pg_bin/psql" -X -A -t -q -v ON_ERROR_STOP=1 \
    -h "$work/pg-run" -p "$pg_port" -U postgres -d boxmeter "$@"
}
# url LOGIN: the database URL of a login (its password is in $secrets).
url() { echo "postgresql://$1@127.0.0.1:$pg_port/boxmeter"; }

peers_postgres() {
  secrets="$work/secrets"
  BOXMETER_DB_HOST=127.0.0.1 deploy/docker/make-secrets.sh "$secrets" 2>/dev/null
  chown postgres "$secrets/boxmeter-logins" "$secrets/postgres-superuser"
  pg_port=$(free_port)
  install -d -o postgres -m 0700 "$work/pg" "$work/pg-run"
  runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C >"$work/initdb.log"
  start_pg
  runuser -u postgres -- "$pg_bin/createdb" -h "$work/pg-run" -p "$pg_port" -U postgres boxmeter
  runuser -u postgres -- env PGHOST="$work/pg-run" PGPORT="$pg_port" POSTGRES_DB=boxmeter \
    BOXMETER_LOGINS_FILE="$secrets/boxmeter-logins" deploy/docker/initdb/boxmeter-roles.sh
  [ "$(sql -c "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'boxmeter\_%' AND rolcanlogin AND (rolsuper OR rolcreaterole)")" = 0 ] ||
    fail "a boxmeter login is a superuser or has CREATEROLE"
}

peers_v2ray() {
  api_port=$(free_port)
  socks_port=$(free_port)
  http_port=$(free_port)
  mkdir -p "$work/www"
  head -c 300000 /dev/urandom >"$work/www/blob"
  python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$http_port" \
    >"$work/http.log" 2>&1 &
  pids+=($!)
  cat >"$work/v2ray.json" <<JSON
{"log": {"loglevel": "warning"}, "stats": {},
 "api": {"tag": "api", "services": ["StatsService"]},
 "policy": {"levels": {"0": {"statsUserUplink": true, "statsUserDownlink": true}}},
 "inbounds": [
  {"tag": "api-in", "listen": "127.0.0.1", "port": $api_port,
   "protocol": "dokodemo-door", "settings": {"address": "127.0.0.1"}},
  {"tag": "socks-in", "listen": "127.0.0.1", "port": $socks_port, "protocol": "socks",
   "settings": {"auth": "password", "udp": false,
                "accounts": [{"user": "alice", "pass": "a"}, {"user": "bob", "pass": "b"}]}}],
 "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}],
 "routing": {"rules": [{"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"}]}}
JSON
  v2ray -config "$work/v2ray.json" >"$work/v2ray.log" 2>&1 &
  pids+=($!)
  wait_for 20 "v2ray-core's stats API answers" v2ray_stats
}

v2ray_stats() {
  v2ctl api --server="127.0.0.1:$api_port" StatsService.QueryStats 'pattern: "" reset: false' 2>/dev/null
}
# v2ray_value NAME: a counter's value as v2ray-core reports it (0 if absent).
v2ray_value() {
  v2ray_stats | awk -v name="$1" '
    $0 ~ "name: \"" name "\"" { found = 1; next }
    found && /value:/ { print $2; exit }
    END { if (!found) print 0 }'
}
# traffic USER PASSWORD: one download of /blob through the socks inbound.
traffic() {
  curl -sf -o /dev/null -x "socks5h://$1:$2@127.0.0.1:$socks_port" \
    "http://127.0.0.1:$http_port/blob" || fail "curl through v2ray-core as $1"
}
# totals_match USER: the database's user_traffic row equals v2ray-core's
# counters for USER, who has downloaded something.
totals_match() {
  local up down
  up=$(v2ray_value "user>>>$1>>>traffic>>>uplink")
  down=$(v2ray_value "user>>>$1>>>traffic>>>downlink")
  [ "$down" -gt 0 ] &&
    [ "$(sql -c "SELECT uplink || ' ' || downlink FROM user_traffic WHERE name = '$1'")" = "$up $down" ]
}

peers_webhook() {
  printf '%s' "$(head -c 24 /dev/urandom | od -An -v -tx1 | tr -d ' \n')" >"$work/webhook-secret"
  python3 tests/support/webhook_receiver.py "$work/webhook" 200 >"$work/webhook.log" 2>&1 &
  pids+=($!)
  wait_for 20 "the webhook receiver listens" test -s "$work/webhook.port"
  webhook_url="http://127.0.0.1:$(cat "$work/webhook.port")/events"
}
# webhook_received KIND USER: the last request the receiver got is USER's
# usage event KIND, with its id as X-Boxmeter-Event-Id and signed with the
# secret (HMAC-SHA256 as openssl computes it over the body received); sets
# webhook_event_id to that id.
webhook_received() {
  local body=$work/webhook.body headers=$work/webhook.headers id signature
  [ -s "$body" ] && [ -s "$headers" ] || return 1
  # Not yet, or not all written yet: no id.
  id=$(python3 -c '
import json, sys
event = json.load(open(sys.argv[1]))
if (event["kind"], event["user"]) == (sys.argv[2], sys.argv[3]):
    print(event["id"])' "$body" "$1" "$2" 2>/dev/null) || return 1
  [ -n "$id" ] || return 1
  signature=$(openssl dgst -sha256 -r -hmac "$(cat "$work/webhook-secret")" <"$body" | cut -d' ' -f1)
  grep -qx "X-Boxmeter-Event-Id: $id" "$headers" ||
    fail "the webhook got event $id without its id in X-Boxmeter-Event-Id: $(cat "$headers")"
  grep -qx "X-Boxmeter-Signature: sha256=$signature" "$headers" ||
    fail "the webhook got event $id with a wrong signature (want sha256=$signature): $(cat "$headers")"
  webhook_event_id=$id
}
# event_delivered KIND USER: USER's usage event KIND is marked delivered.
event_delivered() {
  [ "$(sql -c "SELECT count(*) FROM usage_events WHERE kind = '$1' AND user_name = '$2'
               AND delivered_at IS NOT NULL")" = 1 ]
}
