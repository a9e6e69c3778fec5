"""Start a real ``python -m maif.service`` (uvicorn) process on 127.0.0.1 at a free port, trusting a
given OIDC issuer, and stop it (the service tests and benchmarks/service_bench.py use this)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running service process."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    config_file: Path
    master_key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for the server process")

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def start_server(
    directory: Path,
    issuer: Any,
    *,
    master_key: str | None = None,
    port: int | None = None,
    max_memory_mb: int = 64,
    service: dict[str, Any] | None = None,
    environment: dict[str, str] | None = None,
    launcher: Sequence[str] = ("-m", "maif.service"),
    security: dict[str, Any] | None = None,
) -> Server:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "storage": {"data_dir": str(directory / "data"), "max_memory_mb": max_memory_mb},
        "security": {**issuer.config(), **(security or {})},
        "service": {"log_level": "warning", "graceful_shutdown_s": 30, **(service or {})},
    }
    config_file = directory / "maif.json"
    config_file.write_text(json.dumps(config))
    master_key = master_key or secrets.token_hex(32)
    port = port or free_port()
    log = (directory / f"server-{port}.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            *launcher,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(config_file),
        ],
        env={**os.environ, "MAIF_MASTER_KEY": master_key, **(environment or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    server = Server(process, port, directory, config_file, master_key)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {(directory / f'server-{port}.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError("server not ready after 60 s")
        time.sleep(0.1)
