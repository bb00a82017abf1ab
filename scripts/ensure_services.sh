#!/usr/bin/env bash
# Installs what the test suite needs from Debian when it is missing: redis-server (the
# sandbox fleet tests start their own instance on a free loopback port).
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[tirl] installing redis-server (Debian package) for the fleet tests"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
