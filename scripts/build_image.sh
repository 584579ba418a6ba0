#!/usr/bin/env bash
# The one documented way to build the image (`make image`, docs/OPERATIONS.md):
#
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=$CA_BUNDLE [--build-arg BASE=$GATEWAY_BASE_IMAGE] -t $GATEWAY_IMAGE .
#
# That one command works with Debian's docker.io (20.10: BuildKit is built into its client, and
# DOCKER_BUILDKIT=1 turns it on) and with a current Docker (BuildKit through buildx, the default
# builder; the variable changes nothing there). A current client WITHOUT the buildx plugin cannot
# build it (no BuildKit at all): this script says so instead of failing in the middle.
#
# GATEWAY_IMAGE (default ai-gateway:latest) and GATEWAY_BASE_IMAGE (default: the Dockerfile's
# python:3.11-slim-bookworm) come from the environment, else from .env (compose reads the same).
# CA_BUNDLE: pip's CA bundle inside the build (default the system's); DOCKER: the client.
set -euo pipefail
cd "$(dirname "$0")/.."

from_env_file() {  # the value of $1 in .env, if the environment has none
    [ -n "${!1:-}" ] || [ ! -f .env ] && return 0
    local line
    line=$(grep -E "^$1=" .env | tail -1) || return 0
    printf -v "$1" '%s' "${line#*=}"
}
from_env_file GATEWAY_IMAGE
from_env_file GATEWAY_BASE_IMAGE
IMAGE=${GATEWAY_IMAGE:-ai-gateway:latest}
BASE=${GATEWAY_BASE_IMAGE:-}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DOCKER=${DOCKER:-docker}

client=$("$DOCKER" version --format '{{.Client.Version}}' 2>/dev/null || true)
major=${client%%.*}
if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -ge 23 ] && ! "$DOCKER" buildx version >/dev/null 2>&1; then
    echo "docker $client has no buildx plugin, so no BuildKit: install it (Docker's docker-buildx-plugin package)," >&2
    echo "or build with Debian's docker.io client. docs/OPERATIONS.md, 'Container image'." >&2
    exit 1
fi

args=(build)
[ -s "$CA_BUNDLE" ] && args+=(--secret "id=ca,src=$CA_BUNDLE")
[ -n "$BASE" ] && args+=(--build-arg "BASE=$BASE")
args+=(-t "$IMAGE" .)
echo "+ DOCKER_BUILDKIT=1 $DOCKER ${args[*]}"
DOCKER_BUILDKIT=1 "$DOCKER" "${args[@]}"
"$DOCKER" image inspect "$IMAGE" --format "built $IMAGE: {{.Size}} bytes"
