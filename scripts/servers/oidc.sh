#!/usr/bin/env bash
# A real OpenID Connect issuer (npm oidc-provider 9, pinned in oidc/package.json) for MAIF's identity tests.
#
#   oidc.sh install DIR              npm-install the issuer into DIR (idempotent; fast when already there)
#   oidc.sh start   DIR PORT         start oidc/issuer.mjs on 127.0.0.1:PORT, wait until ready, record its PID
#   oidc.sh stop    DIR PORT         stop only the PID recorded for PORT in DIR
#   oidc.sh status  DIR PORT         exit 0 when the issuer recorded for PORT is running
#   oidc.sh env     DIR PORT         print export lines for tests (issuer URL, discovery URL)
#
# The issuer reads ISSUER_KEYS_FILE, ISSUER_ALG and TOKEN_TTL from the environment (see oidc/issuer.mjs).
# DIR should be project-local (e.g. .work/oidc). State per PORT: DIR/issuer-PORT.pid and issuer-PORT.log
# (both removed by stop).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
die() { echo "[oidc] ERROR: $*" >&2; exit 1; }

require_node() {
  command -v node >/dev/null && command -v npm >/dev/null \
    || die "node and npm are required (Debian: apt-get install -y nodejs npm)"
}

installed() { # the pinned package.json is in place and its pinned version is installed
  local dir=$1 wanted
  wanted=$(sed -n 's/.*"oidc-provider": *"\([^"]*\)".*/\1/p' "$HERE/oidc/package.json")
  cmp -s "$HERE/oidc/package.json" "$dir/package.json" \
    && grep -q "\"version\": \"$wanted\"" "$dir/node_modules/oidc-provider/package.json" 2>/dev/null
}

cmd_install() {
  local dir=$1
  require_node
  mkdir -p "$dir"
  cp "$HERE/oidc/issuer.mjs" "$dir/issuer.mjs"
  if installed "$dir"; then return 0; fi
  cp "$HERE/oidc/package.json" "$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >"$dir/npm-install.log" 2>&1) \
    || { cat "$dir/npm-install.log" >&2; die "npm install failed in $dir"; }
}

pidfile() { echo "$1/issuer-$2.pid"; }

alive() { # a zombie (exited, not yet reaped by whoever adopted it) counts as stopped
  kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

running_pid() {
  local file
  file=$(pidfile "$1" "$2")
  [[ -f "$file" ]] || return 1
  local pid
  pid=$(cat "$file")
  alive "$pid" || return 1
  echo "$pid"
}

cmd_start() {
  local dir=$1 port=$2 log
  cmd_install "$dir"
  if running_pid "$dir" "$port" >/dev/null; then die "an issuer recorded in $dir already runs on port $port"; fi
  log="$dir/issuer-$port.log"
  (cd "$dir" && exec node issuer.mjs "$port") >"$log" 2>&1 &
  local pid=$!
  echo "$pid" >"$(pidfile "$dir" "$port")"
  local deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
  until grep -q '"ready":true' "$log" 2>/dev/null; do
    alive "$pid" || { cat "$log" >&2; rm -f "$(pidfile "$dir" "$port")"; die "issuer exited"; }
    [[ $(date +%s) -lt $deadline ]] || { kill "$pid"; die "issuer not ready after ${READY_TIMEOUT_S}s"; }
    sleep 0.05
  done
  echo "$pid"
}

cmd_stop() {
  local dir=$1 port=$2 pid
  if pid=$(running_pid "$dir" "$port"); then
    kill "$pid"
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.02; done
    if alive "$pid"; then kill -9 "$pid"; fi
  fi
  rm -f "$(pidfile "$dir" "$port")" "$dir/issuer-$port.log"
}

cmd_env() {
  local port=$2
  echo "export MAIF_TEST_OIDC_ISSUER=http://127.0.0.1:$port"
  echo "export MAIF_TEST_OIDC_DISCOVERY=http://127.0.0.1:$port/.well-known/openid-configuration"
  echo "export MAIF_TEST_OIDC_TOKEN_ENDPOINT=http://127.0.0.1:$port/token"
}

[[ $# -ge 2 ]] || usage
command=$1; dir=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
case "$command" in
  install) cmd_install "$dir" ;;
  start) [[ $# -eq 1 ]] || usage; cmd_start "$dir" "$1" ;;
  stop) [[ $# -eq 1 ]] || usage; cmd_stop "$dir" "$1" ;;
  status) [[ $# -eq 1 ]] || usage; running_pid "$dir" "$1" >/dev/null ;;
  env) [[ $# -eq 1 ]] || usage; cmd_env "$dir" "$1" ;;
  *) usage ;;
esac
