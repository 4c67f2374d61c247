#!/usr/bin/env bash
# centrifuge-js's own Jest suite against livegate: `make compat-js CENTRIFUGE_JS=<checkout>`.
# The suite is not published on npm (the package holds the build only), so it needs a checkout
# of github.com/centrifugal/centrifuge-js. Starts livegate on :8000 with
# compat/centrifuge-js.toml (the suite's Centrifugo config, translated), installs the suite's
# dev dependencies, runs every test file, prints Jest's totals, stops the server.
set -euo pipefail
src="${CENTRIFUGE_JS:?set CENTRIFUGE_JS to a centrifuge-js checkout}"
root="$(cd "$(dirname "$0")/.." && pwd)"
livegate="${LIVEGATE:-$root/.venv/bin/livegate}"
log="$root/.tmp/compat-js-livegate.log"
mkdir -p "$root/.tmp"
"$livegate" check-config "$root/compat/centrifuge-js.toml" >/dev/null 2>&1 || "$livegate" check-config "$root/compat/centrifuge-js.toml"
"$livegate" serve --config "$root/compat/centrifuge-js.toml" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fsS http://127.0.0.1:8000/health >/dev/null 2>&1 && break
  sleep 0.2
done
cd "$src"
# typedoc pins an older typescript than the suite's: the peer check is not ours to fix.
npm install --no-audit --no-fund --ignore-scripts --legacy-peer-deps >/dev/null
npx jest --testPathIgnorePatterns bench "$@" 2>&1 | tee "$root/.tmp/compat-js.log" | grep -E '^(PASS|FAIL)|Tests:|✕'
echo "compat-js: server log $log, Jest output $root/.tmp/compat-js.log"
