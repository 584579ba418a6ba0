#!/usr/bin/env bash
# Builds the image and runs it against this machine's PostgreSQL and Redis: migrate (as compose's
# one-shot service does), seed the demo (simulated provider), start the image's own command, wait
# for /readyz and the container's HEALTHCHECK, then one SDK call, one static file, one scrape of
# /metrics and the call's JSON log line. Any failure stops it with a message (exit 1).
#
#   scripts/image_smoke.sh                       # FROM the default base (python:3.11-slim-bookworm)
#   BASE=local/debian-python:bookworm scripts/image_smoke.sh   # a base made locally (docs/OPERATIONS.md)
#
# Environment: BASE, IMAGE (tag, default ai-gateway:smoke), PG_URL (server, default
# postgres://postgres@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379/9), CA_BUNDLE
# (pip's CA bundle, passed as a build secret; default the system's), PYTHON (with the openai SDK:
# default .venv/bin/python), SKIP_BUILD=1 to reuse IMAGE, DOCKER (the client: BuildKit builds need
# buildx with a recent client; Debian's docker.io client, /usr/bin/docker, has BuildKit built in).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-ai-gateway:smoke}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/9}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PYTHON=${PYTHON:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
docker() { command "$DOCKER" "$@"; }
DB="gw_image_smoke_$(date +%s)_$$"
NAME="gw-smoke-$$"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
step() { printf '\n== %s\n' "$*"; }
fail() { printf '\nIMAGE SMOKE FAILED: %s\n' "$*" >&2; docker logs --tail 50 "$NAME" >&2 2>/dev/null || true; exit 1; }

cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker run --rm --network host "$IMAGE" python3 -c "import psycopg, sys
with psycopg.connect(sys.argv[1] + '/postgres', autocommit=True) as c:
    c.execute('DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)')" "$PG_URL" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "${SKIP_BUILD:-}" != 1 ]; then
    step "build $IMAGE${BASE:+ FROM $BASE}"
    secret=()
    [ -s "$CA_BUNDLE" ] && secret=(--secret "id=ca,src=$CA_BUNDLE")
    DOCKER_BUILDKIT=1 docker build --progress=plain ${BASE:+--build-arg "BASE=$BASE"} "${secret[@]}" -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "docker build"; }
fi
docker image inspect "$IMAGE" --format 'image {{.Id}} user={{.Config.User}} healthcheck={{json .Config.Healthcheck.Test}}'
[ "$(docker image inspect "$IMAGE" --format '{{.Config.User}}')" = gateway ] || fail "the image does not run as its non-root user"

# The production environment, as .env would give it (no TLS proxy in front here).
cat >"$WORK/env" <<ENV
SECRET_KEY=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(50))')
GATEWAY_ENCRYPTION_KEY=$("$PYTHON" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
GATEWAY_METRICS_TOKEN=smoke-$$-metrics-token-of-32-characters
ALLOWED_HOSTS=127.0.0.1,localhost
DATABASE_URL=$PG_URL/$DB
REDIS_URL=$REDIS_URL
GATEWAY_LOG_FORMAT=json
GATEWAY_WORKERS=2
PORT=$PORT
ENV
run() { docker run --rm --network host --env-file "$WORK/env" "$IMAGE" "$@"; }

step "database $DB, migrate, seed the demo"
run python3 -c "import psycopg, sys
with psycopg.connect(sys.argv[1] + '/postgres', autocommit=True) as c:
    c.execute('CREATE DATABASE \"$DB\"')" "$PG_URL" || fail "create the database"
run python3 manage.py migrate --noinput -v 0 || fail "migrate"
KEY=$(run python3 manage.py seed_demo | sed -n 's/.*Demo API key (all demo models): \(sk-gw-[A-Za-z0-9_-]*\).*/\1/p')
[ -n "$KEY" ] || fail "seed_demo printed no key"

step "start the image's command on 127.0.0.1:$PORT"
docker run -d --name "$NAME" --network host --env-file "$WORK/env" "$IMAGE" >/dev/null
URL="http://127.0.0.1:$PORT"
for _ in $(seq 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited"
    sleep 0.5
done
curl -fsS "$URL/readyz" || fail "/readyz never answered 200"
echo
for _ in $(seq 60); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
    [ "$status" = healthy ] && break
    sleep 1
done
echo "HEALTHCHECK: $status"
[ "$status" = healthy ] || fail "the container's HEALTHCHECK is $status"

step "one call with the openai SDK through the simulated provider"
"$PYTHON" - "$URL" "$KEY" <<'PY' || fail "SDK call"
import sys
import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
reply = client.chat.completions.with_raw_response.create(
    model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "smoke"}], extra_headers={"X-Request-Id": "image-smoke-1"}
)
completion = reply.parse()
assert completion.usage.total_tokens > 0, completion
print(f"chat.completions: {reply.http_response.status_code}, {completion.usage.total_tokens} tokens, "
      f"request id {reply.headers['x-request-id']}: {completion.choices[0].message.content[:60]!r}")
PY

step "static files (WhiteNoise, hashed and compressed at build time)"
css=$(curl -fsS "$URL/accounts/login/" | grep -o '/static/portal/portal\.[0-9a-f]*\.css' | head -1)
[ -n "$css" ] || fail "the login page links no hashed portal stylesheet"
curl -fsS -o /dev/null -D "$WORK/h" -H 'Accept-Encoding: gzip' "$URL$css" || fail "GET $css"
grep -i '^cache-control' "$WORK/h"; grep -i '^content-encoding' "$WORK/h" || fail "$css not compressed"
curl -fsS -o /dev/null -w "/static/admin/css/base.css: %{http_code}\n" "$URL/static/admin/css/base.css" \
    || fail "admin stylesheet"

step "metrics and the call's log line"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/metrics")" = 401 ] || fail "/metrics without the token is not 401"
curl -fsS -H "Authorization: Bearer smoke-$$-metrics-token-of-32-characters" "$URL/metrics" >"$WORK/metrics" || fail "/metrics"
grep '^gateway_requests_total{endpoint="chat.completions",outcome="success",status="200"}' "$WORK/metrics" \
    || fail "the call is not counted"
sleep 1
docker logs "$NAME" 2>&1 | grep '"request_id":"image-smoke-1"' || fail "no JSON log line for the call"
docker logs "$NAME" 2>&1 | grep -q "$KEY" && fail "the key appears in the container's log"

step "stop (SIGTERM)"
docker stop -t 45 "$NAME" >/dev/null
echo "exit code $(docker inspect -f '{{.State.ExitCode}}' "$NAME")"
printf '\nIMAGE SMOKE PASSED\n'
