#!/usr/bin/env bash
# Install the Debian packages kinko and its tests need, if they are missing.
# Idempotent and quiet when everything is present.
set -euo pipefail

need=()
command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ] || need+=(clamav-daemon clamav)
# Browser tests (tests/browser): Debian's Chromium, driven by Playwright, and
# CJK fonts so that Japanese pages render in the screenshots.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ "$(dpkg-query -W -f='${Status}' fonts-noto-cjk 2>/dev/null || true)" = "install ok installed" ] \
  || need+=(fonts-noto-cjk)
# The disposal certificate (portal/certificate.py) embeds IPAexGothic, a
# TrueType Japanese font (Noto CJK is CFF-based, which reportlab cannot embed).
[ "$(dpkg-query -W -f='${Status}' fonts-ipaexfont-gothic 2>/dev/null || true)" = "install ok installed" ] \
  || need+=(fonts-ipaexfont-gothic)
# The scale-out profile of the functional suite (#7) runs on PostgreSQL and a
# Redis queue; the tests start their own throwaway servers on loopback.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "kinko needs these Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
fi
echo "Installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Services must not be started by the packages: kinko and its tests start
# their own clamd, PostgreSQL and Redis.  policy-rc.d tells invoke-rc.d so.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  added_policy=1
fi
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if [ -n "$added_policy" ]; then $SUDO rm -f "$policy"; fi
