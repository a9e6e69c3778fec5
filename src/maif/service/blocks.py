"""Writing and reading blocks for the HTTP service: authorisation against the block, streamed parts.

A raw upload no larger than ``service_part_bytes_max`` is stored as one block. A larger one is received
into the upload spool first (:mod:`maif.service.spool`: anonymous disk files, bounded), its length and
Content-Digest checked, and only then stored as parts of exactly that size (block type ``PART``, ids
``<id>~p000000``...) and a manifest block under the requested id whose payload lists the parts
(MessagePack) and whose metadata records ``maif:streamed`` {length, sha256, parts}. Memory stays flat for
a transfer of any size, and an abandoned or refused upload stores nothing (docs/adr/0060, 0061).

Ids: the service refuses block, agent and parent ids, task ids and a task's input block ids holding a
control character (Unicode category Cc: C0, DEL, C1) or a lone surrogate with a 400 problem before
anything is authorised, stored or queued (:func:`check_id`, the one check for all of them); the storage
layer refuses an empty block id and an oversized id the same way (:mod:`maif.validation`). Every other
id is stored as given and, wherever the service echoes it in a header (``Location``, ``X-MAIF-Agent-Id``),
percent-encoded as UTF-8 (:func:`header_text`, :func:`location_of`): a header can carry only Latin-1, and
a CR or LF in one would end it.

Resources: a block's owner is its ``agent_id``, its tenant the ``maif:tenant`` the service recorded at
write time, its sensitivity and sharing the ``sensitivity`` ("public"|"sensitive") and ``shared`` (bool)
metadata keys. Metadata keys starting with ``maif:`` are the service's own and refused from callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import time
import unicodedata
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from opentelemetry import trace

from maif import limits
from maif.errors import BlockNotFoundError, FormatError, IntegrityError, LimitExceededError
from maif.format.block import MAIFBlock, MAIFBlockType, new_block_id, normalize_block_type
from maif.format.codec import block_digest
from maif.security.manager import SecurityManager
from maif.security.policy import Action, Resource, Sensitivity
from maif.security.trust import SecurityContext
from maif.service.metrics import ServiceMetrics
from maif.service.problems import ServiceProblem
from maif.service.spool import Spool
from maif.service.tracing import decision_span
from maif.storage.engine import MAIFStorage
from maif.storage.receipts import DeleteReceipt

PART_TYPE = "PART"
DEFAULT_EMBEDDING_DIMENSIONS = 384  # what the agent runtime's default embedder produces
STREAMED_KEY = "maif:streamed"
TENANT_KEY = "maif:tenant"
RESERVED_PREFIX = "maif:"
_PART_SUFFIX_BYTES = 10  # "~p" + 6 digits + margin
_HEADER_SAFE = "".join(sorted(set(string.punctuation) - {"%"}))  # visible ASCII, '%' escaped
_PATH_SEGMENT_SAFE = "!$&'()*+,;=:@"  # RFC 3986 pchar beyond the unreserved characters
_parts_encoder = msgspec.msgpack.Encoder()
_parts_decoder = msgspec.msgpack.Decoder(list[tuple[str, int]])


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """What a caller asks to write, before the payload: everything authorisation needs."""

    block_id: str
    block_type: str
    owner: str
    metadata: dict[str, Any]
    version: str
    parents: tuple[str, ...]
    timestamp: float
    id_fresh: bool = False  # the service made the id up (a new UUIDv7): no block can have it yet


@dataclass(frozen=True, slots=True)
class Written:
    block_id: str
    digest: bytes
    lsn: int
    payload_length: int
    parts: int


def check_caller_metadata(metadata: Mapping[str, Any]) -> tuple[Sensitivity, bool]:
    if not isinstance(metadata, Mapping):
        raise FormatError("metadata must be an object")
    reserved = [key for key in metadata if not isinstance(key, str) or key.startswith(RESERVED_PREFIX)]
    if reserved:
        raise FormatError(f"metadata keys starting with {RESERVED_PREFIX!r} are reserved for MAIF")
    return _sensitivity_of(metadata)


def _sensitivity_of(metadata: Mapping[str, Any]) -> tuple[Sensitivity, bool]:
    sensitivity = metadata.get("sensitivity", "public")
    shared = metadata.get("shared", False)
    if sensitivity not in ("public", "sensitive") or not isinstance(shared, bool):
        raise FormatError('metadata "sensitivity" must be "public" or "sensitive" and "shared" a boolean')
    return Sensitivity(sensitivity), shared


def check_id(name: str, value: str) -> str:
    """``value``, unless it holds a control character or a lone surrogate (refused: 400 invalid-id). One
    check for every id the service takes (block, agent, parent, task ids and a task's input blocks), so
    none reaches a header, a log line or a derived block id unchecked. Length and emptiness are the
    storage layer's (MAIFBlock's checks) and the schemas' to refuse."""
    if not value.isprintable():  # O(1) for the common case; both refusals below are non-printable
        categories = {unicodedata.category(char) for char in value}
        if "Cc" in categories:
            raise ServiceProblem(400, "invalid-id", f"{name} must not hold a control character")
        if "Cs" in categories:
            raise ServiceProblem(400, "invalid-id", f"{name} must not hold a lone surrogate (not UTF-8)")
    return value


def header_text(value: str) -> str:
    """``value`` for a response header: UTF-8 percent-encoded except visible ASCII other than '%'
    (so ``urllib.parse.unquote`` gives back the id; a plain ASCII id without '%' is unchanged)."""
    return urllib.parse.quote(value, safe=_HEADER_SAFE)


def location_of(block_id: str) -> str:
    """The URL path of a block, its id percent-encoded as one path segment (RFC 3986)."""
    return "/v1/blocks/" + urllib.parse.quote(block_id, safe=_PATH_SEGMENT_SAFE)


def resource_of_block(block: MAIFBlock) -> Resource:
    """The resource a stored block is: its owner, tenant, sensitivity and sharing (see module docstring)."""
    tenant = block.metadata.get(TENANT_KEY, "")
    try:
        sensitivity, shared = _sensitivity_of(block.metadata)
    except FormatError:
        sensitivity, shared = Sensitivity.SENSITIVE, False  # unreadable labels: fail closed
    return Resource(
        block.id,
        owner=block.agent_id,
        tenant=tenant if isinstance(tenant, str) else "?",
        sensitivity=sensitivity,
        shared=shared,
    )


def streamed_info(block: MAIFBlock) -> dict[str, Any] | None:
    info = block.metadata.get(STREAMED_KEY)
    return info if isinstance(info, dict) else None


class IdempotencyCache:
    """Responses of completed writes by (agent, Idempotency-Key), bounded LRU; in-progress keys conflict."""

    def __init__(self, entries_max: int = limits.service_idempotency_entries_max) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, Written | None]] = OrderedDict()
        self._entries_max = entries_max

    def begin(self, agent_id: str, key: str, fingerprint: bytes) -> Written | None:
        """A stored result to replay, or None after marking the key in progress; raises on misuse."""
        if not 1 <= len(key) <= 255 or not key.isascii():
            raise ServiceProblem(400, "invalid-request", "Idempotency-Key must be 1 to 255 ASCII characters")
        entry = self._entries.get((agent_id, key))
        if entry is not None:
            stored_fingerprint, result = entry
            if stored_fingerprint != fingerprint:
                raise ServiceProblem(
                    422, "idempotency-key-reused", "this Idempotency-Key was used with a different request"
                )
            if result is None:
                raise ServiceProblem(
                    409,
                    "idempotency-in-progress",
                    "a request with this Idempotency-Key is still being processed",
                )
            self._entries.move_to_end((agent_id, key))
            return result
        self._entries[(agent_id, key)] = (fingerprint, None)
        while len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)
        return None

    def finish(self, agent_id: str, key: str, fingerprint: bytes, result: Written | None) -> None:
        if result is None:
            self._entries.pop((agent_id, key), None)  # failed: the caller may retry with the same key
        else:
            self._entries[(agent_id, key)] = (fingerprint, result)


class BlockService:
    """Authorised block writes and reads over one store."""

    def __init__(
        self,
        storage: MAIFStorage,
        manager: SecurityManager,
        metrics: ServiceMetrics,
        spool: Spool,
        tracer: trace.Tracer,
        embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
    ) -> None:
        self.storage = storage
        self.spool = spool
        self.tracer = tracer
        self.embedding_dimensions = embedding_dimensions
        self.manager = manager
        self.metrics = metrics
        self._ids_in_flight: set[str] = set()
        self.writes_in_flight = 0
        self._writes_idle = asyncio.Event()
        self._writes_idle.set()

    # ---- authorisation ------------------------------------------------------------------------------
    async def authorize(self, context: SecurityContext, action: Action, resource: Resource) -> None:
        """The gate's decision, audited: the durable append is awaited without holding a worker thread."""
        attributes = {"maif.action": action.value, "maif.resource_kind": resource.kind}
        with decision_span(self.tracer, self.metrics.auth_outcomes, "authorize", attributes):
            await self.manager.authorize_async(context, action, resource)

    async def authorize_own(self, context: SecurityContext, name: str, kind: str) -> None:
        """Authorise reading one of the caller's own non-block resources (its listing, search, stats,
        audit entries, sessions...): owner and tenant are the caller's, ``kind`` selects the policy row."""
        await self.authorize(
            context, Action.READ, Resource(name, owner=context.agent_id, tenant=context.tenant, kind=kind)
        )

    def may_read(self, context: SecurityContext, block: MAIFBlock) -> bool:
        """The policy's answer for one item of a listing (not audited individually; the listing is)."""
        try:
            self.manager.gate.evaluate(context, Action.READ, resource_of_block(block))
        except Exception:  # noqa: BLE001 - any refusal hides the item
            return False
        return True

    def write_request(
        self,
        context: SecurityContext,
        *,
        block_id: str | None,
        block_type: str,
        agent_id: str | None,
        metadata: dict[str, Any],
        version: str,
        parents: list[str] | tuple[str, ...],
        timestamp: float | None,
    ) -> WriteRequest:
        check_caller_metadata(metadata)
        id_fresh = not block_id
        block_id = check_id("block id", block_id or new_block_id())
        owner = check_id("agent id", agent_id or context.agent_id)
        parents = [check_id("parent id", parent) if isinstance(parent, str) else parent for parent in parents]
        if len(block_id.encode("utf-8", "replace")) > limits.block_id_bytes_max - _PART_SUFFIX_BYTES:
            raise FormatError(
                f"block id must be at most {limits.block_id_bytes_max - _PART_SUFFIX_BYTES} bytes"
            )
        if "~" in block_id:
            raise FormatError("block ids may not contain '~' (reserved for the parts of streamed blocks)")
        labelled = {**metadata, TENANT_KEY: context.tenant}
        request = WriteRequest(
            block_id,
            block_type,
            owner,
            labelled,
            version,
            tuple(parents),
            time.time() if timestamp is None else timestamp,
            id_fresh,
        )
        MAIFBlock(
            id=request.block_id,
            block_type=block_type,
            data=b"",
            metadata=labelled,
            timestamp=request.timestamp,
            agent_id=request.owner,
            version=version,
            parents=request.parents,
        )  # validates every field before anything is authorised
        return request

    async def authorize_write(self, context: SecurityContext, request: WriteRequest) -> None:
        sensitivity, shared = _sensitivity_of(request.metadata)
        await self.authorize(
            context,
            Action.WRITE,
            Resource(
                request.block_id,
                owner=request.owner,
                tenant=context.tenant,
                sensitivity=sensitivity,
                shared=shared,
            ),
        )

    # ---- writing ------------------------------------------------------------------------------------
    async def write_whole(self, request: WriteRequest, payload: bytes) -> Written:
        async with self._claim(request):
            receipt = await self._write(self._block(request, payload), "whole")
            return Written(receipt.block_id, receipt.digest, receipt.lsn, len(payload), 0)

    async def write_stream(
        self,
        request: WriteRequest,
        body: AsyncIterator[bytes],
        expected_sha256: bytes | None,
        declared_length: int | None = None,
    ) -> Written:
        """Store a raw body as one block, or as parts plus a manifest when it is larger than a part. The
        body is received whole (spooled to disk past one part) and its digest checked BEFORE anything is
        written, so a refused or abandoned upload leaves nothing in the store (docs/adr/0061)."""
        part_bytes = limits.service_part_bytes_max
        self.spool.admit(declared_length, limits.service_upload_bytes_max, keep_in_memory_bytes=part_bytes)
        if (
            declared_length is not None
            and declared_length > part_bytes
            and normalize_block_type(request.block_type) is MAIFBlockType.EMBEDDING
        ):
            raise LimitExceededError("embedding payload size", declared_length, part_bytes)
        async with self._claim(request), contextlib.AsyncExitStack() as stack:
            with self.tracer.start_as_current_span("maif.upload.receive") as span:
                received = await self.spool.receive(
                    body, cap=limits.service_upload_bytes_max, keep_in_memory_bytes=part_bytes, stack=stack
                )
                span.set_attribute("maif.upload.bytes", received.length)
                span.set_attribute("maif.upload.spooled", received.file is not None)
            _check_digest(received.sha256, expected_sha256)
            if received.length <= part_bytes:
                payload = await received.read(0, received.length)
                receipt = await self._write(self._block(request, payload), "whole")
                return Written(receipt.block_id, receipt.digest, receipt.lsn, received.length, 0)
            if normalize_block_type(request.block_type) is MAIFBlockType.EMBEDDING:
                raise LimitExceededError("embedding payload size", received.length, part_bytes)
            parts: list[tuple[str, int]] = []
            offsets = range(0, received.length, part_bytes)
            # The next part is read from the spool while the current one is made durable.
            upcoming = asyncio.ensure_future(received.read(0, part_bytes))
            try:
                for offset in offsets:
                    data = await upcoming
                    if offset + part_bytes < received.length:
                        upcoming = asyncio.ensure_future(received.read(offset + part_bytes, part_bytes))
                    await self._write_part(request, parts, data)
            finally:
                # Never close the spool (leaving this block) while a read of it is still running.
                await asyncio.wait([upcoming])
                if not upcoming.cancelled():
                    upcoming.exception()  # retrieved: an unused read's failure is not worth a warning
            return await self._write_manifest(request, parts, received.length, received.sha256.hex())

    async def _write_part(self, request: WriteRequest, parts: list[tuple[str, int]], data: bytes) -> None:
        index = len(parts)
        part_id = f"{request.block_id}~p{index:06d}"
        parts.append((part_id, len(data)))
        metadata = {
            key: request.metadata[key]
            for key in ("sensitivity", "shared", TENANT_KEY)
            if key in request.metadata
        }
        metadata["maif:part_of"] = request.block_id
        await self._write(
            MAIFBlock(
                id=part_id,
                block_type=PART_TYPE,
                data=data,
                metadata=metadata,
                timestamp=request.timestamp,
                agent_id=request.owner,
            ),
            "part",
        )

    async def _write_manifest(
        self, request: WriteRequest, parts: list[tuple[str, int]], total: int, sha256_hex: str
    ) -> Written:
        info = {
            "length": total,
            "sha256": sha256_hex,
            "parts": len(parts),
            "part_bytes": limits.service_part_bytes_max,
        }
        manifest = MAIFBlock(
            id=request.block_id,
            block_type=request.block_type,
            data=_parts_encoder.encode(parts),
            metadata={**request.metadata, STREAMED_KEY: info},
            timestamp=request.timestamp,
            agent_id=request.owner,
            version=request.version,
            parents=request.parents,
        )
        receipt = await self._write(manifest, "manifest")
        return Written(receipt.block_id, receipt.digest, receipt.lsn, total, len(parts))

    def _block(self, request: WriteRequest, payload: bytes) -> MAIFBlock:
        block = MAIFBlock(
            id=request.block_id,
            block_type=request.block_type,
            data=payload,
            metadata=request.metadata,
            timestamp=request.timestamp,
            agent_id=request.owner,
            version=request.version,
            parents=request.parents,
        )
        self._check_embedding(block)
        return block

    def _check_embedding(self, block: MAIFBlock) -> None:
        """Refuse an EMBEDDING whose dimension differs from the store's: the engine's vector index holds
        one dimension, and a vector of another fails its background applier, after which the WHOLE store
        refuses writes. One caller must not be able to do that to everyone (docs/adr/0060)."""
        from maif.storage.vectors import embedding_of

        vector = embedding_of(block)
        if vector is not None and vector.shape[0] != self.embedding_dimensions:
            raise ServiceProblem(
                422,
                "embedding-dimension",
                f"this store holds {self.embedding_dimensions}-dimensional embeddings; "
                f"the block has {vector.shape[0]}",
            )

    async def _write(self, block: MAIFBlock, kind: str) -> Any:
        started = time.perf_counter()
        with self.tracer.start_as_current_span("maif.storage.write") as span:
            span.set_attribute("maif.block_type", block.type_name)
            span.set_attribute("maif.write_kind", kind)
            span.set_attribute("maif.bytes", len(block.data))
            receipt = await self.storage.write_block(block)
            span.set_attribute("maif.lsn", receipt.lsn)
        self.metrics.write_latency.observe(time.perf_counter() - started)
        self.metrics.blocks_written.labels(kind).inc()
        self.metrics.block_bytes_written.inc(len(block.data))
        return receipt

    def _claim(self, request: WriteRequest) -> _Claim:
        return _Claim(self, request.block_id, look_up=not request.id_fresh)

    async def wait_writes_drained(self) -> None:
        await self._writes_idle.wait()

    # ---- reading ------------------------------------------------------------------------------------
    async def require_read_scope(self, context: SecurityContext, block_id: str) -> None:
        """Refuse (audited) a caller who may not read even public blocks BEFORE looking the block up, so
        404 versus 403 tells such a caller nothing about which ids exist."""
        if "read_public" not in context.permissions:
            await self.authorize(context, Action.READ, Resource(block_id, owner="", tenant=context.tenant))

    async def read_authorized(self, context: SecurityContext, block_id: str) -> MAIFBlock:
        await self.require_read_scope(context, block_id)
        with self.tracer.start_as_current_span("maif.storage.read") as span:
            block = await self.storage.read_block(block_id)
            span.set_attribute("maif.block_type", block.type_name)
            span.set_attribute("maif.bytes", len(block.data))
        await self.authorize(context, Action.READ, resource_of_block(block))
        return block

    # ---- deleting -----------------------------------------------------------------------------------
    async def delete_authorized(self, context: SecurityContext, block_id: str) -> tuple[DeleteReceipt, int]:
        """Delete a block (and the parts of a streamed one); returns the tombstone's receipt and the
        number of parts deleted. The seed's table decides: deleting one's OWN block (its agent_id is the
        caller) is writing one's own data (WRITE: OAUTH_VERIFIED, maif:write); deleting another agent's
        is administrative (ADMINISTER: MULTI_PARTY_VERIFIED, maif:admin), shared or not. Both need the
        block's tenant. As for reads, a caller who could not delete or read ANY block is refused
        (audited) before the block is looked up, so 404 versus 403 tells it nothing about which ids
        exist; an administrator may look any id up."""
        if "~" in block_id:
            raise ServiceProblem(
                400, "invalid-request", "parts of a streamed block are deleted with the block, not alone"
            )
        permissions = context.permissions
        if "administer" not in permissions:
            if "write_own" not in permissions:  # refused by the gate (audited), before any lookup
                await self.authorize(
                    context, Action.WRITE, Resource(block_id, owner=context.agent_id, tenant=context.tenant)
                )
            await self.require_read_scope(context, block_id)
        block = await self.storage.read_block(block_id)  # BlockNotFoundError: 404
        own = block.agent_id == context.agent_id and "write_own" in permissions
        await self.authorize(context, Action.WRITE if own else Action.ADMINISTER, resource_of_block(block))
        with self.tracer.start_as_current_span("maif.storage.delete") as span:
            # The block first, then its parts: a failure in between leaves parts no manifest refers to
            # (unlisted; their space stays until `maif store delete` removes them), never a manifest
            # whose parts are gone.
            receipt = await self.storage.delete_block(block_id)
            parts = 0
            if streamed_info(block) is not None:
                for part_id, _ in self.parts_of(block):
                    with contextlib.suppress(BlockNotFoundError):
                        await self.storage.delete_block(part_id)
                        parts += 1
            span.set_attribute("maif.lsn", receipt.lsn)
            span.set_attribute("maif.parts", parts)
        return receipt, parts

    async def exists(self, block_id: str) -> bool:
        try:
            await self.storage.read_block(block_id)
        except BlockNotFoundError:
            return False
        return True

    def parts_of(self, manifest: MAIFBlock) -> list[tuple[str, int]]:
        try:
            parts = _parts_decoder.decode(manifest.data)
        except msgspec.DecodeError as error:
            raise IntegrityError(f"block {manifest.id!r}: its part list does not decode") from error
        return parts

    async def stream_range(self, manifest: MAIFBlock, start: int, stop: int) -> AsyncIterator[bytes]:
        """Bytes [start, stop) of a streamed block, one part in memory at a time."""
        offset = 0
        for part_id, length in self.parts_of(manifest):
            part_start, part_stop = offset, offset + length
            offset = part_stop
            if part_stop <= start or part_start >= stop:
                continue
            part = await self.storage.read_block(part_id)
            if len(part.data) != length or part.metadata.get("maif:part_of") != manifest.id:
                raise IntegrityError(f"part {part_id!r} of block {manifest.id!r} does not match its manifest")
            piece = part.data[max(start, part_start) - part_start : min(stop, part_stop) - part_start]
            self.metrics.block_bytes_read.inc(len(piece))
            yield piece


class _Claim:
    """One write of a block id at a time; an id that exists already is refused (blocks are immutable
    through the service: the engine would replace it, and the old owner's data with it). An id the
    service made up itself (a UUIDv7 with 74 random bits) is not looked up in the store: no caller can
    have written it before, and the look-up was a metadata-index read per write on the loop thread
    (docs/adr/0089). Two writes of it at once are still refused by the in-flight set."""

    def __init__(self, service: BlockService, block_id: str, *, look_up: bool) -> None:
        self._service = service
        self._block_id = block_id
        self._look_up = look_up

    async def __aenter__(self) -> None:
        service = self._service
        if self._block_id in service._ids_in_flight:
            raise ServiceProblem(409, "conflict", "a write of this block id is in progress")
        service._ids_in_flight.add(self._block_id)
        service.writes_in_flight += 1
        service.metrics.writes_in_flight.inc()
        service._writes_idle.clear()
        try:
            if self._look_up and await service.exists(self._block_id):
                raise ServiceProblem(409, "conflict", "a block with this id exists already")
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        service = self._service
        service._ids_in_flight.discard(self._block_id)
        service.writes_in_flight -= 1
        service.metrics.writes_in_flight.dec()
        assert service.writes_in_flight >= 0
        if service.writes_in_flight == 0:
            service._writes_idle.set()


def _check_digest(actual: bytes, expected: bytes | None) -> None:
    if expected is not None and actual != expected:
        raise ServiceProblem(400, "digest-mismatch", "the body does not match its Content-Digest (sha-256)")


def digest_hex(block: MAIFBlock) -> str:
    return block_digest(block).hex()


__all__ = [
    "PART_TYPE",
    "BlockService",
    "IdempotencyCache",
    "WriteRequest",
    "Written",
    "check_caller_metadata",
    "check_id",
    "digest_hex",
    "header_text",
    "location_of",
    "resource_of_block",
    "streamed_info",
]
