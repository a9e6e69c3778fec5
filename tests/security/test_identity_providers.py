"""Tokens shaped as real identity providers issue them verify under their profile; forgeries never do.

Each profile is one ``oauth_providers`` entry as docs/identity-providers.md configures it, and a token
written down as that provider issues it: header and claims from the provider's public documentation
(Keycloak service-account access token, Microsoft Entra ID v2 access token, Auth0 client-credentials
access token, Okta custom authorization server access token, Google ID token). Only the issuer URL
differs: it is a loopback address whose path mimics the provider's, because plain http is allowed only
to loopback. The tokens are signed with test keys served as a JWKS from 127.0.0.1 (the verifier fetches
it over HTTP, as it would the provider's). The ``default`` profile is the real oidc-provider of
conftest.py with the seed configuration (only ``client_id``).

Every forgery of :data:`FORGERIES` is then mounted against every profile and must be refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwks_server import JWKSServer
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from maif.config import OAuthProviderConfig, SecurityConfig, load_section
from maif.errors import ConfigError, TokenError
from maif.security.identity import TokenVerifier

DOCS = Path(__file__).resolve().parents[2] / "docs" / "identity-providers.md"
LIFETIME_S = 3600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signing_input(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return ".".join(b64(json.dumps(part).encode()) for part in (header, payload))


def signed(header: dict[str, Any], payload: dict[str, Any], key: Any, algorithm: str = "") -> str:
    """Signed by hand, so the header is exactly as written (PyJWT's encoder adds or drops typ)."""
    message = signing_input(header, payload)
    signer = get_default_algorithms()[algorithm or header["alg"]]
    return f"{message}.{b64(signer.sign(message.encode(), key))}"


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{signing_input(header, payload)}.{b64(signature)}"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    message = signing_input(header, payload)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[header["alg"]]
    return f"{message}.{b64(hmac.new(secret, message.encode(), digest).digest())}"


def jwk_of(key: Any, kid: str, algorithm: str) -> dict[str, Any]:
    exported = ECAlgorithm.to_jwk(key) if algorithm.startswith("ES") else RSAAlgorithm.to_jwk(key)
    return {**json.loads(exported), "kid": kid, "alg": algorithm, "use": "sig"}


@dataclass
class Profile:
    """One identity provider: its config entry, a genuine token's header and claims, and its keys."""

    name: str
    issuer: str
    provider: OAuthProviderConfig
    header: dict[str, Any]
    claims_at: Callable[[int], dict[str, Any]]
    private_key: rsa.RSAPrivateKey
    other_kid: str  # a genuine key of the issuer for another algorithm (ES256)
    jwks: bytes
    expected_scopes: frozenset[str]
    expected_client: str | None

    def claims(self) -> dict[str, Any]:
        return self.claims_at(int(time.time()))

    def token(self, claims: dict[str, Any] | None = None, **header: Any) -> str:
        return signed({**self.header, **header}, {**self.claims(), **(claims or {})}, self.private_key)


TEST_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TEST_EC_KEY = ec.generate_private_key(ec.SECP256R1())
KIDS = {  # kid values in each provider's own style
    "keycloak": "Xq3mW0bS2pYkL8vN9rT1uZc4dE6fG7hJ5aK0oP2iQ3s",
    "entra": "nOo3ZDrODXEK1jKWhXslHR_KXEg",
    "auth0": "NkJCQzIyQzRBMEU4NjhGNUU4MzU4RkY0M0ZDQzkwOUQ0Q0VGNUMwOQ",
    "okta": "JfExG_5Xw3mFv8l1VjJ5HgWMHqCMbYf9yTJ2KhN0xE4",
    "google": "6f7254101f56e41cf35c9926de84a2d552b4c6f1",
}
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENTRA_API_APP = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
ENTRA_CLIENT_APP = "e9c1f9a2-4d1b-4b3f-9f3e-2a2f5c7d8b10"
GOOGLE_CLIENT = "1234987819200.apps.googleusercontent.com"


def keycloak(base: str) -> tuple[str, OAuthProviderConfig, dict[str, Any], Callable[[int], dict[str, Any]]]:
    issuer = f"{base}/realms/maif"
    provider = OAuthProviderConfig(
        client_id="maif",
        jwks_uri=f"{issuer}/protocol/openid-connect/certs",
        audience="maif",
        token_types=("JWT",),
        authorized_parties=("maif-agent-1",),
    )
    header = {"alg": "RS256", "typ": "JWT", "kid": KIDS["keycloak"]}

    def claims(now: int) -> dict[str, Any]:  # client_credentials grant, audience mapper adding "maif"
        return {
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": issuer,
            "aud": ["maif", "account"],
            "sub": "0b6f5e2a-7c1d-4e8f-9a3b-5d2c1e0f4a6b",
            "typ": "Bearer",
            "azp": "maif-agent-1",
            "acr": "1",
            "allowed-origins": ["/*"],
            "realm_access": {"roles": ["offline_access", "default-roles-maif", "uma_authorization"]},
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            "scope": "maif:read maif:write profile email",
            "clientHost": "10.0.0.7",
            "email_verified": False,
            "preferred_username": "service-account-maif-agent-1",
            "clientAddress": "10.0.0.7",
            "client_id": "maif-agent-1",
        }

    return issuer, provider, header, claims


def entra(base: str) -> tuple[str, OAuthProviderConfig, dict[str, Any], Callable[[int], dict[str, Any]]]:
    issuer = f"{base}/{TENANT}/v2.0"
    provider = OAuthProviderConfig(
        client_id=ENTRA_API_APP,
        jwks_uri=f"{base}/{TENANT}/discovery/v2.0/keys",
        audience=ENTRA_API_APP,
        token_types=("JWT",),
        authorized_parties=(ENTRA_CLIENT_APP,),
        scope_claim="scp",
        leeway_s=60,
    )
    header = {"typ": "JWT", "alg": "RS256", "x5t": KIDS["entra"], "kid": KIDS["entra"]}

    def claims(now: int) -> dict[str, Any]:  # v2.0 access token, delegated (a user signed in to the client)
        return {
            "aud": ENTRA_API_APP,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + LIFETIME_S,
            "aio": "AXQAi/8TAAAAbKMYz7nEwVzEeDm6hS5ZD2f3oG+3CjmKP8l1k1i3ri0=",
            "azp": ENTRA_CLIENT_APP,
            "azpacr": "0",
            "name": "Abe Lincoln",
            "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474",
            "preferred_username": "abeli@microsoft.com",
            "rh": "0.AXEAv_iPcsu...",
            "scp": "maif:read maif:write",
            "sub": "HKZpfaHyWadeOouYlitjrI-KffTm222X5rrV3xDqfKQ",
            "tid": TENANT,
            "uti": "fqiBqXLPj0eQa82S-IYFAA",
            "ver": "2.0",
        }

    return issuer, provider, header, claims


def auth0(base: str) -> tuple[str, OAuthProviderConfig, dict[str, Any], Callable[[int], dict[str, Any]]]:
    issuer = f"{base}/"  # Auth0's issuer ends with a slash
    client = "Zx4tHg1pQ2rS3tU4vW5xY6zA7bC8dE9f"
    provider = OAuthProviderConfig(
        client_id="maif",
        jwks_uri=f"{base}/.well-known/jwks.json",
        audience="https://maif.example.com/api",
        token_types=("JWT", "at+jwt"),
        authorized_parties=(client,),
    )
    header = {"alg": "RS256", "typ": "JWT", "kid": KIDS["auth0"]}

    def claims(now: int) -> dict[str, Any]:  # machine-to-machine (client_credentials) access token
        return {
            "iss": issuer,
            "sub": f"{client}@clients",
            "aud": "https://maif.example.com/api",
            "iat": now,
            "exp": now + LIFETIME_S,
            "jti": "pXb9YqkT7tWzK3Hc5mNv2R",
            "scope": "maif:read maif:write",
            "gty": "client-credentials",
            "azp": client,
        }

    return issuer, provider, header, claims


def okta(base: str) -> tuple[str, OAuthProviderConfig, dict[str, Any], Callable[[int], dict[str, Any]]]:
    issuer = f"{base}/oauth2/default"
    client = "0oa1b2c3d4e5f6g7h8i9"
    provider = OAuthProviderConfig(
        client_id="maif",
        jwks_uri=f"{issuer}/v1/keys",
        audience="api://maif",
        token_types=("",),
        scope_claim="scp",
    )
    header = {"kid": KIDS["okta"], "alg": "RS256"}  # a custom authorization server sets no typ

    def claims(now: int) -> dict[str, Any]:  # client_credentials access token
        return {
            "ver": 1,
            "jti": "AT.0mP4JKAZX1iACIT4vbEDF7LpvDVjxypPMf0D7uX39RE",
            "iss": issuer,
            "aud": "api://maif",
            "iat": now,
            "exp": now + LIFETIME_S,
            "cid": client,
            "scp": ["maif:read", "maif:write"],
            "sub": client,
        }

    return issuer, provider, header, claims


def google(base: str) -> tuple[str, OAuthProviderConfig, dict[str, Any], Callable[[int], dict[str, Any]]]:
    issuer = f"{base}/accounts.google.com"
    provider = OAuthProviderConfig(
        client_id=GOOGLE_CLIENT,
        jwks_uri=f"{base}/oauth2/v3/certs",
        audience=GOOGLE_CLIENT,
        token_types=("JWT",),
    )
    header = {"alg": "RS256", "kid": KIDS["google"], "typ": "JWT"}

    def claims(now: int) -> dict[str, Any]:  # an ID token: aud is the OAuth client, no scopes
        return {
            "iss": issuer,
            "azp": GOOGLE_CLIENT,
            "aud": GOOGLE_CLIENT,
            "sub": "110169484474386276334",
            "hd": "example.com",
            "email": "agent@example.com",
            "email_verified": True,
            "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q",
            "iat": now,
            "exp": now + LIFETIME_S,
        }

    return issuer, provider, header, claims


IDP_PROFILES = {"keycloak": keycloak, "entra": entra, "auth0": auth0, "okta": okta, "google": google}
EXPECTED = {  # (scopes, client) each profile's genuine token vouches for
    "default": (frozenset({"maif:read", "maif:write"}), "agent-1"),
    "keycloak": (frozenset({"maif:read", "maif:write", "profile", "email"}), "maif-agent-1"),
    "entra": (frozenset({"maif:read", "maif:write"}), ENTRA_CLIENT_APP),
    "auth0": (frozenset({"maif:read", "maif:write"}), "Zx4tHg1pQ2rS3tU4vW5xY6zA7bC8dE9f"),
    "okta": (frozenset({"maif:read", "maif:write"}), "0oa1b2c3d4e5f6g7h8i9"),
    "google": (frozenset(), GOOGLE_CLIENT),
}
PROFILE_NAMES = ["default", *IDP_PROFILES]


@pytest.fixture(scope="module")
def local_jwks() -> Iterator[JWKSServer]:
    keys = [jwk_of(TEST_RSA_KEY.public_key(), kid, "RS256") for kid in KIDS.values()]
    keys.append(jwk_of(TEST_EC_KEY.public_key(), "ec-test", "ES256"))
    server = JWKSServer(json.dumps({"keys": keys}).encode())
    yield server
    server.close()


@pytest.fixture(scope="module")
def profiles(oidc_issuer: Any, local_jwks: JWKSServer) -> dict[str, tuple[Profile, TokenVerifier]]:
    """Each profile with a verifier trusting only its issuer, JWKS cache warmed by a genuine token."""
    built: dict[str, tuple[Profile, TokenVerifier]] = {}
    for name, make in IDP_PROFILES.items():
        issuer, provider, header, claims_at = make(local_jwks.base)
        scopes, client = EXPECTED[name]
        profile = Profile(
            name, issuer, provider, header, claims_at, TEST_RSA_KEY, "ec-test", local_jwks.document, scopes,
            client,
        )
        built[name] = (profile, TokenVerifier({issuer: provider}))
    default_provider = OAuthProviderConfig(client_id="maif")  # the seed's configuration, as written
    scopes, client = EXPECTED["default"]
    with urllib.request.urlopen(f"{oidc_issuer.url}/jwks", timeout=10) as response:
        default_jwks = response.read()
    default = Profile(
        "default",
        oidc_issuer.url,
        default_provider,
        {"typ": "at+jwt", "alg": "RS256", "kid": "rsa-1"},
        lambda now: {**payload_of(oidc_issuer.mint()), "iat": now, "exp": now + 300},
        oidc_issuer.private_keys["rsa-1"][1],
        "ec-1",
        default_jwks,
        scopes,
        client,
    )
    built["default"] = (default, TokenVerifier({oidc_issuer.url: default_provider}))
    for profile, verifier in built.values():
        verifier.verify(profile.token())  # warm the JWKS cache: forgeries must not need a fetch
    return built


def payload_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_jwks(attacker_key: rsa.RSAPrivateKey) -> Iterator[JWKSServer]:
    """The attacker's own JWKS on 127.0.0.1, naming its key after every kid a profile uses."""
    kids = [*KIDS.values(), "rsa-1"]
    keys = [jwk_of(attacker_key.public_key(), kid, "RS256") for kid in kids]
    server = JWKSServer(json.dumps({"keys": keys}).encode())
    yield server
    server.close()


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_genuine_token_of_each_provider_verifies(
    profiles: dict[str, tuple[Profile, TokenVerifier]], name: str
) -> None:
    profile, verifier = profiles[name]
    verified = verifier.verify(profile.token())
    assert verified.issuer == profile.issuer
    assert verified.subject == profile.claims()["sub"]
    assert verified.scopes == profile.expected_scopes
    assert verified.client_id == profile.expected_client


def test_real_oidc_provider_token_verifies_under_the_seed_configuration(
    profiles: dict[str, tuple[Profile, TokenVerifier]], oidc_issuer: Any
) -> None:
    _, verifier = profiles["default"]
    verified = verifier.verify(oidc_issuer.token("agent-2", "maif:read"))
    assert verified.client_id == "agent-2" and verified.scopes == {"maif:read"}


@dataclass
class Forge:
    """What an attacker has: a genuine token's header and claims, the public JWKS, an own key and JWKS."""

    profile: Profile
    attacker_key: rsa.RSAPrivateKey
    attacker_jwks_url: str

    @property
    def header(self) -> dict[str, Any]:
        return dict(self.profile.header)

    def claims(self, **changes: Any) -> dict[str, Any]:
        return {**self.profile.claims(), **changes}

    def without(self, *names: str) -> dict[str, Any]:
        return {name: value for name, value in self.profile.claims().items() if name not in names}

    def genuine(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """Signed with the issuer's real key: only the edited header or claims are hostile."""
        return signed(header, claims, self.profile.private_key, "RS256")

    def by_attacker(self, header: dict[str, Any], claims: dict[str, Any] | None = None) -> str:
        return signed(header, claims or self.claims(), self.attacker_key, "RS256")

    def public_key_bytes(self, encoding: serialization.Encoding) -> bytes:
        return self.profile.private_key.public_key().public_bytes(
            encoding, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def unlisted_token_type(self) -> str | None:
        """A typ this profile does not accept: "" means the header goes without one."""
        listed = {kind.lower() for kind in self.profile.provider.token_types}
        return next((kind for kind in ("", "JWT", "at+jwt") if kind.lower() not in listed), None)

    def past(self, seconds: float) -> int:
        return int(time.time() - self.profile.provider.leeway_s - seconds)

    def future(self, seconds: float) -> int:
        return int(time.time() + self.profile.provider.leeway_s + seconds)


def _with_typ(header: dict[str, Any], token_type: str | None) -> dict[str, Any]:
    header = {name: value for name, value in header.items() if name != "typ"}
    return header if not token_type else {**header, "typ": token_type}


def _tampered(forge: Forge) -> str:
    header, _, signature = forge.profile.token().split(".")
    changed = forge.claims(sub="admin-1", scope="maif:admin", scp="maif:admin")
    return f"{header}.{b64(json.dumps(changed).encode())}.{signature}"


def _signature_of_another_token(forge: Forge) -> str:
    header, payload, _ = forge.profile.token().split(".")
    return f"{header}.{payload}.{forge.profile.token({'sub': 'someone-else'}).split('.')[2]}"


FORGERIES: dict[str, Callable[[Forge], str]] = {
    # Algorithm confusion: no signature, or an HMAC keyed with what the attacker can read.
    "alg none, empty signature": lambda f: unsigned({**f.header, "alg": "none"}, f.claims()),
    "alg None, some signature": lambda f: unsigned({**f.header, "alg": "None"}, f.claims(), b"x"),
    "alg empty string": lambda f: unsigned({**f.header, "alg": ""}, f.claims(), b"x"),
    "alg missing": lambda f: unsigned({k: v for k, v in f.header.items() if k != "alg"}, f.claims(), b"x"),
    "HS256 keyed with the PEM public key": lambda f: hmac_signed(
        {**f.header, "alg": "HS256"}, f.claims(), f.public_key_bytes(serialization.Encoding.PEM)
    ),
    "HS384 keyed with the DER public key": lambda f: hmac_signed(
        {**f.header, "alg": "HS384"}, f.claims(), f.public_key_bytes(serialization.Encoding.DER)
    ),
    "HS512 keyed with the JWKS document": lambda f: hmac_signed(
        {**f.header, "alg": "HS512"}, f.claims(), f.profile.jwks
    ),
    "RS256 signature under a PS256 header": lambda f: f.genuine({**f.header, "alg": "PS256"}, f.claims()),
    # Wrong key, and kid confusion.
    "attacker key under the real kid": lambda f: f.by_attacker(f.header),
    "attacker key under an unknown kid": lambda f: f.by_attacker({**f.header, "kid": "attacker-1"}),
    "kid missing": lambda f: f.genuine({k: v for k, v in f.header.items() if k != "kid"}, f.claims()),
    "kid of the issuer's EC key": lambda f: f.genuine({**f.header, "kid": f.profile.other_kid}, f.claims()),
    "kid path traversal": lambda f: f.by_attacker({**f.header, "kid": "../../../../dev/null"}),
    "kid not a string": lambda f: f.genuine({**f.header, "kid": 7}, f.claims()),
    "kid too long": lambda f: f.genuine({**f.header, "kid": "k" * 300}, f.claims()),
    "jku to the attacker's JWKS": lambda f: f.by_attacker({**f.header, "jku": f.attacker_jwks_url}),
    "x5u to the attacker's JWKS": lambda f: f.by_attacker({**f.header, "x5u": f.attacker_jwks_url}),
    "embedded jwk of the attacker": lambda f: f.by_attacker(
        {**f.header, "jwk": jwk_of(f.attacker_key.public_key(), f.header["kid"], "RS256")}
    ),
    "x5c of the attacker": lambda f: f.by_attacker({**f.header, "x5c": [base64.b64encode(b"cert").decode()]}),
    # Header type and extensions.
    "typ not listed": lambda f: f.genuine(_with_typ(f.header, f.unlisted_token_type()), f.claims()),
    "typ of a logout token": lambda f: f.genuine({**f.header, "typ": "logout+jwt"}, f.claims()),
    "typ not a string": lambda f: f.genuine({**f.header, "typ": ["JWT"]}, f.claims()),
    "crit extension": lambda f: f.genuine({**f.header, "crit": ["urn:example:unknown"]}, f.claims()),
    # Issuer and audience.
    "wrong issuer": lambda f: f.genuine(f.header, f.claims(iss="https://evil.example")),
    "issuer with a suffix": lambda f: f.genuine(f.header, f.claims(iss=f.profile.issuer + ".evil.example")),
    "issuer missing": lambda f: f.genuine(f.header, f.without("iss")),
    "issuer not a string": lambda f: f.genuine(f.header, f.claims(iss=[f.profile.issuer])),
    "wrong audience": lambda f: f.genuine(f.header, f.claims(aud="urn:other:service")),
    "audience list without ours": lambda f: f.genuine(f.header, f.claims(aud=["urn:other", "account"])),
    "audience missing": lambda f: f.genuine(f.header, f.without("aud")),
    "azp of another client": lambda f: f.genuine(f.header, f.claims(azp="attacker-client")),
    # Time.
    "expired beyond the leeway": lambda f: f.genuine(f.header, f.claims(exp=f.past(60))),
    "nbf in the future beyond the leeway": lambda f: f.genuine(f.header, f.claims(nbf=f.future(600))),
    "iat in the future beyond the leeway": lambda f: f.genuine(
        f.header, f.claims(iat=f.future(600), exp=f.future(900))
    ),
    "exp missing": lambda f: f.genuine(f.header, f.without("exp")),
    "iat missing": lambda f: f.genuine(f.header, f.without("iat")),
    "exp not a number": lambda f: f.genuine(f.header, f.claims(exp="tomorrow")),
    "lifetime above the limit": lambda f: f.genuine(
        f.header, f.claims(iat=int(time.time()), exp=int(time.time()) + 2 * 86400)
    ),
    # Subject and scopes.
    "sub missing": lambda f: f.genuine(f.header, f.without("sub")),
    "sub empty": lambda f: f.genuine(f.header, f.claims(sub="")),
    "scopes not a string or list": lambda f: f.genuine(
        f.header, f.claims(**{f.profile.provider.scope_claim: {"maif:admin": True}})
    ),
    # The signature itself.
    "tampered payload": _tampered,
    "signature stripped": lambda f: f.profile.token().rsplit(".", 1)[0] + ".",
    "signature of another token": _signature_of_another_token,
    "oversized": lambda f: f.genuine(f.header, f.claims(padding="A" * 9000)),
    # Malformed compact serialisations (test_jwt_attacks.py has more, against the default profile only).
    "a fourth segment": lambda f: f.profile.token() + ".x",
    "standard base64 signature": lambda f: _edit_signature(f, lambda sig: "+" + sig[1:]),
    "payload not base64url": lambda f: _edit_payload(f, "%%%%"),
    "payload a JSON array, genuinely signed": lambda f: _raw_signed(f, b'["maif:admin"]'),
}


def _edit_signature(forge: Forge, edit: Callable[[str], str]) -> str:
    header, payload, signature = forge.profile.token().split(".")
    return f"{header}.{payload}.{edit(signature)}"


def _edit_payload(forge: Forge, payload: str) -> str:
    header, _, signature = forge.profile.token().split(".")
    return f"{header}.{payload}.{signature}"


def _raw_signed(forge: Forge, payload: bytes) -> str:
    message = f"{b64(json.dumps(forge.header).encode())}.{b64(payload)}"
    signature = get_default_algorithms()["RS256"].sign(message.encode(), forge.profile.private_key)
    return f"{message}.{b64(signature)}"


@pytest.mark.parametrize("forgery", list(FORGERIES))
@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_forgery_is_refused_under_every_profile(
    profiles: dict[str, tuple[Profile, TokenVerifier]],
    attacker_key: rsa.RSAPrivateKey,
    attacker_jwks: JWKSServer,
    name: str,
    forgery: str,
) -> None:
    profile, verifier = profiles[name]
    hits = attacker_jwks.hits
    token = FORGERIES[forgery](Forge(profile, attacker_key, attacker_jwks.base + "/jwks"))
    with pytest.raises(TokenError):
        verifier.verify(token)
    assert attacker_jwks.hits == hits  # no header ever makes the verifier fetch the attacker's keys


def test_the_forgery_suite_is_large_enough() -> None:
    assert len(FORGERIES) >= 30 and len(PROFILE_NAMES) == 6


def test_audience_defaults_to_client_id_and_the_section_audience(oidc_issuer: Any) -> None:
    seed = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif")})
    for audience in ("maif", "urn:maif:store", ["urn:other", "maif"]):
        assert seed.verify(oidc_issuer.mint({"aud": audience})).subject == "agent-1"
    # The provider's own audience takes precedence: the client_id and the section's audience no longer count.
    own = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif", audience=("urn:maif:eu",))})
    assert own.verify(oidc_issuer.mint({"aud": "urn:maif:eu"})).subject == "agent-1"
    for audience in ("maif", "urn:maif:store"):
        with pytest.raises(TokenError, match="Audience"):
            own.verify(oidc_issuer.mint({"aud": audience}))


def test_jwt_and_missing_typ_are_accepted_only_where_listed(oidc_issuer: Any) -> None:
    seed = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif")})
    provider = OAuthProviderConfig(client_id="maif", audience="urn:maif:store", token_types=("JWT",))
    listed = TokenVerifier({oidc_issuer.url: provider})
    jwt_token = oidc_issuer.mint(headers={"typ": "JWT"})
    bare_token = oidc_issuer.mint(headers={"typ": None})
    assert "typ" not in jwt.get_unverified_header(bare_token)
    refusals = ((seed, jwt_token), (seed, bare_token), (listed, bare_token), (listed, oidc_issuer.mint()))
    for verifier, token in refusals:
        with pytest.raises(TokenError, match="type"):
            verifier.verify(token)
    assert listed.verify(oidc_issuer.mint(headers={"typ": "application/jwt"})).subject == "agent-1"


def test_accepting_non_access_token_types_needs_an_explicit_audience() -> None:
    for token_types in (("JWT",), ("",), ("at+jwt", "JWT")):
        with pytest.raises(ConfigError, match="audience"):
            OAuthProviderConfig(client_id="maif", token_types=token_types)
    access_tokens_only = OAuthProviderConfig(client_id="maif", token_types=("at+jwt", "application/at+jwt"))
    assert access_tokens_only.audience is None


@pytest.mark.parametrize(
    "provider",
    [
        {"leeway_s": -1},
        {"leeway_s": 301},
        {"token_types": []},
        {"token_types": ["at+jwt"] * 9},
        {"audience": ""},
        {"audience": []},
        {"client_id": ""},
        {"authorized_parties": [""]},
        {"scope_claim": "roles"},
    ],
)
def test_invalid_provider_settings_are_refused(provider: dict[str, Any]) -> None:
    config = {"oauth_providers": {"https://issuer.example": {"client_id": "maif", **provider}}}
    with pytest.raises(ConfigError):
        load_section(SecurityConfig, config, environ={})


def test_leeway_is_per_provider(oidc_issuer: Any) -> None:
    now = int(time.time())
    late = oidc_issuer.mint({"iat": now - 300, "exp": now - 20})
    lenient = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif", leeway_s=60)})
    strict = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif", leeway_s=0)})
    assert lenient.verify(late).subject == "agent-1"
    with pytest.raises(TokenError, match="expired"):
        strict.verify(late)


def test_scope_claim_names_where_scopes_are_read(oidc_issuer: Any) -> None:
    provider = OAuthProviderConfig(client_id="maif", scope_claim="scp")
    verifier = TokenVerifier({oidc_issuer.url: provider})
    for scp in ("maif:read maif:write", ["maif:read", "maif:write"]):
        token = oidc_issuer.mint({"scp": scp}, drop=("scope",))
        assert verifier.verify(token).scopes == {"maif:read", "maif:write"}
    # With scp configured, a scope claim grants nothing, and the other way round.
    assert verifier.verify(oidc_issuer.mint({"scope": "maif:admin"})).scopes == frozenset()
    seed = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif")})
    assert seed.verify(oidc_issuer.mint({"scp": ["maif:admin"]}, drop=("scope",))).scopes == frozenset()


def test_azp_must_be_the_client_id_or_an_authorized_party(oidc_issuer: Any) -> None:
    provider = OAuthProviderConfig(client_id="maif", authorized_parties=("agent-1",))
    verifier = TokenVerifier({oidc_issuer.url: provider})
    for party in ("maif", "agent-1"):
        assert verifier.verify(oidc_issuer.mint({"azp": party})).subject == "agent-1"
    for party in ("agent-2", "urn:maif:store", "", 7):
        with pytest.raises(TokenError, match="azp"):
            verifier.verify(oidc_issuer.mint({"azp": party}))


def test_every_documented_configuration_loads() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 6
    for block in blocks:
        security = load_section(SecurityConfig, tomllib.loads(block), environ={})
        assert security.oauth_providers
        TokenVerifier(security.oauth_providers, audience=security.audience)
