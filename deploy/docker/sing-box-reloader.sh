#!/bin/sh
# sing-box-reloader: the sing-box image's entrypoint. Runs sing-box (its
# arguments) as its child and sends it SIGHUP when boxmeter-regenerate, in the
# collector's container, asks for a reload; passes SIGTERM and SIGINT on and
# exits with sing-box's status.
#
# Why: the collector's container shares neither sing-box's PID namespace nor
# its uid (so nothing of sing-box's can read the collector's environment,
# memory or secrets), so it cannot signal sing-box itself. The two share one
# small volume, $SING_BOX_RELOAD_DIR (default /run/sing-box-reload):
#   request  written by boxmeter-regenerate (a token), after it wrote the new
#            config and had the collector commit (boxmeter-collector --flush);
#   done     written here (the same token) once SIGHUP was sent.
# A request that differs from done is pending: it is served as soon as this
# notices it (inotifywait; at most 2 s late if it arrives while a check is
# running). One pending when this starts is only marked done: the sing-box
# started here reads the current config anyway, and a SIGHUP before it has
# set up its signal handling would end it.
set -u

dir=${SING_BOX_RELOAD_DIR:-/run/sing-box-reload}

if [ "$#" -eq 0 ]; then
  echo "sing-box-reloader: usage: sing-box-reloader SING-BOX [ARG...]" >&2
  exit 64
fi

# Sends nothing: records a pending request as done (see above).
if request=$(cat "$dir/request" 2>/dev/null) && [ -n "$request" ]; then
  printf '%s\n' "$request" >"$dir/.done.tmp" && mv -f "$dir/.done.tmp" "$dir/done"
fi

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT

# Sends SIGHUP for a pending request, then records it as done.
serve() {
  request=$(cat "$dir/request" 2>/dev/null) || return 0
  [ -n "$request" ] || return 0
  [ "$request" != "$(cat "$dir/done" 2>/dev/null)" ] || return 0
  if ! kill -HUP "$child" 2>/dev/null; then
    return 0  # sing-box is gone: the loop below ends
  fi
  echo "sing-box-reloader: sent SIGHUP to $1 (pid $child) for reload" \
    "request $request" >&2
  if ! { printf '%s\n' "$request" >"$dir/.done.tmp" &&
    mv -f "$dir/.done.tmp" "$dir/done"; }; then
    echo "sing-box-reloader: cannot write $dir/done; make $dir writable by" \
      "uid $(id -u) (the compose volume sing-box-reload)" >&2
  fi
}

if ! command -v inotifywait >/dev/null 2>&1; then
  echo "sing-box-reloader: inotifywait (package inotify-tools) is missing;" \
    "checking $dir every second instead" >&2
fi
while kill -0 "$child" 2>/dev/null; do
  serve "$1"
  if command -v inotifywait >/dev/null 2>&1; then
    inotifywait -qq -t 2 -e moved_to -e close_write "$dir" >/dev/null 2>&1 &
  else
    sleep 1 &
  fi
  waiter=$!
  wait "$waiter" 2>/dev/null  # returns early on SIGTERM/SIGINT (the traps)
  kill "$waiter" 2>/dev/null
done
wait "$child"
status=$?
echo "sing-box-reloader: $1 exited with status $status" >&2
exit $status
