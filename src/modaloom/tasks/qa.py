"""The ``qa`` task: extractive question answering (CMRC2018 / SQuAD v1 JSON, or JSONL; see ``tasks/qa_io.py``).

Windows: each question becomes ``[CLS] question [SEP] context-part [SEP]`` (segments 0 then 1). A context
longer than the room left by the question (``seq_length - question - 3`` tokens) is cut into overlapping
windows that start ``doc_stride`` tokens apart (at most the room, so that no token is skipped); a question
longer than ``max_question_length`` tokens keeps its first ones (counted). Labels: the first and last tokens
of the question's first answer located in the context (from the character offsets) when the window holds the
whole answer, else position 0 ([CLS], "no answer here"). The head is the ``span`` target; the loss the mean
of start and end cross-entropies.

Decoding (``decoding``): per window, start and end scores are softmax-normalised over [CLS] and the
window's context tokens. ``best`` takes the span (start <= end < start + ``max_answer_length``) of highest
p_start * p_end; ``greedy`` takes the best start, then the best end from it. A question's answer is the span
of its highest-scoring window (p_start * p_end; ``greedy`` compares p_start + p_end), cut from the original
context by the tokens' character offsets; its ``score`` is that span's p_start * p_end.
``tencentpretrain`` is run_cmrc.py's rule exactly (``decode_tencentpretrain``; windows padded to seq_length;
needs ``tokenization=char``), which ``convert --from tencentpretrain --task qa`` records.

Tokenization (``tokenization``): ``model`` uses the model's tokenizer with its offset mapping (WordPiece,
BPE, char, space); ``char`` makes every character one token looked up in the vocabulary ([UNK] when absent,
spaces included), as TencentPretrain's run_cmrc does, so that a converted TencentPretrain CMRC model sees
the inputs it was trained on.

Metrics: CMRC2018's EM and F1 (``tasks/cmrc_metrics.py``), in percent as its official script prints them;
the best dev checkpoint is chosen by F1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modaloom.config_schema import build, choice, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.targets.span import END_KEY, START_KEY
from modaloom.tasks.cmrc_metrics import cmrc_scores
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.qa_io import Question, read_questions
from modaloom.tasks.text_io import MemoryLoader

MODEL_KEYS = ("input_ids", "segment_ids", "attention_mask")


@dataclass
class QAOptions:
    """Options of the qa task (``task.<key>=value``)."""

    doc_stride: int = 128  # tokens between the starts of two windows of one context
    max_answer_length: int = 30  # tokens of the longest answer decoding considers
    max_question_length: int = 64  # tokens of a question kept (its first ones)
    # model: the model's tokenizer with offsets; char: one token per character
    tokenization: str = choice("model", "model", "char")
    # best: max p_start * p_end; greedy: best start then best end; tencentpretrain: its rule
    decoding: str = choice("best", "best", "greedy", "tencentpretrain")

    def check(self) -> None:
        if self.decoding == "tencentpretrain" and self.tokenization != "char":
            raise ConfigError("task.decoding=tencentpretrain maps positions to characters one to one; it needs "
                              "task.tokenization=char")
        for key in ("doc_stride", "max_answer_length", "max_question_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"task.{key} must be >= 1, got {getattr(self, key)}")


def qa_options(values: dict[str, Any], path: str = "task") -> QAOptions:
    """QAOptions from ``task.<key>`` values, checked (a bad key, value or combination names the option)."""
    options = build(QAOptions, dict(values), path=path)
    options.check()
    return options


def encode_with_offsets(tokenizer: Any, texts: Sequence[str], mode: str) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(token ids, character offsets (start, end) of each token) of every text."""
    if mode == "char":
        unk = tokenizer.special_id("unk", "qa with task.tokenization=char")
        ids_of: dict[str, int] = {}
        out = []
        for text in texts:
            ids = []
            for ch in text:
                if ch not in ids_of:
                    found = tokenizer.token_to_id(ch)
                    ids_of[ch] = unk if found is None else found
                ids.append(ids_of[ch])
            out.append((ids, [(k, k + 1) for k in range(len(text))]))
        return out
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        raise ConfigError(f"the {tokenizer.type_name} tokenizer gives no character offsets, which qa needs to map "
                          f"answers to tokens; use task.tokenization=char or a WordPiece/BPE/char vocabulary")
    encodings = backend.encode_batch(list(texts), add_special_tokens=False)
    return [(list(e.ids), [tuple(o) for o in e.offsets]) for e in encodings]


def answer_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token covering the characters [start, end) of the context; None if no token does."""
    first = next((i for i, (s, e) in enumerate(offsets) if e > start), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def window_starts(tokens: int, room: int, stride: int) -> list[int]:
    """Start offsets of the windows of ``room`` tokens covering ``tokens`` context tokens."""
    starts, start = [0], 0
    while start + room < tokens:
        start += min(stride, room)
        starts.append(start)
    return starts


def decode_windows(logits: torch.Tensor, context: torch.Tensor, max_length: int,
                   greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rank, score, start, end) per window from (B, L, 2) logits and a (B, L) context-token mask.

    start/end are token positions (-1 for a window without context tokens, whose rank is -inf)."""
    batch, length = context.shape
    context = context.bool()
    domain = context.clone()
    domain[:, 0] = True
    low = torch.finfo(torch.float32).min
    log_start = logits[..., 0].float().masked_fill(~domain, low).log_softmax(-1)
    log_end = logits[..., 1].float().masked_fill(~domain, low).log_softmax(-1)
    pos = torch.arange(length, device=logits.device)
    band = (pos[None, :] >= pos[:, None]) & (pos[None, :] < pos[:, None] + max_length)
    valid = band[None] & context[:, :, None] & context[:, None, :]
    rows = torch.arange(batch, device=logits.device)
    if greedy:
        start = log_start.masked_fill(~context, low).argmax(-1)
        end = log_end.masked_fill(~valid[rows, start], low).argmax(-1)
    else:
        pairs = (log_start[:, :, None] + log_end[:, None, :]).masked_fill(~valid, low)
        flat = pairs.reshape(batch, -1).argmax(-1)
        start, end = flat // length, flat % length
    p_start, p_end = log_start[rows, start].exp(), log_end[rows, end].exp()
    score = p_start * p_end
    rank = p_start + p_end if greedy else score
    has = context.any(-1)
    minus = torch.full_like(start, -1)
    return (torch.where(has, rank, torch.full_like(rank, float("-inf"))), torch.where(has, score, 0.0),
            torch.where(has, start, minus), torch.where(has, end, minus))


def decode_tencentpretrain(logits: torch.Tensor, context_at: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(rank, score, start, end) per window as run_cmrc.py's ``get_answers``: softmax over every position of
    the window padded to seq_length, start = best position from the context on (the final [SEP] and the
    padding included), end = best position from the start on; rank p_start + p_end."""
    length = logits.shape[1]
    p_start, p_end = logits[..., 0].float().softmax(-1), logits[..., 1].float().softmax(-1)
    pos = torch.arange(length, device=logits.device)[None, :]
    start = p_start.masked_fill(pos < context_at[:, None], -1.0).argmax(-1)
    end = p_end.masked_fill(pos < start[:, None], -1.0).argmax(-1)
    rows = torch.arange(len(start), device=logits.device)
    ps, pe = p_start[rows, start], p_end[rows, end]
    return ps + pe, ps * pe, start, end


@dataclass
class WindowLoader(MemoryLoader):
    """Batches of windows: ``MemoryLoader``'s ids, mask and labels, plus each window's context mask, token
    character offsets, question and source (the file it came from)."""

    questions: list[Question] = field(default_factory=list)
    pad_to: int = 0  # pad every window to this many tokens (decoding=tencentpretrain: as run_cmrc.py does)
    pad_segment: int = 0  # the segment id of that padding (2: TencentPretrain's padding row, see interop)

    def __post_init__(self) -> None:
        self.by_index = {w["index"]: w for w in self.examples}
        super().__post_init__()

    @property
    def record_count(self) -> int:
        return len(self.questions)

    def __iter__(self):
        for batch in super().__iter__():
            windows = [self.by_index[i] for i in batch["index"].tolist()]
            width = batch["input_ids"].shape[1]
            char_start = torch.full((len(windows), width), -1, dtype=torch.long)
            char_end = torch.full((len(windows), width), -1, dtype=torch.long)
            for row, w in enumerate(windows):
                first = w["context_at"]
                if w["offsets"]:
                    span = torch.tensor(w["offsets"], dtype=torch.long)
                    char_start[row, first:first + len(span)] = span[:, 0]
                    char_end[row, first:first + len(span)] = span[:, 1]
            batch["char_start"], batch["char_end"] = char_start, char_end
            for key in ("question", "source", "window", "context_at"):
                batch[key] = torch.tensor([w[key] for w in windows], dtype=torch.long)
            batch["char_base"] = torch.tensor([w["offsets"][0][0] if w["offsets"] else 0 for w in windows])
            extra = self.pad_to - width
            if extra > 0:
                pad = {"input_ids": self.pad_id, "segment_ids": self.pad_segment, "attention_mask": 0,
                       "char_start": -1, "char_end": -1}
                for key, value in pad.items():
                    batch[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)
            batch["context_mask"] = batch["char_start"] >= 0
            yield batch


@register("task", "qa")
class QATask(FinetuneTask):
    """Extractive QA: question/context windows, ``span`` head, CMRC2018 EM/F1, one answer per question."""

    name = "qa"
    Options = QAOptions  # its task.<key> options (docs/config-reference.md)
    selection_metric = "f1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = qa_options(self.inputs_.options)
        self.sources: list[list[Question]] = []  # the questions of every file read, by source id
        self.counts: dict[str, dict[str, int]] = {}

    # ---- data
    def windows(self, questions: list[Question], labelled: bool, what: str) -> list[dict[str, Any]]:
        """Every window of every question, with start/end labels when ``labelled``."""
        assert self.tokenizer is not None
        tok, opts, seq_length = self.tokenizer, self.options, self.cfg.data.seq_length
        cls_id, sep_id = tok.special_id("cls", "qa"), tok.special_id("sep", "qa")
        source = len(self.sources)
        self.sources.append(questions)
        asked = encode_with_offsets(tok, [q.question for q in questions], opts.tokenization)
        contexts = encode_with_offsets(tok, [q.context for q in questions], opts.tokenization)
        out: list[dict[str, Any]] = []
        cut = 0
        for number, (q, (q_ids, _), (c_ids, offsets)) in enumerate(zip(questions, asked, contexts, strict=True)):
            if len(q_ids) > opts.max_question_length:
                q_ids, cut = q_ids[:opts.max_question_length], cut + 1
            room = seq_length - len(q_ids) - 3
            if room < 1:
                raise ConfigError(f"{q.where}: data.seq_length {seq_length} leaves no room for the context after a "
                                  f"{len(q_ids)}-token question; raise --seq-length or lower task.max_question_length")
            target = None
            located = [(text, start) for text, start in q.answers if start >= 0]
            if labelled and located:
                text, start = located[0]
                target = answer_tokens(offsets, start, start + len(text))
            for w, first in enumerate(window_starts(len(c_ids), room, opts.doc_stride)):
                part = c_ids[first:first + room]
                ids = [cls_id, *q_ids, sep_id, *part, sep_id]
                example: dict[str, Any] = {
                    "input_ids": ids, "segment_ids": [0] * (len(q_ids) + 2) + [1] * (len(part) + 1),
                    "index": len(out), "offsets": offsets[first:first + len(part)], "context_at": len(q_ids) + 2,
                    "question": number, "source": source, "window": w}
                if labelled:
                    inside = target is not None and first <= target[0] and target[1] < first + len(part)
                    shift = len(q_ids) + 2 - first
                    example["label"] = [target[0] + shift, target[1] + shift] if inside else [0, 0]  # type: ignore[index]
                out.append(example)
        self.counts[what] = {"questions": len(questions), "windows": len(out), "questions_truncated": cut}
        if cut:
            print(f"modaloom qa: {cut} of {len(questions)} questions ({what}) were longer than "
                  f"{opts.max_question_length} tokens and cut to their first ones", file=sys.stderr)
        return out

    def read(self, path: Path, need: str, what: str, train: bool = False, info: Any = None) -> WindowLoader:
        """A loader of the windows of a file (``need``: train / eval / predict, see ``qa_io``)."""
        assert self.tokenizer is not None
        found = read_questions(path, need)
        if found.realigned:
            print(f"modaloom qa: {found.realigned} answer(s) of {path} had an answer_start that does not point at "
                  f"their text; realigned to the nearest occurrence", file=sys.stderr)
        windows = self.windows(found.items, all(q.answers for q in found.items), what)
        self.counts[what]["answers_realigned"] = found.realigned
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        return WindowLoader(windows, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                            shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                            questions=found.items, **self.padding())

    def padding(self) -> dict[str, int]:
        """decoding=tencentpretrain: windows padded to seq_length with TencentPretrain's padding segment (row 2
        of a converted model's 3-row segment table), so that the softmax runs over the positions it did."""
        if self.options.decoding != "tencentpretrain":
            return {}
        return {"pad_to": self.cfg.data.seq_length, "pad_segment": 2}

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
        self.train_data = self.read(paths.data, "train", "train", train=True)
        self.dev_data = self.read(paths.eval_data, "eval", "dev") if paths.eval_data else None
        self.set_head()
        self.set_steps(len(self.train_data.by_index))

    def set_head(self) -> None:
        """Replace the model's targets by the ``span`` head."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = to_dict(self.cfg.model)
        model["targets"] = [{"type": "span"}]
        self.cfg.model = build(ModelConfig, model, Source(), "model")

    def train_loader(self, info: Any, model: Any) -> WindowLoader:
        loader = self.train_data
        return WindowLoader(list(loader.by_index.values()), loader.batch_size, loader.pad_id, shuffle=True,
                            seed=self.cfg.train.seed, rank=info.rank, world_size=info.world_size, group_by_length=self.cfg.train.group_by_length,
                            questions=loader.questions, **self.padding())

    def eval_loader(self, info: Any) -> WindowLoader | None:
        if self.dev_data is None:
            return None
        d = self.dev_data
        return WindowLoader(list(d.by_index.values()), d.batch_size, d.pad_id, rank=info.rank,
                            world_size=info.world_size, questions=d.questions, **self.padding())

    def test_loader(self, path: Path) -> WindowLoader:
        return self.read(path, "eval", "test")

    def input_loader(self, path: Path) -> WindowLoader:
        """Windows of a file to predict or evaluate (gold answers kept when every question has one)."""
        return self.read(path, "predict", "input")

    def data_description(self) -> str:
        c = self.counts["train"]
        return (f"{c['questions']} training questions ({c['windows']} windows) in {self.paths.data}, "
                f"{self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "qa": to_dict(self.options)}

    # ---- model steps
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: batch[k] for k in MODEL_KEYS}
        inputs[START_KEY], inputs[END_KEY] = batch["task_labels"][:, 0], batch["task_labels"][:, 1]
        out = model(inputs)
        return out.loss, {"loss": out.loss.detach(), "accuracy": out.metrics["span_accuracy"]}

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        logits = model({k: batch[k] for k in MODEL_KEYS}).logits["span"]
        if self.options.decoding == "tencentpretrain":  # positions are characters (tokenization=char)
            rank, score, start, end = decode_tencentpretrain(logits, batch["context_at"])
            char_start = batch["char_base"] + start - batch["context_at"]
            char_end = batch["char_base"] + end - batch["context_at"] + 1
        else:
            rank, score, start, end = decode_windows(logits, batch["context_mask"], self.options.max_answer_length,
                                                     self.options.decoding == "greedy")
            rows = torch.arange(len(start), device=start.device)
            found = start >= 0
            char_start = torch.where(found, batch["char_start"][rows, start.clamp(min=0)], -1)
            char_end = torch.where(found, batch["char_end"][rows, end.clamp(min=0)], -1)
        return {"source": batch["source"], "question": batch["question"], "window": batch["window"],
                "rank": rank, "score": score, "char_start": char_start, "char_end": char_end}

    def answers(self, outputs: dict[str, Any]) -> tuple[list[Question], list[tuple[str, float]]]:
        """The questions evaluated and, in their order, each one's answer and score (best window)."""
        sources = set(outputs["source"].tolist())
        if len(sources) != 1:
            raise DataError(f"evaluation outputs mix {len(sources)} files; evaluate one file at a time")
        questions = self.sources[sources.pop()]
        best: dict[int, tuple[float, float, int, int]] = {}
        order = sorted(range(len(outputs["window"])), key=lambda i: (int(outputs["question"][i]),
                                                                    int(outputs["window"][i])))
        for i in order:
            q, rank = int(outputs["question"][i]), float(outputs["rank"][i])
            if q not in best or rank > best[q][0]:
                best[q] = (rank, float(outputs["score"][i]), int(outputs["char_start"][i]), int(outputs["char_end"][i]))
        found = []
        for n, question in enumerate(questions):
            _, score, start, end = best.get(n, (0.0, 0.0, -1, -1))
            found.append((question.context[start:end] if start >= 0 else "", score))
        return questions, found

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        questions, found = self.answers(outputs)
        missing = next((q for q in questions if not q.answers), None)
        if missing is not None:
            raise DataError(f"{missing.where}: no gold answers; `evaluate` needs every question answered")
        return cmrc_scores([text for text, _ in found], [[a for a, _ in q.answers] for q in questions])

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        questions, found = self.answers(outputs)
        for question, (text, score) in zip(questions, found, strict=True):
            yield {"id": question.id, "answer": text, "score": round(score, 6)}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "seq_length": self.cfg.data.seq_length,
                "counts": dict(self.counts)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore the options and the tokenizer of a fine-tuned model folder."""
        self.options = qa_options(section.get("options") or {}, "task.options")
        self.tokenizer, where = resolve_tokenizer(model_dir, "")
        check_vocabulary(self.cfg, self.tokenizer, where)
