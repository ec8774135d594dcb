#!/bin/sh
# boxmeter-regenerate: hooks.on_users_changed inside a container (the
# collector runs it when the users this node's sing-box should accept
# change, and once at start; a failure is retried on the next poll).
#
# 1. boxmeter-gen --check: nothing more to do when sing-box's config is up to
#    date and no reload is pending.
# 2. boxmeter-gen writes the new config (mode 0640, group sing-box: the
#    volume's directory is set-group-ID). It logs in as the generator's own
#    login when BOXMETER_GENERATOR_DATABASE_URL and
#    BOXMETER_GENERATOR_PGPASSFILE (or _PGPASSWORD) are set (the compose file
#    and the k8s example set them), not as the collector's.
# 3. boxmeter-collector --flush: the collector polls and commits now, so that
#    the reload loses nothing (sing-box starts its counters again from zero).
#    A collector that cannot commit does not hold the reload back.
# 4. Writes a reload request into $SING_BOX_RELOAD_DIR (default
#    /run/sing-box-reload, a volume shared with sing-box's container), where
#    sing-box-reloader, sing-box's parent, sends it SIGHUP and answers with
#    "done"; waits for that answer (up to $SING_BOX_RELOAD_TIMEOUT seconds,
#    default 20). No shared PID namespace or uid is needed.
#
# A config written but not yet reloaded stays a pending request, so a later
# run (the collector retries a failed hook every poll) still reloads.
set -u

dir=${SING_BOX_RELOAD_DIR:-/run/sing-box-reload}
timeout=${SING_BOX_RELOAD_TIMEOUT:-20}

say() { echo "boxmeter-regenerate: $*" >&2; }
pending() {
  [ "$(cat "$dir/request" 2>/dev/null)" != "$(cat "$dir/done" 2>/dev/null)" ]
}
as_generator() {
  if [ -n "${BOXMETER_GENERATOR_DATABASE_URL:-}" ]; then
    BOXMETER_DATABASE_URL=$BOXMETER_GENERATOR_DATABASE_URL
    export BOXMETER_DATABASE_URL
  fi
  if [ -n "${BOXMETER_GENERATOR_PGPASSFILE:-}" ]; then
    PGPASSFILE=$BOXMETER_GENERATOR_PGPASSFILE
    export PGPASSFILE
    unset PGPASSWORD
  fi
  if [ -n "${BOXMETER_GENERATOR_PGPASSWORD:-}" ]; then
    PGPASSWORD=$BOXMETER_GENERATOR_PGPASSWORD
    export PGPASSWORD
  fi
  "$@"
}

if [ ! -d "$dir" ] || [ ! -w "$dir" ]; then
  say "$dir is missing or not writable by uid $(id -u): mount the volume" \
    "shared with sing-box's container there (compose: sing-box-reload)"
  exit 1
fi

(as_generator boxmeter-gen --check)
case $? in
  0)  # up to date
    if ! pending; then exit 0; fi
    say "the config is current but its reload is still pending; asking again"
    ;;
  1) (as_generator boxmeter-gen) || exit 1 ;;
  *) exit 1 ;;  # boxmeter-gen said why
esac

if ! boxmeter-collector --flush; then
  say "the collector could not commit before the reload (see its log);" \
    "reloading anyway: what sing-box counted since the last commit is lost"
fi

token="$(date +%s%N)-$$"
if ! { printf '%s\n' "$token" >"$dir/.request.tmp" &&
  mv -f "$dir/.request.tmp" "$dir/request"; }; then
  say "cannot write $dir/request"
  exit 1
fi
# Bounded wait for sing-box-reloader's answer (tenths of a second).
waited=0
while [ "$(cat "$dir/done" 2>/dev/null)" != "$token" ]; do
  if [ "$waited" -ge $((timeout * 10)) ]; then
    say "sing-box-reloader did not answer reload request $token within" \
      "${timeout}s; is sing-box's container running with $dir mounted?" \
      "(the request stays pending; retried on the next poll)"
    exit 1
  fi
  sleep 0.1
  waited=$((waited + 1))
done
say "sing-box reloaded (request $token)"
