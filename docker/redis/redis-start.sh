#!/bin/sh
# Entry point of the `redis` service (docker-compose.yml, official redis
# image): runs its arguments (redis-server and its options) with the password
# given as configuration on standard input (`redis-server -`), so it is in no
# process's command line (`ps` shows those to every local user).
#
#   REDIS_PASSWORD  the password clients must send (required)
set -eu

case "${REDIS_PASSWORD:-}" in
  "") echo "redis: set REDIS_PASSWORD in .env" >&2; exit 1 ;;
  *[\"\\]*|*"
"*) echo "redis: REDIS_PASSWORD may not hold quotes, backslashes or newlines" >&2; exit 1 ;;
esac
password=$REDIS_PASSWORD
unset REDIS_PASSWORD
server=$1
shift
# "-" as the last argument: read the configuration from standard input too
exec "$server" "$@" - <<EOF
requirepass "$password"
EOF
