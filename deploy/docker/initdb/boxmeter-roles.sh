#!/bin/sh
# Run once by the postgres image on a new data directory
# (/docker-entrypoint-initdb.d), as its superuser, for
# deploy/docker/compose.yaml: boxmeter's group roles (schema/0004_roles.sql,
# 0008_hardening.sql)
# and three logins, none a superuser and none with CREATEROLE:
#   boxmeter_owner  owns the database and its public schema: runs --migrate
#   boxmeter_meter  IN ROLE boxmeter_collector: the collector
#   boxmeter_gen    IN ROLE boxmeter_generator: boxmeter-gen
#   boxmeter_grafana  IN ROLE boxmeter_readonly: Grafana's dashboards (only
#                   when the file has its line: secrets made before it)
# The passwords come from the secret file boxmeter-logins ("LOGIN PASSWORD"
# lines, made by make-secrets.sh), never from the environment.
set -eu

logins=${BOXMETER_LOGINS_FILE:-/run/secrets/boxmeter-logins}
db=${POSTGRES_DB:-boxmeter}

password_of() {
  awk -v login="$1" '$1 == login { print $2; found = 1 }
    END { exit !found }' "$logins" || {
    echo "boxmeter-roles.sh: no line for $1 in $logins; run make-secrets.sh" >&2
    exit 1
  }
}
owner=$(password_of boxmeter_owner)
meter=$(password_of boxmeter_meter)
gen=$(password_of boxmeter_gen)
grafana=$(password_of boxmeter_grafana 2>/dev/null || true)

psql -v ON_ERROR_STOP=1 -X -q --username "${POSTGRES_USER:-postgres}" \
  --dbname "$db" -v db="$db" -v owner="$owner" -v meter="$meter" \
  -v gen="$gen" <<'SQL'
CREATE ROLE boxmeter_collector NOLOGIN;
CREATE ROLE boxmeter_generator NOLOGIN;
CREATE ROLE boxmeter_readonly NOLOGIN;
CREATE ROLE boxmeter_operator NOLOGIN;
CREATE ROLE boxmeter_owner LOGIN PASSWORD :'owner';
CREATE ROLE boxmeter_meter LOGIN PASSWORD :'meter' IN ROLE boxmeter_collector;
CREATE ROLE boxmeter_gen LOGIN PASSWORD :'gen' IN ROLE boxmeter_generator;
ALTER DATABASE :"db" OWNER TO boxmeter_owner;
ALTER SCHEMA public OWNER TO boxmeter_owner;
SQL
if [ -n "$grafana" ]; then
  psql -v ON_ERROR_STOP=1 -X -q --username "${POSTGRES_USER:-postgres}" \
    --dbname "$db" -v grafana="$grafana" <<'SQL'
CREATE ROLE boxmeter_grafana LOGIN PASSWORD :'grafana' IN ROLE boxmeter_readonly;
SQL
fi
echo "boxmeter-roles.sh: made boxmeter_owner, boxmeter_meter, boxmeter_gen${grafana:+ and boxmeter_grafana} in $db" >&2
