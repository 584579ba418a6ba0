#!/bin/sh
# Puts back the Codex CLI configuration that {{ base_url }}/install/codex.sh replaced, and removes
# the gateway key file it wrote. The key itself stays valid until you revoke it in the portal
# ({{ base_url }}/portal/keys/). Needs only sh.
set -eu

CODEX_DIR="${CODEX_HOME:-$HOME/.codex}"
config="$CODEX_DIR/config.toml"

if [ -e "$config.gateway-backup" ]; then
  mv "$config.gateway-backup" "$config"
  echo "Restored $config."
elif [ -e "$config.gateway-none" ]; then
  rm -f "$config" "$config.gateway-none"
  echo "Removed $config (there was none before the gateway's installer)."
else
  echo "codex restore: no backup in $CODEX_DIR; nothing to restore." >&2
  exit 1
fi
rm -f "$CODEX_DIR/gateway.key" "$CODEX_DIR/gateway.env"
echo "Revoke the key in the portal if you no longer need it: {{ base_url }}/portal/keys/"
