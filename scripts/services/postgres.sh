# PostgreSQL test server (for the Configuration Broker's PostgreSQL store), sourced by scripts/test
# and scripts/dev-services (bash, `set -euo pipefail`, scripts/lib/services.sh loaded).
#
# Debian's PostgreSQL 15 (bookworm's `postgresql`; the packages postgresql-15 and
# postgresql-client-15 are installed if /usr/lib/postgresql/15/bin/initdb is missing), NOT the
# system cluster: a throwaway cluster made with initdb in a new directory
# $KEYHOLD_SERVICES_DIR/postgres.XXXXXX (removed when the run ends; a new one each time this is
# sourced, so sourcing scripts/dev-services again in the same shell starts a second server),
# trust authentication, superuser `postgres`, UTF-8 with the C locale. It listens on 127.0.0.1 on a free port and on a Unix socket
# in that same directory, with fsync, synchronous_commit and full_page_writes off: fast, and
# nothing survives a crash, which is all a test needs (never run a real database like this).
# PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as the `postgres` user
# (`runuser -u postgres`); otherwise as the current user.
#
# The postmaster's PID goes into `pids`: scripts/test stops it with SIGTERM, PostgreSQL's "smart"
# shutdown, which waits for open sessions to end (by then the tests have ended). By hand (after
# `source scripts/dev-services`): `kill "${pids[@]}"`, or
# `runuser -u postgres -- "$KEYHOLD_TEST_POSTGRES_BIN/pg_ctl" -D "$KEYHOLD_TEST_POSTGRES_DATA" -m fast stop`.
#
# Exports:
#   KEYHOLD_TEST_POSTGRES_URL   postgres://postgres@127.0.0.1:PORT/postgres (no password: trust).
#                               Tests make their own databases (CREATE DATABASE, unique names) or
#                               schemas rather than share `postgres`.
#   KEYHOLD_TEST_POSTGRES_BIN   the server's bin directory (initdb, pg_ctl, createdb, psql, ...)
#   KEYHOLD_TEST_POSTGRES_DATA  the cluster's data directory (its Unix socket is in the parent)
# By hand: psql "$KEYHOLD_TEST_POSTGRES_URL" -c 'select version()'

postgres_setup() {
  local name=postgres bin=/usr/lib/postgresql/15/bin dir port pid as=()
  [ -x "$bin/initdb" ] || apt_install postgresql-15 postgresql-client-15
  local tool
  for tool in initdb pg_ctl postgres pg_isready; do
    [ -x "$bin/$tool" ] || service_fail "$name" "postgresql-15 is installed but $bin/$tool is missing"
  done

  dir=$(mktemp -d "$KEYHOLD_SERVICES_DIR/postgres.XXXXXX")
  if [ "$(id -u)" -eq 0 ]; then
    getent passwd postgres >/dev/null ||
      service_fail "$name" "running as root, but there is no postgres user to run PostgreSQL as"
    as=(runuser -u postgres --)
    chown postgres: "$dir"
    chmod 0700 "$dir"
    # $KEYHOLD_SERVICES_DIR is root's, mode 0700: let the postgres group (only) through to its
    # own directory, without letting it list or read the other servers' files.
    chgrp postgres "$KEYHOLD_SERVICES_DIR"
    chmod 0710 "$KEYHOLD_SERVICES_DIR"
  fi

  # initdb and pg_ctl in the cluster's directory: the postgres user cannot enter the caller's.
  (cd "$dir" && "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C \
    --no-sync --no-instructions) >"$dir/initdb.log" 2>&1 ||
    service_fail "$name" "initdb failed" "$dir/initdb.log"

  port=$(free_port)
  # -o is run through sh by pg_ctl: the directory is quoted.
  (cd "$dir" && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k '$dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start) >"$dir/pg_ctl.log" 2>&1 || {
    cat "$dir/pg_ctl.log" >>"$dir/postgres.log" 2>/dev/null || true
    service_fail "$name" "pg_ctl start failed" "$dir/postgres.log"
  }
  # The first line of postmaster.pid is the postmaster's PID (pg_ctl has detached it).
  pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || pid=""
  case "$pid" in
    '' | *[!0-9]*) service_fail "$name" "no PID in $dir/data/postmaster.pid" "$dir/postgres.log" ;;
  esac
  pids+=("$pid")
  service_log "$name" "started (pid $pid, log $dir/postgres.log)"

  service_wait_port "$name" "$port" 30 "$dir/postgres.log"
  local i
  for ((i = 0; ; i++)); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && break
    [ "$i" -lt 300 ] || service_fail "$name" "pg_isready: not accepting connections after 30 s" "$dir/postgres.log"
    sleep 0.1
  done

  export KEYHOLD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export KEYHOLD_TEST_POSTGRES_BIN="$bin"
  export KEYHOLD_TEST_POSTGRES_DATA="$dir/data"
  service_log "$name" "$("$bin/postgres" --version) ready at $KEYHOLD_TEST_POSTGRES_URL (data $dir/data)"
}
postgres_setup
unset -f postgres_setup
