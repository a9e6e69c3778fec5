"""Text analysis: statistics, keywords, sentiment (VADER) and an embedding, as a TEXT + an EMBEDDING block.

Keywords are the most frequent non-stopword words (ties alphabetical). Sentiment is VADER
(vaderSentiment, a lexicon and rule-based model for English) when installed; without it the result says
``"sentiment": null`` with the reason, never a made-up score.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from maif import limits
from maif.agents.embeddings import EmbeddingProvider, words_of
from maif.agents.tasks import AgentTask, BlockDraft
from maif.errors import LimitExceededError
from maif.format.block import MAIFBlock, MAIFBlockType

VERSION = "1.0"
_STOPWORD_TEXT = (
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me more most "
    "my myself no nor not now of off on once only or other our ours ourselves out over own same she "
    "should so some such than that the their theirs them themselves then there these they this those "
    "through thou thy thee to too under until up upon very was we were what when where which while who "
    "whom why will with would yet you your yours yourself yourselves shall may might must one o ye hath "
    "doth"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")

try:  # optional: a well-kept lexicon model; without it sentiment is reported as unavailable
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    _VADER: Any = SentimentIntensityAnalyzer()
except ImportError:  # pragma: no cover - depends on the environment
    _VADER = None


def text_of(task: AgentTask) -> str:
    text = task.input_data.get("text")
    if not isinstance(text, str):
        raise TypeError("text_analysis needs input_data['text'] as a string")
    size = len(text.encode("utf-8"))
    if size > limits.agent_text_bytes_max:
        raise LimitExceededError("text size in bytes", size, limits.agent_text_bytes_max)
    return text


def statistics(text: str, words: list[str]) -> dict[str, Any]:
    sentences = [part for part in _SENTENCE_END.split(text) if part.strip()]
    return {
        "characters": len(text),
        "words": len(words),
        "unique_words": len(set(words)),
        "sentences": len(sentences),
        "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
        "mean_word_length": round(sum(map(len, words)) / len(words), 3) if words else 0.0,
        "type_token_ratio": round(len(set(words)) / len(words), 4) if words else 0.0,
    }


def keywords(words: list[str], count: int = 10) -> list[dict[str, Any]]:
    frequent = Counter(w for w in words if w not in STOPWORDS and len(w) > 2 and not w.isdigit())
    ranked = sorted(frequent.items(), key=lambda item: (-item[1], item[0]))[
        : min(count, limits.agent_keywords_max)
    ]
    return [{"word": word, "count": n} for word, n in ranked]


def sentiment(text: str) -> dict[str, Any] | None:
    if _VADER is None:
        return None
    scores = _VADER.polarity_scores(text)
    return {"method": "vader", **{key: float(value) for key, value in scores.items()}}


def analyse(task: AgentTask, provider: EmbeddingProvider) -> list[BlockDraft]:
    text = text_of(task)
    words = words_of(text)
    mood = sentiment(text)
    analysis = {
        "statistics": statistics(text, words),
        "keywords": keywords(words),
        "sentiment": mood,
        "sentiment_unavailable_reason": None if mood else "vaderSentiment is not installed",
    }
    title = task.input_data.get("title")
    if isinstance(title, str):
        analysis["title"] = title[:200]
    vector = provider.embed([text])[0].astype("<f4")
    return [
        BlockDraft(MAIFBlockType.TEXT, text.encode("utf-8"), {"analysis": analysis}, role="text"),
        BlockDraft(
            MAIFBlockType.EMBEDDING,
            vector.tobytes(),
            embedding_metadata(provider, vector, "text"),
            derived_from=(0,),
            role="text-embedding",
        ),
    ]


def embedding_metadata(provider: EmbeddingProvider, vector: np.ndarray, space: str) -> dict[str, Any]:
    return {"dtype": "float32", "dim": int(vector.shape[0]), "model": provider.name, "space": space}


def register(registry: Any, provider: EmbeddingProvider) -> None:
    def text_analysis(task: AgentTask, inputs: Sequence[MAIFBlock]) -> list[BlockDraft]:
        return analyse(task, provider)

    registry.register("text_analysis", text_analysis, name="maif.text_analysis", version=VERSION)
