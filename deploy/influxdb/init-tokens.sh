#!/bin/bash
# Runs once, inside the influxdb:2.x container, right after the first-start
# setup (after 10-dbrp.sh). InfluxDB makes tokens itself, so it is InfluxDB that
# hands them over: the writer's may only write the bucket, Grafana's may only
# read it, each into the volume that only its consumer (and InfluxDB) mounts.
set -euo pipefail

secrets="${EMM_SECRETS_ROOT:-/run/secrets}"  # where the volumes are mounted
admin="${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN:-$(cat "${secrets}/emm/admin-token")}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET_ID}"

make_token() {  # $1: description, $2: --write-bucket or --read-bucket, $3: the file
    if [ -s "$3" ]; then
        echo "token $1 already made"
        return
    fi
    json="$(influx auth create --org "${DOCKER_INFLUXDB_INIT_ORG}" --token "${admin}" \
        --description "$1" "$2" "${bucket}" --json)"
    token="$(printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"token":[[:space:]]*"\([^"]*\)".*/\1/p')"
    if [ -z "${token}" ]; then
        echo "influx auth create gave no token for $1" >&2
        exit 1
    fi
    (umask 022; printf '%s' "${token}" > "$3.new")
    mv "$3.new" "$3"
    echo "made token $1 ($2 ${bucket})"
}

make_token emm-writer --write-bucket "${secrets}/emm-writer/token"
make_token emm-grafana --read-bucket "${secrets}/emm-grafana/token"
