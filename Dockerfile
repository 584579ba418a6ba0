# The gateway's image: `serve --workers` (daphne processes on one socket) as a non-root user, static
# files collected (hashed, compressed) at build time and served by the app. docs/OPERATIONS.md.
#
#   docker build -t ai-gateway .
#   # behind a TLS-intercepting proxy, give pip the CA bundle as a build secret:
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t ai-gateway .
#   # without registry access, any Debian bookworm image with python3 and python3-venv:
#   docker build --build-arg BASE=local/debian-python:bookworm -t ai-gateway .
#
# Needs BuildKit (RUN --mount); the built-in Dockerfile frontend is enough (no `# syntax` line,
# which would pull a frontend image).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/venv/bin/pip install --quiet -r /tmp/requirements.txt

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATIC_ROOT=/app/staticfiles \
    GATEWAY_LOG_FORMAT=json \
    GATEWAY_WORKERS=2 \
    PORT=8000
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . /app
# collectstatic runs with DEBUG off (hashed, compressed names); the keys exist for this step only.
RUN SECRET_KEY=collectstatic-only GATEWAY_ENCRYPTION_KEY="$(python3 -c 'import base64; print(base64.urlsafe_b64encode(bytes(32)).decode())')" \
    python3 manage.py collectstatic --noinput -v 0 \
    && chown -R root:root /app && chmod -R a+rX /app
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; h = os.environ.get('ALLOWED_HOSTS', 'localhost').split(',')[0].strip().lstrip('.*') or 'localhost'; u.urlopen(u.Request(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz\", headers={'Host': h}), timeout=4)"]
# SIGTERM drains in-flight calls (GATEWAY_SHUTDOWN_GRACE_S): give `docker stop` more than that.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "exec python3 -m gateway_project.serve --workers \"$GATEWAY_WORKERS\" -b 0.0.0.0 -p \"$PORT\" gateway_project.asgi:application"]
