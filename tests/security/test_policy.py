"""Policy and gate: the full trust level x operation x ownership x scope matrix, composition, grants.

The expected answers are written out here from the seed's table, independently of maif.security.policy,
so a change to the policy that changes a decision fails a test.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from maif.config import SecurityConfig
from maif.errors import AuthorizationError, ConfigError, StorageError
from maif.security.gate import Gate, Grant
from maif.security.policy import (
    AccessRequest,
    Action,
    AllOf,
    AnyOf,
    DenyAll,
    MinimumTrust,
    Operation,
    RequireAnyScope,
    Resource,
    SameTenant,
    Sensitivity,
    default_policy,
    permissions_for,
)
from maif.security.trust import ContextSealer, SecurityContext, TrustLevel

NOW = 1_000_000.0
ALL_SCOPES = frozenset({"maif:read", "maif:write", "maif:full", "maif:admin"})


class RecordingAudit:
    """Test double for the audit log (the real one is exercised in test_manager.py)."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    def append(self, event: Mapping[str, Any]) -> None:
        if self.fail:
            raise StorageError("disk full")
        self.events.append(dict(event))


def context_for(
    sealer: ContextSealer,
    level: TrustLevel,
    scopes: frozenset[str] = ALL_SCOPES,
    *,
    agent: str = "agent-1",
    tenant: str = "",
    expires_at: float = NOW + 300,
    config: SecurityConfig | None = None,
) -> SecurityContext:
    return sealer.mint(
        agent_id=agent,
        trust_level=level,
        scopes=scopes,
        permissions=permissions_for(level, scopes, config),
        tenant=tenant,
        issued_at=NOW,
        expires_at=expires_at,
        evidence=("test",),
    )


@pytest.fixture
def sealer() -> ContextSealer:
    return ContextSealer()


@pytest.fixture
def audit() -> RecordingAudit:
    return RecordingAudit()


def gate_for(sealer: ContextSealer, audit: RecordingAudit, config: SecurityConfig | None = None) -> Gate:
    return Gate(default_policy(config), sealer, audit, clock=lambda: NOW)


# (action, sensitivity, ownership) -> minimum level, or None when no level allows it.
# ownership: "own" = caller owns it; "shared" = another agent's, shared; "foreign" = another's, not shared.
SEED_TABLE: dict[tuple[Action, Sensitivity, str], TrustLevel | None] = {
    (Action.READ, Sensitivity.PUBLIC, "own"): TrustLevel.OAUTH_VERIFIED,
    (Action.READ, Sensitivity.PUBLIC, "shared"): TrustLevel.OAUTH_VERIFIED,
    (Action.READ, Sensitivity.PUBLIC, "foreign"): TrustLevel.OAUTH_VERIFIED,
    (Action.READ, Sensitivity.SENSITIVE, "own"): TrustLevel.HARDWARE_ATTESTED,
    (Action.READ, Sensitivity.SENSITIVE, "shared"): TrustLevel.HARDWARE_ATTESTED,
    (Action.READ, Sensitivity.SENSITIVE, "foreign"): None,
    (Action.WRITE, Sensitivity.PUBLIC, "own"): TrustLevel.OAUTH_VERIFIED,
    (Action.WRITE, Sensitivity.SENSITIVE, "own"): TrustLevel.OAUTH_VERIFIED,
    (Action.WRITE, Sensitivity.PUBLIC, "shared"): TrustLevel.HARDWARE_ATTESTED,
    (Action.WRITE, Sensitivity.SENSITIVE, "shared"): TrustLevel.HARDWARE_ATTESTED,
    (Action.WRITE, Sensitivity.PUBLIC, "foreign"): None,
    (Action.WRITE, Sensitivity.SENSITIVE, "foreign"): None,
    (Action.ADMINISTER, Sensitivity.PUBLIC, "own"): TrustLevel.MULTI_PARTY_VERIFIED,
    (Action.ADMINISTER, Sensitivity.PUBLIC, "foreign"): TrustLevel.MULTI_PARTY_VERIFIED,
}
NEEDED_SCOPES = {
    Action.READ: {"maif:read", "maif:full"},
    Action.WRITE: {"maif:write", "maif:full"},
    Action.ADMINISTER: {"maif:admin"},
}
SCOPE_SETS = [
    frozenset(),
    frozenset({"maif:read"}),
    frozenset({"maif:write"}),
    frozenset({"maif:full"}),
    frozenset({"maif:admin"}),
    ALL_SCOPES,
]


def resource_for(sensitivity: Sensitivity, ownership: str, tenant: str = "") -> Resource:
    owner = "agent-1" if ownership == "own" else "agent-2"
    return Resource("r-1", owner=owner, tenant=tenant, sensitivity=sensitivity, shared=ownership == "shared")


@pytest.mark.parametrize(("action", "sensitivity", "ownership"), list(SEED_TABLE))
def test_trust_level_x_operation_x_ownership_x_scope_matrix(
    sealer: ContextSealer, audit: RecordingAudit, action: Action, sensitivity: Sensitivity, ownership: str
) -> None:
    gate = gate_for(sealer, audit)
    resource = resource_for(sensitivity, ownership)
    needed = SEED_TABLE[(action, sensitivity, ownership)]
    for level, scopes in itertools.product(TrustLevel, SCOPE_SETS):
        context = context_for(sealer, level, scopes)
        allowed = needed is not None and level >= needed and bool(NEEDED_SCOPES[action] & scopes)
        if allowed:
            grant = gate.authorize(context, action, resource)
            assert grant.action is action and grant.trust_level is level
        else:
            with pytest.raises(AuthorizationError):
                gate.authorize(context, action, resource)
    decisions = [event["decision"] for event in audit.events]
    assert len(decisions) == len(TrustLevel) * len(SCOPE_SETS)  # every decision recorded, allow and deny


@pytest.mark.parametrize(("write_floor", "sensitive_floor"), [(3, 3), (4, 4), (5, 5), (0, 0), (1, 2)])
def test_config_floors_raise_but_never_lower_the_table(
    sealer: ContextSealer, audit: RecordingAudit, write_floor: int, sensitive_floor: int
) -> None:
    config = SecurityConfig(min_trust_level_write=write_floor, min_trust_level_read_sensitive=sensitive_floor)
    gate = gate_for(sealer, audit, config)
    write_needed = max(2, write_floor)
    cases = [
        (Action.WRITE, resource_for(Sensitivity.PUBLIC, "own"), write_needed),
        (Action.WRITE, resource_for(Sensitivity.PUBLIC, "shared"), max(3, write_needed)),
        (Action.READ, resource_for(Sensitivity.SENSITIVE, "own"), max(3, sensitive_floor)),
        (Action.READ, resource_for(Sensitivity.PUBLIC, "foreign"), 2),
    ]
    for action, resource, needed in cases:
        for level in TrustLevel:
            context = context_for(sealer, level, config=config)
            if level >= needed:
                gate.authorize(context, action, resource)
            else:
                with pytest.raises(AuthorizationError, match="trust level"):
                    gate.authorize(context, action, resource)


def test_context_permissions_follow_level_scopes_and_floors() -> None:
    assert permissions_for(TrustLevel.BASIC_AUTH, ALL_SCOPES) == frozenset()
    assert permissions_for(TrustLevel.OAUTH_VERIFIED, frozenset({"maif:read"})) == {"read_public"}
    assert permissions_for(TrustLevel.OAUTH_VERIFIED, frozenset({"maif:full"})) == {
        "read_public",
        "write_own",
    }
    assert permissions_for(TrustLevel.HARDWARE_ATTESTED, ALL_SCOPES) == {
        "read_public",
        "write_own",
        "read_sensitive",
        "write_shared",
    }
    assert "administer" in permissions_for(TrustLevel.MULTI_PARTY_VERIFIED, ALL_SCOPES)
    assert "administer" not in permissions_for(TrustLevel.MULTI_PARTY_VERIFIED, frozenset({"maif:full"}))
    strict = SecurityConfig(min_trust_level_write=4)
    assert "write_own" not in permissions_for(TrustLevel.HARDWARE_ATTESTED, ALL_SCOPES, strict)


def test_seed_context_helpers(sealer: ContextSealer) -> None:
    level2 = context_for(sealer, TrustLevel.OAUTH_VERIFIED)
    level3 = context_for(sealer, TrustLevel.HARDWARE_ATTESTED)
    assert level2.can_write() and not level2.can_read_sensitive()
    assert level3.can_write() and level3.can_read_sensitive()
    assert not context_for(sealer, TrustLevel.BASIC_AUTH).can_write()
    assert level2.expiry == level2.expires_at == NOW + 300


def test_tenants_are_isolated_at_every_level(sealer: ContextSealer, audit: RecordingAudit) -> None:
    gate = gate_for(sealer, audit)
    for level in TrustLevel:
        context = context_for(sealer, level, tenant="tenant-a")
        for action in Action:
            with pytest.raises(AuthorizationError, match=r"tenant|trust"):
                gate.authorize(context, action, resource_for(Sensitivity.PUBLIC, "own", tenant="tenant-b"))
    top = context_for(sealer, TrustLevel.MULTI_PARTY_VERIFIED, tenant="tenant-a")
    with pytest.raises(AuthorizationError, match="tenant"):
        gate.authorize(top, Action.READ, resource_for(Sensitivity.PUBLIC, "own", tenant=""))
    gate.authorize(top, Action.READ, resource_for(Sensitivity.PUBLIC, "own", tenant="tenant-a"))


def test_expired_context_is_refused(sealer: ContextSealer, audit: RecordingAudit) -> None:
    gate = gate_for(sealer, audit)
    context = context_for(sealer, TrustLevel.MULTI_PARTY_VERIFIED, expires_at=NOW)
    with pytest.raises(AuthorizationError, match="expired"):
        gate.authorize(context, Action.READ, resource_for(Sensitivity.PUBLIC, "own"))


def test_forged_or_altered_contexts_are_refused(sealer: ContextSealer, audit: RecordingAudit) -> None:
    gate = gate_for(sealer, audit)
    resource = resource_for(Sensitivity.SENSITIVE, "own")
    weak = context_for(sealer, TrustLevel.OAUTH_VERIFIED)
    forgeries = [
        dataclasses.replace(weak, trust_level=TrustLevel.MULTI_PARTY_VERIFIED),
        dataclasses.replace(weak, agent_id="agent-2"),
        dataclasses.replace(weak, expires_at=NOW + 10**9),
        dataclasses.replace(weak, permissions=frozenset({"read_sensitive"})),
        dataclasses.replace(weak, seal=b""),
        context_for(ContextSealer(), TrustLevel.MULTI_PARTY_VERIFIED),  # another manager's sealer
        SecurityContext(
            "id", "agent-1", TrustLevel.MULTI_PARTY_VERIFIED, ALL_SCOPES, frozenset(), "", NOW, NOW + 300, ()
        ),
    ]
    for forged in forgeries:
        with pytest.raises(AuthorizationError, match=r"not issued by this manager|altered"):
            gate.authorize(forged, Action.READ, resource)
    with pytest.raises(AuthorizationError):
        gate.authorize("level 5 please", Action.READ, resource)  # type: ignore[arg-type]
    assert all(event["decision"] == "deny" for event in audit.events)


def test_grants_cannot_be_forged_altered_or_stretched(sealer: ContextSealer, audit: RecordingAudit) -> None:
    gate = gate_for(sealer, audit)
    resource = resource_for(Sensitivity.PUBLIC, "own")
    grant = gate.authorize(context_for(sealer, TrustLevel.OAUTH_VERIFIED), Action.WRITE, resource)
    grant.require(Action.WRITE, "r-1", now=NOW)
    with pytest.raises(AuthorizationError, match="gate"):
        Grant(
            object(),
            agent_id="x",
            action=Action.WRITE,
            resource=resource,
            operation=Operation.WRITE_OWN,
            trust_level=TrustLevel.MULTI_PARTY_VERIFIED,
            granted_at=NOW,
            expires_at=NOW + 1,
        )
    with pytest.raises(AttributeError):
        grant.action = Action.ADMINISTER  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(grant)
    assert copy.copy(grant) is grant
    with pytest.raises(AuthorizationError, match="covers"):
        grant.require(Action.READ, "r-1", now=NOW)
    with pytest.raises(AuthorizationError, match="covers"):
        grant.require(Action.WRITE, "r-2", now=NOW)
    with pytest.raises(AuthorizationError, match="expired"):
        grant.require(Action.WRITE, "r-1", now=NOW + 301)


def test_an_unrecordable_decision_is_refused(sealer: ContextSealer) -> None:
    gate = gate_for(sealer, RecordingAudit(fail=True))
    with pytest.raises(AuthorizationError, match="audit"):
        gate.authorize(
            context_for(sealer, TrustLevel.MULTI_PARTY_VERIFIED),
            Action.READ,
            resource_for(Sensitivity.PUBLIC, "own"),
        )


def test_audit_events_say_who_what_and_why_without_secrets(
    sealer: ContextSealer, audit: RecordingAudit
) -> None:
    gate = gate_for(sealer, audit)
    context = context_for(sealer, TrustLevel.OAUTH_VERIFIED)
    gate.authorize(context, Action.READ, resource_for(Sensitivity.PUBLIC, "own"))
    with pytest.raises(AuthorizationError):
        gate.authorize(context, Action.READ, resource_for(Sensitivity.SENSITIVE, "own"))
    allow, deny = audit.events
    assert (allow["actor"], allow["action"], allow["resource"], allow["decision"]) == (
        "agent-1",
        "read",
        "block:r-1",
        "allow",
    )
    assert deny["decision"] == "deny" and "HARDWARE_ATTESTED" in deny["reason"]
    assert all(context.seal.hex() not in repr(event) for event in audit.events)


def request(sealer: ContextSealer, level: TrustLevel, scopes: frozenset[str] = ALL_SCOPES) -> AccessRequest:
    return AccessRequest(
        context_for(sealer, level, scopes),
        Action.READ,
        resource_for(Sensitivity.PUBLIC, "own"),
        Operation.READ_PUBLIC,
        NOW,
    )


def test_policies_compose_and_deny_by_default(sealer: ContextSealer) -> None:
    hardware = MinimumTrust(TrustLevel.HARDWARE_ATTESTED)
    admin_scope = RequireAnyScope("maif:admin")
    either = AnyOf(hardware, admin_scope)
    both = AllOf(hardware, admin_scope, SameTenant())
    either.check(request(sealer, TrustLevel.OAUTH_VERIFIED, frozenset({"maif:admin"})))
    either.check(request(sealer, TrustLevel.HARDWARE_ATTESTED, frozenset()))
    with pytest.raises(AuthorizationError, match="no alternative") as refused:
        either.check(request(sealer, TrustLevel.OAUTH_VERIFIED, frozenset({"maif:read"})))
    assert "trust level" in refused.value.message and "scopes" in refused.value.message
    both.check(request(sealer, TrustLevel.HARDWARE_ATTESTED, frozenset({"maif:admin"})))
    with pytest.raises(AuthorizationError):
        both.check(request(sealer, TrustLevel.HARDWARE_ATTESTED, frozenset({"maif:read"})))
    with pytest.raises(AuthorizationError, match="denied by default"):
        AnyOf(DenyAll()).check(request(sealer, TrustLevel.MULTI_PARTY_VERIFIED))
    with pytest.raises(ConfigError, match="empty AllOf"):
        AllOf()


def test_malformed_requests_are_denied_and_recorded(sealer: ContextSealer, audit: RecordingAudit) -> None:
    gate = gate_for(sealer, audit)
    context = context_for(sealer, TrustLevel.MULTI_PARTY_VERIFIED)
    for action, resource in (
        ("write", resource_for(Sensitivity.PUBLIC, "own")),
        (Action.READ, "r-1"),
        (Action.READ, None),
    ):
        with pytest.raises(AuthorizationError, match="Action and a Resource"):
            gate.authorize(context, action, resource)  # type: ignore[arg-type]
    assert [event["decision"] for event in audit.events] == ["deny"] * 3


def test_a_faithful_copy_of_a_context_still_passes_the_seal(
    sealer: ContextSealer, audit: RecordingAudit
) -> None:
    gate = gate_for(sealer, audit)
    context = context_for(sealer, TrustLevel.OAUTH_VERIFIED)
    for copied in (copy.copy(context), copy.deepcopy(context), pickle.loads(pickle.dumps(context))):
        assert copied is not context
        gate.authorize(copied, Action.READ, resource_for(Sensitivity.PUBLIC, "own"))


def test_a_batch_is_all_or_nothing_and_one_audit_entry(sealer: ContextSealer, audit: RecordingAudit) -> None:
    gate = gate_for(sealer, audit)
    context = context_for(sealer, TrustLevel.OAUTH_VERIFIED)
    own = [Resource(f"b-{index}", owner="agent-1") for index in range(500)]
    grants = gate.authorize_many(context, Action.WRITE, own)
    assert [grant.resource.resource_id for grant in grants] == [f"b-{index}" for index in range(500)]
    (entry,) = audit.events
    assert entry["decision"] == "allow" and entry["batch_resources"] == 500
    assert len(entry["batch_resources_blake3"]) == 64
    reordered = gate_for(sealer, RecordingAudit())
    reordered.authorize_many(context, Action.WRITE, own[::-1])
    assert reordered._audit.events[0]["batch_resources_blake3"] != entry["batch_resources_blake3"]  # type: ignore[attr-defined]
    mixed = [*own[:10], Resource("theirs", owner="agent-2"), *own[10:20]]
    with pytest.raises(AuthorizationError, match="no policy allows"):
        gate.authorize_many(context, Action.WRITE, mixed)
    assert audit.events[-1]["decision"] == "deny" and audit.events[-1]["resource"] == "block:theirs"
    for empty_or_huge in ([], [own[0]] * 100_001):
        with pytest.raises(AuthorizationError, match="batch"):
            gate.authorize_many(context, Action.WRITE, empty_or_huge)


def test_the_async_gate_decides_and_records_exactly_like_the_sync_one(
    sealer: ContextSealer, audit: RecordingAudit
) -> None:
    import asyncio

    gate = gate_for(sealer, audit)
    context = context_for(sealer, TrustLevel.OAUTH_VERIFIED)
    allowed, refused = resource_for(Sensitivity.PUBLIC, "own"), resource_for(Sensitivity.SENSITIVE, "own")

    async def scenario() -> None:
        grant = await gate.authorize_async(context, Action.READ, allowed)
        grant.require(Action.READ, allowed.resource_id, now=NOW)
        with pytest.raises(AuthorizationError):
            await gate.authorize_async(context, Action.READ, refused)

    asyncio.run(scenario())
    gate.authorize(context, Action.READ, allowed)
    with pytest.raises(AuthorizationError):
        gate.authorize(context, Action.READ, refused)
    assert audit.events[:2] == audit.events[2:]  # same records, sync or async (fixed clock)
    failing = gate_for(sealer, RecordingAudit(fail=True))
    with pytest.raises(AuthorizationError, match="could not record"):
        asyncio.run(failing.authorize_async(context, Action.READ, allowed))  # no record, no grant
