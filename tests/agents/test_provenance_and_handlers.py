"""Provenance is recorded and signed; tampering and foreign keys are refused; built-in handlers are real."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from maif.agents import AgentTask, MAIFAgent
from maif.agents.demo_issuer import DemoIssuer, bootstrap_agent
from maif.agents.embeddings import HashingEmbedder, SentenceModelEmbedder, default_embedder
from maif.agents.provenance import SIGNATURE_SUFFIX, input_digest, verify_block
from maif.errors import AgentError, SignatureError
from maif.format.block import MAIFBlock
from maif.format.codec import block_digest

FAST = {"batch_timeout_ms": 1.0}
POEM = (
    "I met a traveller from an antique land, who said: Two vast and trunkless legs of stone stand in "
    "the desert. Ozymandias, King of Kings, looked on his works and despaired."
)


def png(colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (96, 64), colour)
    for x in range(0, 96, 8):
        image.putpixel((x, 10), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_signed_provenance_verifies_and_tampering_is_refused(with_store: Any, tmp_path: Path) -> None:
    async def body(storage: Any) -> None:
        issuer = DemoIssuer()
        manager = issuer.security_manager(tmp_path / "security")
        context = await bootstrap_agent(manager, issuer, "writer")
        other = await bootstrap_agent(manager, issuer, "other")
        async with MAIFAgent(
            "writer", storage, FAST, security_manager=manager, security_context=context
        ) as agent:
            await agent.submit_task(AgentTask("t", "text_analysis", {"text": POEM}))
            await agent.submit_task(AgentTask("i", "image_processing", {"image": png((10, 200, 30))}))
        async with MAIFAgent(
            "writer", storage, FAST, security_manager=manager, security_context=context
        ) as agent:
            await agent.submit_task(
                AgentTask("f", "multimodal_fusion", {}, input_blocks=("writer:t:1", "writer:i:2"))
            )
        check = await verify_block(storage, manager, "writer:f:0")
        assert check.trust_level == 2
        fused = await storage.read_block("writer:f:0")
        text_embedding = await storage.read_block("writer:t:1")
        prov = fused.metadata["provenance"]
        assert (prov["task_id"], prov["agent_id"], prov["handler"], prov["handler_version"]) == (
            "f",
            "writer",
            "maif.multimodal_fusion",
            "1.0",
        )
        assert fused.parents == ("writer:t:1", "writer:i:2")
        assert prov["input_block_digests"]["writer:t:1"] == block_digest(text_embedding).hex()
        assert prov["input_digest"] == input_digest({})
        assert (await storage.read_block("writer:t:1")).parents == ("writer:t:0",)
        # A changed block under the genuine envelope is refused.
        envelope = (await storage.read_block("writer:t:0" + SIGNATURE_SUFFIX)).data
        original = await storage.read_block("writer:t:0")
        forged = MAIFBlock(
            id=original.id,
            block_type=original.block_type,
            data=b"I met nobody.",
            metadata=original.metadata,
            timestamp=original.timestamp,
            agent_id=original.agent_id,
            parents=original.parents,
        )
        assert manager.verify_maif_block_signature(forged, envelope, "writer")[0] is False
        await storage.write_block(forged)
        with pytest.raises(SignatureError):
            await verify_block(storage, manager, "writer:t:0")
        # Another agent's valid signature does not vouch for this agent's block.
        foreign = manager.sign_maif_block(original, other)
        assert manager.verify_maif_block_signature(original, foreign, "writer")[0] is False

    with_store(body)


def test_security_manager_and_context_go_together(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        with pytest.raises(AgentError):
            MAIFAgent("a", storage, security_manager=object())

    with_store(body)


def test_text_analysis_is_real(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        async with MAIFAgent("t", storage, FAST) as agent:
            await agent.submit_task(
                AgentTask("happy", "text_analysis", {"text": "What a wonderful, lovely day!"})
            )
            await agent.submit_task(
                AgentTask("sad", "text_analysis", {"text": "This is a terrible, awful loss."})
            )
            await agent.submit_task(AgentTask("poem", "text_analysis", {"text": POEM}))
            await agent.submit_task(
                AgentTask("tyger", "text_analysis", {"text": "Tyger Tyger, burning bright"})
            )
        happy = (await storage.read_block("t:happy:0")).metadata["analysis"]
        sad = (await storage.read_block("t:sad:0")).metadata["analysis"]
        poem = (await storage.read_block("t:poem:0")).metadata["analysis"]
        assert happy["sentiment"]["compound"] > 0.3 > -0.3 > sad["sentiment"]["compound"]
        assert poem["statistics"]["words"] == len(POEM.split())
        ranked = [k["word"] for k in poem["keywords"]]
        assert "ozymandias" in ranked and not {"the", "and", "from", "his"} & set(ranked)
        tyger = (await storage.read_block("t:tyger:0")).metadata["analysis"]["keywords"]
        assert tyger[0] == {"word": "tyger", "count": 2}
        query = default_embedder().embed(["statue of a king in the desert"])[0]
        hits = await storage.semantic_search(query, limit=1)
        assert hits[0].block_id == "t:poem:1"

    with_store(body)


def test_image_processing_features_thumbnail_and_hash(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        image = Image.new("RGB", (640, 480), (0, 0, 255))
        exif = image.getexif()
        exif[0x010F] = "MAIF test camera"  # Make
        out = io.BytesIO()
        image.save(out, format="JPEG", exif=exif)
        async with MAIFAgent("img", storage, FAST) as agent:
            await agent.submit_task(AgentTask("a", "image_processing", {"image": out.getvalue()}))
            await agent.submit_task(AgentTask("broken", "image_processing", {"image": b"\x89PNG not really"}))
        features = (await storage.read_block("img:a:0")).metadata["image"]
        assert (features["format"], features["width"], features["height"]) == ("JPEG", 640, 480)
        assert features["exif"]["Make"] == "MAIF test camera"
        assert len(features["dhash"]) == 16
        assert features["dominant_colours"][0]["share"] > 0.9
        red, green, blue = (int(features["dominant_colours"][0]["rgb"][i : i + 2], 16) for i in (1, 3, 5))
        assert blue > 200 and red < 40 and green < 40
        thumbnail = await storage.read_block("img:a:1")
        assert Image.open(io.BytesIO(thumbnail.data)).size == (128, 96)
        assert thumbnail.parents == ("img:a:0",)
        [dead] = list(agent.dead_letters)
        assert dead.task_id == "broken" and "cannot be decoded" in dead.reason

    with_store(body)


def test_knowledge_extraction_emits_json_ld(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        text = "Percy Shelley wrote Ozymandias in London. Horace Smith answered Percy Shelley."
        async with MAIFAgent("kg", storage, FAST) as agent:
            await agent.submit_task(AgentTask("k", "knowledge_extraction", {"text": text}))
        block = await storage.read_block("kg:k:0")
        assert block.type_name == "KGRF"
        graph = json.loads(block.data)["@graph"]
        names = {node["name"] for node in graph if node.get("@type") == "Thing"}
        assert {"Percy Shelley", "Ozymandias", "London", "Horace Smith"} <= names
        relation = next(node for node in graph if node.get("maif:predicate") == "wrote")
        assert relation["maif:subject"]["@id"] == "urn:maif:entity:percy-shelley"
        assert relation["maif:object"]["@id"] == "urn:maif:entity:ozymandias"

    with_store(body)


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    first = HashingEmbedder().embed(["the tyger burning bright", ""])
    second = HashingEmbedder().embed(["the tyger burning bright", ""])
    assert np.array_equal(first, second)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    close, far = HashingEmbedder().embed(["tygers burning brightly", "a quiet lake at noon"])
    assert float(first[0] @ close) > float(first[0] @ far) + 0.2


def test_an_agent_signs_only_as_itself(with_store: Any, tmp_path: Path) -> None:
    async def body(storage: Any) -> None:
        issuer = DemoIssuer()
        manager = issuer.security_manager(tmp_path / "security")
        other = await bootstrap_agent(manager, issuer, "other")
        with pytest.raises(AgentError, match="signs only as itself"):
            MAIFAgent("writer", storage, security_manager=manager, security_context=other)

    with_store(body)


def test_signing_failure_dead_letters_and_stores_nothing_unsigned(with_store: Any, tmp_path: Path) -> None:
    async def body(storage: Any) -> None:
        issuer = DemoIssuer()
        manager = issuer.security_manager(tmp_path / "security")
        context = await bootstrap_agent(manager, issuer, "writer")
        manager.keystore.revoke(manager.keystore.current_key("writer").key_id)
        async with MAIFAgent(
            "writer", storage, FAST, security_manager=manager, security_context=context
        ) as agent:
            await agent.submit_task(AgentTask("t", "text_analysis", {"text": POEM}))
        [dead] = list(agent.dead_letters)
        assert dead.task_id == "t" and dead.reason.startswith("signing failed")
        assert [s.block_id for s in await storage.list_blocks(agent_id="writer")] == [dead.record_block_id]

    with_store(body)


@pytest.mark.skipif(
    not SentenceModelEmbedder.available(), reason="the optional embeddings extra is not installed"
)
def test_sentence_model_ranks_a_paraphrase_above_an_unrelated_text() -> None:
    query, paraphrase, unrelated = SentenceModelEmbedder().embed(
        [
            "a small bird sings in the storm",
            "the little songbird kept singing through the gale",
            "quarterly revenue grew by four percent",
        ]
    )
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.2
    assert np.allclose(np.linalg.norm([query, paraphrase]), np.sqrt(2), atol=1e-4)


def test_decompression_bomb_is_refused_before_decoding(with_store: Any) -> None:
    import struct
    import zlib

    header = png((0, 0, 0))
    # Rewrite the IHDR chunk to claim 100000 x 100000 pixels (10^10), with a valid CRC.
    ihdr = b"IHDR" + struct.pack(">II", 100_000, 100_000) + header[24:29]
    bomb = header[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + header[33:]

    async def body(storage: Any) -> None:
        async with MAIFAgent("bomb", storage, {**FAST, "max_retries": 0}) as agent:
            await agent.submit_task(AgentTask("b", "image_processing", {"image": bomb}))
        [dead] = list(agent.dead_letters)
        assert "pixel" in dead.reason or "decompression" in dead.reason.lower()
        assert [s.block_id for s in await storage.list_blocks(agent_id="bomb")] == [dead.record_block_id]

    with_store(body)
