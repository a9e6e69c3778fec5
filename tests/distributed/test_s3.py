"""S3ObjectStore against a real S3 server (SeaweedFS, started by the suite): the shared conformance
suite, multipart uploads, abort on failure, credentials, and the layout guard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from maif.errors import BackendError, BlockNotFoundError, FormatError
from maif.storage.backends.base import ObjectStore
from maif.storage.backends.s3 import (
    MARKER_NAME,
    ForeignLayoutError,
    S3CredentialsError,
    S3ObjectStore,
)
from maif.testing.conformance import ObjectStoreTests, random_bytes, run

MIB = 1024 * 1024


def endpoint_of(settings: Any) -> str:
    return str(settings.endpoint)


@contextlib.asynccontextmanager
async def raw_client(endpoint: str) -> AsyncIterator[Any]:
    """A plain aiobotocore client (same AWS environment), to look at the bucket behind the store's back."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(s3={"addressing_style": "path"})
    async with get_session().create_client("s3", endpoint_url=endpoint, config=config) as client:
        yield client


async def raw_keys(endpoint: str, bucket: str) -> list[str]:
    async with raw_client(endpoint) as client:
        response = await client.list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in response.get("Contents", []))


async def pending_uploads(endpoint: str, bucket: str) -> list[str]:
    async with raw_client(endpoint) as client:
        response = await client.list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in response.get("Uploads", [])]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestS3ObjectStore(ObjectStoreTests):
    @pytest.fixture(autouse=True)
    def _s3(self, s3_settings: Any, fresh_s3_bucket: str) -> None:
        self.endpoint = endpoint_of(s3_settings)
        self.bucket = fresh_s3_bucket

    def make_store(self, directory: Path) -> ObjectStore:
        return S3ObjectStore(endpoint_url=self.endpoint, bucket=self.bucket)


@pytest.fixture
def s3(s3_settings: Any, fresh_s3_bucket: str) -> tuple[str, str]:
    return endpoint_of(s3_settings), fresh_s3_bucket


def test_multipart_round_trip_and_ranged_reads_across_part_boundaries(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3
    data = random_bytes(20 * MIB, 71)

    async def scenario() -> None:
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, multipart_threshold=16 * MIB,
                              part_bytes=8 * MIB)
        try:
            await store.put("packs/big.pack", data)
            async with raw_client(endpoint) as client:
                head = await client.head_object(Bucket=bucket, Key="packs/big.pack")
            assert head["ETag"].strip('"').endswith("-3")  # three parts: 8 + 8 + 4 MiB
            assert head["ContentLength"] == len(data)
            stored = await store.get("packs/big.pack")
            assert len(stored) == len(data)
            assert stored == data  # every byte
            for offset, length in [(8 * MIB - 100, 300), (16 * MIB - 1, 2), (0, 8 * MIB + 1),
                                   (len(data) - 50, 100), (12345, 1)]:
                expected = data[offset : offset + length]
                assert await store.get_range("packs/big.pack", offset, length) == expected
            assert await store.get_range("packs/big.pack", len(data), 10) == b""
            assert await store.get_range("packs/big.pack", len(data) + 5, 10) == b""
            assert await store.get_range("packs/big.pack", 10, 0) == b""
            with pytest.raises(BlockNotFoundError):
                await store.get_range("packs/absent.pack", 0, 10)
            assert await pending_uploads(endpoint, bucket) == []
            # a multipart put over an existing object replaces it whole
            again = random_bytes(17 * MIB, 72)
            await store.put("packs/big.pack", again)
            assert await store.get("packs/big.pack") == again
        finally:
            await store.close()

    run(scenario())


def test_a_failed_multipart_upload_is_aborted_and_leaves_the_old_object(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3
    old = b"the previous pack"

    async def scenario() -> None:
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, multipart_threshold=5 * MIB,
                              part_bytes=5 * MIB)
        try:
            await store.put("packs/p.pack", old)
            original = store._upload_part
            calls = 0

            async def failing(client: Any, full_key: str, upload_id: str, number: int, body: bytes) -> Any:
                nonlocal calls
                calls += 1
                if number == 3:
                    raise ConnectionResetError("injected: the connection dropped during part 3")
                return await original(client, full_key, upload_id, number, body)

            store._upload_part = failing  # type: ignore[method-assign]
            with pytest.raises(BackendError):
                await store.put("packs/p.pack", random_bytes(16 * MIB, 5))
            assert calls >= 3
            assert await store.get("packs/p.pack") == old
            assert await store.list("packs/") == ["packs/p.pack"]
            assert await pending_uploads(endpoint, bucket) == []

            # a new object that fails leaves nothing at all
            with pytest.raises(BackendError):
                await store.put("packs/new.pack", random_bytes(16 * MIB, 6))
            assert not await store.exists("packs/new.pack")
            assert await pending_uploads(endpoint, bucket) == []
        finally:
            await store.close()

    run(scenario())


def test_a_cancelled_multipart_upload_is_aborted(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, multipart_threshold=5 * MIB,
                              part_bytes=5 * MIB, part_concurrency=1)
        try:
            await store.open()
            original = store._upload_part
            second_part = asyncio.Event()

            async def slow(client: Any, full_key: str, upload_id: str, number: int, body: bytes) -> Any:
                if number == 2:
                    second_part.set()
                    await asyncio.sleep(30)
                return await original(client, full_key, upload_id, number, body)

            store._upload_part = slow  # type: ignore[method-assign]
            upload = asyncio.ensure_future(store.put("packs/c.pack", random_bytes(12 * MIB, 7)))
            await asyncio.wait_for(second_part.wait(), 30)
            upload.cancel()
            with pytest.raises(asyncio.CancelledError):
                await upload
            assert not await store.exists("packs/c.pack")
            assert await pending_uploads(endpoint, bucket) == []
        finally:
            await store.close()

    run(scenario())


def test_a_wrong_secret_is_refused_with_a_typed_error_that_does_not_echo_it(
    s3: tuple[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, bucket = s3
    good = os.environ["AWS_SECRET_ACCESS_KEY"]
    secret = f"wrong-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)

    async def scenario() -> S3CredentialsError:
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket)
        try:
            with pytest.raises(S3CredentialsError) as caught:
                await store.put("packs/x.pack", b"data")
            return caught.value
        finally:
            await store.close()

    error = run(scenario())
    assert isinstance(error, BackendError)
    shown = " ".join([str(error), repr(error), error.diagnostics(), str(error.__cause__)])
    assert secret not in shown and "wrong-secret" not in shown
    assert endpoint.split("//")[1] in str(error)
    assert secret not in caplog.text
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", good)
    assert run(raw_keys(endpoint, bucket)) == []  # nothing was written, not even the marker


def test_an_unreachable_endpoint_names_itself_and_the_config_key(s3: tuple[str, str]) -> None:
    _, bucket = s3
    port = closed_port()

    async def scenario() -> BackendError:
        store = S3ObjectStore(endpoint_url=f"http://127.0.0.1:{port}", bucket=bucket,
                              connect_timeout_s=1.0, max_attempts=1)
        try:
            with pytest.raises(BackendError) as caught:
                await store.open()
            return caught.value
        finally:
            await store.close()

    error = run(scenario())
    assert f"127.0.0.1:{port}" in str(error) and "s3_endpoint" in str(error)


def test_an_endpoint_with_embedded_credentials_is_refused_without_echoing_them() -> None:
    from maif.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        S3ObjectStore(endpoint_url="http://someone:p4ssw0rd@127.0.0.1:9000", bucket="maif")
    assert "p4ssw0rd" not in str(caught.value) + repr(caught.value) + caught.value.diagnostics()
    assert "127.0.0.1:9000" in str(caught.value)


def test_a_missing_bucket_names_the_config_key(s3_settings: Any) -> None:
    async def scenario() -> BackendError:
        store = S3ObjectStore(endpoint_url=endpoint_of(s3_settings), bucket=f"absent-{uuid.uuid4().hex[:12]}")
        try:
            with pytest.raises(BackendError) as caught:
                await store.open()
            return caught.value
        finally:
            await store.close()

    assert "s3_bucket" in str(run(scenario()))


def test_a_foreign_layout_is_refused_and_left_untouched(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        async with raw_client(endpoint) as client:
            await client.put_object(Bucket=bucket, Key="photos/cat.jpg", Body=b"not a MAIF store")
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket)
        try:
            with pytest.raises(ForeignLayoutError) as caught:
                await store.list()
            assert bucket in str(caught.value)
            with pytest.raises(ForeignLayoutError):
                await store.put("packs/a.pack", b"data")
        finally:
            await store.close()
        assert await raw_keys(endpoint, bucket) == ["photos/cat.jpg"]  # no marker, nothing written

    run(scenario())


def test_a_marker_of_another_format_or_newer_version_is_refused(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        for prefix, body in [("a/", b'{"format": "something-else", "version": 1, "store_id": "x"}'),
                             ("b/", b'{"format": "maif-object-store", "version": 99, "store_id": "x"}'),
                             ("c/", b"\x00 not json")]:
            async with raw_client(endpoint) as client:
                await client.put_object(Bucket=bucket, Key=f"{prefix}{MARKER_NAME}", Body=body)
            store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, prefix=prefix)
            try:
                with pytest.raises(ForeignLayoutError):
                    await store.open()
            finally:
                await store.close()

    run(scenario())


def test_a_marker_of_another_store_id_is_refused_and_never_overwritten(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        first = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, store_id="store-a")
        await first.put("packs/a.pack", b"of store a")
        await first.close()
        async with raw_client(endpoint) as client:
            response = await client.get_object(Bucket=bucket, Key=MARKER_NAME)
            async with response["Body"] as stream:
                marker = await stream.read()

        other = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, store_id="store-b")
        try:
            with pytest.raises(ForeignLayoutError) as caught:
                await other.get("packs/a.pack")
            assert "store-a" in str(caught.value) and "store-b" in str(caught.value)
        finally:
            await other.close()

        adopting = S3ObjectStore(endpoint_url=endpoint, bucket=bucket)
        try:
            assert await adopting.get("packs/a.pack") == b"of store a"
            assert adopting.store_id == "store-a"
        finally:
            await adopting.close()
        async with raw_client(endpoint) as client:
            response = await client.get_object(Bucket=bucket, Key=MARKER_NAME)
            async with response["Body"] as stream:
                assert await stream.read() == marker

    run(scenario())


def test_prefixes_hold_separate_stores_and_none_may_nest(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        one = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, prefix="one")
        two = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, prefix="two/")
        try:
            await one.put("packs/x", b"1")
            await two.put("packs/x", b"2")
            assert await one.list() == ["packs/x"] and await one.get("packs/x") == b"1"
            assert await two.list() == ["packs/x"] and await two.get("packs/x") == b"2"
            assert one.store_id != two.store_id
        finally:
            await one.close()
            await two.close()
        for prefix in ("", "one/inner"):  # the bucket root overlaps both; one/inner lies inside "one"
            store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, prefix=prefix)
            try:
                with pytest.raises(ForeignLayoutError):
                    await store.open()
            finally:
                await store.close()
        assert MARKER_NAME not in await raw_keys(endpoint, bucket)

    run(scenario())


def test_nodes_opening_an_empty_bucket_at_once_agree_on_one_store(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        stores = [S3ObjectStore(endpoint_url=endpoint, bucket=bucket) for _ in range(4)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            assert len({store.store_id for store in stores}) == 1
        finally:
            for store in stores:
                await store.close()

    run(scenario())


def test_the_marker_key_is_reserved_and_hidden(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3

    async def scenario() -> None:
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket)
        try:
            for call in (store.put(MARKER_NAME, b"x"), store.get(MARKER_NAME), store.delete(MARKER_NAME)):
                with pytest.raises(FormatError):
                    await call
            await store.put("k", b"v")
            assert await store.list() == ["k"]
            assert await raw_keys(endpoint, bucket) == ["k", MARKER_NAME]
        finally:
            await store.close()

    run(scenario())


def test_list_pages_through_more_than_one_response(s3: tuple[str, str]) -> None:
    endpoint, bucket = s3
    keys = [f"packs/n/{number:03d}" for number in range(45)]

    async def scenario() -> None:
        store = S3ObjectStore(endpoint_url=endpoint, bucket=bucket, list_page_size=7)  # 7 pages and a bit
        try:
            await asyncio.gather(*(store.put(key, key.encode()) for key in reversed(keys)))
            assert await store.list("packs/") == keys
            assert await store.list("packs/n/01") == keys[10:20]
            assert await store.list("packs/n/1") == []
        finally:
            await store.close()

    run(scenario())


def test_bad_configuration_is_refused_before_any_request() -> None:
    from maif.errors import ConfigError

    for arguments in [
        {"endpoint_url": "ftp://127.0.0.1:1", "bucket": "maif"},
        {"endpoint_url": "http://127.0.0.1:1", "bucket": "UPPER"},
        {"endpoint_url": "http://127.0.0.1:1", "bucket": "maif", "prefix": "../up"},
        {"endpoint_url": "http://127.0.0.1:1", "bucket": "maif", "part_bytes": 1024},
    ]:
        with pytest.raises(ConfigError):
            S3ObjectStore(**arguments)  # type: ignore[arg-type]
