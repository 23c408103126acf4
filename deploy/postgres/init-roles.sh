#!/bin/sh
# Runs once, inside the postgres container, when the data folder is first made:
# the scheduler's login role, with the password `emm secrets` made for it.
# `emm migrate --grant-read emm_scheduler` then lets it read the tables, and
# nothing else.
set -eu

password="$(cat /run/secrets/emm/scheduler-password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$password" <<'SQL'
CREATE ROLE emm_scheduler LOGIN PASSWORD :'password';
SQL
echo "Created role emm_scheduler"
