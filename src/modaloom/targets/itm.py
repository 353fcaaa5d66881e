"""``itm``: image-text matching (ViLT, ALBEF): does this caption belong to this image? Binary head on the
first token of a single-stream encoder, labels ``itm_labels`` (1 = matching pair)."""

from __future__ import annotations

from modaloom.registry import register
from modaloom.targets.text import SentencePrediction


@register("target", "itm")
class ImageTextMatching(SentencePrediction):
    """The sentence-prediction head (``pooler``, ``output``) read against ``itm_labels``."""

    label_key = "itm_labels"
