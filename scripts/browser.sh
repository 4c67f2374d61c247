#!/usr/bin/env bash
# Makes sure a Chromium for the browser tests (tests/browser) is installed and prints its path
# as a shell `export CHROMIUM=...` line. Playwright drives it; Playwright's own browser
# downloads are never used.
#   1. use $CHROMIUM when it is set and executable, else /usr/bin/chromium;
#   2. else, as root on Debian, install Debian's `chromium` package with apt-get;
#   3. else fail with a message that says what is missing.
set -euo pipefail
say() { echo "browser: $*" >&2; }

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  if [ -n "${CHROMIUM:-}" ]; then
    say "CHROMIUM=$CHROMIUM is not an executable file"; exit 1
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
  else
    say "no Chromium at /usr/bin/chromium: install Debian's chromium package (apt-get install chromium) or set CHROMIUM to a Chromium binary"
    exit 1
  fi
fi
[ -x "$chromium" ] || { say "no executable Chromium at $chromium after installing"; exit 1; }
version=$("$chromium" --headless --no-sandbox --version 2>/dev/null || true)
[ -n "$version" ] || { say "$chromium does not run ($chromium --version failed)"; exit 1; }
say "using $version ($chromium)"
echo "export CHROMIUM='$chromium'"
