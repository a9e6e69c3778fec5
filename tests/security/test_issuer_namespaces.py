"""Several issuers, one agent namespace (issue 14): identity is (issuer, sub), tenants belong to issuers.

Issuer A is the session's real oidc-provider; issuer B is a second identity provider with its own key
and its own JWKS server on 127.0.0.1. B is trusted for its own agents only: a token from B naming
``sub=agent-1`` and A's tenant must never become A's agent-1, claim A's tenant, read A's agent-1's
blocks or act with its trust level.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwks_server import JWKSServer
from jwt.algorithms import RSAAlgorithm

from maif.config import OAuthProviderConfig, SecurityConfig, load_section
from maif.errors import AuthenticationError, AuthorizationError, ConfigError, TokenError
from maif.security.identity import TokenVerifier
from maif.security.manager import SecurityManager
from maif.security.policy import Action, Resource, Sensitivity
from maif.service.auth import Authenticator

AUDIENCE = "urn:maif:store"
TENANT_A = "tenant-a"
PREFIX_B = "issuer-b/"


class SecondIssuer:
    """Issuer B: its own RSA key, served as a JWKS by a local server; mints any claims it likes."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        document = {"keys": [{**public, "kid": "b-1", "alg": "RS256", "use": "sig"}]}
        self.server = JWKSServer(json.dumps(document).encode())
        self.url = f"{self.server.base}/issuer-b"

    def mint(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.url,
            "sub": "agent-1",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(12),
            "scope": "maif:read maif:write",
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"typ": "at+jwt", "kid": "b-1"})


@pytest.fixture(scope="module")
def issuer_b() -> Iterator[SecondIssuer]:
    issuer = SecondIssuer()
    yield issuer
    issuer.server.close()


def two_providers(oidc_issuer: Any, issuer_b: SecondIssuer, **b_settings: Any) -> dict[str, Any]:
    return {
        "oauth_providers": {
            oidc_issuer.url: {"client_id": "maif", "tenants": [TENANT_A]},
            issuer_b.url: {"client_id": "maif", "jwks_uri": issuer_b.server.url, **b_settings},
        }
    }


@pytest.fixture
def manager(oidc_issuer: Any, issuer_b: SecondIssuer, make_manager: Any) -> SecurityManager:
    built: SecurityManager = make_manager(
        oidc_issuer, config=two_providers(oidc_issuer, issuer_b, agent_prefix=PREFIX_B)
    )
    return built


def bootstrap(manager: SecurityManager, agent_id: str, token: str) -> Any:
    return asyncio.run(manager.bootstrap_trust(agent_id, token))


def test_a_token_from_another_issuer_is_not_the_first_issuers_agent(
    manager: SecurityManager, oidc_issuer: Any, issuer_b: SecondIssuer
) -> None:
    genuine = bootstrap(manager, "agent-1", oidc_issuer.mint({"tenant": TENANT_A}))
    assert (genuine.agent_id, genuine.tenant) == ("agent-1", TENANT_A)

    # B's sub=agent-1 is B's agent, named with B's prefix: it cannot bootstrap as A's agent-1 at all.
    with pytest.raises(AuthenticationError, match="sub"):
        bootstrap(manager, "agent-1", issuer_b.mint())
    impostor = bootstrap(manager, PREFIX_B + "agent-1", issuer_b.mint())
    assert impostor.agent_id == PREFIX_B + "agent-1" != genuine.agent_id
    assert impostor.tenant == PREFIX_B  # B's own default tenant, not the "" of A's tokens
    verified = manager.token_verifier.verify(issuer_b.mint())
    assert (verified.issuer, verified.subject, verified.agent_id) == (
        issuer_b.url, "agent-1", PREFIX_B + "agent-1"
    )

    # The unprefixed issuer cannot reach into B's namespace either.
    with pytest.raises(TokenError, match="agent_prefix"):
        bootstrap(manager, PREFIX_B + "agent-1", oidc_issuer.mint({"sub": PREFIX_B + "agent-1"}))

    # Nor can B vouch for A's tenant (B lists no tenants, and several providers are configured).
    with pytest.raises(TokenError, match="tenant"):
        bootstrap(manager, PREFIX_B + "agent-1", issuer_b.mint(tenant=TENANT_A))
    with pytest.raises(TokenError, match="tenant"):
        manager.token_verifier.verify(issuer_b.mint(tenant=TENANT_A))


def test_another_issuers_agent_cannot_read_or_act_as_the_first_issuers_agent(
    manager: SecurityManager, oidc_issuer: Any, issuer_b: SecondIssuer
) -> None:
    genuine = bootstrap(manager, "agent-1", oidc_issuer.mint({"tenant": TENANT_A}))
    impostor = bootstrap(manager, PREFIX_B + "agent-1", issuer_b.mint())
    public = Resource("a-block", owner="agent-1", tenant=TENANT_A)
    manager.authorize(genuine, Action.READ, public)
    manager.authorize(genuine, Action.WRITE, public)
    for sensitivity in (Sensitivity.PUBLIC, Sensitivity.SENSITIVE):
        block = Resource("a-block", owner="agent-1", tenant=TENANT_A, sensitivity=sensitivity)
        with pytest.raises(AuthorizationError):
            manager.authorize(impostor, Action.READ, block)
        with pytest.raises(AuthorizationError):
            manager.authorize(impostor, Action.WRITE, block)
    # Even a block of A's agent-1 in the default tenant stays A's agent-1's to write.
    default_tenant_block = Resource("b-block", owner="agent-1", tenant="")
    with pytest.raises(AuthorizationError):
        manager.authorize(impostor, Action.WRITE, default_tenant_block)


def test_a_listed_tenant_is_accepted_only_from_its_issuer(
    oidc_issuer: Any, issuer_b: SecondIssuer, make_manager: Any
) -> None:
    built = make_manager(
        oidc_issuer,
        config=two_providers(oidc_issuer, issuer_b, agent_prefix=PREFIX_B, tenants=["tenant-b"]),
    )
    assert bootstrap(built, PREFIX_B + "agent-1", issuer_b.mint(tenant="tenant-b")).tenant == "tenant-b"
    with pytest.raises(TokenError, match="tenant"):
        bootstrap(built, PREFIX_B + "agent-1", issuer_b.mint(tenant=TENANT_A))
    with pytest.raises(TokenError, match="tenant"):
        bootstrap(built, "agent-1", oidc_issuer.mint({"tenant": "tenant-b"}))


def test_issuers_that_could_name_the_same_agent_are_refused(
    oidc_issuer: Any, issuer_b: SecondIssuer
) -> None:
    for b_settings in ({}, {"agent_prefix": ""}):
        with pytest.raises(ConfigError, match="agent_prefix"):
            load_section(SecurityConfig, two_providers(oidc_issuer, issuer_b, **b_settings))
    a, b = OAuthProviderConfig(client_id="maif", agent_prefix="team"), OAuthProviderConfig(
        client_id="maif", agent_prefix="team/"
    )
    with pytest.raises(ConfigError, match="agent_prefix"):
        TokenVerifier({oidc_issuer.url: a, issuer_b.url: b})
    with pytest.raises(ConfigError, match="tenant"):
        load_section(
            SecurityConfig,
            two_providers(oidc_issuer, issuer_b, agent_prefix=PREFIX_B, tenants=[TENANT_A]),
        )
    with pytest.raises(ConfigError, match="agent_prefix"):
        OAuthProviderConfig(client_id="maif", agent_prefix="maif:")


def test_a_single_provider_keeps_its_unprefixed_agents_and_any_tenant(
    oidc_issuer: Any, make_manager: Any
) -> None:
    built = make_manager(oidc_issuer)
    context = bootstrap(built, "agent-1", oidc_issuer.mint({"tenant": "anything"}))
    assert (context.agent_id, context.tenant) == ("agent-1", "anything")


def test_the_service_names_the_caller_by_issuer_and_subject(
    manager: SecurityManager, oidc_issuer: Any, issuer_b: SecondIssuer
) -> None:
    authenticator = Authenticator(manager)
    genuine = asyncio.run(authenticator.context_for(f"Bearer {oidc_issuer.mint({'tenant': TENANT_A})}"))
    impostor = asyncio.run(authenticator.context_for(f"Bearer {issuer_b.mint()}"))
    assert (genuine.agent_id, genuine.tenant) == ("agent-1", TENANT_A)
    assert (impostor.agent_id, impostor.tenant) == (PREFIX_B + "agent-1", PREFIX_B)
    with pytest.raises(TokenError, match="tenant"):
        asyncio.run(authenticator.context_for(f"Bearer {issuer_b.mint(tenant=TENANT_A)}"))


def test_tokens_without_a_tenant_from_two_issuers_share_no_tenant(
    manager: SecurityManager, oidc_issuer: Any, issuer_b: SecondIssuer
) -> None:
    """A public block A's agent wrote with no tenant claim is not readable by B's agents (ADR 0027)."""
    owner = bootstrap(manager, "agent-1", oidc_issuer.mint())
    assert owner.tenant == ""
    public_block = Resource("a-public-block", owner="agent-1", tenant=owner.tenant)
    manager.authorize(owner, Action.READ, public_block)
    other_agent_of_a = bootstrap(manager, "agent-2", oidc_issuer.mint({"sub": "agent-2"}))
    manager.authorize(other_agent_of_a, Action.READ, public_block)  # same issuer, same tenant: readable

    # B's agents, with no tenant claim or an empty one, land in B's own default tenant (its prefix).
    for claims in ({}, {"tenant": ""}):
        reader = bootstrap(manager, PREFIX_B + "reader", issuer_b.mint(sub="reader", **claims))
        assert reader.tenant == PREFIX_B
        with pytest.raises(AuthorizationError, match="another tenant"):
            manager.authorize(reader, Action.READ, public_block)
        shared = Resource("a-shared-block", owner="agent-1", tenant="", shared=True)
        with pytest.raises(AuthorizationError):
            manager.authorize(reader, Action.WRITE, shared)
    # And through the service's authenticator (what every HTTP request goes through).
    context = asyncio.run(Authenticator(manager).context_for(f"Bearer {issuer_b.mint(sub='reader')}"))
    assert context.tenant == PREFIX_B
    with pytest.raises(AuthorizationError, match="another tenant"):
        manager.authorize(context, Action.READ, public_block)


def test_default_tenants_belong_to_one_issuer(oidc_issuer: Any, issuer_b: SecondIssuer) -> None:
    # B may not default into A's tenant, nor into the unprefixed issuer's default tenant "".
    for b_settings in ({"default_tenant": TENANT_A}, {"default_tenant": ""}):
        with pytest.raises(ConfigError, match="tenant"):
            load_section(
                SecurityConfig, two_providers(oidc_issuer, issuer_b, agent_prefix=PREFIX_B, **b_settings)
            )
    config = load_section(
        SecurityConfig,
        two_providers(oidc_issuer, issuer_b, agent_prefix=PREFIX_B, default_tenant="tenant-b"),
    )
    verifier = TokenVerifier(config.oauth_providers, audience=AUDIENCE)
    assert verifier.verify(issuer_b.mint()).tenant == "tenant-b"
    assert verifier.verify(issuer_b.mint(tenant="tenant-b")).tenant == "tenant-b"
    with pytest.raises(TokenError, match="tenant"):
        verifier.verify(issuer_b.mint(tenant=PREFIX_B))


def test_over_http_another_issuers_agent_cannot_read_a_public_block_written_without_a_tenant(
    manager: SecurityManager, oidc_issuer: Any, issuer_b: SecondIssuer, tmp_path: Path
) -> None:
    """The same attack end to end: the service over a real store, real tokens of both issuers."""
    from maif.service.app import create_app
    from maif.storage import create_maif_storage

    async def attack() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path / "data")}) as storage:
            app = create_app(storage, manager, spool_dir=tmp_path / "spool")
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://maif.test", timeout=60
            ) as http:
                a_headers = {"Authorization": f"Bearer {oidc_issuer.mint()}"}
                a_other = {"Authorization": f"Bearer {oidc_issuer.mint({'sub': 'agent-2'})}"}
                written = await http.post(
                    "/v1/blocks",
                    json={"id": "a-public", "payload_base64": base64.b64encode(b"A's public note").decode()},
                    headers=a_headers,
                )
                assert written.status_code == 201, written.text
                assert (await http.get("/v1/blocks/a-public", headers=a_other)).status_code == 200
                for claims in ({}, {"tenant": ""}):
                    b_headers = {"Authorization": f"Bearer {issuer_b.mint(**claims)}"}
                    read = await http.get("/v1/blocks/a-public", headers=b_headers)
                    assert read.status_code == 403 and b"A's public note" not in read.content, read.text

    asyncio.run(attack())
