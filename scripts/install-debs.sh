#!/usr/bin/env bash
# Installs the Debian packages the tests run for real (the stack's servers, and the headless
# Chromium that opens the HTML report), when any binary is missing.
# As root it installs them; otherwise it prints the exact command and fails.
set -euo pipefail
packages=(prometheus prometheus-alertmanager prometheus-pushgateway prometheus-node-exporter
          victoria-metrics chromium)
binaries=(/usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-alertmanager /usr/bin/amtool
          /usr/bin/prometheus-pushgateway /usr/bin/prometheus-node-exporter
          /usr/bin/victoria-metrics /usr/bin/vmalert /usr/bin/vmagent /usr/bin/chromium)
missing=()
for binary in "${binaries[@]}"; do [ -x "$binary" ] || missing+=("$binary"); done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-debs: missing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "install-debs: run as root, or install them yourself:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
  exit 1
fi
# The packages' postinst would start system-wide daemons on the default ports; the tests start
# their own on free ports, so deny service starts while installing (unless a policy exists).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created_policy=1
fi
cleanup() { [ "$created_policy" -eq 1 ] && rm -f "$policy"; return 0; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "install-debs: installed ${packages[*]}" >&2
