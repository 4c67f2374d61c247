#!/usr/bin/env bash
# Installs livegate into its own virtualenv: every install step of the container image
# (deploy/Dockerfile), and what a host without containers runs (deploy/livegate.service).
#
#   deploy/install.sh [--prefix DIR] [--python PYTHON] [--wheels DIR] SOURCE
#
#   SOURCE    a livegate wheel, a source tree (the repository root) or a requirement
#             such as "livegate==0.9.0"
#   --prefix  the virtualenv to create or update (default: $LIVEGATE_PREFIX, else /opt/livegate);
#             it ends up holding bin/livegate and bin/livegate-healthcheck
#   --python  the interpreter the virtualenv is made from (default: python3; 3.11 or newer)
#   --wheels  install offline, from this folder of wheels only (pip --no-index --find-links)
#
# Only the package and its runtime dependencies are installed (no test or dev extras). Nothing
# here needs root: the prefix only has to be writable by whoever runs it. pip's own settings
# (PIP_INDEX_URL, PIP_NO_CACHE_DIR, ...) are honoured.
set -euo pipefail
say() { echo "install.sh: $*" >&2; }
usage() { sed -n '4,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

prefix="${LIVEGATE_PREFIX:-/opt/livegate}"
python="python3"
wheels=""
source=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage; prefix="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || usage; python="$2"; shift 2 ;;
    --wheels) [ $# -ge 2 ] || usage; wheels="$2"; shift 2 ;;
    -h|--help) usage ;;
    -*) say "unknown option $1"; usage ;;
    *) [ -z "$source" ] || { say "one SOURCE only (got $source and $1)"; usage; }; source="$1"; shift ;;
  esac
done
[ -n "$source" ] || { say "SOURCE is missing"; usage; }

command -v "$python" >/dev/null || { say "no Python interpreter '$python' (use --python)"; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { say "livegate needs Python 3.11 or newer; $python is $("$python" -V 2>&1)"; exit 1; }

# A path (a wheel or a source tree) must exist; anything else is handed to pip as a requirement,
# URLs (https://..., file://...), VCS requirements (git+...) and "name @ URL" included.
case "$source" in
  *://*|git+*|hg+*|svn+*|bzr+*|*" @ "*) ;;
  */*|*.whl|.|..)
    [ -e "$source" ] || { say "no such wheel or source tree: $source"; exit 1; }
    if [ -d "$source" ] && [ ! -f "$source/pyproject.toml" ]; then
      say "$source is a folder without pyproject.toml: not a livegate source tree"; exit 1
    fi ;;
esac

mkdir -p "$prefix" 2>/dev/null && [ -w "$prefix" ] \
  || { say "cannot write to $prefix: choose a writable --prefix (or run as its owner)"; exit 1; }
# Absolute from here on: it goes into the shebang of bin/livegate-healthcheck.
prefix=$(cd "$prefix" && pwd)

pip_args=(--quiet --disable-pip-version-check --no-input)
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || { say "--wheels $wheels is not a folder"; exit 1; }
  pip_args+=(--no-index --find-links "$wheels")
fi

say "creating the virtualenv $prefix ($("$python" -V 2>&1))"
"$python" -m venv "$prefix"
say "installing $source"
"$prefix/bin/python" -m pip install "${pip_args[@]}" "$source"

# The container's HEALTHCHECK (and anyone else's): GET /health on the API port of the config
# that `livegate serve` would read (the same discovery: the file named as the first argument, else
# $LIVEGATE_CONFIG, else ./config.toml; LIVEGATE_* variables on top); exit 0 when it answers 200.
cat > "$prefix/bin/livegate-healthcheck" <<EOF
#!$prefix/bin/python
"""GET /health on livegate's API port (http_api.address/port of the config \`livegate serve\`
would read: the first argument, else \$LIVEGATE_CONFIG, else ./config.toml, with LIVEGATE_*
overrides); exit 0 on 200, else 1. Environment proxies (http_proxy, ...) are not used."""
import sys
import urllib.request

from livegate.cli import discover_config
from livegate.config import load_config
from livegate.errors import ConfigError

try:
    config = load_config(discover_config(sys.argv[1] if len(sys.argv) > 1 else None,
                                         given="from the first argument").path)
except ConfigError as exc:
    print(f"livegate-healthcheck: config error: {exc}", file=sys.stderr)
    sys.exit(1)
host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.http_api.address, config.http_api.address)
url = f"http://[{host}]:{config.http_api.port}/health" if ":" in host else f"http://{host}:{config.http_api.port}/health"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"livegate-healthcheck: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
chmod 0755 "$prefix/bin/livegate-healthcheck"

"$prefix/bin/livegate" --help >/dev/null || { say "$prefix/bin/livegate does not run"; exit 1; }
version=$("$prefix/bin/python" -c 'import livegate; print(livegate.__version__)')
say "installed livegate $version: $prefix/bin/livegate"
