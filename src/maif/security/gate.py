"""The gate: a verified context plus an action on a resource becomes a :class:`Grant`, or a refusal.

The storage engine never decides; it demands a :class:`Grant` and checks that the grant covers what it is
about to do (:meth:`Grant.require`). Only :class:`Gate` can create grants (the constructor takes a
module-private capability), so holding one proves the policy allowed that action on that resource.

Every decision, allowed or denied, is appended to the audit log before the gate answers (durably: one
fdatasync, shared by concurrent callers through the log's group commit). Inside an
:func:`~maif.security.audit.audit_barrier` (the HTTP service, one per request) :meth:`Gate.authorize_async`
answers once the entry is written and the barrier holds the wait for its sync, which the service awaits
before it sends the response (ADR 0023). A caller deciding many resources
at once (a batch of writes) uses :meth:`Gate.authorize_many`: all or nothing, one audit entry. If the
audit log cannot record an allowed decision the request is refused (fail closed): an unrecorded access is
worse than an unavailable one.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import blake3

from maif import limits
from maif.errors import AuthorizationError, MAIFError
from maif.security.audit import current_audit_barrier
from maif.security.policy import AccessRequest, Action, Operation, Policy, Resource, classify
from maif.security.trust import ContextSealer, SecurityContext, TrustLevel

_GATE_CAPABILITY = object()


class AuditSink(Protocol):
    """Where decisions go: :class:`maif.security.audit.AuditLog` in production."""

    def append(self, event: Mapping[str, Any]) -> object: ...


class Grant:
    """Proof that the gate allowed ``action`` on ``resource`` for ``agent_id`` until ``expires_at``.

    Immutable, not picklable and not constructible outside the gate.
    """

    __slots__ = ("action", "agent_id", "expires_at", "granted_at", "operation", "resource", "trust_level")

    action: Action
    agent_id: str
    expires_at: float
    granted_at: float
    operation: Operation
    resource: Resource
    trust_level: TrustLevel

    def __init__(
        self,
        capability: object,
        *,
        agent_id: str,
        action: Action,
        resource: Resource,
        operation: Operation,
        trust_level: TrustLevel,
        granted_at: float,
        expires_at: float,
    ) -> None:
        if capability is not _GATE_CAPABILITY:
            raise AuthorizationError("grants are issued by the security gate only")
        for name, value in (
            ("agent_id", agent_id),
            ("action", action),
            ("resource", resource),
            ("operation", operation),
            ("trust_level", trust_level),
            ("granted_at", granted_at),
            ("expires_at", expires_at),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Grant is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Grant is immutable")

    def __reduce__(self) -> Any:
        raise TypeError("a Grant cannot be pickled or copied into another process")

    def __copy__(self) -> Grant:
        return self

    def __deepcopy__(self, memo: object) -> Grant:
        return self

    def require(self, action: Action, resource_id: str, *, now: float | None = None) -> None:
        """Raise :class:`AuthorizationError` unless this grant covers ``action`` on ``resource_id`` now."""
        when = time.time() if now is None else now
        if action is not self.action or resource_id != self.resource.resource_id:
            raise AuthorizationError(
                f"grant covers {self.action} on {self.resource.resource_id!r}, "
                f"not {action} on {resource_id!r}"
            )
        if when >= self.expires_at:
            raise AuthorizationError("grant has expired")

    def __repr__(self) -> str:
        return (
            f"Grant({self.agent_id!r} may {self.action} {self.resource.kind}:{self.resource.resource_id!r} "
            f"until {self.expires_at:.3f})"
        )


# Operations whose grant lets the caller change the store: their audit entries are durable before the grant.
_EFFECTS = frozenset({Operation.WRITE_OWN, Operation.WRITE_SHARED, Operation.ADMINISTER})

class Gate:
    """Decides requests with ``policy`` on contexts sealed by ``sealer``; records each decision."""

    def __init__(
        self,
        policy: Policy,
        sealer: ContextSealer,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        grant_lifetime_s: float = 300.0,
    ) -> None:
        self._policy = policy
        self._sealer = sealer
        self._audit = audit
        self._clock = clock
        self._grant_lifetime_s = grant_lifetime_s

    def evaluate(self, context: SecurityContext, action: Action, resource: Resource) -> Operation:
        """The policy decision alone (no grant, no audit record): the operation, or AuthorizationError."""
        checked = self._sealer.check(context)
        if not isinstance(action, Action) or not isinstance(resource, Resource):
            raise AuthorizationError("a request needs an Action and a Resource")
        operation = classify(action, resource, checked.agent_id)
        self._policy.check(AccessRequest(checked, action, resource, operation, self._clock()))
        assert operation is not None  # ByOperation denies None; a policy allowing it is a bug
        return operation

    def authorize(self, context: SecurityContext, action: Action, resource: Resource) -> Grant:
        """A :class:`Grant` for ``action`` on ``resource``, or :class:`AuthorizationError`. Audited."""
        now = self._clock()
        try:
            operation = self.evaluate(context, action, resource)
        except AuthorizationError as error:
            self._record(_decision_event(context, action, resource, "deny", error.message, now))
            raise
        self._record(_decision_event(context, action, resource, "allow", str(operation), now))
        return self._grant(context, action, resource, operation, now)

    async def authorize_async(self, context: SecurityContext, action: Action, resource: Resource) -> Grant:
        """:meth:`authorize` for an event loop: the decision and the audit frame are made on the calling
        thread (microseconds); only the wait for the audit record's durability is awaited (a future the
        log's flusher thread resolves), or left to the request's audit barrier when one is open."""
        now = self._clock()
        try:
            operation = self.evaluate(context, action, resource)
        except AuthorizationError as error:
            await self._record_async(_decision_event(context, action, resource, "deny", error.message, now))
            raise
        # A grant that lets the request change the store waits for its entry's sync before it is handed
        # out, so no effect can outlive a crash without its audit record (ADR 0023); reads and refusals
        # change nothing and leave the wait to the request's barrier.
        await self._record_async(_decision_event(context, action, resource, "allow", str(operation), now),
                                 durable_now=operation in _EFFECTS)
        return self._grant(context, action, resource, operation, now)

    def authorize_many(
        self, context: SecurityContext, action: Action, resources: Sequence[Resource]
    ) -> list[Grant]:
        """One :class:`Grant` per resource, all or none, recorded as ONE audit entry (one durable append
        for the whole batch). The entry names the count, the first resource and a BLAKE3 digest of every
        resource id in order, so a batch of any size is recorded exactly without an unbounded record."""
        now = self._clock()
        if not 0 < len(resources) <= limits.gate_batch_resources_max:
            raise AuthorizationError(f"a batch holds 1 to {limits.gate_batch_resources_max} resources")
        operations = []
        for resource in resources:
            try:
                operations.append(self.evaluate(context, action, resource))
            except AuthorizationError as error:
                self._record(_decision_event(context, action, resource, "deny", error.message, now))
                raise
        self._record(
            _decision_event(
                context,
                action,
                resources[0],
                "allow",
                f"{operations[0]} (batch)",
                now,
                batch=_batch_details(resources),
            )
        )
        return [
            self._grant(context, action, resource, operation, now)
            for resource, operation in zip(resources, operations, strict=True)
        ]

    def _grant(
        self, context: SecurityContext, action: Action, resource: Resource, operation: Operation, now: float
    ) -> Grant:
        return Grant(
            _GATE_CAPABILITY,
            agent_id=context.agent_id,
            action=action,
            resource=resource,
            operation=operation,
            trust_level=context.trust_level,
            granted_at=now,
            expires_at=min(context.expires_at, now + self._grant_lifetime_s),
        )

    def _record(self, event: dict[str, Any]) -> None:
        try:
            self._audit.append(event)
        except MAIFError as error:
            raise _unrecorded(error) from error

    async def _record_async(self, event: dict[str, Any], *, durable_now: bool = False) -> None:
        """Record on the loop's thread; wait for the entry's sync now (always with ``durable_now``), or,
        inside an :func:`~maif.security.audit.audit_barrier`, leave that wait to the barrier (awaited
        before the response is sent) so the sync overlaps the request's own work."""
        append_deferred = getattr(self._audit, "append_deferred", None)
        try:
            if append_deferred is None:
                await asyncio.to_thread(self._audit.append, event)
                return
            ticket = append_deferred(event)
            barrier = current_audit_barrier()
            if durable_now or barrier is None or ticket.checkpoint_error is not None:
                await ticket.wait_async()  # a signer refusal fails the decision itself, as before
            else:
                barrier.add(ticket)
        except MAIFError as error:
            raise _unrecorded(error) from error


def _decision_event(
    context: object,
    action: Action,
    resource: Resource,
    decision: str,
    reason: str,
    now: float,
    batch: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    valid = isinstance(resource, Resource)
    target = f"{resource.kind}:{resource.resource_id}" if valid else "<invalid resource>"
    event = audit_event(context, str(action), target, decision, reason, now)
    event["tenant"] = resource.tenant if valid else ""
    event.update(batch or {})
    return event


def _unrecorded(error: MAIFError) -> AuthorizationError:
    return AuthorizationError("the audit log could not record this decision; refusing", hint=error.message)


def _batch_details(resources: Sequence[Resource]) -> dict[str, Any]:
    hasher = blake3.blake3()
    for resource in resources:
        identity = f"{resource.kind}:{resource.resource_id}".encode("utf-8", "surrogatepass")
        hasher.update(struct.pack("<I", len(identity)) + identity)
    return {"batch_resources": len(resources), "batch_resources_blake3": hasher.hexdigest()}


def audit_event(
    context: object, action: str, resource: str, decision: str, reason: str, now: float
) -> dict[str, Any]:
    """The audit record of one decision: who, what, on what, the outcome and why. Never a secret."""
    is_context = isinstance(context, SecurityContext)
    return {
        "time": now,
        "actor": context.agent_id if is_context else "<unverified>",  # type: ignore[attr-defined]
        "action": action,
        "resource": resource,
        "decision": decision,
        "reason": reason,
        "trust_level": int(context.trust_level) if is_context else 0,  # type: ignore[attr-defined]
        "context_id": context.context_id if is_context else "",  # type: ignore[attr-defined]
    }


__all__ = ["AuditSink", "Gate", "Grant", "audit_event"]
