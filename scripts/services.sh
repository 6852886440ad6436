#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis servers for tests/integration.
#
#   bash scripts/services.sh start DIR   # installs what is missing, starts both, writes DIR/env
#   source DIR/env                       # exports UVPY_TEST_* (below) for pytest
#   bash scripts/services.sh stop DIR    # stops both and removes DIR
#
# Everything lives in DIR (an empty or missing directory the caller owns):
# data, logs, sockets, certificates. Nothing listens beyond loopback, no
# system-wide service is started or configured, and `stop` undoes `start`
# even when `start` failed half-way, so it is safe in a trap.
#
# PostgreSQL: initdb + pg_ctl (as the `postgres` user when run as root),
# TCP on 127.0.0.1 on a free port with ssl=on (a CA and a server certificate
# for localhost/127.0.0.1 made here with openssl), scram-sha-256 over TCP,
# trust over the Unix socket in DIR/pg-socket. Durability is off (fsync,
# synchronous_commit): the data is thrown away.
# Redis: redis-server on 127.0.0.1 on a free port, on a second free port
# with TLS (the same server certificate; clients are not asked for one), and
# on DIR/redis.sock, no persistence.
#
# DIR/env exports:
#   UVPY_TEST_PG_DSN         postgresql://uvpy:PASSWORD@127.0.0.1:PORT/postgres
#   UVPY_TEST_PG_SOCKET_DIR  the directory of PostgreSQL's Unix socket (same port)
#   UVPY_TEST_CA             the CA certificate that signed both servers' (PEM)
#   UVPY_TEST_PG_CA          the same file (asyncpg's tests name it so)
#   UVPY_TEST_REDIS_URL      redis://127.0.0.1:PORT/0
#   UVPY_TEST_REDIS_TLS_URL  rediss://localhost:TLSPORT/0 (verify with UVPY_TEST_CA)
#   UVPY_TEST_REDIS_SOCKET   the path of Redis's Unix socket
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
(($# == 2)) || usage
cmd="$1"
dir="$2"

# Runs a command as the owner of the PostgreSQL files: initdb and postgres
# refuse to run as root. From DIR, which that user can enter (the caller's
# working directory may not be).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd "$dir" && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
  return 1
}

install_missing() {
  local missing=()
  pg_bin >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v openssl >/dev/null || missing+=(openssl)
  ((${#missing[@]})) || return 0
  echo "== installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

make_certs() {
  local tls="$dir/tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=uvpy test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$tls/ext.cnf"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/ext.cnf" -out "$tls/server.pem" 2>/dev/null
}

start_postgres() {
  local bin port pw data sock
  bin="$(pg_bin)"
  port="$(free_port)"
  pw="$(openssl rand -hex 12)"
  data="$dir/pg/data"
  sock="$dir/pg-socket"
  mkdir -p "$dir/pg" "$sock"
  echo "$pw" >"$dir/pg/pwfile"
  cp "$dir/tls/server.pem" "$dir/pg/server.crt"
  cp "$dir/tls/server.key" "$dir/pg/server.key"
  chmod 600 "$dir/pg/server.key"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$dir/pg" "$sock"
  fi
  as_pg "$bin/initdb" -D "$data" -U uvpy --pwfile="$dir/pg/pwfile" -E UTF8 --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >"$dir/pg/initdb.log"
  cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
ssl = on
ssl_cert_file = '$dir/pg/server.crt'
ssl_key_file = '$dir/pg/server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  as_pg "$bin/pg_ctl" -D "$data" -l "$dir/pg/server.log" -w -t 60 start >/dev/null || {
    tail -20 "$dir/pg/server.log" >&2
    return 1
  }
  {
    echo "export UVPY_TEST_PG_DSN='postgresql://uvpy:$pw@127.0.0.1:$port/postgres'"
    echo "export UVPY_TEST_PG_SOCKET_DIR='$sock'"
    echo "export UVPY_TEST_PG_CA='$dir/tls/ca.pem'"
  } >>"$dir/env"
  echo "== PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (ssl) and $sock"
}

start_redis() {
  local port tls_port
  port="$(free_port)"
  tls_port="$(free_port)"
  mkdir -p "$dir/redis"
  redis-server --bind 127.0.0.1 --port "$port" --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
    --tls-port "$tls_port" --tls-cert-file "$dir/tls/server.pem" --tls-key-file "$dir/tls/server.key" \
    --tls-ca-cert-file "$dir/tls/ca.pem" --tls-auth-clients no \
    --daemonize yes --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" \
    --dir "$dir/redis" --save "" --appendonly no
  local i
  for i in $(seq 100); do
    redis-cli -s "$dir/redis.sock" ping 2>/dev/null | grep -q PONG && break
    ((i < 100)) || { tail -20 "$dir/redis/redis.log" >&2; return 1; }
    sleep 0.1
  done
  {
    echo "export UVPY_TEST_REDIS_URL='redis://127.0.0.1:$port/0'"
    echo "export UVPY_TEST_REDIS_TLS_URL='rediss://localhost:$tls_port/0'"
    echo "export UVPY_TEST_REDIS_SOCKET='$dir/redis.sock'"
  } >>"$dir/env"
  echo "== Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$port, TLS on :$tls_port and $dir/redis.sock"
}

stop_all() {
  local bin
  if [ -f "$dir/pg/data/postmaster.pid" ] && bin="$(pg_bin)"; then
    as_pg "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w -t 30 stop >/dev/null || true
  fi
  if [ -f "$dir/redis/redis.pid" ]; then
    # SHUTDOWN over the socket waits for Redis to exit; one that does not
    # answer gets SIGTERM.
    redis-cli -s "$dir/redis.sock" shutdown nosave >/dev/null 2>&1 ||
      kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

case "$cmd" in
  start)
    install_missing
    mkdir -p "$dir"
    # The postgres user must reach its files and socket under DIR.
    chmod 711 "$dir"
    : >"$dir/env"
    make_certs
    echo "export UVPY_TEST_CA='$dir/tls/ca.pem'" >>"$dir/env"
    start_postgres
    start_redis
    ;;
  stop) stop_all ;;
  *) usage ;;
esac
