"""Blocks stored by `maif worker` are signed by the worker's own Ed25519 key and verify with nothing but the
public keys the verifier trusts (docs/adr/0085-signed-worker-results.md). The agents here run exactly as a
worker's do (the task stream as block namespace, reproducible results, the worker's signer) on a real
embedded store; the attacks rewrite stored blocks through the store's own API and must be refused.
The same checks against real worker processes, PostgreSQL and S3: tests/distributed/test_workers.py.
Last, the worker's shared wait for the apply (the ack that follows it must never come before the apply of
the write it acknowledges).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.agents import AgentTask, MAIFAgent
from maif.agents.provenance import (
    WorkerSigner,
    verify_worker_result,
    worker_signature_block_id,
)
from maif.agents.worker import worker_key_file, worker_signer
from maif.config import AgentConfig
from maif.errors import AgentError, ConfigError, CryptoError, SignatureError
from maif.format.block import MAIFBlock
from maif.format.codec import block_digest

STREAM = "MAIF_TASKS"
FAST = {"batch_timeout_ms": 1.0}


def worker_agent(storage: Any, signer: WorkerSigner) -> MAIFAgent:
    return MAIFAgent(STREAM, storage, FAST, block_namespace=STREAM, reproducible_results=True,
                     block_signer=signer)


async def run_tasks(storage: Any, signer: WorkerSigner, *task_ids: str) -> None:
    async with worker_agent(storage, signer) as agent:
        for task_id in task_ids:
            await agent.submit_task(AgentTask(task_id, "text_analysis", {"text": f"report {task_id} is fine"},
                                              submitted_at=1_700_000_000.25))


def replaced(block: MAIFBlock, **changes: Any) -> MAIFBlock:
    fields = {name: getattr(block, name) for name in block.__struct_fields__}
    return MAIFBlock(**{**fields, **changes})


def test_a_result_verifies_with_the_workers_key_and_with_no_other(with_store: Any) -> None:
    key, stranger = WorkerSigner(Ed25519PrivateKey.generate()), Ed25519PrivateKey.generate()

    async def body(storage: Any) -> None:
        await run_tasks(storage, key, "t")
        for index in (0, 1):  # the analysis and its embedding: every block signed
            check = await verify_worker_result(storage, f"{STREAM}:t:{index}", [key.public_key])
            assert check.signer_key_id == key.key_id_hex and check.signed_at == 1_700_000_000.25
        assert check.provenance["task_id"] == "t" and "attempt" not in check.provenance
        with pytest.raises(SignatureError, match="no signature by any of 1 trusted keys"):
            await verify_worker_result(storage, f"{STREAM}:t:0", [stranger.public_key()])
        with pytest.raises(SignatureError):
            await verify_worker_result(storage, f"{STREAM}:t:0", [])
        both = await verify_worker_result(storage, f"{STREAM}:t:0", [stranger.public_key(), key.public_key])
        assert both.signer_key_id == key.key_id_hex

    with_store(body)


def test_a_result_re_signed_by_a_foreign_key_is_refused(with_store: Any) -> None:
    """The attacker rewrites the result and signs it with its own key, once under its own key id and
    once under the trusted key's id (claiming to be that worker)."""
    key, attacker = WorkerSigner(Ed25519PrivateKey.generate()), WorkerSigner(Ed25519PrivateKey.generate())

    async def body(storage: Any) -> None:
        await run_tasks(storage, key, "t")
        block_id = f"{STREAM}:t:0"
        forged = replaced(await storage.read_block(block_id), data=b'{"sentiment": "forged"}')
        await storage.write_blocks([forged, attacker.signature_block(forged)])
        assert (await verify_worker_result(storage, block_id, [attacker.public_key])).signer_key_id == (
            attacker.key_id_hex)  # the attacker's key vouches for it; a verifier that trusts it is fooled
        with pytest.raises(SignatureError, match="does not match the digest"):
            await verify_worker_result(storage, block_id, [key.public_key])
        # The attacker's signature stored under the trusted key's name.
        impostor = replaced(attacker.signature_block(forged),
                            id=worker_signature_block_id(block_id, key.key_id_hex))
        await storage.write_block(impostor)
        with pytest.raises(SignatureError, match="names another key"):
            await verify_worker_result(storage, block_id, [key.public_key])

    with_store(body)


def test_a_flipped_bit_in_a_result_or_its_signature_is_refused(with_store: Any) -> None:
    key = WorkerSigner(Ed25519PrivateKey.generate())

    async def body(storage: Any) -> None:
        await run_tasks(storage, key, "t", "u")
        block_id = f"{STREAM}:t:0"
        original = await storage.read_block(block_id)
        flipped = bytearray(original.data)
        flipped[len(flipped) // 2] ^= 0x04
        await storage.write_block(replaced(original, data=bytes(flipped)))
        with pytest.raises(SignatureError, match="does not match the digest"):
            await verify_worker_result(storage, block_id, [key.public_key])
        # The block intact, one bit of the Ed25519 signature (the envelope's last bytes) flipped.
        other_id = f"{STREAM}:u:0"
        signature = await storage.read_block(worker_signature_block_id(other_id, key.key_id_hex))
        envelope = bytearray(signature.data)
        envelope[-1] ^= 0x01
        await storage.write_block(replaced(signature, data=bytes(envelope)))
        with pytest.raises(SignatureError, match="does not verify"):
            await verify_worker_result(storage, other_id, [key.public_key])

    with_store(body)


def test_a_signature_moved_to_another_block_is_refused(with_store: Any) -> None:
    key = WorkerSigner(Ed25519PrivateKey.generate())

    async def body(storage: Any) -> None:
        await run_tasks(storage, key, "t", "u")
        source, target = f"{STREAM}:t:0", f"{STREAM}:u:0"
        genuine = await storage.read_block(worker_signature_block_id(source, key.key_id_hex))
        target_signature_id = worker_signature_block_id(target, key.key_id_hex)
        await storage.write_block(replaced(genuine, id=target_signature_id))  # copied as it is
        with pytest.raises(SignatureError, match="points elsewhere"):
            await verify_worker_result(storage, target, [key.public_key])
        repointed = replaced(genuine, id=target_signature_id, parents=(target,),
                             metadata={**genuine.metadata, "signs": target})
        await storage.write_block(repointed)  # and made to point at its new block
        with pytest.raises(SignatureError, match="does not match the digest"):
            await verify_worker_result(storage, target, [key.public_key])
        assert (await verify_worker_result(storage, source, [key.public_key])).block_id == source

    with_store(body)


def test_a_missing_signature_is_refused(with_store: Any) -> None:
    key = WorkerSigner(Ed25519PrivateKey.generate())

    async def body(storage: Any) -> None:
        async with MAIFAgent(STREAM, storage, FAST, block_namespace=STREAM) as unsigned:
            await unsigned.submit_task(AgentTask("t", "text_analysis", {"text": "no key here"}))
        with pytest.raises(SignatureError, match="no signature"):
            await verify_worker_result(storage, f"{STREAM}:t:0", [key.public_key])

    with_store(body)


def test_signing_is_reproducible_and_two_keys_sign_under_two_ids() -> None:
    """Two deliveries of one task make the same result bytes; with one key they must make the same
    signature bytes (one write, no conflict), with two keys two signature blocks (no second version)."""
    block = MAIFBlock(id=f"{STREAM}:t:0", data=b"result", agent_id=STREAM, timestamp=1_700_000_000.5)
    seed = Ed25519PrivateKey.generate()
    first, again = WorkerSigner(seed), WorkerSigner(seed)
    other = WorkerSigner(Ed25519PrivateKey.generate())
    assert first.signature_block(block) == again.signature_block(block)
    assert block_digest(first.signature_block(block)) == block_digest(again.signature_block(block))
    assert first.signature_block(block).id != other.signature_block(block).id
    assert first.signature_block(block).timestamp == block.timestamp


def test_an_agent_takes_a_signer_or_a_security_manager_not_both(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        with pytest.raises(AgentError):
            MAIFAgent("a", storage, block_signer=WorkerSigner(Ed25519PrivateKey.generate()),
                      security_manager=object(), security_context=object())

    with_store(body)


def test_the_worker_key_file_is_made_owner_only_once_and_kept_off_the_store(tmp_path: Path,
                                                                            monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert worker_key_file(AgentConfig()) == tmp_path / "config" / "maif" / "worker.key"
    signer = worker_signer(AgentConfig(), tmp_path / "store")
    key_file = tmp_path / "config" / "maif" / "worker.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert worker_signer(AgentConfig(), tmp_path / "store").key_id == signer.key_id  # the same key again

    inside = AgentConfig(worker_key_file=str(tmp_path / "store" / "keys" / "worker.key"))
    with pytest.raises(ConfigError, match="inside the store's data_dir"):
        worker_signer(inside, tmp_path / "store")
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store", tmp_path / "alias")
    with pytest.raises(ConfigError, match="inside the store's data_dir"):
        worker_signer(AgentConfig(worker_key_file=str(tmp_path / "alias" / "worker.key")), tmp_path / "store")
    assert not (tmp_path / "store" / "keys").exists()

    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(CryptoError, match="32-byte hex Ed25519 seed"):
        worker_signer(AgentConfig(worker_key_file=str(garbage)), tmp_path / "store")
    with pytest.raises(ConfigError):
        AgentConfig(worker_key_file=" ")


def test_apply_waits_are_shared_but_none_begins_before_the_write_it_covers() -> None:
    """A worker acks a task only after a wait for the apply that began after the task's write: tasks
    that finish together share one wait, and a task that finishes while a wait runs gets the next."""
    import asyncio

    from maif.agents.worker import Worker

    class Store:
        def __init__(self) -> None:
            self.waits: list[asyncio.Future[None]] = []

        async def wait_applied(self) -> None:
            self.waits.append(asyncio.get_running_loop().create_future())
            await self.waits[-1]

    async def scenario() -> None:
        store = Store()
        worker = Worker(store, None, AgentConfig(), signer=WorkerSigner(Ed25519PrivateKey.generate()))  # type: ignore[arg-type]
        first, second = (asyncio.create_task(worker._wait_applied()) for _ in range(2))
        await asyncio.sleep(0.01)
        assert len(store.waits) == 1  # one wait for both
        late = asyncio.create_task(worker._wait_applied())  # its write came after that wait began
        await asyncio.sleep(0.01)
        store.waits[0].set_result(None)
        await asyncio.gather(first, second)
        await asyncio.sleep(0.01)
        assert not late.done() and len(store.waits) == 2
        store.waits[1].set_result(None)
        await late
        failing = asyncio.create_task(worker._wait_applied())
        await asyncio.sleep(0.01)
        store.waits[2].set_exception(ConnectionError("index away"))
        with pytest.raises(ConnectionError):
            await failing
        worker._executor.shutdown()

    asyncio.run(scenario())
