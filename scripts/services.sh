#!/usr/bin/env bash
# Makes sure Redis and PostgreSQL are reachable for the test suite and prints the
# environment for them (REDIS_URL, REDIS_URL_2, DATABASE_URL) as shell `export` lines.
# REDIS_URL_2 is a second Redis server for the sharding tests (channels spread over two).
#   1. use running servers at $REDIS_URL / $REDIS_URL_2 / $DATABASE_URL (defaults: the local standard
#      ports; REDIS_URL_2 has no default);
#   2. else start throwaway ones from local binaries under .tmp/ (stopped by `make clean-services`);
#   3. else, as root on Debian, install them with apt-get and go to 2;
#   4. else fail with a message that says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP="$PWD/.tmp"
mkdir -p "$TMP"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}"
say() { echo "services: $*" >&2; }

redis_ok() { "${PYTHON:-.venv/bin/python}" - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}
pg_ok() { "${PYTHON:-.venv/bin/python}" - "$1" <<'PY' >/dev/null 2>&1
import sys, asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1], timeout=2)
    await conn.close()
asyncio.run(main())
PY
}
debian_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $* with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >&2
  else
    return 1
  fi
}
free_port() { "${PYTHON:-.venv/bin/python}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A throwaway redis-server under .tmp/ named $1 (kept across runs: reused while it answers);
# prints its URL.
throwaway_redis() {
  local name=$1 port
  if [ -f "$TMP/$name.port" ] && redis_ok "redis://127.0.0.1:$(cat "$TMP/$name.port")/0"; then
    echo "redis://127.0.0.1:$(cat "$TMP/$name.port")/0"; return 0
  fi
  if ! command -v redis-server >/dev/null; then
    debian_install redis-server || { say "no redis-server binary for $name; install Redis or set REDIS_URL / REDIS_URL_2"; return 1; }
  fi
  port=$(free_port)
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$TMP" --pidfile "$TMP/$name.pid" --logfile "$TMP/$name.log" >&2
  for _ in $(seq 50); do redis_ok "redis://127.0.0.1:$port/0" && break; sleep 0.1; done
  redis_ok "redis://127.0.0.1:$port/0" || { say "started redis-server but cannot reach it (see $TMP/$name.log)"; return 1; }
  echo "$port" > "$TMP/$name.port"
  say "started throwaway Redis ($name) at redis://127.0.0.1:$port/0"
  echo "redis://127.0.0.1:$port/0"
}

if ! redis_ok "$REDIS_URL"; then
  REDIS_URL=$(throwaway_redis redis) || exit 1
fi
# The second Redis, for the sharding tests: $REDIS_URL_2 when it answers, else a throwaway one.
if [ -z "${REDIS_URL_2:-}" ] || ! redis_ok "$REDIS_URL_2"; then
  REDIS_URL_2=$(throwaway_redis redis2) || exit 1
fi

if ! pg_ok "$DATABASE_URL"; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$bindir" ]; then debian_install postgresql || { say "no PostgreSQL at $DATABASE_URL and no server binaries; install PostgreSQL or set DATABASE_URL"; exit 1; }
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1); fi
  port=$(free_port)
  data="$TMP/pgdata"
  runas=()
  if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || useradd -r postgres; chown -R postgres "$TMP"; runas=(runuser -u postgres --); fi
  if [ ! -f "$data/PG_VERSION" ]; then "${runas[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust >/dev/null; fi
  "${runas[@]}" "$bindir/pg_ctl" -D "$data" -l "$TMP/pg.log" -o "-p $port -k $TMP -c listen_addresses=127.0.0.1" -w start >&2
  "${runas[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test 2>/dev/null || true
  DATABASE_URL="postgresql://postgres@127.0.0.1:$port/test"
  pg_ok "$DATABASE_URL" || { say "started PostgreSQL but cannot reach it (see $TMP/pg.log)"; exit 1; }
  say "started throwaway PostgreSQL at $DATABASE_URL"
fi

echo "export REDIS_URL='$REDIS_URL'"
echo "export REDIS_URL_2='$REDIS_URL_2'"
echo "export DATABASE_URL='$DATABASE_URL'"
