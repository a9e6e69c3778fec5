"""The cold tier and shared packs on S3 (or any S3-compatible server): :class:`S3ObjectStore`.

Built on aiobotocore (docs/adr/0071-s3-client.md): asyncio-native, botocore's credential chain, ranged
GETs, multipart uploads. Configuration keys: ``s3_endpoint`` (None: AWS itself), ``s3_bucket``; the
credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config files, web identity, container and
instance metadata): no secret is ever a parameter of this class, and none appears in a message.

Layout under ``<bucket>/<prefix>``::

    maif-store.json     the marker: {"format": "maif-object-store", "version": 1, "store_id": ...}
    <key>               one object per ObjectStore key (``packs/...``), exactly the key's bytes

The marker guards against pointing a store at the wrong place. On first use the store reads it: a
marker of this format is adopted (and must name ``store_id`` when one is given); a prefix that holds
objects but no marker (a foreign layout), a marker of another format or of a newer version, or one
inside another store's prefix is refused with :class:`ForeignLayoutError`, never written to. An empty
prefix gets a new marker, written with ``If-None-Match: *`` so two nodes opening an empty bucket at
once agree on one store id. ``maif-store.json`` is reserved: no key may name it, and ``list`` hides it.

Writes: a single PUT up to ``multipart_threshold`` bytes, else a multipart upload (``part_bytes``
parts, at least 5 MiB each, uploaded ``part_concurrency`` at a time, each with a CRC-32 the server
checks). Either way the object appears whole or not at all: readers see the old object or the new one.
A multipart upload that fails (or is cancelled) is aborted, so no parts linger; if even the abort
fails, a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` is the safety net (see the ADR).

Reads: ``get`` returns the whole object and checks its length against the response's; ``get_range``
sends an HTTP Range request. This store moves bytes only: every caller verifies what it reads against
a BLAKE3 digest (pack frames in :mod:`maif.storage.tiers` and :mod:`.objectpacks`).

Errors: an unreachable endpoint or a missing bucket raises :class:`~maif.errors.BackendError` naming
the endpoint (without any credential in it) and the config key; refused credentials raise
:class:`S3CredentialsError` (a BackendError); an absent key raises BlockNotFoundError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from maif.errors import (
    ArgumentValueError,
    BackendError,
    BackendUnavailableError,
    BlockNotFoundError,
    ConfigError,
    CredentialsError,
    ForeignStoreError,
    FormatError,
    LimitExceededError,
    StorageError,
    StoreClosedError,
)
from maif.storage.backends.base import Capabilities, ObjectStore, check_object_key
from maif.storage.health import Health

ResultT = TypeVar("ResultT")

MARKER_NAME = "maif-store.json"
MARKER_FORMAT = "maif-object-store"
MARKER_VERSION = 1
_MARKER_BYTES_MAX = 64 * 1024
MIB = 1024 * 1024
PART_BYTES_MIN = 5 * MIB  # S3's minimum for every part but the last
PARTS_MAX = 10_000  # S3's maximum number of parts in one upload
S3_KEY_BYTES_MAX = 1024  # S3's limit on a whole key, the prefix included
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
COMPONENT = "s3"
"""How health reports and :class:`BackendUnavailableError` name this server."""
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_UNAVAILABLE_CODES = frozenset({"500", "502", "503", "504", "InternalError", "ServiceUnavailable",
                                "SlowDown", "RequestTimeout", "Throttling"})
_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "403",
        "Forbidden",
        "ExpiredToken",
        "InvalidToken",
        "InvalidSecurity",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)

_log = logging.getLogger(__name__)
_shared_loader: Any = None


class S3CredentialsError(CredentialsError):
    """The S3 server refused the credentials of the AWS chain (wrong key or secret, expired token,
    no permission), or the chain found none. The message names the endpoint, bucket and the server's
    error code only: never a key id, secret or token."""


class ForeignLayoutError(ForeignStoreError):
    """The bucket and prefix hold something other than this MAIF store: objects without a MAIF marker
    (a foreign layout), a marker of another format or a newer version, another store's marker when a
    ``store_id`` was asked for, or a place nested inside another MAIF store. Refused, never written."""

    def __init__(self, message: str, *, bucket: str, prefix: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.bucket = bucket
        self.prefix = prefix


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` of an endpoint URL, without any user or password it embeds."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _is_http_url(url: object) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        return False


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


class S3ObjectStore(ObjectStore):
    """An :class:`ObjectStore` in an S3 bucket under a prefix, shared by every node that opens it.

    ``endpoint_url``         the ``s3_endpoint`` key: ``http(s)://host:port`` of an S3-compatible server,
                             or None for AWS S3 itself (region from the AWS chain)
    ``bucket``               the ``s3_bucket`` key; must exist (``create_bucket=True`` creates it)
    ``prefix``               where this store lives in the bucket ("" or '/'-separated segments)
    ``store_id``             when given, the marker must name it (a new marker is written with it)
    ``multipart_threshold``  objects above this size go up as multipart uploads of ``part_bytes`` parts
    ``addressing_style``     "path" (default with an endpoint: S3-compatible servers), "virtual", "auto"

    Connecting and the layout check happen on first use, or at :meth:`open` (call it at start-up to
    fail fast with a clear error).
    """

    capabilities = Capabilities(durable=True, shared_between_processes=True)

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        prefix: str = "",
        store_id: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        multipart_threshold: int = 16 * MIB,
        part_bytes: int = 8 * MIB,
        part_concurrency: int = 4,
        max_connections: int = 16,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
        addressing_style: str | None = None,
        list_page_size: int = 1000,
        health: Health | None = None,
    ) -> None:
        self.health = health  # told of every call that reached the server, and of each that could not
        if endpoint_url is not None and not _is_http_url(endpoint_url):
            raise ConfigError(
                f"s3_endpoint must be an http:// or https:// URL, got {redact_url(str(endpoint_url))!r}"
            )
        if endpoint_url is not None and ("@" in urlsplit(endpoint_url).netloc):
            raise ConfigError(
                f"s3_endpoint {redact_url(endpoint_url)!r} embeds credentials: they belong in the AWS "
                "credential chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE), not in the URL"
            )
        if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise ConfigError(f"s3_bucket {str(bucket)[:80]!r} is not a valid S3 bucket name",
                              hint="3-63 characters: lower-case letters, digits, '.' and '-'")
        if not isinstance(prefix, str):
            raise ConfigError("the S3 prefix must be a string")
        if prefix:
            prefix = prefix.strip("/")
            try:
                check_object_key(prefix)
            except (FormatError, LimitExceededError) as error:
                raise ConfigError(f"the S3 prefix is not a valid key prefix: {error.message}") from None
            prefix += "/"
        if store_id is not None and (not isinstance(store_id, str) or not store_id or len(store_id) > 200):
            raise ConfigError("store_id must be a non-empty string of at most 200 characters")
        if part_bytes < PART_BYTES_MIN:
            raise ConfigError(f"part_bytes must be at least {PART_BYTES_MIN} (S3's minimum part size)")
        if multipart_threshold < part_bytes:
            raise ConfigError("multipart_threshold must be at least part_bytes")
        if min(part_concurrency, max_connections, max_attempts, list_page_size) < 1 or list_page_size > 1000:
            raise ConfigError("part_concurrency, max_connections, max_attempts and list_page_size must be at "
                              "least 1 (list_page_size at most 1000)")
        if addressing_style not in (None, "path", "virtual", "auto"):
            raise ConfigError("addressing_style must be 'path', 'virtual' or 'auto'")
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.prefix = prefix
        self.store_id = store_id
        self.region = region
        self.create_bucket = create_bucket
        self.multipart_threshold = multipart_threshold
        self.part_bytes = part_bytes
        self.part_concurrency = part_concurrency
        self.list_page_size = list_page_size
        self._client_settings = {
            "max_connections": max_connections,
            "connect_timeout_s": connect_timeout_s,
            "read_timeout_s": read_timeout_s,
            "max_attempts": max_attempts,
            "addressing_style": addressing_style or ("path" if endpoint_url else "auto"),
        }
        self._marker_key = f"{prefix}{MARKER_NAME}"
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._open_lock: asyncio.Lock | None = None
        self._closed = False

    # ---- naming ----------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The endpoint (credential-free), bucket and prefix, for messages."""
        endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "AWS S3"
        return f"{endpoint} bucket {self.bucket!r}" + (f" prefix {self.prefix!r}" if self.prefix else "")

    def _full_key(self, key: str) -> str:
        if self._closed:
            raise StoreClosedError("object store is closed")
        check_object_key(key)
        if key == MARKER_NAME:
            raise FormatError(f"object key {MARKER_NAME!r} is reserved for the store's marker")
        full_key = self.prefix + key
        if len(full_key.encode()) > S3_KEY_BYTES_MAX:
            raise LimitExceededError("S3 object key length (with the prefix)", len(full_key.encode()),
                                     S3_KEY_BYTES_MAX)
        return full_key

    # ---- connection and layout check ---------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check (or create) the layout marker; idempotent. Raises BackendError (unreachable
        endpoint, missing bucket), S3CredentialsError or ForeignLayoutError."""
        await self._connected()

    async def _connected(self) -> Any:
        if self._closed:
            raise StoreClosedError("object store is closed")
        if self._client is not None:
            return self._client
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._client is None:
                client, stack = await self._make_client()
                try:
                    await self._check_layout(client)
                except BaseException:
                    await stack.aclose()
                    raise
                self._client, self._stack = client, stack
        if self._closed:
            raise StoreClosedError("object store is closed")
        return self._client

    async def _make_client(self) -> tuple[Any, contextlib.AsyncExitStack]:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        global _shared_loader
        settings = self._client_settings
        session = get_session()  # a session per store: its credentials come from the chain as it is now
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:  # botocore's service models are parsed once per process, not once per client (~0.1-1 s)
            session.register_component("data_loader", _shared_loader)
        region = self.region or session.get_config_variable("region") or "us-east-1"
        config = AioConfig(
            region_name=region,
            connect_timeout=settings["connect_timeout_s"],
            read_timeout=settings["read_timeout_s"],
            max_pool_connections=settings["max_connections"],
            retries={"mode": "standard", "total_max_attempts": settings["max_attempts"]},
            s3={"addressing_style": settings["addressing_style"]},
        )
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                session.create_client("s3", endpoint_url=self.endpoint_url, config=config)
            )
        except BaseException as error:
            await stack.aclose()
            if isinstance(error, Exception):
                raise self._translate(error, "connect to") from error
            raise
        return client, stack

    async def _check_layout(self, client: Any) -> None:
        if self.create_bucket:
            await self._ensure_bucket(client)
        marker = await self._read_marker(client, self._marker_key)
        if marker is None:
            await self._check_not_nested(client)
            sample = await self._first_keys(client, self.prefix, 2)
            foreign = [key for key in sample if key != self._marker_key]
            if foreign:
                raise ForeignLayoutError(
                    f"S3 {self.where} holds objects ({foreign[0][:120]!r}, ...) but no MAIF marker "
                    f"{self._marker_key!r}: a foreign layout, refused",
                    bucket=self.bucket, prefix=self.prefix,
                    hint="point s3_bucket (or the prefix) at an empty place or at an existing MAIF store",
                )
            marker = await self._write_marker(client)
        self._adopt_marker(marker)

    async def _ensure_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except Exception as error:
            if _error_code(error) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._translate(error, "check the bucket of") from error
        try:
            await client.create_bucket(Bucket=self.bucket)
        except Exception as error:
            if _error_code(error) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(error, "create the bucket of") from error

    async def _read_marker(self, client: Any, key: str) -> dict[str, Any] | None:
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as stream:
                raw = await stream.read(_MARKER_BYTES_MAX + 1)
        except Exception as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                return None
            raise self._translate(error, f"read the marker {key!r} of") from error
        try:
            if len(raw) > _MARKER_BYTES_MAX:
                raise ValueError("too large")
            marker = json.loads(raw)
            if not isinstance(marker, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as error:
            raise ForeignLayoutError(
                f"S3 {self.where}: {key!r} is not a MAIF store marker ({error}): refused",
                bucket=self.bucket, prefix=self.prefix,
            ) from None
        return marker

    async def _check_not_nested(self, client: Any) -> None:
        """Refuse a prefix inside another MAIF store (its ``list`` would see our objects)."""
        segments = self.prefix.rstrip("/").split("/") if self.prefix else []
        for depth in range(len(segments)):
            outer = "".join(f"{segment}/" for segment in segments[:depth])
            if await self._read_marker(client, f"{outer}{MARKER_NAME}") is not None:
                raise ForeignLayoutError(
                    f"S3 {self.where} lies inside the MAIF store at prefix {outer!r}: refused",
                    bucket=self.bucket, prefix=self.prefix,
                    hint="give each store a prefix of its own, none inside another",
                )

    async def _write_marker(self, client: Any) -> dict[str, Any]:
        marker = {
            "format": MARKER_FORMAT,
            "version": MARKER_VERSION,
            "store_id": self.store_id or str(uuid.uuid4()),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        body = json.dumps(marker, indent=1).encode() + b"\n"
        try:
            # If-None-Match: another node creating the store at the same moment wins or loses whole.
            await client.put_object(Bucket=self.bucket, Key=self._marker_key, Body=body,
                                    ContentType="application/json", IfNoneMatch="*")
        except Exception as error:
            code = _error_code(error)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raced = await self._read_marker(client, self._marker_key)
                if raced is not None:
                    return raced
            raise self._translate(error, "write the marker of") from error
        _log.info("created the MAIF object store %s (store id %s)", self.where, marker["store_id"])
        return marker

    def _adopt_marker(self, marker: dict[str, Any]) -> None:
        if marker.get("format") != MARKER_FORMAT:
            raise ForeignLayoutError(
                f"S3 {self.where}: {self._marker_key!r} names format {str(marker.get('format'))[:60]!r}, "
                f"not {MARKER_FORMAT!r}: refused", bucket=self.bucket, prefix=self.prefix,
            )
        version = marker.get("version")
        if not isinstance(version, int) or not 1 <= version <= MARKER_VERSION:
            raise ForeignLayoutError(
                f"S3 {self.where} holds a MAIF store of layout version {version!r}; this MAIF reads "
                f"version {MARKER_VERSION}", bucket=self.bucket, prefix=self.prefix,
                hint="upgrade MAIF on this node",
            )
        found = marker.get("store_id")
        if not isinstance(found, str) or not found:
            raise ForeignLayoutError(f"S3 {self.where}: the marker names no store id: refused",
                                     bucket=self.bucket, prefix=self.prefix)
        if self.store_id is not None and found != self.store_id:
            raise ForeignLayoutError(
                f"S3 {self.where} holds MAIF store {found[:80]!r}, not {self.store_id[:80]!r}: refused",
                bucket=self.bucket, prefix=self.prefix,
                hint="another store's data is never overwritten; check s3_bucket and the prefix",
            )
        self.store_id = found

    async def _first_keys(self, client: Any, prefix: str, count: int) -> list[str]:
        try:
            response = await client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=count)
        except Exception as error:
            raise self._translate(error, "list") from error
        return [item["Key"] for item in response.get("Contents", [])]

    # ---- errors ------------------------------------------------------------------------------------

    def _translate(self, error: Exception, action: str, key: str | None = None) -> StorageError:
        """A MAIF error for an aiobotocore/botocore/aiohttp one: no secret in it, the config key named;
        an unavailable server is reported to ``health``."""
        translated = self._translate_error(error, action, key)
        if self.health is not None and isinstance(translated, BackendUnavailableError):
            self.health.failed(COMPONENT, translated.message)
        return translated

    def _translate_error(self, error: Exception, action: str, key: str | None) -> StorageError:
        from botocore import exceptions as boto

        what = f"{key!r} in " if key is not None else ""
        code = _error_code(error)
        if code in _NOT_FOUND_CODES and key is not None:
            return BlockNotFoundError(f"no object {key!r}")
        if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and key is None):
            return BackendError(f"cannot {action} S3 {what}{self.where}: the bucket does not exist "
                                "(config key s3_bucket)", hint="create the bucket, or check s3_bucket")
        if code in _CREDENTIAL_CODES:
            return S3CredentialsError(
                f"S3 {self.where} refused the credentials ({code}) trying to {action} {what}the store",
                hint="check the AWS credential chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
                     " and the permissions on the bucket",
            )
        if isinstance(error, boto.NoCredentialsError | boto.PartialCredentialsError):
            return S3CredentialsError(
                f"no usable AWS credentials for S3 {self.where} ({type(error).__name__})",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            )
        endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "AWS S3"
        if isinstance(error, boto.EndpointConnectionError | boto.ConnectTimeoutError):
            return BackendUnavailableError(
                f"S3 endpoint {endpoint} (config key s3_endpoint) is unreachable: "
                f"cannot {action} {what}bucket {self.bucket!r}", component=COMPONENT,
                hint="check that the server runs and s3_endpoint names it",
            )
        if isinstance(error, boto.HTTPClientError | OSError | TimeoutError):
            return BackendUnavailableError(
                f"S3 endpoint {endpoint} (config key s3_endpoint) failed ({type(error).__name__}): "
                f"cannot {action} {what}bucket {self.bucket!r}", component=COMPONENT,
            )
        if code in _UNAVAILABLE_CODES:
            return BackendUnavailableError(
                f"S3 {self.where} is unavailable ({code}) trying to {action} {what}the store",
                component=COMPONENT)
        if code:
            return BackendError(f"S3 could not {action} {what}{self.where}: {code}")
        detail = type(error).__name__
        return BackendError(f"S3 could not {action} {what}{self.where}: {detail}")

    async def _call(self, action: str, key: str | None,
                    operation: Callable[[Any], Awaitable[ResultT]]) -> ResultT:
        client = await self._connected()
        try:
            result = await operation(client)
        except StorageError:
            raise
        except Exception as error:
            raise self._translate(error, action, key) from error
        if self.health is not None:
            self.health.succeeded(COMPONENT)
        return result

    # ---- the ObjectStore API -----------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        full_key = self._full_key(key)
        data = bytes(data)
        if len(data) <= self.multipart_threshold:
            await self._call("store", key, lambda client: client.put_object(
                Bucket=self.bucket, Key=full_key, Body=data))
            return
        client = await self._connected()
        await self._put_multipart(client, key, full_key, data)

    async def _put_multipart(self, client: Any, key: str, full_key: str, data: bytes) -> None:
        part_bytes = max(self.part_bytes, math.ceil(len(data) / PARTS_MAX))
        try:
            upload = await client.create_multipart_upload(Bucket=self.bucket, Key=full_key,
                                                          ChecksumAlgorithm="CRC32")
        except Exception as error:
            raise self._translate(error, "start a multipart upload of", key) from error
        upload_id = upload["UploadId"]
        try:
            view = memoryview(data)
            offsets = range(0, len(data), part_bytes)
            gate = asyncio.Semaphore(self.part_concurrency)

            async def one(number: int, offset: int) -> dict[str, Any]:
                async with gate:
                    body = bytes(view[offset : offset + part_bytes])
                    return await self._upload_part(client, full_key, upload_id, number, body)

            tasks = [asyncio.ensure_future(one(number, offset)) for number, offset in enumerate(offsets, 1)]
            try:
                parts = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:  # no part may still be in flight when the upload is aborted
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as error:
            await asyncio.shield(self._abort_multipart(client, key, full_key, upload_id))
            if isinstance(error, Exception) and not isinstance(error, StorageError):
                raise self._translate(error, "upload", key) from error
            raise

    async def _upload_part(self, client: Any, full_key: str, upload_id: str, number: int,
                           body: bytes) -> dict[str, Any]:
        """Upload one part; returns its entry for CompleteMultipartUpload (ETag and checksum)."""
        response = await client.upload_part(Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                                            PartNumber=number, Body=body, ChecksumAlgorithm="CRC32")
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        if response.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    async def _abort_multipart(self, client: Any, key: str, full_key: str, upload_id: str) -> None:
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except Exception as error:  # noqa: BLE001 - logged: the upload's own failure is what is raised
            _log.warning("could not abort the failed multipart upload of %r in %s (%s); a bucket "
                         "lifecycle rule AbortIncompleteMultipartUpload removes its parts",
                         key, self.where, type(error).__name__)

    async def get(self, key: str) -> bytes:
        full_key = self._full_key(key)

        async def operation(client: Any) -> bytes:
            response = await client.get_object(Bucket=self.bucket, Key=full_key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
            expected = response.get("ContentLength")
            if expected is not None and len(data) != expected:
                raise BackendError(f"S3 returned {len(data)} bytes of {key!r} in {self.where}, "
                                   f"not the {expected} it announced")
            return data

        return await self._call("read", key, operation)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        full_key = self._full_key(key)
        if offset < 0 or length < 0:
            raise ArgumentValueError(f"a range needs a non-negative offset and length: {offset}, {length}")
        if length == 0:
            if not await self.exists(key):
                raise BlockNotFoundError(f"no object {key!r}")
            return b""

        async def operation(client: Any) -> bytes:
            try:
                response = await client.get_object(Bucket=self.bucket, Key=full_key,
                                                   Range=f"bytes={offset}-{offset + length - 1}")
            except Exception as error:
                if _error_code(error) in ("InvalidRange", "416"):
                    return b""  # the range starts at or past the object's end, like a short pread
                raise
            async with response["Body"] as stream:
                data: bytes = await stream.read()
            expected = response.get("ContentLength")
            if expected is not None and len(data) != expected:
                raise BackendError(f"S3 returned {len(data)} bytes of a range of {key!r} in "
                                   f"{self.where}, not the {expected} it announced")
            if response.get("ContentRange") is None and len(data) > length:
                data = data[offset : offset + length]  # a server that ignored Range sent the whole object
            return data

        return await self._call("read a range of", key, operation)

    async def exists(self, key: str) -> bool:
        full_key = self._full_key(key)

        async def operation(client: Any) -> bool:
            try:
                await client.head_object(Bucket=self.bucket, Key=full_key)
            except Exception as error:
                if _error_code(error) in _NOT_FOUND_CODES:
                    return False
                raise
            return True

        return await self._call("look up", key, operation)

    async def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        await self._call("delete", key, lambda client: client.delete_object(Bucket=self.bucket, Key=full_key))

    async def list(self, prefix: str = "") -> list[str]:
        if self._closed:
            raise StoreClosedError("object store is closed")
        if not isinstance(prefix, str):
            raise ConfigError("a list prefix must be a string")

        async def operation(client: Any) -> list[str]:
            keys = []
            paginator = client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix,
                                       PaginationConfig={"PageSize": self.list_page_size})
            async for page in pages:
                for item in page.get("Contents", []):
                    full_key: str = item["Key"]
                    if full_key == self._marker_key or full_key.endswith("/"):
                        continue  # the marker, and directory placeholders some servers list
                    keys.append(full_key[len(self.prefix) :])
            return sorted(keys)

        return await self._call("list", None, operation)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


__all__ = ["MARKER_NAME", "ForeignLayoutError", "S3CredentialsError", "S3ObjectStore", "redact_url"]
