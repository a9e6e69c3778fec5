"""Authorisation policy: small composable objects that raise :class:`AuthorizationError` on failure.

A request is a verified :class:`~maif.security.trust.SecurityContext`, an :class:`Action` and a
:class:`Resource`. It is first classified into an :class:`Operation` (the seed's table), then checked by
the policy. Anything not explicitly allowed is denied: an unclassifiable request (writing another
agent's unshared resource) has no policy and is refused.

The default table (the config floors ``min_trust_level_write`` and ``min_trust_level_read_sensitive``
can only raise these levels, never lower them):

    operation        trust level           scope (any of)          resource rule
    read_public      OAUTH_VERIFIED (2)    maif:read, maif:full    same tenant
    write_own        OAUTH_VERIFIED (2)    maif:write, maif:full   same tenant, owner is the caller
    read_sensitive   HARDWARE_ATTESTED (3) maif:read, maif:full    same tenant, owner or shared
    write_shared     HARDWARE_ATTESTED (3) maif:write, maif:full   same tenant, resource is shared
    administer       MULTI_PARTY (5)       maif:admin              same tenant

Policies compose like sigstore's ``VerificationPolicy``: :class:`AllOf` needs every member to pass,
:class:`AnyOf` needs one. A decision on a cached context is a handful of attribute reads and comparisons
(microseconds; benchmarks/security_bench.py measures it).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from maif.config import SecurityConfig
from maif.errors import AuthorizationError, ConfigError
from maif.security.trust import SecurityContext, TrustLevel


class Action(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMINISTER = "administer"


class Sensitivity(enum.StrEnum):
    PUBLIC = "public"
    SENSITIVE = "sensitive"


class Operation(enum.StrEnum):
    """The seed's operations; values equal the permission names in :mod:`maif.security.trust`."""

    READ_PUBLIC = "read_public"
    READ_SENSITIVE = "read_sensitive"
    WRITE_OWN = "write_own"
    WRITE_SHARED = "write_shared"
    ADMINISTER = "administer"


@dataclass(frozen=True, slots=True)
class Resource:
    """What a request touches. ``owner`` is the agent id that owns it; ``shared`` lets other agents of the
    same tenant write it (at a higher trust level) and read it when sensitive."""

    resource_id: str
    owner: str
    tenant: str = ""
    sensitivity: Sensitivity = Sensitivity.PUBLIC
    shared: bool = False
    kind: str = "block"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    context: SecurityContext
    action: Action
    resource: Resource
    operation: Operation | None
    now: float


def classify(action: Action, resource: Resource, agent_id: str) -> Operation | None:
    """The seed operation a request amounts to; ``None`` for one no policy may allow."""
    if action is Action.READ:
        return (
            Operation.READ_SENSITIVE
            if resource.sensitivity is Sensitivity.SENSITIVE
            else Operation.READ_PUBLIC
        )
    if action is Action.WRITE:
        if resource.owner == agent_id:
            return Operation.WRITE_OWN
        return Operation.WRITE_SHARED if resource.shared else None
    if action is Action.ADMINISTER:
        return Operation.ADMINISTER
    return None


class Policy(ABC):
    """One rule. :meth:`check` returns on success and raises :class:`AuthorizationError` on failure."""

    @abstractmethod
    def check(self, request: AccessRequest) -> None: ...


class AllOf(Policy):
    """Every member must pass; the first failure is the reason."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("AllOf needs at least one policy (an empty AllOf would allow everything)")
        self._policies = policies

    def check(self, request: AccessRequest) -> None:
        for policy in self._policies:
            policy.check(request)


class AnyOf(Policy):
    """At least one member must pass; when none does, every member's reason is reported."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ConfigError("AnyOf needs at least one policy")
        self._policies = policies

    def check(self, request: AccessRequest) -> None:
        reasons = []
        for policy in self._policies:
            try:
                policy.check(request)
            except AuthorizationError as error:
                reasons.append(error.message)
            else:
                return
        raise AuthorizationError("no alternative allowed the request: " + "; ".join(reasons))


class DenyAll(Policy):
    def __init__(self, reason: str = "denied by default") -> None:
        self._reason = reason

    def check(self, request: AccessRequest) -> None:
        raise AuthorizationError(self._reason)


class MinimumTrust(Policy):
    def __init__(self, level: TrustLevel) -> None:
        self.level = level

    def check(self, request: AccessRequest) -> None:
        if request.context.trust_level < self.level:
            raise AuthorizationError(
                f"{request.operation or request.action} needs trust level {self.level.name} "
                f"({int(self.level)}), caller has {request.context.trust_level.name}"
            )


class RequireAnyScope(Policy):
    def __init__(self, *scopes: str) -> None:
        self.scopes = frozenset(scopes)

    def check(self, request: AccessRequest) -> None:
        if self.scopes.isdisjoint(request.context.scopes):
            raise AuthorizationError(f"{request.action} needs one of the scopes {sorted(self.scopes)}")


class NotExpired(Policy):
    def check(self, request: AccessRequest) -> None:
        if request.context.is_expired(request.now):
            raise AuthorizationError("security context has expired; bootstrap trust again")


class SameTenant(Policy):
    def check(self, request: AccessRequest) -> None:
        if request.resource.tenant != request.context.tenant:
            raise AuthorizationError("resource belongs to another tenant")


class OwnerOrShared(Policy):
    def check(self, request: AccessRequest) -> None:
        resource = request.resource
        if resource.owner != request.context.agent_id and not resource.shared:
            raise AuthorizationError("resource is owned by another agent and not shared")


class ByOperation(Policy):
    """Dispatch on the request's operation; operations without an entry (and ``None``) are denied."""

    def __init__(self, policies: Mapping[Operation, Policy]) -> None:
        self._policies = dict(policies)

    def check(self, request: AccessRequest) -> None:
        policy = self._policies.get(request.operation) if request.operation is not None else None
        if policy is None:
            raise AuthorizationError(f"no policy allows {request.action} on this resource")
        policy.check(request)


READ_SCOPES = ("maif:read", "maif:full")
WRITE_SCOPES = ("maif:write", "maif:full")
ADMIN_SCOPES = ("maif:admin",)


def operation_levels(config: SecurityConfig | None = None) -> dict[Operation, TrustLevel]:
    """The trust level each operation needs: the seed's table, raised (never lowered) by config floors."""
    config = config or SecurityConfig()
    write_floor = max(TrustLevel.OAUTH_VERIFIED, TrustLevel(config.min_trust_level_write))
    sensitive_floor = max(TrustLevel.HARDWARE_ATTESTED, TrustLevel(config.min_trust_level_read_sensitive))
    return {
        Operation.READ_PUBLIC: TrustLevel.OAUTH_VERIFIED,
        Operation.WRITE_OWN: write_floor,
        Operation.READ_SENSITIVE: sensitive_floor,
        Operation.WRITE_SHARED: max(TrustLevel.HARDWARE_ATTESTED, write_floor),
        Operation.ADMINISTER: TrustLevel.MULTI_PARTY_VERIFIED,
    }


_OPERATION_SCOPES: dict[Operation, tuple[str, ...]] = {
    Operation.READ_PUBLIC: READ_SCOPES,
    Operation.WRITE_OWN: WRITE_SCOPES,
    Operation.READ_SENSITIVE: READ_SCOPES,
    Operation.WRITE_SHARED: WRITE_SCOPES,
    Operation.ADMINISTER: ADMIN_SCOPES,
}


def default_policy(config: SecurityConfig | None = None) -> Policy:
    """The seed's table as a policy object (see the module docstring)."""
    levels = operation_levels(config)
    per_operation: dict[Operation, Policy] = {}
    for operation, level in levels.items():
        rules: list[Policy] = [MinimumTrust(level), RequireAnyScope(*_OPERATION_SCOPES[operation])]
        if operation is Operation.READ_SENSITIVE:
            rules.append(OwnerOrShared())
        per_operation[operation] = AllOf(*rules)
    return AllOf(NotExpired(), SameTenant(), ByOperation(per_operation))


def permissions_for(
    trust_level: TrustLevel, scopes: frozenset[str], config: SecurityConfig | None = None
) -> frozenset[str]:
    """Operation names a context with this level and these scopes passes the trust and scope rules for."""
    return frozenset(
        operation.value
        for operation, level in operation_levels(config).items()
        if trust_level >= level and not scopes.isdisjoint(_OPERATION_SCOPES[operation])
    )


__all__ = [
    "ADMIN_SCOPES",
    "READ_SCOPES",
    "WRITE_SCOPES",
    "AccessRequest",
    "Action",
    "AllOf",
    "AnyOf",
    "ByOperation",
    "DenyAll",
    "MinimumTrust",
    "NotExpired",
    "Operation",
    "OwnerOrShared",
    "Policy",
    "RequireAnyScope",
    "Resource",
    "SameTenant",
    "Sensitivity",
    "classify",
    "default_policy",
    "operation_levels",
    "permissions_for",
]
