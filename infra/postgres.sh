#!/usr/bin/env bash
# A PostgreSQL server for the Prefect server (instead of the embedded SQLite), started and stopped
# idempotently from Debian's `postgresql` package: one cluster in a project-local folder, bound to
# 127.0.0.1 on a free (or chosen) port, a `prefect` role and database. `start` and `url` print the
# value for PREFECT_SERVER_DATABASE_CONNECTION_URL on stdout (messages go to stderr), so:
#   export PREFECT_SERVER_DATABASE_CONNECTION_URL="$(bash infra/postgres.sh start)"
#   prefect server start --host 127.0.0.1 --port 4200
# Usage: bash infra/postgres.sh start|stop|status|url
# Settings: GENIE_PG_DIR   the cluster folder (.prefect/postgres in this checkout; git-ignored)
#           GENIE_PG_PORT  the port (default: the one recorded in GENIE_PG_DIR, else a free one)
#           GENIE_PG_BIN   PostgreSQL's bin folder (default: the newest /usr/lib/postgresql/*/bin)
#           GENIE_PG_OS_USER  the OS user that owns and runs the cluster when this script runs as
#                          root (PostgreSQL refuses to run as root; default: postgres)
# Files in GENIE_PG_DIR: data/ (the cluster), run/ (its Unix socket), port, password (0600),
# postgres.log. The role `prefect` has a generated password; TCP connections need it
# (scram-sha-256), the Unix socket in run/ is only reachable by the owning OS user.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${GENIE_PG_DIR:-$ROOT/.prefect/postgres}"
DB=prefect
ROLE=prefect

say() { echo "postgres: $*" >&2; }
die() { say "$*"; exit 1; }

find_bin() {
  if [ -n "${GENIE_PG_BIN:-}" ]; then echo "$GENIE_PG_BIN"; return; fi
  local b
  b="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  [ -n "$b" ] && [ -x "$b/initdb" ] || die "no PostgreSQL binaries (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
  echo "$b"
}

# Run a PostgreSQL binary as the cluster's owner (this user, or GENIE_PG_OS_USER when root).
OS_USER=""
if [ "$(id -u)" = 0 ]; then OS_USER="${GENIE_PG_OS_USER:-postgres}"; fi
as_owner() {
  if [ -n "$OS_USER" ]; then runuser -u "$OS_USER" -- "$@"; else "$@"; fi
}

free_port() {
  python3 - <<'PY' 2>/dev/null || echo 55432
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

running() { [ -f "$DIR/data/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

url() {
  [ -f "$DIR/port" ] && [ -f "$DIR/password" ] || die "no cluster in $DIR: run '$0 start' first"
  echo "postgresql+asyncpg://$ROLE:$(cat "$DIR/password")@127.0.0.1:$(cat "$DIR/port")/$DB"
}

psql_su() {  # psql as the superuser over the cluster's Unix socket
  as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR/run" -p "$(cat "$DIR/port")" -U postgres "$@"
}

init_cluster() {
  mkdir -p "$DIR"
  if [ -n "$OS_USER" ]; then
    id "$OS_USER" >/dev/null 2>&1 || die "OS user $OS_USER does not exist (set GENIE_PG_OS_USER)"
    chown "$OS_USER" "$DIR"
    as_owner test -w "$DIR" \
      || die "$OS_USER cannot write $DIR (a parent folder is not searchable by it): choose GENIE_PG_DIR elsewhere"
  fi
  [ -f "$DIR/password" ] || { (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/password"); }
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    say "initialising a cluster in $DIR/data ($("$BIN/postgres" --version))"
    rm -rf "$DIR/data"
    as_owner mkdir -p "$DIR/data" "$DIR/run"
    as_owner "$BIN/initdb" -D "$DIR/data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  fi
  as_owner mkdir -p "$DIR/run"
}

ensure_db() {
  local pw; pw="$(cat "$DIR/password")"
  if [ "$(psql_su -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='$ROLE'")" != 1 ]; then
    psql_su -d postgres -c "CREATE ROLE $ROLE LOGIN PASSWORD '$pw'"
  else
    psql_su -d postgres -c "ALTER ROLE $ROLE PASSWORD '$pw'" >/dev/null
  fi
  if [ "$(psql_su -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
    psql_su -d postgres -c "CREATE DATABASE $DB OWNER $ROLE"
  fi
  # Prefect's migrations create trigram indexes (pg_trgm, in postgresql-contrib / postgresql-15).
  psql_su -d "$DB" -c "SET client_min_messages TO warning; CREATE EXTENSION IF NOT EXISTS pg_trgm"
}

start() {
  BIN="$(find_bin)"
  if running; then
    say "already running on 127.0.0.1:$(cat "$DIR/port") ($DIR)"
    [ -z "${GENIE_PG_PORT:-}" ] || [ "$GENIE_PG_PORT" = "$(cat "$DIR/port")" ] \
      || say "note: GENIE_PG_PORT=$GENIE_PG_PORT ignored while running; stop first to change it"
  else
    init_cluster
    local port="${GENIE_PG_PORT:-}"
    [ -n "$port" ] || { [ -f "$DIR/port" ] && port="$(cat "$DIR/port")"; } || true
    [ -n "$port" ] || port="$(free_port)"
    echo "$port" >"$DIR/port"
    say "starting on 127.0.0.1:$port (log $DIR/postgres.log)"
    [ -f "$DIR/postgres.log" ] || { touch "$DIR/postgres.log"; [ -z "$OS_USER" ] || chown "$OS_USER" "$DIR/postgres.log"; }
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 120 start \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR/run -c max_connections=200" >/dev/null \
      || { tail -20 "$DIR/postgres.log" >&2; die "did not start (port $port taken? set GENIE_PG_PORT)"; }
  fi
  ensure_db
  say "database '$DB' ready"
  url
}

stop() {
  BIN="$(find_bin)"
  if running; then
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >/dev/null
    say "stopped"
  else
    say "not running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) BIN="$(find_bin)"; if running; then say "running on 127.0.0.1:$(cat "$DIR/port") ($DIR)"; else say "stopped"; exit 3; fi ;;
  url) url ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
