# The gateway's image: `serve --workers` (daphne processes on one socket) as a non-root user, static
# files collected (hashed, compressed) at build time and served by the app; the same image runs the
# Celery worker and beat. docs/OPERATIONS.md.
#
# Build it the one documented way, which works with Debian's docker.io and with a current Docker:
#
#   make image        # = DOCKER_BUILDKIT=1 docker build --secret id=ca,src=<CA bundle> [--build-arg BASE=…] -t … .
#
# BuildKit is needed (the CA bundle is a build secret: pip may sit behind a TLS-intercepting proxy,
# and the bundle must not end up in a layer). The built-in Dockerfile frontend is enough (no
# `# syntax` line, which would pull a frontend image). BASE: any Debian bookworm image with
# python3 and python3-venv (docs/OPERATIONS.md makes one without a registry).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# The runtime stage copies this venv: without pip, and without the libraries' own test suites.
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/venv/bin/pip install --quiet -r /tmp/requirements.txt \
    && /opt/venv/bin/pip uninstall --quiet --yes pip \
    && find /opt/venv/lib/python3.11/site-packages -depth -type d \
        \( -name tests -o -path '*/site-packages/twisted/*' -name test \) -exec rm -rf {} +
# The application (.dockerignore leaves out tests, bench, docs and scripts) and its static files,
# collected with DEBUG off (hashed, compressed names); the keys exist for this step only.
COPY . /src
RUN cd /src && SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    GATEWAY_ENCRYPTION_KEY="$(python3 -c 'import base64; print(base64.urlsafe_b64encode(bytes(32)).decode())')" \
    /opt/venv/bin/python manage.py collectstatic --noinput -v 0 \
    && chmod -R a+rX,go-w /src

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATIC_ROOT=/app/staticfiles \
    GATEWAY_LOG_FORMAT=json \
    GATEWAY_WORKERS=2 \
    GATEWAY_SPOOL_DIR=/var/lib/gateway/spool \
    PORT=8000
# The only place the processes write: the settlement spool's fallback file (a volume in compose).
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0750 /var/lib/gateway /var/lib/gateway/spool
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src /app
WORKDIR /app
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; h = os.environ.get('ALLOWED_HOSTS', 'localhost').split(',')[0].strip().lstrip('.*') or 'localhost'; u.urlopen(u.Request(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz\", headers={'Host': h}), timeout=4)"]
# SIGTERM drains in-flight calls (GATEWAY_SHUTDOWN_GRACE_S): give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "exec python3 -m gateway_project.serve --workers \"$GATEWAY_WORKERS\" -b 0.0.0.0 -p \"$PORT\" gateway_project.asgi:application"]
