#!/usr/bin/env bash
# compose.yaml on the offline path (docs/OPERATIONS.md, "Without a registry"): the stores' images
# built from Debian's packages (`make offline-images`) chosen with POSTGRES_IMAGE and REDIS_IMAGE,
# the gateway's image as built by `make image`. Up, /readyz, the first admin, the demo, one call,
# then down (volumes removed). Exit 1 at the first failure.
#
# Environment: GATEWAY_IMAGE (default ai-gateway:smoke), COMPOSE (default: docker-compose, Debian's
# 1.29; `docker compose` works too), PYTHON (with the openai SDK: default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_IMAGE=${GATEWAY_IMAGE:-ai-gateway:smoke}
COMPOSE=${COMPOSE:-docker-compose}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
PROJECT="gwcompose$$"
cp compose.yaml "$WORK/"
# .env.example with its placeholders replaced, the offline stores chosen, no TLS proxy in front.
sed -e "s/^SECRET_KEY=.*/SECRET_KEY=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(50))')/" \
    -e "s/^GATEWAY_ENCRYPTION_KEY=.*/GATEWAY_ENCRYPTION_KEY=$("$PYTHON" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')/" \
    -e "s/^GATEWAY_METRICS_TOKEN=.*/GATEWAY_METRICS_TOKEN=compose-smoke-metrics-token-0123456789/" \
    -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')/" \
    -e "s/^ALLOWED_HOSTS=.*/ALLOWED_HOSTS=127.0.0.1,localhost/" \
    -e "s/^GATEWAY_BEHIND_TLS_PROXY=.*/GATEWAY_BEHIND_TLS_PROXY=false/" \
    -e "s/^SECURE_SSL_REDIRECT=.*/SECURE_SSL_REDIRECT=false/" \
    -e "s#^GATEWAY_IMAGE=.*#GATEWAY_IMAGE=$GATEWAY_IMAGE#" \
    -e "s/^GATEWAY_PORT=.*/GATEWAY_PORT=$PORT/" \
    -e "s#^POSTGRES_IMAGE=.*#POSTGRES_IMAGE=local/postgres:15-bookworm#" \
    -e "s#^REDIS_IMAGE=.*#REDIS_IMAGE=local/redis:7-bookworm#" \
    .env.example >"$WORK/.env"
compose() { (cd "$WORK" && $COMPOSE -p "$PROJECT" "$@"); }
fail() { printf '\nCOMPOSE SMOKE FAILED: %s\n' "$*" >&2; compose logs --tail 20 >&2 || true; exit 1; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

printf '== %s up -d (stores: local/postgres:15-bookworm, local/redis:7-bookworm)\n' "$COMPOSE"
compose up -d || fail "up"
URL="http://127.0.0.1:$PORT"
for _ in $(seq 180); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ] && break
    sleep 1
done
curl -fsS "$URL/readyz" || fail "/readyz never answered 200"
printf '\n== the first admin, the demo\n'
compose run --rm -e DJANGO_SUPERUSER_PASSWORD=compose-smoke-Admin-1 web \
    python3 manage.py createsuperuser --noinput --username admin --email admin@example.org || fail "createsuperuser"
KEY=$(compose run --rm web python3 manage.py seed_demo | sed -n 's/.*Demo API key (all demo models): \(sk-gw-[A-Za-z0-9_-]*\).*/\1/p')
[ -n "$KEY" ] || fail "seed_demo printed no key"
"$PYTHON" - "$URL" "$KEY" <<'PY' || fail "SDK call"
import sys
import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
completion = client.chat.completions.create(model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "compose"}])
print(f"chat.completions through compose: {completion.usage.total_tokens} tokens")
PY
compose ps
printf '\nCOMPOSE SMOKE PASSED\n'
