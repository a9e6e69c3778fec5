"""Every JWT attack of the OIDC recipe, mounted for real against a verifier trusting a real issuer.

Each test builds the hostile token the way an attacker would (with the issuer's public JWKS, an own key,
or by editing a real token) and must see it refused with a TokenError; a control case shows the same
construction without the attack is accepted, so the refusal is about the attack and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwks_server import JWKSServer
from jwt.algorithms import RSAAlgorithm

from maif.config import OAuthProviderConfig
from maif.errors import TokenError
from maif.security.identity import TokenVerifier


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segments(token: str) -> list[str]:
    return token.split(".")


def payload_of(token: str) -> dict[str, Any]:
    part = segments(token)[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def hand_made(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    encoded = [b64(json.dumps(part).encode()) for part in (header, payload)]
    return ".".join([*encoded, b64(signature)])


def rsa_signed(header: dict[str, Any], payload: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    """RS256 by hand, for headers and claims PyJWT's encoder would refuse to produce."""
    signing_input = ".".join(b64(json.dumps(part).encode()) for part in (header, payload))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = ".".join(b64(json.dumps(part).encode()) for part in (header, payload))
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
def verifier(oidc_issuer: Any) -> TokenVerifier:
    verifier = TokenVerifier({oidc_issuer.url: OAuthProviderConfig(client_id="maif")})
    verifier.verify(oidc_issuer.token())  # warm the JWKS cache: attacks below must not need a fetch
    return verifier


@pytest.fixture
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def refused(verifier: TokenVerifier, token: str, match: str | None = None) -> None:
    with pytest.raises(TokenError, match=match):
        verifier.verify(token)


def test_control_minted_token_is_accepted(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    assert verifier.verify(oidc_issuer.mint()).subject == "agent-1"


def test_alg_none_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    payload = payload_of(oidc_issuer.mint())
    for alg in ("none", "None", "NONE", ""):
        header = {"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}
        refused(verifier, hand_made(header, payload))  # empty signature segment
        refused(verifier, hand_made(header, payload, b"x"), match="algorithm")


def test_hs256_signed_with_the_issuer_rsa_public_key_is_refused(
    verifier: TokenVerifier, oidc_issuer: Any
) -> None:
    public_key = oidc_issuer.private_keys["rsa-1"][1].public_key()
    payload = payload_of(oidc_issuer.mint())
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwks = urllib.request.urlopen(f"{oidc_issuer.url}/jwks", timeout=10).read()
    for secret in (pem, der, jwks):
        for alg in ("HS256", "HS384", "HS512"):
            header = {"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}
            refused(verifier, hmac_signed(header, payload, secret), match="algorithm")


def test_kid_injection_is_refused(verifier: TokenVerifier, oidc_issuer: Any, attacker_key: Any) -> None:
    for kid in ("../../../../dev/null", "rsa-1' OR '1'='1", "rsa-1\x00", "", "k" * 300, "attacker"):
        token = jwt.encode(
            payload_of(oidc_issuer.mint()),
            attacker_key,
            algorithm="RS256",
            headers={"typ": "at+jwt", "kid": kid},
        )
        refused(verifier, token)
    # A real key named for another algorithm: the issuer's EC key id on an RS256 token.
    refused(verifier, oidc_issuer.mint(kid="rsa-1", headers={"kid": "ec-1"}))
    # A kid that is not a string.
    issuer_key = oidc_issuer.private_keys["rsa-1"][1]
    payload = payload_of(oidc_issuer.mint())
    for kid in (7, None, ["rsa-1"], {"kid": "rsa-1"}):
        refused(verifier, rsa_signed({"alg": "RS256", "typ": "at+jwt", "kid": kid}, payload, issuer_key))


@pytest.fixture
def attacker_jwks(attacker_key: Any) -> Iterator[JWKSServer]:
    jwk = {**json.loads(RSAAlgorithm.to_jwk(attacker_key.public_key())), "kid": "rsa-1", "alg": "RS256"}
    server = JWKSServer(json.dumps({"keys": [jwk]}).encode())
    yield server
    server.close()


def test_jku_x5u_jwk_and_x5c_headers_never_supply_keys(
    verifier: TokenVerifier, oidc_issuer: Any, attacker_key: Any, attacker_jwks: JWKSServer
) -> None:
    jwk = {**json.loads(RSAAlgorithm.to_jwk(attacker_key.public_key())), "kid": "rsa-1", "alg": "RS256"}
    der = base64.b64encode(b"not even a certificate").decode()
    payload = payload_of(oidc_issuer.mint())
    for extra in (
        {"jku": attacker_jwks.url},
        {"x5u": attacker_jwks.url},
        {"jwk": jwk},
        {"x5c": [der]},
        {"jku": attacker_jwks.url, "jwk": jwk, "kid": "attacker"},
    ):
        headers = {"typ": "at+jwt", "kid": "rsa-1", **extra}
        refused(verifier, jwt.encode(payload, attacker_key, algorithm="RS256", headers=headers))
    assert attacker_jwks.hits == 0
    # Ignored, not fatal: the same headers on a token signed by the issuer's real key do not matter.
    assert verifier.verify(oidc_issuer.mint(headers={"jku": attacker_jwks.url})).subject == "agent-1"
    assert attacker_jwks.hits == 0


def test_unknown_kid_flood_costs_the_issuer_at_most_one_jwks_request(
    verifier: TokenVerifier, oidc_issuer: Any, attacker_key: Any
) -> None:
    before = oidc_issuer.jwks_requests()
    payload = payload_of(oidc_issuer.mint())
    for _ in range(300):
        headers = {"typ": "at+jwt", "kid": secrets.token_hex(8)}
        refused(verifier, jwt.encode(payload, attacker_key, algorithm="RS256", headers=headers), match="kid")
    assert oidc_issuer.jwks_requests() - before <= 1
    assert verifier.verify(oidc_issuer.mint()).subject == "agent-1"  # legitimate tokens still pass


def _at(offset_s: int) -> Callable[[], int]:
    """A time claim ``offset_s`` from the moment the token is minted (not from collection time: the
    whole suite can run for longer than the offsets)."""
    return lambda: int(time.time()) + offset_s


@pytest.mark.parametrize(
    ("claims", "drop", "reason"),
    [
        ({"exp": _at(-120)}, (), "expired"),
        ({"nbf": _at(600)}, (), "not yet valid"),
        ({"iat": _at(600), "exp": _at(900)}, (), "not yet valid"),
        ({}, ("exp",), "exp"),
        ({}, ("iat",), "iat"),
        ({}, ("sub",), "sub"),
        ({"exp": "tomorrow"}, (), "Expiration"),
        ({"iat": _at(-10), "exp": _at(2 * 86400)}, (), "lifetime"),
        ({"sub": ""}, (), "subject"),
        ({"sub": 42}, (), "(?i)sub"),
        ({"scope": {"maif:admin": True}}, (), "scope"),
    ],
)
def test_bad_time_and_subject_claims_are_refused(
    verifier: TokenVerifier, oidc_issuer: Any, claims: dict[str, Any], drop: tuple[str, ...], reason: str
) -> None:
    minted = {name: value() if callable(value) else value for name, value in claims.items()}
    refused(verifier, oidc_issuer.mint(minted, drop=drop), match=reason)


def test_wrong_or_prefix_issuer_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    for issuer in (
        oidc_issuer.url + ".evil.example",
        oidc_issuer.url + "/",
        oidc_issuer.url[:-1],
        "https://accounts.example",
    ):
        refused(verifier, oidc_issuer.mint({"iss": issuer}), match="issuer")
    issuer_key = oidc_issuer.private_keys["rsa-1"][1]
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}
    for issuer in ([oidc_issuer.url], {"url": oidc_issuer.url}, None, 1):
        payload = {**payload_of(oidc_issuer.mint()), "iss": issuer}
        refused(verifier, rsa_signed(header, payload, issuer_key), match="issuer")
    refused(verifier, oidc_issuer.mint(drop=("iss",)), match="issuer")


def test_wrong_audience_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    for audience in ("urn:maif:other", "urn:maif:store:x", ["urn:other", "urn:else"], ""):
        refused(verifier, oidc_issuer.mint({"aud": audience}))
    refused(verifier, oidc_issuer.mint(drop=("aud",)), match="aud")
    # A token the real issuer made for another resource server.
    refused(verifier, oidc_issuer.token(resource="urn:other:service"), match="(?i)audience")
    assert verifier.verify(oidc_issuer.mint({"aud": ["urn:other", "urn:maif:store"]})).subject == "agent-1"


def test_tampered_payload_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    token = oidc_issuer.token("other-service", "maif:read")
    header, _, signature = segments(token)
    payload = payload_of(token)
    for change in (
        {"scope": "maif:read maif:write maif:admin"},
        {"sub": "agent-1"},
        {"exp": payload["exp"] + 1},
    ):
        forged_payload = b64(json.dumps({**payload, **change}).encode())
        refused(verifier, f"{header}.{forged_payload}.{signature}", match="Signature")


def test_stripped_or_swapped_signature_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    token = oidc_issuer.token()
    header, payload, _ = segments(token)
    refused(verifier, f"{header}.{payload}.")
    refused(verifier, f"{header}.{payload}")
    refused(verifier, f"{header}.{payload}.{segments(oidc_issuer.token())[2]}", match="Signature")
    refused(verifier, f"{header}.{payload}.{b64(bytes(256))}", match="Signature")


def test_oversized_token_is_refused_before_parsing(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    refused(verifier, oidc_issuer.mint({"padding": "A" * 9000}), match="limit")
    refused(verifier, "A" * 10_000_000, match="limit")


def test_malformed_compact_serialisations_are_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    token = oidc_issuer.mint()
    header, payload, signature = segments(token)
    for bad in (
        "",
        "..",
        f"{header}..{signature}",
        f"{header}.{payload}.{signature}.x",
        f"{header} .{payload}.",
        f"{header}.{payload}.{signature}==",
        f"{header}.{payload}.+{signature[1:]}",  # standard base64, not base64url: always differs
        f"{header}.{payload}.{signature[:-1]}/",  # (replacing "-" was a no-op for tokens without one)
        "é" * 10,
    ):
        refused(verifier, bad)
    refused(verifier, hand_made({"typ": "at+jwt"}, {}, b"x"))
    for not_a_string in (None, 42, ["a.b.c"]):
        refused(verifier, not_a_string)  # type: ignore[arg-type]


def test_wrong_typ_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    for typ in ("JWT", "jwt", "id_token", "dpop+jwt", "", None):
        refused(verifier, oidc_issuer.mint(headers={"typ": typ}), match="type")
    assert verifier.verify(oidc_issuer.mint(headers={"typ": "application/at+jwt"})).subject == "agent-1"


def test_unknown_crit_is_refused(verifier: TokenVerifier, oidc_issuer: Any) -> None:
    for crit in (["exp"], ["urn:example:unknown"], []):
        refused(verifier, oidc_issuer.mint(headers={"crit": crit}), match="crit")


def test_issuer_down_fails_closed_after_the_cache_lifetime(ephemeral_issuer: Any) -> None:
    now = [1000.0]
    verifier = TokenVerifier(
        {ephemeral_issuer.url: OAuthProviderConfig(client_id="maif")},
        cache_lifetime_s=60,
        refresh_interval_s=5,
        clock=lambda: now[0],
    )
    token = ephemeral_issuer.token()
    assert verifier.verify(token).subject == "agent-1"
    ephemeral_issuer.stop()  # the issuer of this test only
    now[0] += 30  # within the cache lifetime: cached keys still verify
    assert verifier.verify(token).subject == "agent-1"
    now[0] += 31  # past the lifetime: the refresh fails, and the token is refused
    refused(verifier, token, match=r"cannot fetch|could not be refreshed")
    now[0] += 1  # inside the refresh interval: refused without even trying
    refused(verifier, token, match="could not be refreshed")
    now[0] += 10
    refused(verifier, token)


CLAIM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    claims=st.dictionaries(
        st.sampled_from(
            ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "client_id", "tenant", "scp", "azp"]
        ),
        CLAIM_VALUES,
        max_size=4,
    )
)
def test_any_claim_values_under_the_real_key_give_a_decision_never_a_crash(
    verifier: TokenVerifier, oidc_issuer: Any, claims: dict[str, Any]
) -> None:
    issuer_key = oidc_issuer.private_keys["rsa-1"][1]
    payload = {**payload_of(oidc_issuer.mint()), **claims}
    token = rsa_signed({"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}, payload, issuer_key)
    try:
        verified = verifier.verify(token)
    except TokenError:
        return
    # Accepted only when every claim that matters is as a genuine token would have it.
    assert verified.issuer == oidc_issuer.url and verified.subject and "urn:maif:store" in verified.audience


def test_issuer_key_rotation_is_followed_and_retired_keys_refused(ephemeral_issuer: Any) -> None:
    now = [1000.0]
    verifier = TokenVerifier(
        {ephemeral_issuer.url: OAuthProviderConfig(client_id="maif")},
        cache_lifetime_s=300,
        refresh_interval_s=30,
        clock=lambda: now[0],
    )
    old_token = ephemeral_issuer.token()
    assert verifier.verify(old_token).subject == "agent-1"
    ephemeral_issuer.restart_with_new_keys(generation=2)
    new_token = ephemeral_issuer.token()
    assert jwt.get_unverified_header(new_token)["kid"] == "rsa-2"
    # Inside the refresh interval the unknown kid is refused without asking the issuer...
    refused(verifier, new_token, match="kid")
    now[0] += 31
    # ...after it, one refresh picks up the new key, and the retired key's tokens are refused from then on.
    assert verifier.verify(new_token).subject == "agent-1"
    refused(verifier, old_token, match="kid")
