#!/usr/bin/env bash
# Makes sure promtool (Prometheus' rule and config checker) is installed, for the test that checks
# deploy/prometheus/ (tests/integration/test_deploy.py), and prints its path as a shell
# `export PROMTOOL=...` line. It comes from Debian's `prometheus` package.
#   1. use $PROMTOOL when it is set and executable, else `promtool` on the PATH;
#   2. else, as root on Debian, install the `prometheus` package with apt-get;
#   3. else fail with a message that says what is missing.
set -euo pipefail
say() { echo "promtool: $*" >&2; }

if [ -n "${PROMTOOL:-}" ]; then
  [ -x "$PROMTOOL" ] || { say "PROMTOOL=$PROMTOOL is not an executable file"; exit 1; }
  promtool="$PROMTOOL"
else
  promtool=$(command -v promtool || true)
  if [ -z "$promtool" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing Debian's prometheus package (for promtool) with apt-get"
      # The package's service is not wanted here: policy-rc.d (exit 101) keeps it from being started.
      policy=/usr/sbin/policy-rc.d; added=""
      if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; added=1; fi
      rc=0
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >&2 || rc=$?
      [ -z "$added" ] || rm -f "$policy"
      [ "$rc" = 0 ] || { say "apt-get install prometheus failed"; exit 1; }
      promtool=$(command -v promtool || true)
    else
      say "no promtool on the PATH: install Debian's prometheus package (apt-get install --no-install-recommends prometheus) or set PROMTOOL to a promtool binary"
      exit 1
    fi
  fi
fi
[ -n "$promtool" ] && [ -x "$promtool" ] || { say "no executable promtool after installing"; exit 1; }
version=$("$promtool" --version 2>&1 | head -n 1 || true)
[ -n "$version" ] || { say "$promtool does not run ($promtool --version failed)"; exit 1; }
say "using $version ($promtool)"
echo "export PROMTOOL='$promtool'"
