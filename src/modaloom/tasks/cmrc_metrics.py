"""CMRC2018's exact match and F1, written from the definition of its official evaluation script.

- Normalisation: lower-case, strip surrounding whitespace. For EM the punctuation characters of
  ``PUNCTUATION`` are removed and the two strings compared whole (inner spaces kept).
- Segmentation for F1 (``mixed_segments``): every CJK ideograph (U+4E00..U+9FA5) and every punctuation
  character is a segment of its own; the runs of other characters between them are split into words.
  For F1 the punctuation characters are skipped before segmenting (so "a-b" is one word "ab").
- F1 of one gold answer: the longest common *substring* (contiguous run of segments) of prediction and gold,
  of length n; precision n / len(prediction), recall n / len(gold), F1 their harmonic mean (0 when n = 0).
- Per question: the maximum over its gold answers, for EM and for F1. Over a set: the mean, times 100.

The official script splits the non-CJK runs with ``nltk.word_tokenize``; modaloom does not depend on NLTK
and splits them into runs of letters/digits and single other symbols (``[^\\W_]+`` / one character),
whitespace dropped. The two agree on ordinary words and numbers ("iPhone 6s" -> iphone, 6s); they differ
on English contractions ("don't": NLTK do + n't, here don + ' + t), which Chinese answers rarely hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")  # the official list, one char each
_CJK = re.compile(r"[\u4e00-\u9fa5]")
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)


def normalize(text: str) -> str:
    """Lower-cased and stripped, as both metrics start."""
    return str(text).lower().strip()


def remove_punctuation(text: str) -> str:
    """The normalised text without the characters of ``PUNCTUATION`` (what EM compares)."""
    return "".join(ch for ch in normalize(text) if ch not in PUNCTUATION)


def mixed_segments(text: str, drop_punctuation: bool = True) -> list[str]:
    """CJK characters one by one, other runs split into words (see the module docstring)."""
    segments: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            segments.extend(_WORD.findall("".join(run)))
            run.clear()

    for ch in normalize(text):
        if ch in PUNCTUATION:
            if drop_punctuation:
                continue  # skipped without ending the run: "a-b" -> "ab", as the official script does
            flush()
            segments.append(ch)
        elif _CJK.match(ch):
            flush()
            segments.append(ch)
        else:
            run.append(ch)
    flush()
    return segments


def longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run of items that ``a`` and ``b`` share."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """CMRC2018 F1 of one prediction (0..1): the best over the gold answers."""
    predicted = mixed_segments(prediction)
    best = 0.0
    for gold in golds:
        reference = mixed_segments(gold)
        common = longest_common_substring(reference, predicted)
        if common == 0:
            continue
        precision, recall = common / len(predicted), common / len(reference)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the prediction equals one gold answer after ``remove_punctuation``, else 0.0."""
    predicted = remove_punctuation(prediction)
    return float(any(remove_punctuation(gold) == predicted for gold in golds))


def cmrc_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """``em`` and ``f1`` over a set, each a mean times 100 (as the official script prints them), and their
    average ``average``, with the number of ``questions``."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    n = len(predictions)
    em = sum(exact_match(p, g) for p, g in zip(predictions, golds, strict=True))
    f1 = sum(f1_score(p, g) for p, g in zip(predictions, golds, strict=True))
    em_pct, f1_pct = 100.0 * em / max(n, 1), 100.0 * f1 / max(n, 1)
    return {"em": em_pct, "f1": f1_pct, "average": (em_pct + f1_pct) / 2, "questions": float(n)}
