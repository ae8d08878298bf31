#!/usr/bin/env bash
# Verify a real `docker compose up` of SalesPulse (docs/operations.md):
#   scripts/compose-verify.sh            start (build if needed) and verify
#   scripts/compose-verify.sh --no-up    verify a stack that is already up
#
# Waits until every one-shot service (migrate, kafka-init) has exited 0 and
# every long-running service reports `healthy`, then checks that the
# dashboard refuses a request without credentials and accepts the token from
# .env, that the Dagster UI proxy does the same with DAGSTER_UI_USER /
# DAGSTER_UI_PASSWORD, that the Dagster webserver itself is not published,
# and prints the URLs.
# Exit 0 when all of that holds; 1 with the failing service's logs otherwise.
# Needs docker (with the compose plugin), curl and python3 on the host.
set -euo pipefail
cd "$(dirname "$0")/.."

TIMEOUT_S="${COMPOSE_VERIFY_TIMEOUT_S:-600}"
[ -f .env ] || { echo "compose-verify: no .env (cp .env.example .env, then set every change-me value)" >&2; exit 1; }
docker compose config --quiet  # every required variable is set, the file is valid

if [ "${1:-}" != "--no-up" ]; then
  docker compose up -d --build
fi

# One line per service: NAME STATE HEALTH EXITCODE (compose prints JSON lines or one array).
states() {
  docker compose ps --all --format json | python3 -c '
import json, sys
text = sys.stdin.read().strip()
rows = json.loads(text) if text.startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
for r in rows:
    print(r["Service"], r["State"], r.get("Health") or "-", r.get("ExitCode", 0))
'
}

deadline=$(( $(date +%s) + TIMEOUT_S ))
while :; do
  pending=()
  while read -r service state health code; do
    case "$state/$health" in
      exited/-) [ "$code" = 0 ] || { echo "compose-verify: $service exited $code" >&2; docker compose logs --tail 80 "$service" >&2; exit 1; } ;;
      running/healthy) ;;
      running/-) ;;  # no health check declared
      *) pending+=("$service:$state/$health") ;;
    esac
  done < <(states)
  ((${#pending[@]} == 0)) && break
  if (( $(date +%s) > deadline )); then
    echo "compose-verify: not healthy after ${TIMEOUT_S}s: ${pending[*]}" >&2
    for p in "${pending[@]}"; do docker compose logs --tail 80 "${p%%:*}" >&2; done
    exit 1
  fi
  echo "waiting for: ${pending[*]}"
  sleep 5
done

set -a; . ./.env; set +a
# the published ports bind to BIND_ADDRESS (127.0.0.1 unless .env names another)
host="${BIND_ADDRESS:-127.0.0.1}"
[ "$host" = 0.0.0.0 ] && host=127.0.0.1
dash="http://$host:${DASHBOARD_HOST_PORT:-5000}"
dagster="http://$host:${DAGSTER_HOST_PORT:-3000}"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

status=$(code "$dash/api/pipeline/status")
if [ "${DASHBOARD_AUTH:-token}" = token ]; then
  [ "$status" = 401 ] || { echo "compose-verify: dashboard answered $status without credentials (want 401)" >&2; exit 1; }
  # the token through curl's config on stdin (printf is a builtin): never in a process's arguments
  status=$(printf 'header = "Authorization: Bearer %s"\n' "$DASHBOARD_TOKEN" | code -K - "$dash/api/pipeline/status")
fi
[ "$status" = 200 ] || { echo "compose-verify: dashboard API answered $status with the token" >&2; exit 1; }
status=$(code "$dagster/server_info")
[ "$status" = 401 ] || { echo "compose-verify: Dagster UI answered $status without credentials (want 401)" >&2; exit 1; }
status=$(printf 'user = "%s:%s"\n' "$DAGSTER_UI_USER" "$DAGSTER_UI_PASSWORD" | code -K - "$dagster/server_info")
[ "$status" = 200 ] || { echo "compose-verify: Dagster UI answered $status with DAGSTER_UI_USER/PASSWORD" >&2; exit 1; }
if [ -n "$(docker compose port dagster-webserver 3000 2>/dev/null)" ]; then
  echo "compose-verify: the Dagster webserver is published (it has no authentication)" >&2; exit 1
fi

echo "SalesPulse is up; every health check passes."
echo "  dashboard   $dash/login  (token: DASHBOARD_TOKEN in .env)"
echo "  Dagster UI  $dagster  (user DAGSTER_UI_USER, password DAGSTER_UI_PASSWORD in .env)"
