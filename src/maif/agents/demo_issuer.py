"""THE DEMO ISSUER: a local OAuth issuer key pair for `maif demo` and tests, never for production.

It signs RFC 9068 access tokens (``typ: at+jwt``, ES256) with a freshly generated P-256 key, and gives the
security manager a real :class:`~maif.security.identity.TokenVerifier` whose JWKS "fetch" returns this
issuer's public JWK: tokens are really signed and really verified, only the network hop is replaced. The
issuer URL is a loopback address that is never contacted.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from maif.config import OAuthProviderConfig, SecurityConfig
from maif.errors import TokenError
from maif.security.identity import TokenVerifier

DEMO_ISSUER_URL = "http://127.0.0.1:9/maif-demo-issuer"
DEMO_AUDIENCE = "urn:maif:store"
_KID = "maif-demo-issuer-es256"


class DemoIssuer:
    """The labelled demo issuer: mints tokens, and builds a manager that verifies them."""

    label = "DEMO ISSUER (local key pair generated for this run; not a production identity provider)"

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        self._jwks = json.dumps({"keys": [{**public, "kid": _KID, "alg": "ES256", "use": "sig"}]}).encode()
        self.jwks_requests = 0

    def token(self, agent_id: str, scope: str = "maif:read maif:write", lifetime_s: int = 600) -> str:
        now = int(time.time())
        claims = {
            "iss": DEMO_ISSUER_URL,
            "sub": agent_id,
            "aud": DEMO_AUDIENCE,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": secrets.token_urlsafe(12),
            "scope": scope,
            "client_id": agent_id,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"typ": "at+jwt", "kid": _KID})

    def _fetch(self, url: str) -> bytes:
        if url != DEMO_ISSUER_URL + "/jwks":
            raise TokenError("the demo issuer serves only its own JWKS")
        self.jwks_requests += 1
        return self._jwks

    def security_config(self) -> SecurityConfig:
        provider = OAuthProviderConfig(
            client_id="maif-demo", jwks_uri=DEMO_ISSUER_URL + "/jwks", algorithms=("ES256",)
        )
        return SecurityConfig(oauth_providers={DEMO_ISSUER_URL: provider}, audience=DEMO_AUDIENCE)

    def token_verifier(self) -> TokenVerifier:
        config = self.security_config()
        return TokenVerifier(config.oauth_providers, audience=config.audience, fetch=self._fetch)

    def security_manager(self, data_dir: str | Path) -> Any:
        """A real SecurityManager in ``data_dir`` (keystore, audit log) trusting only this issuer."""
        from maif.security.keys import generate_master_key
        from maif.security.manager import create_maif_security_manager

        return create_maif_security_manager(
            self.security_config(),
            data_dir=data_dir,
            master_key=generate_master_key(),
            token_verifier=self.token_verifier(),
        )


async def bootstrap_agent(manager: Any, issuer: DemoIssuer, agent_id: str) -> Any:
    """Register a signing key for ``agent_id`` (if none) and bootstrap an OAUTH_VERIFIED context."""
    if manager.keystore.current_key(agent_id) is None:
        manager.keystore.create_key(agent_id)
    return await manager.bootstrap_trust(agent_id, issuer.token(agent_id))


__all__ = ["DEMO_ISSUER_URL", "DemoIssuer", "bootstrap_agent"]
