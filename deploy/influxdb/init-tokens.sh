#!/bin/bash
# Runs once, inside the influxdb:2.x container, right after the first-start
# setup (after 10-dbrp.sh). InfluxDB makes tokens itself, so it is InfluxDB that
# hands them over: the writer's may write the bucket and read it (it reads its
# last counter values back at start), Grafana's may only read it; nothing else
# (no other bucket, no admin). Each goes into the volume that only its consumer
# (and InfluxDB) mounts.
set -euo pipefail

secrets="${EMM_SECRETS_ROOT:-/run/secrets}"  # where the volumes are mounted
admin="${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN:-$(cat "${secrets}/emm/admin-token")}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET_ID}"

make_token() {  # $1: description, $2: the file, then the permission flags
    description="$1"
    file="$2"
    shift 2
    if [ -s "${file}" ]; then
        echo "token ${description} already made"
        return
    fi
    json="$(influx auth create --org "${DOCKER_INFLUXDB_INIT_ORG}" --token "${admin}" \
        --description "${description}" "$@" --json)"
    token="$(printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"token":[[:space:]]*"\([^"]*\)".*/\1/p')"
    if [ -z "${token}" ]; then
        echo "influx auth create gave no token for ${description}" >&2
        exit 1
    fi
    (umask 022; printf '%s' "${token}" > "${file}.new")
    mv "${file}.new" "${file}"
    echo "made token ${description} ($*)"
}

make_token emm-writer "${secrets}/emm-writer/token" \
    --write-bucket "${bucket}" --read-bucket "${bucket}"
make_token emm-grafana "${secrets}/emm-grafana/token" --read-bucket "${bucket}"
