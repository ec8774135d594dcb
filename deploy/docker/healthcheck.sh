#!/bin/sh
# boxmeter-healthcheck: the boxmeter image's HEALTHCHECK. Healthy while the
# collector keeps completing polls in which both sing-box's stats API and
# PostgreSQL answered: after each such poll it touches $BOXMETER_HEALTH_FILE.
# Unhealthy when that file is missing (no such poll yet) or older than
# $BOXMETER_HEALTH_MAX_AGE seconds (default 60; keep it above 2 x
# poll.interval + source.timeout).
set -u

file=${BOXMETER_HEALTH_FILE:-}
max_age=${BOXMETER_HEALTH_MAX_AGE:-60}

if [ -z "$file" ]; then
  echo "BOXMETER_HEALTH_FILE is not set: the collector writes no health file"
  exit 1
fi
if ! modified=$(stat -c %Y "$file" 2>/dev/null); then
  echo "no poll has reached both sing-box and PostgreSQL yet ($file does" \
    "not exist); see the collector's log"
  exit 1
fi
age=$(($(date +%s) - modified))
if [ "$age" -gt "$max_age" ]; then
  echo "the last poll that reached both sing-box and PostgreSQL was ${age}s" \
    "ago (more than ${max_age}s); see the collector's log"
  exit 1
fi
echo "last good poll ${age}s ago"
