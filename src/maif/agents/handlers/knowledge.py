"""Knowledge extraction: entities and relations from text, as a JSON-LD KNOWLEDGE_GRAPH (KGRF) block.

A rule-based extractor (no model): entities are runs of capitalised words that are not stopwords at a
sentence start (e.g. "King Lear", "Ozymandias"); each sentence with two or more entities yields a
relation between consecutive entities, with the words between them as the predicate when that span is
short (at most 6 words), else "mentionedWith". The graph uses schema.org terms plus a small ``maif:``
vocabulary for relations; every relation keeps its evidence sentence.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

from maif import limits
from maif.agents.handlers.text import STOPWORDS, text_of
from maif.agents.tasks import AgentTask, BlockDraft
from maif.format.block import MAIFBlock, MAIFBlockType

VERSION = "1.0"
_SENTENCES = re.compile(r"(?<=[.!?;])\s+")
_TOKEN = re.compile(r"[A-Za-z][\w'-]*|\S")
_PREDICATE_WORDS_MAX = 6


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def entities_in(sentence: str) -> list[tuple[str, int, int]]:
    """(name, first token index, last token index + 1) of each capitalised run in ``sentence``."""
    tokens = _TOKEN.findall(sentence)
    found: list[tuple[str, int, int]] = []
    index = 0
    while index < len(tokens):
        start = index
        while index < len(tokens) and tokens[index][:1].isupper() and tokens[index].isalpha():
            index += 1
        run = tokens[start:index]
        while run and run[0].lower() in STOPWORDS:  # "The", "And", "I" at a sentence start
            run, start = run[1:], start + 1
        if run and not (len(run) == 1 and len(run[0]) < 3):
            found.append((" ".join(run), start, index))
        index = max(index, start + 1) if not run else index
        if index == start:
            index += 1
    return found


def extract(task: AgentTask, inputs: Sequence[MAIFBlock]) -> list[BlockDraft]:
    text = text_of(task)
    entities: dict[str, dict[str, Any]] = {}
    relations: list[dict[str, Any]] = []
    for sentence in _SENTENCES.split(text.replace("\n", " ")):
        tokens = _TOKEN.findall(sentence)
        found = entities_in(sentence)
        for name, _, _ in found:
            if len(entities) < limits.agent_keywords_max or _slug(name) in entities:
                entity = entities.setdefault(
                    _slug(name),
                    {"@id": f"urn:maif:entity:{_slug(name)}", "@type": "Thing", "name": name, "mentions": 0},
                )
                entity["mentions"] += 1
        for (left, _, left_end), (right, right_start, _) in itertools.pairwise(found):
            if _slug(left) not in entities or _slug(right) not in entities or left == right:
                continue
            between = [t for t in tokens[left_end:right_start] if t[:1].isalpha()]
            predicate = " ".join(between) if 0 < len(between) <= _PREDICATE_WORDS_MAX else "mentionedWith"
            if len(relations) < limits.agent_keywords_max:
                relations.append(
                    {
                        "@type": "maif:Relation",
                        "maif:subject": {"@id": entities[_slug(left)]["@id"]},
                        "maif:predicate": predicate,
                        "maif:object": {"@id": entities[_slug(right)]["@id"]},
                        "maif:evidence": sentence.strip()[:300],
                    }
                )
    document = {
        "@context": {"@vocab": "https://schema.org/", "maif": "urn:maif:vocab:"},
        "@graph": [*entities.values(), *relations],
    }
    metadata = {
        "format": "application/ld+json",
        "entities": len(entities),
        "relations": len(relations),
        "method": "capitalised-runs-v1",
    }
    payload = json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return [BlockDraft(MAIFBlockType.KNOWLEDGE_GRAPH, payload, metadata, role="knowledge-graph")]


def register(registry: Any) -> None:
    registry.register("knowledge_extraction", extract, name="maif.knowledge_extraction", version=VERSION)
