#!/bin/sh
# Signs the Codex CLI in to the AI API gateway at {{ base_url }} and points Codex at it.
#
#   curl -fsSL {{ base_url }}/install/codex.sh | sh
#
# Runs the device sign-in (RFC 8628): open the link it prints, sign in to the portal, confirm the
# code and choose the allocations the key may use. Then it backs up ~/.codex/config.toml (once:
# the first install's backup is kept), writes a configuration whose model provider is this
# gateway, and stores the key in ~/.codex/gateway.key (mode 600). Needs only sh and curl.
# Undo with: curl -fsSL {{ base_url }}/install/codex-restore.sh | sh
# Settings: GATEWAY_KEY_LABEL (the key's name), GATEWAY_MODEL (the model Codex starts with),
# CODEX_HOME (default ~/.codex).
set -eu

GATEWAY='{{ base_url }}'
CODEX_DIR="${CODEX_HOME:-$HOME/.codex}"
LABEL="${GATEWAY_KEY_LABEL:-Codex CLI on $(hostname 2>/dev/null || echo 'this computer')}"
GRANT='urn:ietf:params:oauth:grant-type:device_code'

fail() { echo "codex install: $*" >&2; exit 1; }
json_str() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -n 1; }
json_num() { sed -n "s/.*\"$1\": *\([0-9][0-9]*\).*/\1/p" | head -n 1; }

command -v curl >/dev/null 2>&1 || fail "curl is required"

start=$(curl -sS -X POST --data-urlencode "label=$LABEL" "$GATEWAY/oauth/device/code") \
  || fail "cannot reach $GATEWAY"
device_code=$(printf '%s' "$start" | json_str device_code)
user_code=$(printf '%s' "$start" | json_str user_code)
link=$(printf '%s' "$start" | json_str verification_uri_complete)
interval=$(printf '%s' "$start" | json_num interval)
expires_in=$(printf '%s' "$start" | json_num expires_in)
[ -n "$device_code" ] || fail "the gateway refused to start a sign-in: $start"

echo "To sign in, open this link in a browser:"
echo "  $link"
echo "and confirm the code: $user_code"
echo "Waiting for your approval..."

waited=0
token=''
while [ -z "$token" ]; do
  [ "$waited" -lt "$expires_in" ] || fail "the code expired; run the installer again"
  sleep "$interval"
  waited=$((waited + interval))
  answer=$(curl -sS -X POST -d "grant_type=$GRANT" --data-urlencode "device_code=$device_code" \
    "$GATEWAY/oauth/device/token") || fail "cannot reach $GATEWAY"
  token=$(printf '%s' "$answer" | json_str access_token)
  [ -n "$token" ] && break
  error=$(printf '%s' "$answer" | json_str error)
  case "$error" in
    authorization_pending) ;;
    slow_down) interval=$((interval + 5)) ;;
    access_denied) fail "the sign-in was denied" ;;
    expired_token) fail "the code expired; run the installer again" ;;
    *) fail "the gateway answered: $answer" ;;
  esac
done
model="${GATEWAY_MODEL:-$(printf '%s' "$answer" | json_str model)}"

umask 077
mkdir -p "$CODEX_DIR"
config="$CODEX_DIR/config.toml"
if [ ! -e "$config.gateway-backup" ] && [ ! -e "$config.gateway-none" ]; then
  if [ -e "$config" ]; then cp -p "$config" "$config.gateway-backup"; else : > "$config.gateway-none"; fi
fi
printf '%s\n' "$token" > "$CODEX_DIR/gateway.key"
chmod 600 "$CODEX_DIR/gateway.key"
printf 'export GATEWAY_API_KEY="$(cat "%s")"\n' "$CODEX_DIR/gateway.key" > "$CODEX_DIR/gateway.env"
cat > "$config" <<TOML
# Written by the AI API gateway's installer; the previous file is config.toml.gateway-backup.
model = "$model"
model_provider = "gateway"

[model_providers.gateway]
name = "AI API gateway"
base_url = "$GATEWAY/v1"
env_key = "GATEWAY_API_KEY"
wire_api = "responses"
TOML

echo "Codex now uses $GATEWAY/v1 with the model $model."
echo "The key is in $CODEX_DIR/gateway.key. Codex reads it from GATEWAY_API_KEY: add this line to"
echo "your shell profile (~/.profile, ~/.bashrc or ~/.zshrc), then open a new terminal:"
echo "  . \"$CODEX_DIR/gateway.env\""
