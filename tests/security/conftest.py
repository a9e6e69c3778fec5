"""Fixtures for the security tests: a real OpenID Connect issuer (npm oidc-provider 9) on 127.0.0.1.

The session issuer is installed and started by scripts/servers/oidc.sh into .work/oidc. Its signing keys
are generated here and handed to it (ISSUER_KEYS_FILE), so tests can also mint tokens with hostile claims
under the issuer's real keys; ordinary tokens come from the real client_credentials grant. Tests that stop
an issuer get their own (``ephemeral_issuer``), never the session one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

if TYPE_CHECKING:
    from maif.security.manager import SecurityManager

REPO = Path(__file__).resolve().parents[2]
OIDC_SCRIPT = REPO / "scripts" / "servers" / "oidc.sh"
OIDC_DIR = REPO / ".work" / "oidc"
AUDIENCE = "urn:maif:store"

CLIENT_SECRETS = {
    "agent-1": "agent-1-secret",
    "agent-2": "agent-2-secret",
    "other-service": "other-secret",
    "admin-1": "admin-1-secret",
    "tenant-b-agent": "tenant-b-secret",
}


@dataclass
class Issuer:
    """A running oidc-provider issuer and the private keys it signs with."""

    port: int
    private_keys: dict[str, tuple[str, Any]]  # kid -> (alg, private key)
    directory: Path
    running: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, client_id: str = "agent-1", scope: str = "maif:read maif:write", **form: str) -> str:
        """An access token from the real client_credentials grant."""
        body = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "scope": scope, "resource": AUDIENCE, **form}
        ).encode()
        request = urllib.request.Request(f"{self.url}/token", data=body, method="POST")
        credentials = base64.b64encode(f"{client_id}:{CLIENT_SECRETS[client_id]}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.loads(response.read())["access_token"])

    def stop(self) -> None:
        """Stop this issuer (only tests with an issuer of their own may)."""
        stop_issuer(self)

    def restart_with_new_keys(self, generation: int) -> None:
        """Stop, then start on the same port with fresh keys named for ``generation`` (a key rotation)."""
        self.stop()
        successor = start_issuer(port=self.port, generation=generation)
        self.private_keys, self.extra, self.running = successor.private_keys, successor.extra, True

    def config(self, **provider: Any) -> dict[str, Any]:
        """A security config trusting this issuer."""
        return {"oauth_providers": {self.url: {"client_id": "maif", **provider}}}

    def jwks_requests(self) -> int:
        with urllib.request.urlopen(f"{self.url}/_maif/stats", timeout=10) as response:
            return int(json.loads(response.read())["jwks_requests"])

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str = "rsa-1",
        headers: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        """A token signed with the issuer's real key ``kid``: valid unless the caller makes it hostile."""
        now = int(time.time())
        payload = {
            "iss": self.url,
            "sub": "agent-1",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(12),
            "scope": "maif:read maif:write",
            "client_id": "agent-1",
        }
        payload.update(claims or {})
        for name in drop:
            payload.pop(name, None)
        if kid not in self.private_keys:  # after a rotation, "rsa-1" means the current RSA key
            kid = next(name for name in self.private_keys if name.startswith(kid.rsplit("-", 1)[0] + "-"))
        algorithm, key = self.private_keys[kid]
        header = {"typ": "at+jwt", "kid": kid, **(headers or {})}
        return jwt.encode(payload, key, algorithm=algorithm, headers=header)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _issuer_keys(directory: Path, generation: int = 1) -> tuple[Path, dict[str, tuple[str, Any]]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    private_keys = {
        f"rsa-{generation}": ("RS256", rsa_key),
        f"rsa-pss-{generation}": ("PS256", pss_key),
        f"ec-{generation}": ("ES256", ec_key),
    }
    jwks = []
    for kid, (algorithm, key) in private_keys.items():
        exported = json.loads(
            ECAlgorithm.to_jwk(key) if algorithm == "ES256" else RSAAlgorithm.to_jwk(key)  # type: ignore[arg-type]
        )
        jwks.append({**exported, "kid": kid, "alg": algorithm, "use": "sig"})
    keys_file = directory / f"keys-{secrets.token_hex(4)}.json"
    keys_file.write_text(json.dumps({"keys": jwks}))
    keys_file.chmod(0o600)
    return keys_file, private_keys


def _require_node() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"the OIDC issuer tests need {' and '.join(missing)} (Debian: apt-get install nodejs npm)"
        )


def start_issuer(*, port: int | None = None, generation: int = 1, **environment: str) -> Issuer:
    """Install (if needed) and start an issuer; ``generation`` names its keys (rsa-1, or rsa-2 after a
    rotation), ``port`` reuses an address (a restarted issuer)."""
    _require_node()
    subprocess.run([str(OIDC_SCRIPT), "install", str(OIDC_DIR)], check=True, capture_output=True, timeout=300)
    keys_file, private_keys = _issuer_keys(OIDC_DIR, generation)
    port = port or _free_port()
    subprocess.run(
        [str(OIDC_SCRIPT), "start", str(OIDC_DIR), str(port)],
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "ISSUER_KEYS_FILE": str(keys_file), **environment},
    )
    return Issuer(port, private_keys, OIDC_DIR, extra={"keys_file": keys_file})


def stop_issuer(issuer: Issuer) -> None:
    if issuer.running:
        subprocess.run([str(OIDC_SCRIPT), "stop", str(OIDC_DIR), str(issuer.port)], check=True, timeout=30)
        issuer.running = False
    issuer.extra["keys_file"].unlink(missing_ok=True)


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[Issuer]:
    issuer = start_issuer()
    try:
        yield issuer
    finally:
        stop_issuer(issuer)


@pytest.fixture
def ephemeral_issuer() -> Iterator[Issuer]:
    """An issuer of the test's own, which the test may stop."""
    issuer = start_issuer()
    try:
        yield issuer
    finally:
        stop_issuer(issuer)


@pytest.fixture
def make_manager(tmp_path: Path) -> Iterator[Callable[..., SecurityManager]]:
    """Build security managers in the test's own directory; every one is closed at teardown."""
    # Imported here: this conftest serves every security test, and must not depend on the manager's imports.
    from maif.security.manager import create_maif_security_manager

    managers: list[SecurityManager] = []

    def build(issuer: Issuer, *, config: dict[str, Any] | None = None, **options: Any) -> SecurityManager:
        directory = tmp_path / f"security-{len(managers)}"
        options.setdefault("master_key", secrets.token_bytes(32))
        manager = create_maif_security_manager(
            {**issuer.config(), **(config or {})}, data_dir=directory, **options
        )
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close()
