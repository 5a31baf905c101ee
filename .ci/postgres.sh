#!/usr/bin/env bash
# A throwaway PostgreSQL server for the shared-storage search test (tests/search/test_postgres.py).
#
#   export ARCHDSL_PG_URL="$(.ci/postgres.sh)"    # prints postgresql://postgres@127.0.0.1:55432/archdsl
#
# Run as root on Debian (the CI machine): installs PostgreSQL when no server binary is found
# (/usr/lib/postgresql/*/bin/postgres), initdb's a cluster owned by the `postgres` user in a temp folder
# ($ARCHDSL_PG_DIR, default /tmp/archdsl-postgres-PORT), starts it on 127.0.0.1:$ARCHDSL_PG_PORT (default 55432;
# trust auth and no fsync: test data only), creates the database `archdsl`, and installs the driver SQLAlchemy
# needs: psycopg2-binary, and psycopg 3 as well where SQLAlchemy >= 2.1 makes it the default for postgresql://.
# Idempotent: when the server already answers on the port it only makes sure the database exists and prints
# the URL (under a second). Everything but the URL goes to stderr.
#
#   .ci/postgres.sh stop    # stops that server and removes its data directory (what .ci/run does at exit)
set -euo pipefail

PORT="${ARCHDSL_PG_PORT:-55432}"
DIR="${ARCHDSL_PG_DIR:-${TMPDIR:-/tmp}/archdsl-postgres-$PORT}"
DB=archdsl
URL="postgresql://postgres@127.0.0.1:${PORT}/${DB}"

log() { echo "postgres.sh: $*" >&2; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = stop ]; then
  # Only a folder this script made (it holds PG_VERSION, or is empty) is removed: ARCHDSL_PG_DIR set wrong
  # must not delete anything else.
  if [ -f "$DIR/postmaster.pid" ]; then
    BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    log "stopping the server in $DIR"
    as_postgres "$BIN/pg_ctl" -D "$DIR" -m fast -w -t 60 stop >&2 || log "pg_ctl stop failed"
  fi
  if [ -d "$DIR" ]; then
    if [ -f "$DIR/PG_VERSION" ] || [ -z "$(ls -A "$DIR")" ]; then
      rm -rf "$DIR" && log "removed $DIR"
    else
      log "not removing $DIR: not a PostgreSQL data directory"; exit 1
    fi
  fi
  exit 0
fi

# The driver: psycopg2; SQLAlchemy >= 2.1 reads a plain postgresql:// URL with psycopg 3 instead.
python -c "import psycopg2" 2>/dev/null || python -m pip install -q psycopg2-binary >&2
if [ "$(python -c 'from sqlalchemy.dialects import postgresql; print(postgresql.dialect.driver)' 2>/dev/null)" = psycopg ]; then
  python -c "import psycopg" 2>/dev/null || python -m pip install -q "psycopg[binary]" >&2
fi

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN="$(find_bin)"
if [ -z "$BIN" ] || [ ! -x "$BIN/postgres" ]; then
  log "installing PostgreSQL"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BIN="$(find_bin)"
  [ -n "$BIN" ] && [ -x "$BIN/postgres" ] || { log "no postgres binary after installing"; exit 1; }
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2; then
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  if [ ! -s "$DIR/PG_VERSION" ]; then
    log "initdb in $DIR"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
    chmod 700 "$DIR"
    as_postgres "$BIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  fi
  log "starting the server on 127.0.0.1:$PORT"
  as_postgres "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c max_connections=100" \
    start >&2 || { log "start failed; server log:"; tail -n 30 "$DIR/server.log" >&2 || true; exit 1; }
fi

psql_() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
if [ "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_ -d postgres -c "CREATE DATABASE $DB" >&2
fi
echo "$URL"
