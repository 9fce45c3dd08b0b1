#!/usr/bin/env bash
# Validate docker-compose.yml offline (no Docker engine needed):
#  - the file parses and validates with docker-compose, both with the built-in
#    defaults and with .env.example;
#  - the expected services are present;
#  - start-up ordering uses health-check / completion conditions;
#  - every ${VARIABLE} the file uses is documented in .env.example.
# Exits non-zero on the first failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMPOSE_FILE_PATH=docker-compose.yml
ENV_EXAMPLE=.env.example
EXPECTED_SERVICES=(
    postgres
    rabbitmq
    minio
    minio-buckets
    redis
    central-migrate
    central-api
    central-ingest
)

fail() {
    echo "check_compose: FAIL: $*" >&2
    exit 1
}

if ! command -v docker-compose >/dev/null 2>&1; then
    if [[ ${EUID} -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "check_compose: installing docker-compose (Debian package)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    else
        fail "docker-compose not found (install Debian's docker-compose package as root)"
    fi
fi

[[ -f ${COMPOSE_FILE_PATH} ]] || fail "${COMPOSE_FILE_PATH} not found"
[[ -f ${ENV_EXAMPLE} ]] || fail "${ENV_EXAMPLE} not found"

# Run without the caller's Compose-related environment, and with an empty env
# file so a local .env does not change the result.
empty_env=$(mktemp)
trap 'rm -f "${empty_env}"' EXIT

compose() {
    env -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME -u COMPOSE_PATH_SEPARATOR \
        docker-compose -f "${COMPOSE_FILE_PATH}" "$@"
}

compose --env-file "${empty_env}" config -q \
    || fail "docker-compose config rejects ${COMPOSE_FILE_PATH} (defaults)"
compose --env-file "${ENV_EXAMPLE}" config -q \
    || fail "docker-compose config rejects ${COMPOSE_FILE_PATH} with ${ENV_EXAMPLE}"

services=$(compose --env-file "${empty_env}" config --services) \
    || fail "docker-compose config --services failed"
for service in "${EXPECTED_SERVICES[@]}"; do
    grep -qxF -- "${service}" <<<"${services}" || fail "service '${service}' missing"
done

rendered=$(compose --env-file "${empty_env}" config) || fail "docker-compose config failed"
grep -q 'condition: service_healthy' <<<"${rendered}" \
    || fail "no 'service_healthy' depends_on conditions in rendered config"
grep -q 'condition: service_completed_successfully' <<<"${rendered}" \
    || fail "no 'service_completed_successfully' depends_on conditions in rendered config"

# ${VAR...} references ($${...} is an escaped literal for the container).
missing=()
while IFS= read -r var; do
    [[ -n ${var} ]] || continue
    grep -qE "^${var}=" "${ENV_EXAMPLE}" || missing+=("${var}")
done < <(grep -oE '\$+\{[A-Za-z_][A-Za-z0-9_]*' "${COMPOSE_FILE_PATH}" \
    | grep -vE '^(\$\$)+\{' | sed -E 's/^\$+\{//' | sort -u)
if [[ ${#missing[@]} -gt 0 ]]; then
    fail "variables used in ${COMPOSE_FILE_PATH} but not in ${ENV_EXAMPLE}: ${missing[*]}"
fi

echo "check_compose: OK (${#EXPECTED_SERVICES[@]} services, conditions present, variables documented)"
