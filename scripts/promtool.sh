#!/usr/bin/env bash
# Makes sure the two outside tools of the deployment test (tests/integration/test_deploy.py) are
# installed, and prints their paths as shell `export` lines:
#   promtool         Prometheus' rule and config checker, for deploy/prometheus/ (Debian's `prometheus`);
#   systemd-analyze  systemd's unit checker, for deploy/livegate.service (Debian's `systemd`).
# For each:
#   1. use $PROMTOOL / $SYSTEMD_ANALYZE when set and executable, else the command on the PATH;
#   2. else, as root on Debian, install the package with apt-get (both missing ones in one go);
#   3. else fail with a message that says what is missing.
set -euo pipefail
say() { echo "promtool.sh: $*" >&2; }

# find VAR COMMAND: the executable $VAR names, else COMMAND on the PATH, else nothing.
find_tool() {
  local given="${!1:-}"
  if [ -n "$given" ]; then
    [ -x "$given" ] || { say "$1=$given is not an executable file"; exit 1; }
    echo "$given"
  else
    command -v "$2" || true
  fi
}

promtool=$(find_tool PROMTOOL promtool)
systemd_analyze=$(find_tool SYSTEMD_ANALYZE systemd-analyze)
missing=()
[ -n "$promtool" ] || missing+=(prometheus)
[ -n "$systemd_analyze" ] || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's ${missing[*]} with apt-get (for promtool / systemd-analyze)"
    # The packages' services are not wanted here: policy-rc.d (exit 101) keeps them from being started.
    policy=/usr/sbin/policy-rc.d; added=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; added=1; fi
    rc=0
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >&2 || rc=$?
    [ -z "$added" ] || rm -f "$policy"
    [ "$rc" = 0 ] || { say "apt-get install ${missing[*]} failed"; exit 1; }
    promtool=$(command -v promtool || true)
    systemd_analyze=$(command -v systemd-analyze || true)
  else
    say "missing: ${missing[*]} (Debian packages; apt-get install --no-install-recommends ${missing[*]}), or set PROMTOOL / SYSTEMD_ANALYZE to the binaries"
    exit 1
  fi
fi
[ -n "$promtool" ] && [ -x "$promtool" ] || { say "no executable promtool after installing"; exit 1; }
[ -n "$systemd_analyze" ] && [ -x "$systemd_analyze" ] || { say "no executable systemd-analyze after installing"; exit 1; }
version=$("$promtool" --version 2>&1 | head -n 1 || true)
[ -n "$version" ] || { say "$promtool does not run ($promtool --version failed)"; exit 1; }
say "using $version ($promtool)"
version=$("$systemd_analyze" --version 2>&1 | head -n 1 || true)
[ -n "$version" ] || { say "$systemd_analyze does not run ($systemd_analyze --version failed)"; exit 1; }
say "using $version ($systemd_analyze)"
echo "export PROMTOOL='$promtool' SYSTEMD_ANALYZE='$systemd_analyze'"
