#!/usr/bin/env bash
# Installs what the test suite needs from Debian when it is missing: redis-server (the
# sandbox fleet tests start their own instance on a free loopback port) and chromium with
# its matching chromium-driver (the browser tests of `tirl view`, driven by Selenium; no
# browser is ever downloaded from elsewhere).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "[tirl] installing Debian packages for the tests: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
