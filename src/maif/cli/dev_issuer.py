"""``maif dev-issuer``: a DEVELOPMENT-ONLY OAuth issuer, so a newcomer can make a first authenticated call.

``maif serve`` trusts only the issuers in ``security.oauth_providers`` and refuses every /v1 call without
one of their access tokens. In production that issuer is Keycloak, Entra ID, Auth0, Okta or similar
(docs/identity-providers.md). For local use this command stands in for one:

    maif dev-issuer serve                      # JWKS + OIDC discovery on http://127.0.0.1:8900 only
    maif dev-issuer token --subject agent-1    # prints an access token for agent-1 (15 minutes)

``serve`` creates the signing key (Ed25519, ``maif-dev-issuer.key``, mode 0600) when it is missing,
prints the ``oauth_providers`` TOML to paste into ``maif.toml``, and serves the two documents a verifier
fetches. ``token`` signs an RFC 9068 access token (``typ: at+jwt``; ``iss``, ``sub``, ``aud``, ``scope``,
``exp``, ``iat``, ``jti``, ``client_id``) with that key, offline: the issuer only has to run while
``maif serve`` fetches the keys. Whoever can read the key file can mint tokens for any subject and any
scope, which is why the issuer binds loopback addresses only and says so on every start: it is an
:class:`UnsafeDevelopmentIssuer`, never a production identity provider. docs/first-write.md walks
through a first write with it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import jwt
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.cli.output import CommandOutput, reporting_errors
from maif.cli.serve import listening_url
from maif.errors import ConfigError, CryptoError
from maif.security.identity import KNOWN_SCOPES

DEFAULT_PORT = 8900
DEFAULT_ISSUER_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_KEY_FILE = Path("maif-dev-issuer.key")
CLIENT_ID = "maif-dev"
AUDIENCE = "urn:maif:store"  # the security section's default audience
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"
TOKEN_LIFETIME_S_DEFAULT = 900
TOKEN_LIFETIME_S_MAX = 3600  # "short-lived": well under limits.token_lifetime_s_max
_KEY_FILE_BYTES_MAX = 4096
_DEVELOPMENT_ONLY = (
    "maif dev-issuer: DEVELOPMENT ONLY. Anyone who can read {key_file} can mint tokens for any agent and "
    "any scope. Use a real identity provider in production (docs/identity-providers.md)."
)


def require_loopback(host: str) -> str:
    """``host`` as a loopback IP address literal, or :class:`ConfigError`: the issuer is never exposed."""
    literal = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        loopback = ipaddress.ip_address(literal).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"the development issuer binds loopback addresses only, not {host!r}",
            hint="use 127.0.0.1 (the default) or ::1",
        )
    return literal


def _loopback_issuer_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname is None or parsed.path:
        raise ConfigError(
            f"the development issuer URL {url!r} must be http://<loopback address>:<port>, without a path"
        )
    require_loopback(parsed.hostname)
    return url


class UnsafeDevelopmentIssuer:
    """Signs access tokens with one Ed25519 key and describes that key as a JWKS. Development only."""

    def __init__(self, signing_key: Ed25519PrivateKey, issuer_url: str) -> None:
        self.signing_key = signing_key
        self.issuer_url = _loopback_issuer_url(issuer_url)
        public_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(signing_key.public_key()))
        self.public_jwk: dict[str, str] = {**public_jwk, "kid": _thumbprint(public_jwk), "alg": "EdDSA"}
        self.public_jwk["use"] = "sig"

    @property
    def key_id(self) -> str:
        return self.public_jwk["kid"]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def discovery(self) -> dict[str, Any]:
        """The OIDC discovery fields a verifier reads (``issuer`` must equal the token's ``iss``)."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + JWKS_PATH,
            "scopes_supported": list(KNOWN_SCOPES),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        }

    def provider_config(self) -> dict[str, Any]:
        """The ``security.oauth_providers`` entry that trusts this issuer's tokens."""
        return {self.issuer_url: {"client_id": CLIENT_ID, "audience": AUDIENCE}}

    def provider_toml(self) -> str:
        return (
            f'[security.oauth_providers."{self.issuer_url}"]\n'
            f'client_id = "{CLIENT_ID}"\n'
            f'audience = "{AUDIENCE}"\n'
        )

    def mint(self, subject: str, scopes: list[str], *, lifetime_s: int, now: float | None = None) -> str:
        """An RFC 9068 access token for ``subject`` with ``scopes``, valid for ``lifetime_s`` seconds."""
        if not subject:
            raise ConfigError("the token subject must not be empty")
        if not 0 < lifetime_s <= TOKEN_LIFETIME_S_MAX:
            raise ConfigError(f"the token lifetime must be 1 to {TOKEN_LIFETIME_S_MAX} seconds")
        issued_at = int(time.time() if now is None else now)
        claims = {
            "iss": self.issuer_url,
            "sub": subject,
            "aud": AUDIENCE,
            "client_id": CLIENT_ID,
            "scope": " ".join(scopes),
            "iat": issued_at,
            "exp": issued_at + lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        headers = {"typ": "at+jwt", "kid": self.key_id}
        return jwt.encode(claims, self.signing_key, algorithm="EdDSA", headers=headers)


def _thumbprint(public_jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint of an OKP key: the key id changes exactly when the key does."""
    members = {name: public_jwk[name] for name in ("crv", "kty", "x")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def load_signing_key(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """The Ed25519 key in ``path`` (PEM, PKCS#8); with ``create``, made owner-only when missing."""
    if not path.exists():
        if not create:
            raise CryptoError(
                f"development issuer key {path} does not exist",
                hint="`maif dev-issuer serve` creates it; pass the same --key-file to both commands",
            )
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, pem)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return key
    if path.stat().st_size > _KEY_FILE_BYTES_MAX:
        raise CryptoError(f"development issuer key {path} is too large to be a key")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise CryptoError(f"{path} is not a PEM private key") from error
    if not isinstance(loaded, Ed25519PrivateKey):
        raise CryptoError(f"{path} is not an Ed25519 private key")
    return loaded


def issuer_server(
    signing_key: Ed25519PrivateKey, host: str, port: int
) -> tuple[_IssuerHTTPServer, UnsafeDevelopmentIssuer]:
    """Bind ``host``:``port`` (loopback only; 0 picks a free port) and the issuer named by the bound URL."""
    address = require_loopback(host)
    server = _IssuerHTTPServer(address, port)
    issuer = UnsafeDevelopmentIssuer(signing_key, listening_url(address, server.server_address[1]))
    server.documents = {
        DISCOVERY_PATH: json.dumps(issuer.discovery()).encode(),
        JWKS_PATH: json.dumps(issuer.jwks()).encode(),
    }
    return server, issuer


class _IssuerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.documents: dict[str, bytes] = {}
        super().__init__((address, port), _DocumentHandler)


class _DocumentHandler(BaseHTTPRequestHandler):
    """GET of the discovery document or the JWKS; 404 for anything else. No request body is read."""

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        assert isinstance(self.server, _IssuerHTTPServer)
        body = self.server.documents.get(path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        typer.echo(f"maif dev-issuer: {self.address_string()} {format % args}", err=True)


dev_issuer_app = typer.Typer(
    no_args_is_help=True,
    help="DEVELOPMENT ONLY: a local OAuth issuer (127.0.0.1) that mints access tokens for maif serve.",
    rich_markup_mode=None,  # Click's help formatter: Rich's costs ~140 ms of start time
)


KeyFileOption = Annotated[
    Path, typer.Option("--key-file", help="The issuer's Ed25519 signing key (PEM); keep it private.")
]


@dev_issuer_app.command("serve")
def serve_command(
    key_file: KeyFileOption = DEFAULT_KEY_FILE,
    host: Annotated[
        str, typer.Option(help="Loopback address to bind; anything else is refused.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = DEFAULT_PORT,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document, then serve.")] = False,
) -> None:
    """Serve the JWKS and OIDC discovery document on loopback; print the maif.toml lines that trust it."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        address = require_loopback(host)  # before the key file is made: a refused call leaves nothing
        server, issuer = issuer_server(load_signing_key(key_file, create=True), address, port)
    typer.echo(_DEVELOPMENT_ONLY.format(key_file=key_file), err=True)
    output.result(
        {
            "ok": True,
            "issuer": issuer.issuer_url,
            "jwks_uri": issuer.issuer_url + JWKS_PATH,
            "key_id": issuer.key_id,
            "oauth_providers": issuer.provider_config(),
        }
    )
    if not json_output:
        typer.echo(f"maif dev-issuer: listening on {issuer.issuer_url}")
        typer.echo("Paste into maif.toml (then start `maif serve --config maif.toml`):\n")
        typer.echo(issuer.provider_toml())
        typer.echo(
            f"Mint a token: maif dev-issuer token --issuer {issuer.issuer_url} --key-file {key_file} "
            "--subject agent-1"
        )
    _serve_until_signal(server)


def _serve_until_signal(server: _IssuerHTTPServer) -> None:
    def stop(signal_number: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass  # asked to stop: a clean end, exit 0
    finally:
        server.server_close()


@dev_issuer_app.command("token")
def token_command(
    subject: Annotated[str, typer.Option(help="The agent the token speaks for (its sub claim).")] = "agent-1",
    scope: Annotated[
        list[str] | None,
        typer.Option(help=f"A scope to grant; repeat for several ({', '.join(KNOWN_SCOPES)})."),
    ] = None,
    lifetime_s: Annotated[
        int, typer.Option(min=1, max=TOKEN_LIFETIME_S_MAX, help="Seconds until the token expires.")
    ] = TOKEN_LIFETIME_S_DEFAULT,
    issuer_url: Annotated[
        str, typer.Option("--issuer", help="The URL `maif dev-issuer serve` printed.")
    ] = DEFAULT_ISSUER_URL,
    key_file: KeyFileOption = DEFAULT_KEY_FILE,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Print a short-lived access token (at+jwt) signed with the development issuer's key."""
    output = CommandOutput(json_output=json_output)
    scopes = scope or ["maif:read", "maif:write"]
    with reporting_errors(output):
        issuer = UnsafeDevelopmentIssuer(load_signing_key(key_file, create=False), issuer_url)
        token = issuer.mint(subject, scopes, lifetime_s=lifetime_s)
    output.result(
        {"ok": True, "access_token": token, "token_type": "Bearer", "expires_in": lifetime_s, "scope": scopes}
    )
    if not json_output:
        typer.echo(token)  # alone on stdout, so TOKEN=$(maif dev-issuer token ...) works


__all__ = [
    "AUDIENCE",
    "CLIENT_ID",
    "DEFAULT_ISSUER_URL",
    "UnsafeDevelopmentIssuer",
    "dev_issuer_app",
    "issuer_server",
    "load_signing_key",
    "require_loopback",
]
