"""A shortcut for BERT WordPiece on CJK text: characters that always stand alone are looked up, not tokenized.

BERT's normalizer puts spaces around every CJK ideograph and its pre-tokenizer isolates punctuation and
drops whitespace, so such a character is one word whose ids do not depend on its neighbours. Chinese text
is almost all of these, and the Rust pipeline spends about a microsecond per character on them; a table
lookup is some forty times cheaper. Everything else (letters, digits, marks, control characters: the
*runs* between isolated characters) still goes through the backend, so the ids are the backend's own.

A character is classified once, by asking the backend itself: it is isolated only when ``"a" + c + "a"``
encodes to three tokens from three words, the middle one the single id of ``c`` alone; and Python agrees
it has no decomposition, is not a combining mark and is in no special token (so neither Unicode
normalization nor special-token matching can join it to a neighbour). A separator encodes to nothing
and splits ``"aa"`` in two. Anything that fails a check is a run character.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

SEPARATOR = -1  # whitespace the pre-tokenizer drops
RUN = -2  # a character the backend must see with its neighbours


class IsolatedChars:
    """Encodes texts with ``backend`` (a BERT-normalized WordPiece ``tokenizers.Tokenizer``), same ids."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.table: dict[str, int] = {}  # char -> id (isolated), SEPARATOR or RUN
        self._in_added = {c for token in backend.get_added_tokens_decoder().values() for c in token.content}
        self._runs: re.Pattern[str] | None = None  # a RUN char, then RUN or SEPARATOR chars ending in RUN

    def classify(self, chars: set[str]) -> None:
        """Add ``chars`` to the table (one batched backend call for the candidates)."""
        chars = chars - self.table.keys()
        if not chars:
            return
        candidates = sorted(c for c in chars if self._may_stand_alone(c))
        for c in chars.difference(candidates):
            self.table[c] = RUN
        if candidates:
            encode = self.backend.encode_batch
            alone = encode(candidates, add_special_tokens=False)
            between = encode([f"a{c}a" for c in candidates], add_special_tokens=False)
            for c, single, probe in zip(candidates, alone, between):
                ids, words = probe.ids, probe.word_ids
                if len(single.ids) == 1 and words == [0, 1, 2] and ids[1] == single.ids[0] and ids[0] == ids[2]:
                    self.table[c] = single.ids[0]
                elif not single.ids and words == [0, 1] and ids[0] == ids[1]:
                    self.table[c] = SEPARATOR
                else:
                    self.table[c] = RUN
        runs = sorted(c for c, value in self.table.items() if value == RUN)
        separators = sorted(c for c, value in self.table.items() if value == SEPARATOR)
        if runs:
            run_class = "".join(map(re.escape, runs))
            gap_class = run_class + "".join(map(re.escape, separators))
            self._runs = re.compile(f"[{run_class}](?:[{gap_class}]*[{run_class}])?")

    def _may_stand_alone(self, c: str) -> bool:
        """Python's side of the checks: no decomposition, no combining class, in no special token."""
        return (c not in self._in_added and unicodedata.combining(c) == 0
                and unicodedata.normalize("NFD", c) == c)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text, equal to ``backend.encode_batch(texts, add_special_tokens=False)``'s."""
        self.classify(set("".join(texts)))
        table = self.table
        out: list[list[int] | None] = [None] * len(texts)
        pieces: list[str] = []  # what the backend still encodes: runs, and texts that are mostly runs
        plans: list[tuple[int, list[list[int] | int]]] = []  # text index -> its ids and piece indices
        for index, text in enumerate(texts):
            values = [table[c] for c in text]
            if RUN not in values:
                out[index] = [v for v in values if v >= 0] if SEPARATOR in values else values
                continue
            if 2 * values.count(RUN) > len(values):  # mostly runs: one backend call for the whole text
                plans.append((index, [len(pieces)]))
                pieces.append(text)
                continue
            assert self._runs is not None
            plan: list[list[int] | int] = []
            start = 0
            for match in self._runs.finditer(text):
                plan.append([v for v in values[start:match.start()] if v >= 0])
                plan.append(len(pieces))
                pieces.append(match.group())
                start = match.end()
            plan.append([v for v in values[start:] if v >= 0])
            plans.append((index, plan))
        if pieces:
            encoded = [e.ids for e in self.backend.encode_batch(pieces, add_special_tokens=False)]
            for index, plan in plans:
                ids: list[int] = []
                for part in plan:
                    ids.extend(encoded[part] if isinstance(part, int) else part)
                out[index] = ids
        return out  # type: ignore[return-value]
