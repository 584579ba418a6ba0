#!/usr/bin/env bash
# Builds the image the documented way (scripts/build_image.sh) and runs it as compose does, against
# this machine's PostgreSQL and Redis: migrate and seed the demo (one-shot containers), then web,
# Celery worker and Celery beat from the image, sharing one spool volume. It shows: /readyz and the
# HEALTHCHECK; one SDK call through the simulated provider, recorded; a reservation left by a
# "dead" process swept by beat + worker into a `worker_lost` record; the spool gauge and the
# heartbeats in /metrics; every log line of the three containers parsed as JSON; SIGTERM drained.
# Any failure stops it with a message (exit 1).
#
#   make image-smoke                                   # FROM the default base
#   GATEWAY_BASE_IMAGE=local/debian-python:bookworm make image-smoke   # a base made locally
#
# Environment: GATEWAY_BASE_IMAGE, IMAGE (default ai-gateway:smoke), PG_URL (server, default
# postgres://postgres@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379/9), PYTHON (with
# the openai SDK: default .venv/bin/python), SKIP_BUILD=1 to reuse IMAGE, DOCKER (the client).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-ai-gateway:smoke}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/9}
PYTHON=${PYTHON:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
docker() { command "$DOCKER" "$@"; }
DB="gw_image_smoke_$(date +%s)_$$"
NAME="gw-smoke-$$"
VOLUME="gw-smoke-spool-$$"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
step() { printf '\n== %s\n' "$*"; }
fail() {
    printf '\nIMAGE SMOKE FAILED: %s\n' "$*" >&2
    for c in web worker beat; do docker logs --tail 20 "$NAME-$c" >&2 2>/dev/null || true; done
    exit 1
}

cleanup() {
    docker rm -f "$NAME-web" "$NAME-worker" "$NAME-beat" >/dev/null 2>&1 || true
    docker run --rm --network host "$IMAGE" python3 -c "import psycopg, sys
with psycopg.connect(sys.argv[1] + '/postgres', autocommit=True) as c:
    c.execute('DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)')" "$PG_URL" >/dev/null 2>&1 || true
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "${SKIP_BUILD:-}" != 1 ]; then
    step "build $IMAGE (scripts/build_image.sh)"
    GATEWAY_IMAGE=$IMAGE DOCKER=$DOCKER scripts/build_image.sh >"$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log"; fail "the documented build"; }
    grep '^+ ' "$WORK/build.log"
fi
docker image inspect "$IMAGE" --format 'image {{.Id}} size={{.Size}} user={{.Config.User}} healthcheck={{json .Config.Healthcheck.Test}}'
[ "$(docker image inspect "$IMAGE" --format '{{.Config.User}}')" = gateway ] || fail "the image does not run as its non-root user"
docker run --rm "$IMAGE" sh -c 'test ! -e /app/tests && test ! -e /app/bench && test ! -e /app/docs' \
    || fail "the image ships tests, bench or docs"

# The production environment, as .env would give it (no TLS proxy in front here).
cat >"$WORK/env" <<ENV
SECRET_KEY=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(50))')
GATEWAY_ENCRYPTION_KEY=$("$PYTHON" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
GATEWAY_METRICS_TOKEN=smoke-$$-metrics-token-0123456789abcdef
ALLOWED_HOSTS=127.0.0.1,localhost
DATABASE_URL=$PG_URL/$DB
REDIS_URL=$REDIS_URL
GATEWAY_LOG_FORMAT=json
GATEWAY_WORKERS=2
GATEWAY_SHUTDOWN_GRACE_S=10
PORT=$PORT
ENV
run() { docker run --rm --network host --env-file "$WORK/env" -v "$VOLUME:/var/lib/gateway/spool" "$IMAGE" "$@"; }
start() {  # name, command…: a detached container as compose's services run
    local name=$1
    shift
    docker run -d --name "$NAME-$name" --network host --env-file "$WORK/env" -v "$VOLUME:/var/lib/gateway/spool" \
        "$@" >/dev/null
}
sql() { run python3 manage.py shell -c "$1"; }

step "database $DB, migrate, seed the demo"
run python3 -c "import psycopg, sys
with psycopg.connect(sys.argv[1] + '/postgres', autocommit=True) as c:
    c.execute('CREATE DATABASE \"$DB\"')" "$PG_URL" || fail "create the database"
run python3 manage.py migrate --noinput -v 0 || fail "migrate"
KEY=$(run python3 manage.py seed_demo | sed -n 's/.*Demo API key (all demo models): \(sk-gw-[A-Za-z0-9_-]*\).*/\1/p')
[ -n "$KEY" ] || fail "seed_demo printed no key"
# A reservation whose process died (expired a second ago): what the sweeper must bill as worker_lost.
sql "
import datetime as dt
from django.utils import timezone
from allocations.models import Allocation
from quota import ledger
from quota.pricing import Usage
a = Allocation.objects.filter(model__slug='sim/gpt-4o-mini').first()
now = timezone.now() - dt.timedelta(minutes=5)
record = {'request_id': 'image-smoke-lost', 'endpoint': 'chat.completions', 'started_at': now, 'is_stream': False,
          'member_id': str(a.member_id), 'allocation_id': str(a.pk), 'model_id': str(a.model_id)}
context = ledger.lost_context(record=record, usage=Usage(input_tokens=10, output_tokens=50, estimated=True), price=None)
ledger.admit(allocation_id=a.pk, token_cap=None, cost_cap=None, est_tokens=60, est_cost=None,
             request_id='image-smoke-lost', now=now, ttl_s=1, context=context)
" || fail "an abandoned reservation"

step "start web (the image's command), worker and beat"
start web "$IMAGE"
start worker --no-healthcheck "$IMAGE" celery -A gateway_project worker -l info --concurrency 2
start beat --no-healthcheck "$IMAGE" celery -A gateway_project beat -l info --schedule /tmp/celerybeat-schedule
URL="http://127.0.0.1:$PORT"
for _ in $(seq 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$NAME-web")" = true ] || fail "the web container exited"
    sleep 0.5
done
curl -fsS "$URL/readyz" || fail "/readyz never answered 200"
echo
for _ in $(seq 60); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$NAME-web")
    [ "$status" = healthy ] && break
    sleep 1
done
echo "HEALTHCHECK: $status"
[ "$status" = healthy ] || fail "the container's HEALTHCHECK is $status"

step "one call with the openai SDK through the simulated provider, and its record"
"$PYTHON" - "$URL" "$KEY" <<'PY' || fail "SDK call"
import sys
import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
reply = client.chat.completions.with_raw_response.create(
    model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "smoke"}], extra_headers={"X-Request-Id": "image-smoke-1"}
)
completion = reply.parse()
assert completion.usage.total_tokens > 0, completion
print(f"chat.completions: {reply.http_response.status_code}, {completion.usage.total_tokens} tokens")
PY
recorded() {  # request id, seconds: waits that long at most for the call's record (read on the host)
    "$PYTHON" - "$PG_URL/$DB" "$1" "$2" <<'PY'
import sys, time
import psycopg

url, request_id, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + seconds
while True:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT outcome, error_code, input_tokens, output_tokens FROM quota_callrecord WHERE request_id = %s",
            [request_id],
        ).fetchone()
    if row:
        print(f"record {request_id}: {row[0]} {row[1] or '-'} {row[2]}+{row[3]} tokens")
        break
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(1)
PY
}
recorded image-smoke-1 10 | tee "$WORK/call" || fail "the call is not recorded"
grep -q ' success ' "$WORK/call" || fail "the call is not recorded as a success"

step "static files (hashed, compressed at build time)"
css=$(curl -fsS "$URL/accounts/login/" | grep -o '/static/portal/portal\.[0-9a-f]*\.css' | head -1)
[ -n "$css" ] || fail "the login page links no hashed portal stylesheet"
curl -fsS -o /dev/null -H 'Accept-Encoding: gzip' -w "$css: %{http_code}\n" "$URL$css" || fail "GET $css"

step "beat sends the sweep, the worker bills the abandoned reservation as worker_lost (<= 90 s)"
recorded image-smoke-lost 90 | tee "$WORK/lost" || fail "the reservation was not swept"
grep -q 'worker_lost' "$WORK/lost" || fail "the swept call is not recorded as worker_lost"

step "metrics: the call, the spool gauge, Redis and the heartbeats"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/metrics")" = 401 ] || fail "/metrics without the token is not 401"
curl -fsS -H "Authorization: Bearer smoke-$$-metrics-token-0123456789abcdef" "$URL/metrics" >"$WORK/metrics" || fail "/metrics"
grep '^gateway_requests_total{endpoint="chat.completions",outcome="success",status="200"}' "$WORK/metrics" \
    || fail "the call is not counted"
grep -E '^gateway_(settlements_spooled|redis_up|celery_heartbeat_age_seconds)' "$WORK/metrics" | tee "$WORK/gauges"
grep -q '^gateway_settlements_spooled 0' "$WORK/gauges" || fail "the spool gauge is not exported"
grep -q 'process="celery_worker"' "$WORK/gauges" && grep -q 'process="celery_beat"' "$WORK/gauges" \
    || fail "no heartbeat of the worker or beat"
curl -fsS "$URL/readyz"
echo

step "stop (SIGTERM) and every log line as JSON"
for c in web worker beat; do docker stop -t 30 "$NAME-$c" >/dev/null & done
wait
for c in web worker beat; do
    echo "$c: exit code $(docker inspect -f '{{.State.ExitCode}}' "$NAME-$c")"
    docker logs "$NAME-$c" >"$WORK/$c.log" 2>&1
done
"$PYTHON" - "$WORK" "$KEY" <<'PY' || fail "a log line is not JSON, or a line is missing"
import json
import sys
from pathlib import Path

work, key = Path(sys.argv[1]), sys.argv[2]
lines = {}
for name in ("web", "worker", "beat"):
    text = (work / f"{name}.log").read_text()
    assert key not in text, f"the key appears in the {name} log"
    lines[name] = []
    for line in text.splitlines():
        if line.strip():
            try:
                lines[name].append(json.loads(line))
            except ValueError:
                raise SystemExit(f"{name}: not JSON: {line!r}")
    print(f"{name}: {len(lines[name])} lines, all JSON")
web = [line["message"] for line in lines["web"]]
assert any(line.get("request_id") == "image-smoke-1" for line in lines["web"]), "no call line"
assert any(line["logger"] == "daphne.access" for line in lines["web"]), "no access log line"
assert any(m.startswith("shutdown: draining") for m in web) and "all workers exited" in web, "no drain"
assert any("quota.reservations_sweep" in line["message"] for line in lines["worker"]), "the worker ran no sweep"
assert any("Sending due task" in line["message"] for line in lines["beat"]), "beat sent nothing"
PY
for c in web worker beat; do
    [ "$(docker inspect -f '{{.State.ExitCode}}' "$NAME-$c")" = 0 ] || fail "$c did not exit cleanly on SIGTERM"
done
printf '\nIMAGE SMOKE PASSED\n'
