#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the suite needs on a fresh Debian 12 +
# Node 20 machine, builds, runs every test, and ends with a plain "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian services the tests start themselves (mosquitto, redis-server, delta tools...).
if [ -f .ci/packages.txt ]; then
  mapfile -t pkgs < <(grep -v '^\s*#' .ci/packages.txt | awk 'NF{print $1}')
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || echo "warning: apt-get install failed; tests needing ${missing[*]} will fail" >&2
  fi
fi

npm ci --no-audit --no-fund --loglevel=error || { echo "0 passed, 1 failed"; exit 1; }
npm run build --silent || { echo "0 passed, 1 failed"; exit 1; }

log="$(mktemp)"
npx tap 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
summary="$(grep -E '^# \{ total:' "$log" | tail -1)"
total=$(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary")
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
rm -f "$log"
total=${total:-0}; pass=${pass:-0}; fail=${fail:-0}
# A runner that crashed before its summary, or exited non-zero without a counted failure, failed.
if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
if [ "$total" -eq 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
echo "${pass} passed, ${fail} failed"
[ "$rc" -eq 0 ] && [ "$fail" -eq 0 ]
