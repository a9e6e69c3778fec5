"""A py-spy flame graph of the real HTTP service under a small-write load (the audited path).

    PYTHONPATH=src .venv/bin/python benchmarks/service_profile.py OUT.svg [--rate 3000] [--seconds 15]
        [--format raw]

Starts an issuer and a server on 127.0.0.1 exactly as benchmarks/service_bench.py does, drives 256-byte
JSON writes at ``--rate`` per second from a separate process, and records the server with py-spy
(``pip install py-spy``) for the length of the load. Never part of the test run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import service_bench

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--format", default="flamegraph", help="py-spy's format (raw: collapsed stacks)")
    arguments = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests" / "service"))
    conftest = REPO / "tests" / "service" / "conftest.py"
    fixtures = service_bench._load("maif_service_profile_fixtures", conftest)
    issuer = fixtures.security_fixtures.start_issuer(TOKEN_TTL="3600")
    try:
        token = issuer.token("agent-1", "maif:read maif:write")
        with tempfile.TemporaryDirectory(dir=REPO / ".work") as scratch:
            server = fixtures.start_server(Path(scratch) / "server", issuer, max_memory_mb=256)
            try:
                service_bench._write_phases(server.url, token, 2.0, 256, False, (300,), server.process.pid)
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-o", str(arguments.output),
                     "-r", "200", "--format", arguments.format, "-d", str(int(arguments.seconds)),
                     "-p", str(server.process.pid)]
                )
                job = {"kind": "writes", "url": server.url, "token": token, "rate": arguments.rate,
                       "seconds": arguments.seconds, "bytes": 256, "raw": False}
                outcome = service_bench.run_job(job, server.process.pid)
                spy.wait(timeout=120)
                print({key: outcome[key] for key in ("achieved_writes_per_s", "latency_ms_p99", "errors")})
            finally:
                server.stop()
    finally:
        fixtures.security_fixtures.stop_issuer(issuer)


if __name__ == "__main__":
    main()
