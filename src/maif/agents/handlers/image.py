"""Image processing with Pillow: format, size, EXIF, a perceptual hash, dominant colours, a thumbnail.

Produces the original as an IMAGE block (features in its metadata), a PNG thumbnail IMAGE block derived
from it, and an EMBEDDING of the image's visual features. The perceptual hash is a 64-bit difference
hash (dHash: 9x8 grayscale, one bit per horizontal gradient sign). Dominant colours come from Pillow's
median-cut quantisation to 5 colours. The visual feature vector is a 4x4x4 RGB histogram (64 values)
plus an 8x8 grayscale layout (64 values), standardised, then mapped to the store's embedding dimension by
a fixed Gaussian random projection (seed documented below; Johnson-Lindenstrauss keeps cosine
similarities approximately) and L2-normalised. The image space is not aligned with the text space.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from maif import limits
from maif.agents.tasks import AgentTask, BlockDraft
from maif.errors import FormatError, LimitExceededError
from maif.format.block import MAIFBlock, MAIFBlockType

VERSION = "1.0"
PROJECTION_SEED = 0x4D414946  # "MAIF"
_THUMBNAIL_SIZE = (128, 128)
_projections: dict[int, np.ndarray] = {}


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise FormatError("image_processing needs Pillow (pip install pillow)") from error
    Image.MAX_IMAGE_PIXELS = limits.agent_image_pixels_max
    return Image


def image_bytes(task: AgentTask) -> bytes:
    data = task.input_data.get("image")
    if not isinstance(data, bytes | bytearray):
        raise TypeError("image_processing needs input_data['image'] as bytes")
    if len(data) > limits.agent_image_bytes_max:
        raise LimitExceededError("image size in bytes", len(data), limits.agent_image_bytes_max)
    return bytes(data)


def open_image(data: bytes) -> Any:
    image_module = _pillow()
    try:
        image = image_module.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.agent_image_pixels_max:
            raise LimitExceededError("image pixel count", width * height, limits.agent_image_pixels_max)
        image.load()
    except LimitExceededError:  # a ValueError too (maif.errors), but no decoding failure
        raise
    except (OSError, image_module.DecompressionBombError, ValueError) as error:
        raise FormatError(f"image cannot be decoded: {error}") from error
    return image


def exif_of(image: Any) -> dict[str, str]:
    from PIL import ExifTags

    tags: dict[str, str] = {}
    for tag, value in list(image.getexif().items())[:64]:
        name = ExifTags.TAGS.get(tag, f"tag_{tag}")
        tags[name] = (value.hex() if isinstance(value, bytes) else str(value))[:200]
    return tags


def difference_hash(image: Any) -> str:
    gray = np.asarray(image.convert("L").resize((9, 8)), dtype=np.int16)
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def dominant_colours(image: Any, count: int = 5) -> list[dict[str, Any]]:
    small = image.convert("RGB").resize((64, 64))
    quantised = small.quantize(colors=count)
    palette = quantised.getpalette() or []
    counts = sorted(quantised.getcolors() or [], reverse=True)
    total = sum(n for n, _ in counts) or 1
    return [
        {"rgb": "#" + bytes(palette[3 * index : 3 * index + 3]).hex(), "share": round(n / total, 4)}
        for n, index in counts[:count]
    ]


def visual_features(image: Any, dimension: int) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int32) // 64
    bins = rgb[..., 0] * 16 + rgb[..., 1] * 4 + rgb[..., 2]
    histogram = np.bincount(bins.ravel(), minlength=64).astype(np.float64) / bins.size
    layout = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float64).ravel() / 255.0
    raw = np.concatenate([histogram, layout])
    raw = (raw - raw.mean()) / (raw.std() or 1.0)
    projected = _projection(dimension) @ raw
    unit: np.ndarray = (projected / (np.linalg.norm(projected) or 1.0)).astype("<f4")
    return unit


def _projection(dimension: int) -> np.ndarray:
    if dimension not in _projections:
        _projections[dimension] = np.random.default_rng(PROJECTION_SEED).standard_normal((dimension, 128))
    return _projections[dimension]


def thumbnail_png(image: Any) -> bytes:
    copy = image.convert("RGB")
    copy.thumbnail(_THUMBNAIL_SIZE)
    out = io.BytesIO()
    copy.save(out, format="PNG", optimize=True)
    return out.getvalue()


def process(task: AgentTask, dimension: int) -> list[BlockDraft]:
    data = image_bytes(task)
    image = open_image(data)
    features = {
        "format": image.format,
        "width": image.size[0],
        "height": image.size[1],
        "mode": image.mode,
        "exif": exif_of(image),
        "dhash": difference_hash(image),
        "dominant_colours": dominant_colours(image),
    }
    vector = visual_features(image, dimension)
    thumb = thumbnail_png(image)
    return [
        BlockDraft(MAIFBlockType.IMAGE, data, {"image": features}, role="image"),
        BlockDraft(
            MAIFBlockType.IMAGE,
            thumb,
            {"thumbnail_of_role": "image", "format": "PNG"},
            derived_from=(0,),
            role="thumbnail",
        ),
        BlockDraft(
            MAIFBlockType.EMBEDDING,
            vector.tobytes(),
            {"dtype": "float32", "dim": dimension, "model": "rgb-histogram-layout-jl-v1", "space": "image"},
            derived_from=(0,),
            role="image-embedding",
        ),
    ]


def register(registry: Any, dimension: int) -> None:
    def image_processing(task: AgentTask, inputs: Sequence[MAIFBlock]) -> list[BlockDraft]:
        return process(task, dimension)

    registry.register("image_processing", image_processing, name="maif.image_processing", version=VERSION)
