"""Identity: real tokens from a real OIDC issuer verify; BASIC_AUTH credentials behave."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import argon2
import pytest

from maif.config import OAuthProviderConfig
from maif.errors import AuthenticationError, TokenError
from maif.security.credentials import CredentialStore
from maif.security.identity import JWKSCache, TokenVerifier, parse_jwks

FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1, type=argon2.Type.ID)


def verifier_for(issuer: Any, **options: Any) -> TokenVerifier:
    jwks_uri = options.pop("jwks_uri", None)
    providers = {issuer.url: OAuthProviderConfig(client_id="maif", jwks_uri=jwks_uri)}
    return TokenVerifier(providers, **options)


def test_client_credentials_token_verifies_with_discovery(oidc_issuer: Any) -> None:
    verified = verifier_for(oidc_issuer).verify(oidc_issuer.token("agent-1", "maif:read maif:write"))
    assert verified.issuer == oidc_issuer.url
    assert verified.subject == "agent-1"
    assert verified.scopes == {"maif:read", "maif:write"}
    assert verified.audience == ("urn:maif:store",)
    assert verified.token_id and verified.expires_at > verified.issued_at


def test_token_verifies_with_configured_jwks_uri(oidc_issuer: Any) -> None:
    verifier = verifier_for(oidc_issuer, jwks_uri=f"{oidc_issuer.url}/jwks")
    assert verifier.verify(oidc_issuer.token("other-service", "maif:read")).scopes == {"maif:read"}


@pytest.mark.parametrize("kid", ["rsa-1", "rsa-pss-1", "ec-1"])
def test_every_issuer_algorithm_verifies(oidc_issuer: Any, kid: str) -> None:
    assert verifier_for(oidc_issuer).verify(oidc_issuer.mint(kid=kid)).subject == "agent-1"


def test_jwks_is_cached_between_tokens(oidc_issuer: Any) -> None:
    verifier = verifier_for(oidc_issuer)
    before = oidc_issuer.jwks_requests()
    for _ in range(20):
        verifier.verify(oidc_issuer.token())
    assert oidc_issuer.jwks_requests() - before == 1


def test_verify_async_runs_off_the_event_loop(oidc_issuer: Any) -> None:
    verifier = verifier_for(oidc_issuer)
    token = oidc_issuer.token()

    async def both() -> list[Any]:
        # A ticking task keeps running while the JWKS is fetched in a worker thread.
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        verified = await verifier.verify_async(token)
        ticker.cancel()
        return [verified, ticks]

    verified, ticks = asyncio.run(both())
    assert verified.subject == "agent-1" and ticks > 0


def test_revocation_keys_on_jti_not_on_the_token_string(oidc_issuer: Any) -> None:
    verifier = verifier_for(oidc_issuer)
    token = oidc_issuer.token()
    verifier.revoke(verifier.verify(token))
    with pytest.raises(TokenError, match="revoked"):
        verifier.verify(token)
    # The compact form is malleable (padding); a different string for the same token stays refused.
    with pytest.raises(TokenError):
        verifier.verify(token + "=")


def test_unsafe_algorithms_cannot_be_configured(oidc_issuer: Any) -> None:
    for algorithms in (("HS256",), ("none",), ("RS256", "HS512")):
        providers = {oidc_issuer.url: OAuthProviderConfig(client_id="maif", algorithms=algorithms)}
        with pytest.raises(TokenError, match="not allowed"):
            TokenVerifier(providers)


def test_plain_http_is_refused_except_to_loopback() -> None:
    with pytest.raises(TokenError, match="https"):
        JWKSCache("https://issuer.example", "http://issuer.example/jwks")
    with pytest.raises(TokenError, match="https"):
        TokenVerifier({"http://issuer.example": OAuthProviderConfig(client_id="maif")})


def test_jwks_parser_skips_weak_and_unpinned_keys() -> None:
    document = json.dumps(
        {
            "keys": [
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
                {"kty": "RSA", "kid": "no-alg", "n": "AQAB", "e": "AQAB"},
                {"kty": "EC", "kid": "enc", "use": "enc", "alg": "ES256", "crv": "P-256", "x": "", "y": ""},
                "not a key",
            ]
        }
    ).encode()
    assert parse_jwks(document, issuer="https://issuer.example") == {}
    with pytest.raises(TokenError):
        parse_jwks(b"[1, 2]", issuer="https://issuer.example")
    with pytest.raises(TokenError):
        parse_jwks(json.dumps({"keys": [{}] * 65}).encode(), issuer="https://issuer.example")


# ---- BASIC_AUTH -----------------------------------------------------------------------------------


def test_passwords_are_argon2id_and_only_the_right_one_verifies() -> None:
    store = CredentialStore(hasher=FAST_HASHER)
    store.set_password("alice", "correct horse battery staple", scopes=["maif:read", "maif:write"])
    identity = store.verify_password("alice", "correct horse battery staple")
    assert identity.principal == "alice" and identity.method == "password"
    assert identity.scopes == {"maif:read", "maif:write"}
    assert store._passwords["alice"].password_hash.startswith("$argon2id$")
    for principal, password in (("alice", "wrong"), ("bob", "correct horse battery staple"), ("alice", "")):
        with pytest.raises(AuthenticationError, match="wrong principal or password"):
            store.verify_password(principal, password)
    with pytest.raises(AuthenticationError, match="longer"):
        store.verify_password("alice", "x" * 2000)


def test_api_keys_are_random_stored_hashed_and_revocable() -> None:
    store = CredentialStore(hasher=FAST_HASHER)
    key = store.issue_api_key("agent-9", scopes=["maif:read"])
    other = store.issue_api_key("agent-9")
    assert key != other and key.startswith("maif_")
    assert store.verify_api_key(key).principal == "agent-9"
    secret_part = key.split("_", 2)[2]
    assert all(secret_part not in repr(record) for record in store._api_keys.values())
    tampered = key[:-2] + ("AA" if key[-2:] != "AA" else "BB")
    for bad in (tampered, key + "A", "maif_00_abc", "", "x" * 300, key.replace("maif_", "mail_", 1)):
        with pytest.raises(AuthenticationError):
            store.verify_api_key(bad)
    store.revoke_api_key(key)
    with pytest.raises(AuthenticationError):
        store.verify_api_key(key)
    assert store.verify_api_key(other).principal == "agent-9"


def test_credential_file_holds_hashes_never_secrets(tmp_path: Path) -> None:
    store = CredentialStore(hasher=FAST_HASHER)
    store.set_password("alice", "hunter2-but-longer", tenant="t1")
    key = store.issue_api_key("alice")
    path = tmp_path / "credentials.json"
    store.save(path)
    text = path.read_text()
    assert "hunter2-but-longer" not in text and key.split("_", 2)[2] not in text
    assert path.stat().st_mode & 0o077 == 0
    loaded = CredentialStore.load(path, hasher=FAST_HASHER)
    assert loaded.verify_password("alice", "hunter2-but-longer").tenant == "t1"
    assert loaded.verify_api_key(key).principal == "alice"


class ScriptedServer:
    """A local HTTP server answering every GET with one scripted (status, headers, body), counting hits."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_jwks_fetch_refuses_redirects_oversized_and_malformed_documents(oidc_issuer: Any) -> None:
    genuine = urllib.request.urlopen(f"{oidc_issuer.url}/jwks", timeout=10).read()
    target = ScriptedServer(200, genuine)
    servers = [
        ScriptedServer(302, headers={"Location": f"{target.url}/jwks"}),
        ScriptedServer(200, b'{"keys": []}' + b" " * (300 * 1024)),
        ScriptedServer(200, b"<html>not json</html>"),
        ScriptedServer(500, b"{}"),
    ]
    try:
        for server in servers:
            cache = JWKSCache(oidc_issuer.url, f"{server.url}/jwks")
            with pytest.raises(TokenError):
                cache.key_for("rsa-1")
            assert server.hits == 1
        assert target.hits == 0  # the redirect was never followed
    finally:
        for server in [target, *servers]:
            server.close()


def test_discovery_naming_another_issuer_is_refused(oidc_issuer: Any) -> None:
    document = json.dumps({"issuer": "http://127.0.0.1:1", "jwks_uri": f"{oidc_issuer.url}/jwks"}).encode()
    impostor = ScriptedServer(200, document)
    try:
        verifier = TokenVerifier({impostor.url: OAuthProviderConfig(client_id="maif")})
        token = oidc_issuer.mint({"iss": impostor.url})
        with pytest.raises(TokenError, match="different issuer"):
            verifier.verify(token)
    finally:
        impostor.close()
