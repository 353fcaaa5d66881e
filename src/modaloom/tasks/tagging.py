"""The ``tagging`` task: sequence tagging (NER) with BIO labels, one label per input token, optional CRF.

Data (``.jsonl``/``.json`` is JSONL, anything else TSV):

- TSV, TencentPretrain's NER format: a header naming ``text_a`` and ``label``; ``text_a`` holds the tokens
  separated by spaces, ``label`` one tag per token, also separated by spaces. A file to predict may lack
  ``label``.
- JSONL: ``{"tokens": [...], "labels": [...]}`` per line (``labels`` optional for prediction).

A token count that differs from the label count, a label outside the label set, malformed JSON, an empty line
or token list: a ``DataError`` naming ``file:line``.

Task options (``task.<key>=value``, recorded in the fine-tuned model's ``config.json``):

- ``label2id``: TencentPretrain's ``label2id.json`` (``{"O": 0, "B-LOC": 1, ...}``) fixing the label set and
  its order; without it the train file's labels, ``O`` first, then by entity type, ``B-`` before ``I-``.
- ``crf``: a linear-chain CRF on the tagger (``layers/crf.py``), trained by its likelihood, decoded by Viterbi.
- ``tokenize``: ``pieces`` (each token split by the model's tokenizer; the first piece carries the token's label,
  the other pieces are ignored by the loss and their predictions unused) or ``lookup`` (each token is one
  vocabulary entry, unknown ones ``[UNK]``, as TencentPretrain's ``run_ner.py``). A token the tokenizer turns
  into no piece at all (only control characters) becomes ``[UNK]``.
- ``special_tokens``: ``[CLS] ... [SEP]`` around the pieces (BERT and HF's token-classification pipeline) or
  none (TencentPretrain's ``run_ner.py``).

Truncation: pieces past ``seq_length`` are cut; a token whose first piece is cut is predicted ``O``, so that a
prediction still has one label per input token; the record's ``truncated`` says how many tokens that was, and
the number of truncated examples per file is printed and kept in the model's task section. Metrics count the
truncated tokens with their ``O`` prediction.

Metrics (``seqeval``, its default CoNLL evaluation): entity precision, recall and F1 (micro), token accuracy.
Labels outside the BIO scheme (TencentPretrain's ``[PAD]`` class of a converted model) count as ``O`` for
entities. The best dev checkpoint is chosen by ``f1``. Predictions: ``{"tokens", "labels", "entities":
[{"type", "start", "end", "text"}], "truncated"}`` per input line; ``end`` is exclusive, ``text`` the
entity's tokens joined by a space.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.batch import IGNORE_INDEX
from modaloom.config_schema import build, choice, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.targets.tagger import TAG_LABELS, WORD_MASK
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.text_io import MemoryLoader, is_jsonl, read_lines, tsv_header, tsv_rows

HEAD = "tagger"
PREFIX_ORDER = {"B": 0, "I": 1, "E": 2, "S": 3}


@dataclass
class TaggingOptions:
    """Options of the tagging task (``task.<key>=value``)."""

    label2id: str = ""  # TencentPretrain's label2id.json: the label set and order (default: the train file's)
    crf: bool = False  # a CRF layer on the tagger
    tokenize: str = choice("pieces", "pieces", "lookup")  # split tokens into pieces, or look each up whole
    special_tokens: bool = True  # [CLS] ... [SEP] around the pieces


@dataclass
class TagRow:
    """One example as read: where it came from, its tokens and their labels (None: unlabelled)."""

    where: str
    tokens: list[str]
    labels: list[str] | None = None


# ---------------------------------------------------------------- reading


def read_tag_rows(path: str | Path, need_labels: bool) -> list[TagRow]:
    """Every example of a NER TSV or JSONL file; ``need_labels``: a row without labels is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines = read_lines(path)
    rows = _read_jsonl(path, lines) if is_jsonl(path) else _read_tsv(path, lines, need_labels)
    if not rows:
        raise DataError(f"{path}: no examples")
    for row in rows:
        if row.labels is None and need_labels:
            raise DataError(f"{row.where}: no labels, which this file needs")
        if row.labels is not None and len(row.labels) != len(row.tokens):
            raise DataError(f"{row.where}: {len(row.tokens)} tokens but {len(row.labels)} labels; give one label "
                            f"per token")
    return rows


def _read_tsv(path: Path, lines: list[str], need_labels: bool) -> list[TagRow]:
    header = tsv_header(path, lines, "text_a label", ("text_a", "label") if need_labels else ("text_a",))
    rows = []
    for where, value in tsv_rows(path, lines, header):
        tokens = value["text_a"].split()
        if not tokens:
            raise DataError(f"{where}: text_a holds no token")
        labels = value["label"].split() if "label" in value else None
        rows.append(TagRow(where, tokens, labels))
    return rows


def _string_list(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key} must be a list of strings, got {json.dumps(value)[:60]}")
    return value


def _read_jsonl(path: Path, lines: list[str]) -> list[TagRow]:
    rows = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON example)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict) or "tokens" not in value:
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise DataError(f"{where}: expected a JSON object with tokens [, labels], got {keys}")
        tokens = _string_list(value["tokens"], where, "tokens")
        if not tokens:
            raise DataError(f"{where}: tokens is empty")
        labels = _string_list(value["labels"], where, "labels") if value.get("labels") is not None else None
        rows.append(TagRow(where, tokens, labels))
    return rows


def read_label2id(path: str | Path) -> list[str]:
    """The labels of a TencentPretrain ``label2id.json`` in id order; ids must be 0..n-1, each once."""
    path = Path(path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (task.label2id)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: expected a JSON object {{label: id}}, e.g. {{\"O\": 0, \"B-PER\": 1}}")
    ids = sorted(mapping.values(), key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else 0))
    if ids != list(range(len(mapping))):
        raise DataError(f"{path}: the ids must be the integers 0..{len(mapping) - 1}, each once; got {ids}")
    return [label for label, _ in sorted(mapping.items(), key=lambda item: item[1])]


def sort_tags(labels: set[str]) -> list[str]:
    """``O`` first, then by entity type, ``B-`` before ``I-`` (``E-``, ``S-``); other names last, sorted."""

    def key(label: str) -> tuple[int, str, int, str]:
        if label == "O":
            return (0, "", 0, "")
        prefix, sep, kind = label.partition("-")
        if sep and prefix in PREFIX_ORDER:
            return (1, kind, PREFIX_ORDER[prefix], "")
        return (2, "", 0, label)

    return sorted(labels, key=key)


def bio(labels: list[str]) -> list[str]:
    """Labels with every name outside the BIO(ES) scheme read as ``O`` (for seqeval and entities)."""
    return [x if x == "O" or (len(x) > 2 and x[1] == "-" and x[0] in PREFIX_ORDER) else "O" for x in labels]


def entities(tokens: list[str], labels: list[str]) -> list[dict[str, Any]]:
    """The entities of one tagged sentence: type, start, end (exclusive) and text (tokens joined by a space)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [{"type": kind, "start": start, "end": end + 1, "text": " ".join(tokens[start:end + 1])}
            for kind, start, end in get_entities(bio(labels))]


# ---------------------------------------------------------------- batches


def collate_tags(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example: input_ids, segment_ids, attention_mask, word_mask (first pieces), index;
    with labels, tag_labels (-100 off the first pieces) and gold (B, words) label ids of every token."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    words = np.zeros((len(examples), width), dtype=np.int64)
    for row, e in enumerate(examples):
        ids[row, :len(e["input_ids"])] = e["input_ids"]
        mask[row, :len(e["input_ids"])] = 1
        words[row, e["starts"]] = 1
    batch = {"input_ids": torch.from_numpy(ids), "segment_ids": torch.zeros_like(torch.from_numpy(ids)),
             "attention_mask": torch.from_numpy(mask), WORD_MASK: torch.from_numpy(words),
             "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}
    if "label" in examples[0]:
        tags = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
        gold = np.full((len(examples), max(len(e["label"]) for e in examples)), IGNORE_INDEX, dtype=np.int64)
        for row, e in enumerate(examples):
            tags[row, e["starts"]] = e["label"][:len(e["starts"])]
            gold[row, :len(e["label"])] = e["label"]
        batch[TAG_LABELS] = torch.from_numpy(tags)
        batch["gold"] = torch.from_numpy(gold)
    return batch


class TaggingLoader(MemoryLoader):
    """``MemoryLoader`` with the tagging collate (labels per token, first-piece mask)."""

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_tags(examples, self.pad_id)


MODEL_KEYS = ("input_ids", "segment_ids", "attention_mask", WORD_MASK, TAG_LABELS)


# ---------------------------------------------------------------- the task


@register("task", "tagging")
class TaggingTask(FinetuneTask):
    """Sequence tagging: NER reader, ``tagger`` head (optional CRF), seqeval metrics, per-token predictions."""

    name = "tagging"
    Options = TaggingOptions  # its task.<key> options (docs/config-reference.md)
    selection_metric = "f1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(TaggingOptions, dict(self.inputs_.options), path="task")
        self.labels: list[str] = []
        self.truncated: dict[str, int] = {}
        self.input_rows: list[TagRow] = []

    # ---- labels and examples
    def label_ids(self, row: TagRow) -> list[int]:
        """The label ids of a labelled row; a label outside the label set names file:line."""
        index = {name: i for i, name in enumerate(self.labels)}
        assert row.labels is not None
        for label in row.labels:
            if label not in index:
                source = f"of {self.options.label2id}" if self.options.label2id else "of the training file"
                shown = ", ".join(self.labels[:20]) + (" ..." if len(self.labels) > 20 else "")
                raise DataError(f"{row.where}: label {label!r} is not in the label set {source} ({shown})")
        return [index[label] for label in row.labels]

    def token_pieces(self, rows: list[TagRow]) -> list[list[list[int]]]:
        """Per row, per token: its piece ids (``tokenize`` option); never empty (``[UNK]`` instead)."""
        assert self.tokenizer is not None
        unk = self.tokenizer.special_id("unk", "tagging")
        flat = [token for row in rows for token in row.tokens]
        if self.options.tokenize == "lookup":
            found = [self.tokenizer.token_to_id(token) for token in flat]
            pieces = [[unk if i is None else i] for i in found]
        else:
            pieces = [p or [unk] for p in self.tokenizer.encode_batch(flat)]
        out, start = [], 0
        for row in rows:
            out.append(pieces[start:start + len(row.tokens)])
            start += len(row.tokens)
        return out

    def examples(self, rows: list[TagRow], path: Path, what: str) -> list[dict[str, Any]]:
        """Tokenized examples: piece ids, the position of each kept token's first piece, label ids."""
        assert self.tokenizer is not None
        special = self.options.special_tokens
        budget = self.cfg.data.seq_length - (2 if special else 0)
        if budget < 1:
            raise DataError(f"seq_length {self.cfg.data.seq_length} leaves no room for tokens; raise data.seq_length")
        head = [self.tokenizer.special_id("cls", "tagging")] if special else []
        tail = [self.tokenizer.special_id("sep", "tagging")] if special else []
        labelled = all(r.labels is not None for r in rows)
        out, truncated = [], 0
        for i, (row, pieces) in enumerate(zip(rows, self.token_pieces(rows), strict=True)):
            ids, starts = list(head), []
            for token_pieces in pieces:
                if len(ids) - len(head) >= budget:
                    break
                starts.append(len(ids))
                ids.extend(token_pieces[:budget - (len(ids) - len(head))])
            truncated += len(starts) < len(row.tokens) or sum(map(len, pieces)) > budget
            example: dict[str, Any] = {"input_ids": ids + tail, "starts": starts, "index": i,
                                       "words": len(row.tokens)}
            if labelled:
                example["label"] = self.label_ids(row)
            out.append(example)
        self.truncated[what] = truncated
        if truncated:
            print(f"modaloom {self.name}: {truncated} of {len(rows)} examples of {path} were longer than "
                  f"{self.cfg.data.seq_length} pieces and truncated (tokens cut off are predicted O)",
                  file=sys.stderr)
        return out

    def file_examples(self, path: Path, need_labels: bool, what: str) -> list[dict[str, Any]]:
        rows = read_tag_rows(path, need_labels)
        if what == "input":
            self.input_rows = rows
        return self.examples(rows, path, what)

    # ---- preparation
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
        train_rows = read_tag_rows(paths.data, need_labels=True)
        if self.options.label2id:
            self.labels = read_label2id(self.options.label2id)
        else:
            self.labels = sort_tags({label for row in train_rows for label in row.labels or []})
        if len(self.labels) < 2:
            raise DataError(f"{paths.data}: a tagger needs at least 2 labels, found {self.labels}")
        self.train_examples = self.examples(train_rows, paths.data, "train")
        self.dev_examples = self.file_examples(paths.eval_data, True, "dev") if paths.eval_data else None
        self.set_head()
        self.set_steps(len(self.train_examples))

    def set_head(self) -> None:
        """Replace the model's targets by one ``tagger`` head sized for the labels."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = to_dict(self.cfg.model)
        model["targets"] = [{"type": HEAD, "labels_num": len(self.labels), "crf": self.options.crf}]
        self.cfg.model = build(ModelConfig, model, Source(), "model")

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> TaggingLoader:
        assert self.tokenizer is not None
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        return TaggingLoader(examples, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                             shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                             group_by_length=self.cfg.train.group_by_length)

    def test_loader(self, path: Path) -> TaggingLoader:
        return self.loader(self.file_examples(path, True, "test"), False)

    def input_loader(self, path: Path) -> TaggingLoader:
        """Batches of a file to predict or evaluate (labels, when every row has them, checked and kept)."""
        return self.loader(self.file_examples(path, False, "input"), False)

    def data_description(self) -> str:
        return (f"{len(self.train_examples)} training examples in {self.paths.data}, {len(self.labels)} labels, "
                f"{self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "labels": self.labels,
                "options": {k: v for k, v in to_dict(self.options).items() if k != "label2id"}}

    # ---- model steps
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output = model({k: v for k, v in batch.items() if k in MODEL_KEYS})
        metrics = {name: output.metrics[f"{HEAD}_{name}"] for name in ("loss", "accuracy")}
        return output.loss, metrics

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        inputs = {k: v for k, v in batch.items() if k in MODEL_KEYS and k != TAG_LABELS}
        logits = model(inputs).logits[HEAD]
        head = getattr(model, "module", model).targets[HEAD]
        tags, kept = head.decode(logits, batch[WORD_MASK].bool())
        counts = kept.sum(1).tolist()
        out: dict[str, Any] = {"index": batch["index"],
                               "pred": [row[:n] for row, n in zip(tags.tolist(), counts, strict=True)]}
        if "gold" in batch:
            out["gold"] = [[g for g in row if g != IGNORE_INDEX] for row in batch["gold"].tolist()]
        return out

    def label_rows(self, outputs: dict[str, Any]) -> list[tuple[list[str], int]]:
        """(labels of every token, tokens truncated) per example in input order; cut-off tokens are ``O``."""
        order = torch.argsort(outputs["index"]).tolist()
        words = [len(g) for g in outputs["gold"]] if "gold" in outputs else None
        rows = []
        for i in order:
            pred = [self.labels[t] for t in outputs["pred"][i]]
            total = words[i] if words is not None else len(self.input_rows[int(outputs["index"][i])].tokens)
            rows.append((pred + ["O"] * (total - len(pred)), total - len(pred)))
        return rows

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        if "gold" not in outputs:
            raise DataError("the evaluation file has no labels; `evaluate` needs a labelled file")
        order = torch.argsort(outputs["index"]).tolist()
        gold = [[self.labels[t] for t in outputs["gold"][i]] for i in order]
        pred = [labels for labels, _ in self.label_rows(outputs)]
        true_bio, pred_bio = [bio(g) for g in gold], [bio(p) for p in pred]
        tokens = sum(len(g) for g in gold)
        correct = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
        return {"f1": float(f1_score(true_bio, pred_bio, zero_division=0)),
                "precision": float(precision_score(true_bio, pred_bio, zero_division=0)),
                "recall": float(recall_score(true_bio, pred_bio, zero_division=0)),
                "accuracy": correct / max(tokens, 1), "examples": float(len(gold))}

    def prediction_records(self, outputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        order = torch.argsort(outputs["index"]).tolist()
        for i, (labels, cut) in zip(order, self.label_rows(outputs), strict=True):
            tokens = self.input_rows[int(outputs["index"][i])].tokens
            yield {"tokens": tokens, "labels": labels, "entities": entities(tokens, labels), "truncated": cut}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "labels": self.labels,
                "seq_length": self.cfg.data.seq_length, "truncated": dict(self.truncated)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore options, labels and the tokenizer of a fine-tuned model folder."""
        self.options = build(TaggingOptions, dict(section.get("options") or {}), path="task.options")
        self.labels = [str(x) for x in section.get("labels") or []]
        heads = [t for t in self.cfg.model.targets if t.type == HEAD]
        if not heads or heads[0].labels_num != len(self.labels):
            raise ConfigError(f"{model_dir}: the task section names {len(self.labels)} labels but the model has "
                              f"no tagger head of that size")
        self.tokenizer, where = resolve_tokenizer(model_dir, "")
        check_vocabulary(self.cfg, self.tokenizer, where)
