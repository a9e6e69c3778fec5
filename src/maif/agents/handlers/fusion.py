"""Multimodal fusion: the text and image EMBEDDING blocks a task names, into one EMBEDDING block.

Method (late fusion by weighted sum of unit vectors): each input vector is L2-normalised, multiplied by
its modality weight (``input_data["text_weight"]``, default 0.5; the image weight is 1 - that), summed
and L2-normalised again. The cosine of a query with the fused vector is then a weighted mix of its
cosines with the parts, so the fused block is found by either modality. The inputs must share one
dimension; the text and image spaces are not aligned (no joint model), which the metadata records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maif.agents.tasks import AgentTask, BlockDraft
from maif.errors import FormatError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.vectors import embedding_of

VERSION = "1.0"


def fuse(task: AgentTask, inputs: Sequence[MAIFBlock]) -> list[BlockDraft]:
    weight = task.input_data.get("text_weight", 0.5)
    if not isinstance(weight, int | float) or not 0.0 <= float(weight) <= 1.0:
        raise ValueError("text_weight must be a number between 0 and 1")
    by_space: dict[str, list[np.ndarray]] = {"text": [], "image": []}
    for block in inputs:
        vector = embedding_of(block)
        space = block.metadata.get("space")
        if vector is None or space not in by_space:
            raise FormatError(f"fusion input {block.id!r} is not a text or image EMBEDDING block")
        by_space[space].append(vector.astype(np.float64) / np.linalg.norm(vector))
    if not by_space["text"] or not by_space["image"]:
        raise FormatError("multimodal_fusion needs at least one text and one image embedding block")
    text = np.mean(by_space["text"], axis=0)
    picture = np.mean(by_space["image"], axis=0)
    if text.shape != picture.shape:
        raise FormatError("text and image embeddings have different dimensions")
    fused = float(weight) * text / np.linalg.norm(text) + (1 - float(weight)) * picture / np.linalg.norm(
        picture
    )
    fused = (fused / (np.linalg.norm(fused) or 1.0)).astype("<f4")
    metadata: dict[str, Any] = {
        "dtype": "float32",
        "dim": int(fused.shape[0]),
        "space": "fused",
        "model": "late-fusion-weighted-sum-v1",
        "text_weight": float(weight),
        "inputs": {"text": len(by_space["text"]), "image": len(by_space["image"])},
    }
    return [BlockDraft(MAIFBlockType.EMBEDDING, fused.tobytes(), metadata, role="fused-embedding")]


def register(registry: Any) -> None:
    registry.register("multimodal_fusion", fuse, name="maif.multimodal_fusion", version=VERSION)
