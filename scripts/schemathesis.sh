#!/usr/bin/env bash
# Fuzzes the admin and member APIs from their own OpenAPI schema (/api/schema/) with schemathesis,
# against a real server on a random loopback port, as an admin-token caller: any 5xx, any response
# that does not match the schema, or an error outside the contract's envelope fails the run.
# Usage: scripts/schemathesis.sh [extra `st run` options]; DATABASE_URL / REDIS_URL as for tests
# (the database is migrated and seeded with the demo; use a scratch database).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
export DJANGO_SETTINGS_MODULE=gateway_project.settings CELERY_TASK_ALWAYS_EAGER=1 DEBUG=${DEBUG:-true}
"$BIN/python" manage.py migrate --noinput >/dev/null
"$BIN/python" manage.py seed_demo >/dev/null
TOKEN=$("$BIN/python" manage.py create_admin_token --user schemathesis --expires-days 1 | tail -n 1)
# The member API takes a session with CSRF: one for the demo member, with a fixed CSRF secret.
CSRF=schemathesisschemathesisschemath
SESSION=$("$BIN/python" - <<'PY'
import django; django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from allocations.models import Member
member = Member.objects.get(username="demo")
session = SessionStore()
session.update({SESSION_KEY: str(member.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                HASH_SESSION_KEY: member.get_session_auth_hash()})
session.create()
print(session.session_key)
PY
)
"$BIN/python" manage.py runserver "127.0.0.1:$PORT" --noreload >/tmp/schemathesis-server-$PORT.log 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; "$BIN/python" manage.py revoke_admin_token "${TOKEN:0:12}" >/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/accounts/login/" && break; sleep 0.2; done
"$BIN/st" run "http://127.0.0.1:$PORT/api/schema/" \
  -H "Authorization: Bearer $TOKEN" -H "Cookie: sessionid=$SESSION; csrftoken=$CSRF" -H "X-CSRFToken: $CSRF" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path-regex '^/api/admin/tokens/\{token_id\}$' \
  --max-examples "${MAX_EXAMPLES:-25}" "$@"
