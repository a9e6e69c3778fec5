"""Trust levels 3, 4 and 5 reached over the service's own routes, with real software TPMs.

The security manager is built from the configuration a ``maif.toml`` would hold (trusted_tpm_roots,
golden_pcrs, approvers, approvals_required), the app runs in this process over a real store (httpx's
ASGI transport), the tokens come from the real OIDC issuer, and every EK, AK, quote and activated
credential comes from a running swtpm. The agent walks: token (2) -> enrol its TPM -> quote (3) -> read
back its sensitive block -> register its key -> quote bound to the key + key proof (4) -> approvals (5).
Each attack is refused with the status the API documents and leaves no higher context behind.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from server_process import start_server
from tpm_agent import approvals_json, attestation_json, b64, enrollment_json, started_tpm, tpm_fixtures

from maif.security.attestation import MeasuredEvent, replay_event_log
from maif.security.keys import key_id_of, raw_public_key
from maif.security.manager import SecurityManager, create_maif_security_manager
from maif.security.trust import possession_statement, registration_statement
from maif.service.app import create_app
from maif.storage import create_maif_storage

AGENT = "agent-1"
OTHER = "agent-2"
SECRET_PAYLOAD = b"only agent-1, attested, may read this"


@pytest.fixture(scope="module")
def tpm_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """agent-1's platform: PCR 7 holds the measured boot the golden policy allows."""
    tpm = started_tpm(tmp_path_factory.mktemp("trust-swtpm-a"))
    try:
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture(scope="module")
def tpm_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """agent-2's platform: a genuine TPM that booted something else (PCR 7 not in the golden set)."""
    tpm = started_tpm(tmp_path_factory.mktemp("trust-swtpm-b"), measured_boot=False)
    try:
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture(scope="module")
def approver_keys() -> dict[str, Ed25519PrivateKey]:
    return {f"approver-{index}": Ed25519PrivateKey.generate() for index in range(3)}


def security_config(
    issuer: Any, tpms: list[Any], approvers: dict[str, Ed25519PrivateKey]
) -> dict[str, Any]:
    """The security section as it would be written in maif.toml."""
    golden = replay_event_log(
        [MeasuredEvent(7, tpm_fixtures.BOOT_MEASUREMENT)],
        selection={"sha256": tpm_fixtures.QUOTED_INDICES},
    )
    other_firmware = replay_event_log([MeasuredEvent(7, b"another approved firmware")])["sha256"][7]
    policy: dict[str, dict[str, list[str]]] = {
        "sha256": {str(index): [value.hex()] for index, value in golden["sha256"].items()}
    }
    policy["sha256"]["7"].append(other_firmware.hex())  # two allowed values: both firmware versions
    return {
        **issuer.config(),
        "trusted_tpm_roots": [str(tpm.workdir / "ca" / "swtpm-localca-rootca-cert.pem") for tpm in tpms],
        "golden_pcrs": policy,
        "approvers": {name: raw_public_key(key.public_key()).hex() for name, key in approvers.items()},
        "approvals_required": 2,
    }


def refused_evidence(answer: httpx.Response) -> bool:
    """The bootstrap of a caller whose token verified but whose evidence (quote, key proof, approvals)
    was refused: 403 with the attestation-refused problem type, not 401 (ADR 0080)."""
    return (
        answer.status_code == 403
        and answer.json()["type"] == "urn:maif:problem:attestation-refused"
        and "WWW-Authenticate" not in answer.headers
    )


class Agent:
    """One agent's HTTP client: its bearer token, and the session of its highest context so far."""

    def __init__(self, http: httpx.AsyncClient, token: str, agent_id: str) -> None:
        self.http = http
        self.agent_id = agent_id
        self.token_headers = {"Authorization": f"Bearer {token}"}
        self.headers = dict(self.token_headers)

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.headers)

    async def write_sensitive(self, block_id: str) -> None:
        """Write SECRET_PAYLOAD as a sensitive block of this agent (OAUTH_VERIFIED suffices to write)."""
        payload = b64(SECRET_PAYLOAD)
        body = {"id": block_id, "payload_base64": payload, "metadata": {"sensitivity": "sensitive"}}
        written = await self.post("/v1/blocks", body)
        assert written.status_code == 201, written.text

    async def challenge(self) -> bytes:
        answer = await self.post("/v1/trust/challenge")
        assert answer.status_code == 200, answer.text
        return base64.b64decode(answer.json()["nonce_base64"])

    async def enrol(self, tpm: Any, ak: Any) -> httpx.Response:
        made = await self.post("/v1/trust/enrollment", enrollment_json(tpm, ak))
        assert made.status_code == 200, made.text
        secret = tpm.activate(ak, base64.b64decode(made.json()["tpm2_tools_credential_base64"]))
        return await self.post("/v1/trust/enrollment/activation", {"activated_secret_base64": b64(secret)})

    async def bootstrap(self, evidence: dict[str, Any]) -> httpx.Response:
        answer = await self.post("/v1/trust/bootstrap", evidence)
        if answer.status_code == 200:
            self.headers = {**self.token_headers, "MAIF-Session": answer.json()["session_id"]}
        return answer


def key_proof(agent_id: str, key: Ed25519PrivateKey, nonce: bytes) -> dict[str, Any]:
    public = raw_public_key(key.public_key())
    return {
        "key_id_hex": key_id_of(public).hex(),
        "signature_base64": b64(key.sign(possession_statement(agent_id, nonce))),
    }


def registration(
    key: Ed25519PrivateKey, *, agent_id: str | None = None, signer: Ed25519PrivateKey | None = None
) -> dict[str, Any]:
    """The body of POST /v1/trust/keys: ``key``'s public half signed by ``signer`` (default: itself)."""
    public = raw_public_key(key.public_key())
    signature = (signer or key).sign(registration_statement(agent_id or AGENT, public))
    body = {"public_key_hex": public.hex(), "signature_base64": b64(signature)}
    return body if agent_id is None else {**body, "agent_id": agent_id}


def test_an_agent_climbs_from_level_2_to_5_and_every_attack_is_refused(
    tmp_path: Path,
    oidc_issuer: Any,
    tpm_a: Any,
    tpm_b: Any,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    manager = create_maif_security_manager(
        security_config(oidc_issuer, [tpm_a, tpm_b], approver_keys),
        data_dir=tmp_path / "security",
        master_key=secrets.token_bytes(32),
    )
    try:
        asyncio.run(_served(tmp_path, manager, oidc_issuer, tpm_a, tpm_b, approver_keys))
    finally:
        manager.close()


async def _served(
    tmp_path: Path,
    manager: SecurityManager,
    oidc_issuer: Any,
    tpm_a: Any,
    tpm_b: Any,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    async with await create_maif_storage({"data_dir": str(tmp_path / "data")}) as storage:
        app = create_app(storage, manager, spool_dir=tmp_path / "spool")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://maif.test", timeout=60) as http:
            await _walk((http, manager), oidc_issuer, tpm_a, tpm_b, approver_keys)


async def _walk(
    service: Any, oidc_issuer: Any, tpm_a: Any, tpm_b: Any, approver_keys: dict[str, Ed25519PrivateKey]
) -> None:
    http, manager = service
    agent = Agent(http, oidc_issuer.token(AGENT, "maif:read maif:write"), AGENT)
    stranger = Agent(http, oidc_issuer.token(OTHER, "maif:read maif:write"), OTHER)
    ak_a, ak_b = tpm_a.create_ak("ecc"), tpm_b.create_ak("rsa")
    await agent.write_sensitive("secret-1")
    # Level 2 (the token alone): the owner may write its sensitive block but not read it back.
    assert (await http.get("/v1/blocks/secret-1", headers=agent.headers)).status_code == 403

    # Enrolling someone else's identity is refused by the gate, before any TPM work.
    foreign = await stranger.post("/v1/trust/enrollment", enrollment_json(tpm_b, ak_b, agent_id=AGENT))
    assert foreign.status_code == 403, foreign.text
    activation = await stranger.post(
        "/v1/trust/enrollment/activation", {"agent_id": AGENT, "activated_secret_base64": b64(bytes(32))}
    )
    assert activation.status_code == 403

    # The caller's own enrolment with evidence that does not hold: an AK under a TPM the server does
    # not trust is not looked at, a wrong activated secret ends the enrolment. The caller is known, the
    # evidence refused: 403 attestation-refused, like a refused bootstrap (ADR 0080).
    made = await agent.post("/v1/trust/enrollment", enrollment_json(tpm_a, ak_a))
    assert made.status_code == 200, made.text
    wrong_secret = await agent.post(
        "/v1/trust/enrollment/activation", {"activated_secret_base64": b64(bytes(32))}
    )
    assert refused_evidence(wrong_secret) and "activated credential is wrong" in wrong_secret.json()["detail"]
    enrolled = await agent.enrol(tpm_a, ak_a)
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["agent_id"] == AGENT
    stranger_enrolled = await stranger.enrol(tpm_b, ak_b)
    assert stranger_enrolled.status_code == 200, stranger_enrolled.text

    # Level 3: a quote from the agent's own TPM over a fresh challenge.
    nonce = await agent.challenge()
    evidence = {"attestation": attestation_json(tpm_a, ak_a, nonce)}
    level_3 = await agent.bootstrap(evidence)
    assert level_3.status_code == 200, level_3.text
    assert level_3.json()["trust_level_name"] == "HARDWARE_ATTESTED"
    read = await http.get("/v1/blocks/secret-1", headers=agent.headers)
    assert read.status_code == 200, read.text
    assert read.content == SECRET_PAYLOAD
    # ... and the same quote again is a replayed nonce.
    replayed = await agent.post("/v1/trust/bootstrap", evidence)
    assert refused_evidence(replayed) and "nonce" in replayed.json()["detail"]

    # Level 4: register the agent's own key (from the level-3 session), then prove it bound to the TPM.
    key = Ed25519PrivateKey.generate()
    public = raw_public_key(key.public_key())
    registered = await agent.post("/v1/trust/keys", registration(key))
    assert registered.status_code == 201, registered.text
    nonce = await agent.challenge()
    level_4 = await agent.bootstrap(
        {
            "attestation": attestation_json(tpm_a, ak_a, nonce, public),
            "key_proof": key_proof(AGENT, key, nonce),
        }
    )
    assert level_4.status_code == 200, level_4.text
    assert level_4.json()["trust_level_name"] == "CRYPTOGRAPHICALLY_PROVEN"

    # Level 5: two of the three registered approvers approve this bootstrap's nonce.
    nonce = await agent.challenge()
    two = dict(list(approver_keys.items())[:2])
    level_5 = await agent.bootstrap(
        {
            "attestation": attestation_json(tpm_a, ak_a, nonce, public),
            "key_proof": key_proof(AGENT, key, nonce),
            "approvals": approvals_json(AGENT, nonce, two),
        }
    )
    assert level_5.status_code == 200, level_5.text
    assert level_5.json()["trust_level_name"] == "MULTI_PARTY_VERIFIED"
    assert (await http.get("/v1/blocks/secret-1", headers=agent.headers)).content == SECRET_PAYLOAD

    await _attacks(http, manager, agent, stranger, tpm_a, ak_a, tpm_b, ak_b, key, approver_keys)


async def _attacks(
    http: httpx.AsyncClient,
    manager: SecurityManager,
    agent: Agent,
    stranger: Agent,
    tpm_a: Any,
    ak_a: Any,
    tpm_b: Any,
    ak_b: Any,
    key: Ed25519PrivateKey,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    public = raw_public_key(key.public_key())
    fresh = Agent(http, agent.token_headers["Authorization"].removeprefix("Bearer "), AGENT)

    # A quote from a different TPM (a genuine one, enrolled for another agent) over agent-1's nonce.
    nonce = await fresh.challenge()
    other_tpm = await fresh.bootstrap({"attestation": attestation_json(tpm_b, ak_b, nonce)})
    assert refused_evidence(other_tpm) and "attestation key other than" in other_tpm.json()["detail"]

    # A genuine, enrolled TPM whose PCR 7 is not one of the golden values.
    nonce = await stranger.challenge()
    not_golden = await stranger.bootstrap({"attestation": attestation_json(tpm_b, ak_b, nonce)})
    assert refused_evidence(not_golden) and "PCR sha256:7" in not_golden.json()["detail"]

    # A key proof by a foreign key: the quote binds and the proof signs with a key never registered.
    foreign_key = Ed25519PrivateKey.generate()
    nonce = await fresh.challenge()
    foreign_proof = await fresh.bootstrap(
        {
            "attestation": attestation_json(tpm_a, ak_a, nonce, raw_public_key(foreign_key.public_key())),
            "key_proof": key_proof(AGENT, foreign_key, nonce),
        }
    )
    assert refused_evidence(foreign_proof) and "not a registered key" in foreign_proof.json()["detail"]
    # ... or the registered key's id with a foreign key's signature.
    nonce = await fresh.challenge()
    forged = key_proof(AGENT, key, nonce)
    forged["signature_base64"] = b64(foreign_key.sign(possession_statement(AGENT, nonce)))
    forged_proof = await fresh.bootstrap(
        {"attestation": attestation_json(tpm_a, ak_a, nonce, public), "key_proof": forged}
    )
    assert refused_evidence(forged_proof) and "proof of key possession" in forged_proof.json()["detail"]

    # Approvals: a non-approver, an approver's id with a stranger's key, and one valid approval of two.
    mallory = Ed25519PrivateKey.generate()
    first_name, first_key = next(iter(approver_keys.items()))
    for signers in (
        {"mallory": mallory, first_name: first_key},
        {"approver-1": mallory, first_name: first_key},
        {first_name: first_key},
    ):
        nonce = await fresh.challenge()
        below_k = await fresh.bootstrap(
            {
                "attestation": attestation_json(tpm_a, ak_a, nonce, public),
                "key_proof": key_proof(AGENT, key, nonce),
                "approvals": approvals_json(AGENT, nonce, signers),
            }
        )
        assert refused_evidence(below_k) and "1 valid approvals" in below_k.json()["detail"], below_k.text
    assert fresh.headers == fresh.token_headers  # no refused bootstrap opened a session
    # The same evidence with a token that does not verify: who is asking is unknown, so 401 (not 403).
    nonce = await fresh.challenge()
    forged_token = fresh.token_headers["Authorization"][:-4] + "AAAA"
    unauthenticated = await http.post(
        "/v1/trust/bootstrap",
        json={"attestation": attestation_json(tpm_a, ak_a, nonce)},
        headers={"Authorization": forged_token},
    )
    assert unauthenticated.status_code == 401 and "WWW-Authenticate" in unauthenticated.headers

    # Registering a key needs HARDWARE_ATTESTED and a signature by that key.
    new_key = Ed25519PrivateKey.generate()
    level_2 = await fresh.post("/v1/trust/keys", registration(new_key))
    assert level_2.status_code == 403 and "HARDWARE_ATTESTED" in level_2.json()["detail"]
    unsigned = await agent.post("/v1/trust/keys", registration(new_key, signer=mallory))
    assert refused_evidence(unsigned) and "not signed by the key" in unsigned.json()["detail"]
    someone_elses = await agent.post("/v1/trust/keys", registration(new_key, agent_id=OTHER))
    assert someone_elses.status_code == 403
    assert [info.key_id for info in manager.keystore.keys(AGENT)] == [key_id_of(public)]

    # A level-2 caller reading the sensitive block, and another agent reading it: refused.
    assert (await http.get("/v1/blocks/secret-1", headers=fresh.headers)).status_code == 403
    assert (await http.get("/v1/blocks/secret-1", headers=stranger.headers)).status_code == 403
    denied = {(entry.actor, entry.action, entry.resource) for entry in manager.get_audit_log()
              if entry.decision == "deny"}
    assert (OTHER, "write", f"tpm-enrollment:agent:{AGENT}") in denied  # the gate, before any TPM work
    assert (AGENT, "agent-key", f"agent:{AGENT}") in denied  # the level-2 and the unsigned registration
    assert (AGENT, "bootstrap_trust", f"agent:{AGENT}") in denied


class _TrustConfiguredIssuer:
    """What start_server asks of an issuer: the security section to write (here with attestation)."""

    def __init__(self, security: dict[str, Any]) -> None:
        self._security = security

    def config(self) -> dict[str, Any]:
        return self._security


def test_maif_serve_reaches_hardware_attested_from_its_config_file(
    tmp_path: Path, oidc_issuer: Any, tpm_a: Any, tpm_b: Any, approver_keys: dict[str, Ed25519PrivateKey]
) -> None:
    """The same configuration in a real `maif serve` process (its JSON config file): enrol, quote, read
    back the sensitive block over a socket."""
    security = security_config(oidc_issuer, [tpm_a, tpm_b], approver_keys)
    server = start_server(tmp_path / "served", _TrustConfiguredIssuer(security))
    try:
        asyncio.run(_attested_read(server.url, oidc_issuer, tpm_a))
    finally:
        assert server.stop() == 0


async def _attested_read(url: str, oidc_issuer: Any, tpm: Any) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        agent = Agent(http, oidc_issuer.token(AGENT, "maif:read maif:write"), AGENT)
        await agent.write_sensitive("served-secret")
        assert (await http.get("/v1/blocks/served-secret", headers=agent.headers)).status_code == 403
        ak = tpm.create_ak("rsa")
        assert (await agent.enrol(tpm, ak)).status_code == 200
        nonce = await agent.challenge()
        attested = await agent.bootstrap({"attestation": attestation_json(tpm, ak, nonce)})
        assert attested.json()["trust_level_name"] == "HARDWARE_ATTESTED", attested.text
        read = await http.get("/v1/blocks/served-secret", headers=agent.headers)
        assert read.status_code == 200 and read.content == SECRET_PAYLOAD


def test_without_trusted_tpm_roots_the_trust_routes_say_so(server: Any, tokens: dict[str, str]) -> None:
    """The session server configures no attestation: a caller the gate admits learns that (404)."""
    headers = {"Authorization": f"Bearer {tokens['agent-1']}"}
    body = {"ek_public_base64": "", "ek_certificate_base64": "", "ak_public_base64": ""}
    for path, json_body in (
        ("/v1/trust/challenge", None),
        ("/v1/trust/enrollment", body),
        ("/v1/trust/enrollment/activation", {"activated_secret_base64": "AA=="}),
    ):
        answer = httpx.post(f"{server.url}{path}", json=json_body, headers=headers, timeout=30)
        assert answer.status_code == 404, answer.text
        assert answer.json()["type"].endswith("attestation-not-configured")
