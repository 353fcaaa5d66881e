"""The ``multiple_choice`` task: pick the answer of a question among its choices, given a context (C3).

Files (chosen by the suffix ``.jsonl``):

- C3 JSON: a list of documents ``[[context sentences], [{"question", "choice": [...], "answer", "id"?}], id?]``;
  the context is the sentences joined by newlines; a question's id is its ``id``, else ``<document id>-<n>``.
- JSONL: one ``{"context", "question", "choices": [...], "answer", "id"?}`` per line (id: the line number).

The answer is the text of one of the choices; an answer that is not among them, a missing field, fewer than
2 choices, an empty context, question or choice, or malformed JSON is an error naming the file and the
position (``file:line`` or the JSON path). A file to predict may leave the answers out.

Encoding (TencentPretrain's run_c3 layout): for each choice ``[CLS] choice [SEP] question [SEP] context
[SEP]``, segment 0 for choice and question, 1 for the context. Longer than ``seq_length``: the context loses
tokens from its end (then the question, then the choice); such questions are counted. A ``cls`` head with
one output scores the pooled sequence of each choice (``pooling``, optional ``pooler``; dropout as the
encoder's); a softmax over the question's choices (as many as it has: questions with fewer choices than
others in a batch are masked, not padded with filler answers) gives the probabilities, cross-entropy the
loss, accuracy the metric (also the best-dev selection).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.config_schema import build, choice, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.model_config import POOLINGS
from modaloom.registry import register
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.text_io import MemoryLoader, read_lines


@dataclass
class ChoiceQuestion:
    """One question as read: position in the file, id, texts, choices and the answer's index (None: none)."""

    where: str
    id: str
    context: str
    question: str
    choices: list[str]
    answer: int | None = None


@dataclass
class MultipleChoiceOptions:
    """Options of the multiple_choice task (``task.<key>=value``)."""

    pooling: str = choice("first", *POOLINGS)  # how each choice's sequence becomes one vector for the scorer
    pooler: bool = False  # dense + tanh before the output (TencentPretrain's run_c3 has none)


def _text(value: Any, key: str, where: str) -> str:
    text = value.get(key) if isinstance(value, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: no string field {key!r}")
    if not text.strip():
        raise DataError(f"{where}: empty {key}")
    return text


def _question(raw: Any, context: str, choices_key: str, qid: str, where: str, need_answer: bool) -> ChoiceQuestion:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object with question, {choices_key}, answer")
    question = _text(raw, "question", where)
    choices = raw.get(choices_key)
    if not isinstance(choices, list) or len(choices) < 2:
        raise DataError(f"{where}: {choices_key!r} must be a list of at least 2 choices, got {choices!r}")
    for k, item in enumerate(choices):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{where}: {choices_key}[{k}] must be a non-empty string, got {item!r}")
    answer = raw.get("answer")
    if answer is None or answer == "":
        if need_answer:
            raise DataError(f"{where}: no field 'answer', which this file needs")
        return ChoiceQuestion(where, qid, context, question, list(choices))
    if not isinstance(answer, str) or answer not in choices:
        raise DataError(f"{where}: answer {answer!r} is not among the choices {choices}")
    return ChoiceQuestion(where, qid, context, question, list(choices), choices.index(answer))


def _read_c3(path: Path, need_answer: bool) -> list[ChoiceQuestion]:
    try:
        with open(path, encoding="utf-8") as fh:
            documents = json.load(fh)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    if not isinstance(documents, list):
        raise DataError(f"{path}: expected a JSON list of C3 documents [[sentences], [questions], id]")
    out = []
    for i, doc in enumerate(documents):
        where = f"{path}: [{i}]"
        if not isinstance(doc, list) or len(doc) < 2 or not isinstance(doc[0], list) or not isinstance(doc[1], list):
            raise DataError(f"{where}: a C3 document is [[context sentences], [questions], id]")
        if not all(isinstance(s, str) for s in doc[0]):
            raise DataError(f"{where}[0]: context sentences must be strings")
        context = "\n".join(doc[0])
        if not context.strip():
            raise DataError(f"{where}[0]: empty context")
        doc_id = str(doc[2]) if len(doc) > 2 else str(i)
        for j, raw in enumerate(doc[1]):
            qid = raw.get("id") if isinstance(raw, dict) else None
            qid = str(qid) if qid is not None else f"{doc_id}-{j}"
            out.append(_question(raw, context, "choice", qid, f"{where}[1][{j}] (id {qid})", need_answer))
    return out


def _read_jsonl(path: Path, need_answer: bool) -> list[ChoiceQuestion]:
    out = []
    for number, line in enumerate(read_lines(path), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON question)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object with context, question, choices, answer")
        context = _text(value, "context", where)
        qid = str(value.get("id", number))
        out.append(_question(value, context, "choices", qid, where, need_answer))
    return out


def read_choice_questions(path: str | Path, need_answer: bool) -> list[ChoiceQuestion]:
    """Every question of a C3 JSON or JSONL file; ``need_answer``: a question without an answer is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    found = _read_jsonl(path, need_answer) if path.suffix.lower() == ".jsonl" else _read_c3(path, need_answer)
    if not found:
        raise DataError(f"{path}: no questions")
    return found


def fit_parts(choice_ids: list[int], question_ids: list[int], context_ids: list[int],
              budget: int) -> tuple[list[int], list[int], list[int]]:
    """The three parts cut to ``budget`` tokens in all: context from its end first, then question, then choice."""
    parts = [list(choice_ids), list(question_ids), list(context_ids)]
    excess = sum(len(p) for p in parts) - budget
    for k in (2, 1, 0):
        if excess <= 0:
            break
        cut = min(excess, len(parts[k]))
        parts[k] = parts[k][:len(parts[k]) - cut]
        excess -= cut
    return parts[0], parts[1], parts[2]


@dataclass
class ChoiceLoader(MemoryLoader):
    """Batches of questions: (B, C, L) ids, segments and mask, a (B, C) choice mask, labels when known."""

    def length(self, example: dict[str, Any]) -> int:
        return sum(len(ids) for ids in example["input_ids"])

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        choices = max(len(e["input_ids"]) for e in examples)
        width = max(len(ids) for e in examples for ids in e["input_ids"])
        ids = np.full((len(examples), choices, width), self.pad_id, dtype=np.int64)
        seg = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for b, e in enumerate(examples):
            for c, (tokens, segments) in enumerate(zip(e["input_ids"], e["segment_ids"], strict=True)):
                ids[b, c, :len(tokens)], seg[b, c, :len(tokens)], mask[b, c, :len(tokens)] = tokens, segments, 1
        batch = {"input_ids": torch.from_numpy(ids), "segment_ids": torch.from_numpy(seg),
                 "attention_mask": torch.from_numpy(mask), "choice_mask": torch.from_numpy(mask[:, :, 0] > 0),
                 "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}
        if all("label" in e for e in examples):
            batch["task_labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return batch


@register("task", "multiple_choice")
class MultipleChoiceTask(FinetuneTask):
    """Multiple choice: one pooled score per (context, question, choice), softmax over the choices, accuracy."""

    name = "multiple_choice"
    Options = MultipleChoiceOptions  # its task.<key> options (docs/config-reference.md)
    selection_metric = "accuracy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(MultipleChoiceOptions, dict(self.inputs_.options), path="task")
        self.questions: list[ChoiceQuestion] = []  # of the file read last (the one being evaluated)
        self.max_choices = 0
        self.truncated: dict[str, int] = {}

    # ---- data
    def examples(self, path: Path, need_answer: bool, what: str) -> list[dict[str, Any]]:
        """Tokenized questions of a file, one sequence per choice."""
        assert self.tokenizer is not None
        tok, seq_length = self.tokenizer, self.cfg.data.seq_length
        cls_id, sep_id = tok.special_id("cls", "multiple_choice"), tok.special_id("sep", "multiple_choice")
        questions = read_choice_questions(path, need_answer)
        contexts = tok.encode_batch([q.context for q in questions])
        asked = tok.encode_batch([q.question for q in questions])
        flat = tok.encode_batch([c for q in questions for c in q.choices])
        out, cut, used = [], 0, 0
        for n, (q, context, question) in enumerate(zip(questions, contexts, asked, strict=True)):
            sequences, segments, was_cut = [], [], False
            for option in flat[used:used + len(q.choices)]:
                a, b, c = fit_parts(option, question, context, seq_length - 4)
                was_cut |= len(a) + len(b) + len(c) < len(option) + len(question) + len(context)
                sequences.append([cls_id, *a, sep_id, *b, sep_id, *c, sep_id])
                segments.append([0] * (len(a) + len(b) + 3) + [1] * (len(c) + 1))
            used += len(q.choices)
            cut += int(was_cut)
            example: dict[str, Any] = {"input_ids": sequences, "segment_ids": segments, "index": n}
            if q.answer is not None:
                example["label"] = q.answer
            out.append(example)
        self.truncated[what] = cut
        if cut:
            print(f"modaloom multiple_choice: {cut} of {len(questions)} questions of {path} were longer than "
                  f"{seq_length} tokens with a choice; their context was cut from its end", file=sys.stderr)
        self.questions = questions
        self.max_choices = max(self.max_choices, *(len(q.choices) for q in questions))
        return out

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> ChoiceLoader:
        assert self.tokenizer is not None
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        return ChoiceLoader(examples, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                            shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                            group_by_length=self.cfg.train.group_by_length)

    def prepare(self) -> None:
        cfg, paths = self.cfg, self.paths
        self.tokenizer, where = resolve_tokenizer(paths.init_from, self.inputs_.vocab)
        check_vocabulary(cfg, self.tokenizer, where)
        max_positions = cfg.model.embedding.max_seq_length
        if "pos" in cfg.model.embedding.parts and cfg.data.seq_length > max_positions:
            if "data.seq_length" in self.inputs_.overridden:
                raise ConfigError(f"data.seq_length {cfg.data.seq_length} exceeds the model's max_seq_length "
                                  f"{max_positions}; lower --seq-length")
            cfg.data.seq_length = max_positions
        if cfg.data.seq_length < 8:
            raise ConfigError(f"data.seq_length {cfg.data.seq_length} leaves no room for a choice, a question and "
                              f"a context; raise --seq-length")
        self.train_examples = self.examples(paths.data, True, "train")
        self.dev_examples = self.examples(paths.eval_data, True, "dev") if paths.eval_data else None
        self.set_head()
        self.set_steps(len(self.train_examples))

    def set_head(self) -> None:
        """Replace the model's targets by a ``cls`` head with one output (the score of a choice)."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = to_dict(self.cfg.model)
        model["targets"] = [{"type": "cls", "labels_num": 1, "pooling": self.options.pooling,
                             "pooler": self.options.pooler}]
        self.cfg.model = build(ModelConfig, model, Source(), "model")

    def test_loader(self, path: Path) -> ChoiceLoader:
        return self.loader(self.examples(path, True, "test"), False)

    def input_loader(self, path: Path) -> ChoiceLoader:
        """Questions of a file to predict or evaluate (answers checked and kept when present)."""
        return self.loader(self.examples(path, False, "input"), False)

    def data_description(self) -> str:
        return (f"{len(self.train_examples)} training questions in {self.paths.data}, up to {self.max_choices} "
                f"choices, {self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "multiple_choice": to_dict(self.options)}

    # ---- model steps
    def logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """(B, max_choices) scores; choices a question lacks are -inf."""
        present = batch["choice_mask"]
        inputs = {k: batch[k][present] for k in ("input_ids", "segment_ids", "attention_mask")}
        scores = model(inputs).logits["cls"].float().reshape(-1)
        width = max(self.max_choices, present.shape[1])
        out = torch.full((present.shape[0], width), float("-inf"), device=scores.device)
        out[:, :present.shape[1]][present] = scores
        return out

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(model, batch)
        labels = batch["task_labels"]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss, {"loss": loss.detach(), "accuracy": (logits.argmax(-1) == labels).float().mean().detach()}

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        out = {"index": batch["index"], "logits": self.logits(model, batch)}
        if "task_labels" in batch:
            out["labels"] = batch["task_labels"]
        return out

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        if "labels" not in outputs:
            raise DataError("the evaluation file has no answers; `evaluate` needs an answer for every question")
        logits, labels = outputs["logits"], outputs["labels"]
        return {"accuracy": float((logits.argmax(-1) == labels).double().mean()),
                "loss": float(torch.nn.functional.cross_entropy(logits, labels)), "questions": float(len(labels))}

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        order = torch.argsort(outputs["index"])
        probabilities = outputs["logits"][order].softmax(-1)
        for i, row in zip(outputs["index"][order].tolist(), probabilities.tolist(), strict=True):
            q = self.questions[i]
            shown = [round(p, 6) for p in row[:len(q.choices)]]  # the answer is the first highest shown
            yield {"id": q.id, "answer": q.choices[shown.index(max(shown))], "probabilities": shown}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "seq_length": self.cfg.data.seq_length,
                "truncated": dict(self.truncated)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore the options and the tokenizer of a fine-tuned model folder."""
        self.options = build(MultipleChoiceOptions, dict(section.get("options") or {}), path="task.options")
        self.tokenizer, where = resolve_tokenizer(model_dir, "")
        check_vocabulary(self.cfg, self.tokenizer, where)
