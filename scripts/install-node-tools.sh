#!/usr/bin/env bash
# Installs the pinned npm packages the dashboard's schema test runs (tools/grafana-schema):
# Grafana's published types and the TypeScript compiler. Node.js and npm come from Debian's
# packages when missing (as root; otherwise it prints the command and fails).
set -euo pipefail
cd "$(dirname "$0")/../tools/grafana-schema"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-node-tools: node and npm are missing; run: sudo apt-get install -y nodejs npm" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# package-lock.json pins both packages by integrity hash; reinstall only when it changed.
if ! cmp -s package-lock.json node_modules/.installed-from-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json node_modules/.installed-from-lock
  echo "install-node-tools: installed @grafana/schema and typescript" >&2
fi
