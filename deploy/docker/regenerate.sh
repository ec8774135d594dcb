#!/bin/sh
# boxmeter-regenerate: hooks.on_users_changed inside a container (the
# collector runs it when the users this node's sing-box should accept
# change, and once at start; a failure is retried on the next poll).
#
# Writes sing-box's config again with boxmeter-gen and, only if it changed,
# sends sing-box SIGHUP so that it reloads it. A reload starts sing-box's
# counters again from zero (what it counted since the last poll is lost), so
# it is never done needlessly.
#
# sing-box must be visible and signalable from here: share its PID namespace
# (compose: pid: "service:sing-box"; Kubernetes: shareProcessNamespace: true)
# and run both as the same uid. SING_BOX_PROCESS names the process to signal
# (default: sing-box).
set -u

name=${SING_BOX_PROCESS:-sing-box}

# The pids whose command name is $name, one per line.
find_sing_box() {
  for dir in /proc/[0-9]*; do
    if [ "$(cat "$dir/comm" 2>/dev/null)" = "$name" ]; then
      echo "${dir#/proc/}"
    fi
  done
}

# Before writing anything: a config written now but never reloaded would
# look up to date to every later run.
pids=$(find_sing_box)
if [ -z "$pids" ]; then
  echo "boxmeter-regenerate: no process named $name is visible; share" \
    "sing-box's PID namespace with this container" \
    "(compose: pid: \"service:sing-box\"; Kubernetes:" \
    "shareProcessNamespace: true)" >&2
  exit 1
fi

boxmeter-gen --check
case $? in
  0) exit 0 ;;  # up to date: nothing to do
  1) ;;         # would change
  *) exit 1 ;;  # boxmeter-gen said why
esac

boxmeter-gen || exit 1

status=0
for pid in $pids; do
  if kill -HUP "$pid"; then
    echo "boxmeter-regenerate: sent SIGHUP to $name (pid $pid)" >&2
  else
    echo "boxmeter-regenerate: cannot signal $name (pid $pid); run it as" \
      "the same uid as this container ($(id -u))" >&2
    status=1
  fi
done
exit $status
