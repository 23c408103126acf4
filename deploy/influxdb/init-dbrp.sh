#!/bin/bash
# Runs once, inside the influxdb:2.x container, right after the automatic
# first-start setup (DOCKER_INFLUXDB_INIT_MODE=setup) and before the server is
# opened on its public port. The image's entrypoint has already exported
# DOCKER_INFLUXDB_INIT_BUCKET_ID and configured the `influx` CLI against the
# temporary setup server.
#
# It maps the v1 database/retention-policy pair "<bucket>/autogen" onto the
# bucket, so InfluxQL clients (the Grafana data source) can query it with
# database = bucket name.
set -euo pipefail

db="${DOCKER_INFLUXDB_INIT_BUCKET}"
# the admin token comes from a file (DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE)
token="${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN:-$(cat /run/secrets/emm/admin-token)}"
rp="autogen"

if influx v1 dbrp list \
        --org "${DOCKER_INFLUXDB_INIT_ORG}" \
        --token "${token}" \
        --db "${db}" --hide-headers 2>/dev/null | grep -q .; then
    echo "DBRP mapping for database '${db}' already present, nothing to do"
    exit 0
fi

influx v1 dbrp create \
    --org "${DOCKER_INFLUXDB_INIT_ORG}" \
    --token "${token}" \
    --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
    --db "${db}" \
    --rp "${rp}" \
    --default

echo "Created DBRP mapping ${db}/${rp} -> bucket ${DOCKER_INFLUXDB_INIT_BUCKET_ID}"
