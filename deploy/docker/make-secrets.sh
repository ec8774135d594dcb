#!/bin/sh
# Makes the secrets deploy/docker/compose.yaml mounts, with random passwords,
# in ./secrets/ beside this script (or $1). Run as root (it sets owners):
#
#   postgres-superuser  PostgreSQL's superuser password (uid 999: the postgres
#                       image's user); never used by boxmeter
#   boxmeter-logins     "LOGIN PASSWORD" lines for initdb/boxmeter-roles.sh
#                       (uid 999)
#   owner.pgpass        boxmeter_owner: owns the database, runs --migrate
#   collector.pgpass    boxmeter_meter: the collector (IN ROLE
#                       boxmeter_collector)
#   generator.pgpass    boxmeter_gen: boxmeter-gen (IN ROLE
#                       boxmeter_generator)
#   grafana-db-password boxmeter_grafana (IN ROLE boxmeter_readonly): Grafana's
#                       PostgreSQL data source (uid 472: the grafana image's)
#   grafana-admin-password  Grafana's admin login (uid 472)
# The .pgpass files are libpq's format, uid 10001 (the boxmeter image's user),
# mode 0600 (libpq ignores a password file others can read). Existing files
# are kept: delete ./secrets to start over.
set -eu

dir=${1:-$(dirname "$0")/secrets}
host=${BOXMETER_DB_HOST:-postgres}
pg_uid=${POSTGRES_UID:-999}
boxmeter_uid=${BOXMETER_UID:-10001}
grafana_uid=${GRAFANA_UID:-472}

if [ "$(id -u)" -ne 0 ]; then
  echo "make-secrets.sh: run as root: it makes files owned by uid" \
    "$boxmeter_uid and $pg_uid" >&2
  exit 77
fi
if [ -e "$dir/boxmeter-logins" ]; then
  echo "make-secrets.sh: $dir/boxmeter-logins exists; keeping $dir as it is" >&2
  exit 0
fi
password() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }

install -d -m 0755 "$dir"
umask 077
password >"$dir/postgres-superuser"
: >"$dir/boxmeter-logins"
for pair in owner:boxmeter_owner collector:boxmeter_meter \
  generator:boxmeter_gen; do
  file=${pair%%:*}
  login=${pair#*:}
  secret=$(password)
  echo "$login $secret" >>"$dir/boxmeter-logins"
  echo "$host:*:boxmeter:$login:$secret" >"$dir/$file.pgpass"
  chown "$boxmeter_uid:$boxmeter_uid" "$dir/$file.pgpass"
  chmod 0600 "$dir/$file.pgpass"
done
grafana=$(password)
echo "boxmeter_grafana $grafana" >>"$dir/boxmeter-logins"
printf '%s' "$grafana" >"$dir/grafana-db-password"
password >"$dir/grafana-admin-password"
chown "$grafana_uid:$grafana_uid" "$dir/grafana-db-password" \
  "$dir/grafana-admin-password"
chown "$pg_uid:$pg_uid" "$dir/postgres-superuser" "$dir/boxmeter-logins"
echo "make-secrets.sh: wrote $dir/{postgres-superuser,boxmeter-logins," \
  "owner.pgpass,collector.pgpass,generator.pgpass,grafana-db-password," \
  "grafana-admin-password}" >&2
