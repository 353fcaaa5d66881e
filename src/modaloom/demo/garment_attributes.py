"""Instance attributes of a Fashion-MNIST image, measured from its pixels, for captions that describe the image.

Class-only captions ("a photo of a sneaker") say nothing that tells one sneaker from another, so a matching
head cannot tell an image's caption from that of another image of its class, and retrieval R@1 is capped by
the class. Two measured attributes make the caption name the instance too:

- tone: the mean stored value of the garment's pixels. Fashion-MNIST stores negated intensities (the product
  photo's dark is a high value, as the demo draws it: ``gray_r``, dark on white), so a high mean is a dark
  garment: ``light`` / ``medium`` / ``dark`` by terciles within its class;
- size: the fraction of the 28 x 28 frame the garment covers: ``slim`` / ``wide`` by the median within its class.

The thresholds are measured on the training split and applied unchanged to every split. The words avoid those
of the caption templates ("a small picture of", "a grey image of"), so a template never reads as an attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

INK = 32  # a pixel at or above this stored value is part of the garment (the background is 0 with faint noise)
TONES = ["light", "medium", "dark"]  # low to high mean stored value (negated intensities: high = dark)
SIZES = ["slim", "wide"]  # low to high coverage of the frame


def measure(images: np.ndarray) -> np.ndarray:
    """(N, 2) float measures of uint8 images (N, H, W): the garment's mean stored value and its coverage."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"measure expects images (N, H, W), got shape {images.shape}")
    ink = images >= INK
    count = ink.sum(axis=(1, 2))
    tone = np.where(count > 0, (images * ink).sum(axis=(1, 2)) / np.maximum(count, 1), 0.0)
    coverage = count / (images.shape[1] * images.shape[2])
    return np.stack([tone, coverage], axis=1)


def thresholds(measures: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
    """Per class (and ``all``, for a class the split lacks): the tone terciles and the coverage median."""
    labels = np.asarray(labels)

    def cuts(rows: np.ndarray) -> dict[str, list[float]]:
        return {"tone": [float(q) for q in np.quantile(rows[:, 0], [1 / 3, 2 / 3])],
                "size": [float(np.median(rows[:, 1]))]}

    if len(measures) == 0:
        raise ValueError("attribute thresholds need at least one measured image")
    out: dict[str, Any] = {"all": cuts(measures)}
    for label in sorted(set(labels.tolist())):
        out[str(label)] = cuts(measures[labels == label])
    return out


def words(measures: np.ndarray, labels: Sequence[int], cuts: dict[str, Any]) -> list[tuple[str, str]]:
    """(tone, size) words per image: where its measures fall among its class's thresholds."""
    out = []
    for (tone, coverage), label in zip(measures, labels, strict=True):
        own = cuts.get(str(int(label)), cuts["all"])
        out.append((TONES[int(np.searchsorted(own["tone"], tone, side="right"))],
                    SIZES[int(np.searchsorted(own["size"], coverage, side="right"))]))
    return out


def describe(name: str, adjectives: Sequence[str]) -> str:
    """``name`` (article and noun: "a sneaker", "someone's running shoe") with the adjectives before the noun:
    "a dark, wide sneaker"; "a"/"an" follows the first adjective."""
    if not adjectives:
        return name
    article, _, noun = name.partition(" ")
    if not noun:
        raise ValueError(f"cannot place adjectives in {name!r}: expected an article and a noun")
    listed = ", ".join(adjectives)
    if article in ("a", "an"):
        article = "an" if listed[0] in "aeiou" else "a"
    return f"{article} {listed} {noun}"
