"""Extractive QA files: CMRC2018/SQuAD JSON and JSONL questions, read with their position in the file.

- JSON: ``{"data": [{"paragraphs": [{"context", "qas": [{"question", "id", "answers": [{"text",
  "answer_start"}]}]}]}]}`` (CMRC2018, SQuAD v1). A problem names the file and the JSON path of the item,
  e.g. ``dev.json: data[3].paragraphs[0].qas[2] (id DEV_3_QUERY_2)``; malformed JSON names file:line:column.
- JSONL: one ``{"id", "question", "context", "answers"}`` per line; an answer is ``{"text", "answer_start"}``
  or a bare string (then its first occurrence in the context); ``id`` defaults to the line number.

What the answers must be depends on the use (``need``):

- ``"train"``: every question has an answer whose text occurs in the context. An ``answer_start`` that does
  not point at its text is realigned to the occurrence nearest to it, and counted (``Questions.realigned``);
  an answer whose text does not occur is kept with start -1 (CMRC2018's dev set has a few such extra
  answers), and a question none of whose answers occurs is an error. The first located answer is the label.
- ``"eval"``: every question has at least one non-empty answer text (EM/F1 need only the texts; a start
  that does not point at the text is located as above, or left unknown, -1, without error).
- ``"predict"``: as ``eval`` where a question has answers; a question without (absent or ``[]``) is kept.
  (CMRC2018's test.json holds placeholder answers: ``predict`` answers them, ``evaluate`` scores 0 on them.)

An empty context or question, a missing field or a field of the wrong type is an error naming its position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modaloom.errors import DataError
from modaloom.tasks.text_io import read_lines

NEEDS = ("train", "eval", "predict")


@dataclass
class Question:
    """One question as read: its position in the file, id, texts and gold answers (text, char start)."""

    where: str
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # start -1: not located (eval/predict)


@dataclass
class Questions:
    """The questions of one file and how many answer starts were realigned to their text."""

    items: list[Question]
    realigned: int = 0


def _string(value: Any, key: str, where: str) -> str:
    text = value.get(key) if isinstance(value, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: no string field {key!r}" + (f" (keys: {sorted(value)})" if isinstance(value, dict)
                                                              else f" (got {type(value).__name__})"))
    if not text.strip():
        raise DataError(f"{where}: empty {key}")
    return text


def locate(context: str, text: str, start: int | None) -> tuple[int, bool]:
    """The answer's char start in ``context`` and whether it moved: ``start`` when the text is there, else the
    occurrence nearest to it (the first when ``start`` is None); -1 when the text does not occur."""
    if start is not None and start >= 0 and context[start:start + len(text)] == text:
        return start, False
    found, at = [], context.find(text)
    while at >= 0:
        found.append(at)
        at = context.find(text, at + 1)
    if not found:
        return -1, start is not None
    if start is None:
        return found[0], False
    return min(found, key=lambda p: abs(p - start)), True


def _answers(raw: Any, context: str, need: str, where: str, counter: list[int]) -> list[tuple[str, int]]:
    if need == "predict" and not raw:
        return []
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: no answers (a list of {{text, answer_start}}), which this file needs")
    out = []
    for i, answer in enumerate(raw):
        at = f"{where} answers[{i}]"
        if isinstance(answer, str):
            text, start = answer, None
        elif isinstance(answer, dict) and isinstance(answer.get("text"), str):
            text, start = answer["text"], answer.get("answer_start")
            if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
                raise DataError(f"{at}: answer_start must be an integer, got {start!r}")
        else:
            raise DataError(f"{at}: an answer is a string or an object with a string 'text', got {answer!r}")
        if not text.strip():
            raise DataError(f"{at}: empty answer text")
        position, moved = locate(context, text, start)
        counter[0] += int(moved and position >= 0)
        out.append((text, position))
    if need == "train" and all(position < 0 for _, position in out):
        shown = ", ".join(repr(text) for text, _ in out[:3])
        raise DataError(f"{where}: no answer occurs in the context ({shown}); a training question needs one")
    return out


def _read_json(path: Path, need: str) -> Questions:
    try:
        with open(path, encoding="utf-8") as fh:
            document = json.load(fh)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise DataError(f"{path}: expected a JSON object with a list 'data' of articles (CMRC2018/SQuAD layout)")
    counter, items = [0], []
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}: data[{a}] has no list 'paragraphs'")
        for p, paragraph in enumerate(paragraphs):
            where_p = f"{path}: data[{a}].paragraphs[{p}]"
            context = _string(paragraph, "context", where_p)
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise DataError(f"{where_p} has no list 'qas'")
            for q, qa in enumerate(qas):
                where = f"{where_p}.qas[{q}]"
                qid = qa.get("id") if isinstance(qa, dict) else None
                if not isinstance(qid, (str, int)) or isinstance(qid, bool):
                    raise DataError(f"{where}: no field 'id' (a string)")
                where = f"{where} (id {qid})"
                question = _string(qa, "question", where)
                answers = _answers(qa.get("answers"), context, need, where, counter)
                items.append(Question(where, str(qid), question, context, answers))
    return Questions(items, counter[0])


def _read_jsonl(path: Path, need: str) -> Questions:
    counter, items = [0], []
    for number, line in enumerate(read_lines(path), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON question)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object with id, question, context, answers")
        context = _string(value, "context", where)
        question = _string(value, "question", where)
        qid = value.get("id", str(number))
        answers = _answers(value.get("answers"), context, need, where, counter)
        items.append(Question(where, str(qid), question, context, answers))
    return Questions(items, counter[0])


def read_questions(path: str | Path, need: str) -> Questions:
    """Every question of a CMRC/SQuAD JSON or a JSONL file (chosen by the suffix ``.jsonl``)."""
    if need not in NEEDS:
        raise ValueError(f"need must be one of {NEEDS}, got {need!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    found = _read_jsonl(path, need) if path.suffix.lower() == ".jsonl" else _read_json(path, need)
    if not found.items:
        raise DataError(f"{path}: no questions")
    seen: dict[str, str] = {}
    for q in found.items:
        if q.id in seen:
            raise DataError(f"{q.where}: question id {q.id!r} repeats {seen[q.id]}; ids must be unique")
        seen[q.id] = q.where
    return found


__all__ = ["Question", "Questions", "locate", "read_questions"]
