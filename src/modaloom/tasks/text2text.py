"""The ``text2text`` task: summarisation, translation and other text-to-text jobs with an encoder-decoder model
(T5, BART: source to the encoder, target to the decoder with teacher forcing) or a decoder-only one (GPT-2,
LLaMA: source, separator and target as one sequence, the loss on the target tokens only).

Data: TencentPretrain's TSV (header ``text_a label`` [``text_b``], the target in ``label``) or JSONL
``{"source": ..., "target": ...}``; for ``predict`` the target may be absent. Layout, from the tokenizer's
special tokens (``start`` = its cls/bos token when it has one, ``end`` = its sep/eos token):

- encoder input ``[start] source [end]`` (a TSV ``text_b``: ``[start] a [end] b [end]``), as BERT's, BART's and
  T5's own tokenizers wrap a text; decoder input ``[decoder start] target``, labels ``target [end]``; the
  decoder starts from ``start``, else (T5) from the pad token;
- decoder-only: ``[start] source [end] target [end]``, predicting only ``target [end]``; generation continues
  the prompt ``[start] source [end]``.

Truncation (counted and reported per file): a source keeps its first ``data.seq_length`` tokens specials
included, a target its first ``task.tgt_seq_length`` tokens with its ``end`` token kept (so a model still
learns to stop). Dev evaluation generates (``modaloom.generation.generate``; greedy, or beam search with
``task.num_beams``) and scores with sacrebleu (BLEU, chrF) and rouge-score (ROUGE-1/2/L F-measure). Chinese:
BLEU uses sacrebleu's ``zh`` tokenizer when a reference holds CJK characters (``task.bleu_tokenize``), ROUGE
splits CJK characters into one token each and other text into lower-cased ASCII words (rouge-score's default
tokenizer would drop them); decoded text loses the spaces a WordPiece decoder puts between CJK characters.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.config_schema import build, choice, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.text_io import MemoryLoader, Row, is_jsonl, read_lines, read_rows

IGNORE = -100
METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
CJK_SPACE = re.compile(f"(?<=[{CJK}]) (?=[{CJK}])")
ROUGE_TOKEN = re.compile(f"[{CJK}]|[a-z0-9]+")


@dataclass
class Text2TextOptions:
    """Options of the text2text task (``task.<key>=value``), recorded in the fine-tuned model."""

    tgt_seq_length: int = 64  # target tokens at most (its end token included)
    max_new_tokens: int = 0  # tokens generated per example; 0: tgt_seq_length
    num_beams: int = 1  # 1: greedy; more: beam search
    length_penalty: float = 1.0  # beam search: score = sum of log-probs / length ** length_penalty
    metric: str = choice("bleu", *METRICS)  # selects the best dev checkpoint
    bleu_tokenize: str = "auto"  # sacrebleu tokenizer; auto: "zh" when a reference holds CJK text, else "13a"

    def check(self) -> None:
        if self.tgt_seq_length < 2:
            raise ConfigError(f"task.tgt_seq_length must be >= 2 (a token and the end), got {self.tgt_seq_length}")
        if self.num_beams < 1 or self.max_new_tokens < 0:
            raise ConfigError(f"task.num_beams must be >= 1 and task.max_new_tokens >= 0, got {self.num_beams} "
                              f"and {self.max_new_tokens}")


# ---------------------------------------------------------------- reading


def read_pairs(path: str | Path, need_target: bool) -> list[Row]:
    """Source/target rows (target in ``Row.label``) of a TSV (``text_a label [text_b]``) or JSONL file."""
    path = Path(path)
    if not is_jsonl(path):
        return read_rows(path, need_target)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON example)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict) or not isinstance(value.get("source"), str):
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise DataError(f"{where}: expected an object with a string field source (and target), got {keys}")
        target = value.get("target")
        if target is not None and not isinstance(target, str):
            raise DataError(f"{where}: target must be a string, got {type(target).__name__}")
        if need_target and target is None:
            raise DataError(f"{where}: no field target, which this file needs")
        rows.append(Row(where, value["source"], None, target))
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


# ---------------------------------------------------------------- layout


@dataclass
class Layout:
    """The special ids that frame sources and targets (see the module docstring)."""

    start: int | None
    end: int
    pad: int
    decoder_start: int

    @classmethod
    def of(cls, tokenizer: Any) -> Layout:
        start = tokenizer.optional_id("cls")
        start = start if start is not None else tokenizer.optional_id("bos")
        end = tokenizer.optional_id("sep")
        end = end if end is not None else tokenizer.special_id("eos", "text2text (the end of a text)")
        pad = tokenizer.optional_id("pad")
        pad = pad if pad is not None else end
        return cls(start, end, pad, start if start is not None else pad)

    def source(self, a: list[int], b: list[int] | None, limit: int) -> tuple[list[int], bool]:
        """``[start] a [end] (b [end])`` cut to ``limit`` tokens (kept from the front); whether it was cut."""
        ids = ([self.start] if self.start is not None else []) + a + [self.end]
        if b is not None:
            ids += b + [self.end]
        return ids[:limit], len(ids) > limit

    def target(self, ids: list[int], limit: int) -> tuple[list[int], bool]:
        """``target [end]`` of at most ``limit`` tokens, the end kept; whether it was cut."""
        cut = len(ids) + 1 > limit
        return ids[:limit - 1] + [self.end], cut


def clean_text(text: str) -> str:
    """Decoded text without the spaces a WordPiece decoder puts between CJK characters."""
    return CJK_SPACE.sub("", text).strip()


class RougeTokenizer:
    """rouge-score tokenizer: each CJK character one token, other text as lower-cased ASCII words."""

    def tokenize(self, text: str) -> list[str]:
        return ROUGE_TOKEN.findall(text.lower())


def text_metrics(hypotheses: Sequence[str], references: Sequence[str], bleu_tokenize: str = "auto") -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu) and mean ROUGE-1/2/L F-measures (rouge-score), on a 0-100 scale."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} outputs for {len(references)} references")
    if bleu_tokenize == "auto":
        bleu_tokenize = "zh" if any(re.search(f"[{CJK}]", r) for r in references) else "13a"
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=bleu_tokenize)
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=RougeTokenizer())
    rouge = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL")}
    for hyp, ref in zip(hypotheses, references, strict=True):
        for key, score in scorer.score(ref, hyp).items():
            rouge[key] += score.fmeasure
    n = max(1, len(references))
    return {"bleu": float(bleu.score), "chrf": float(chrf.score),
            **{k: 100.0 * v / n for k, v in rouge.items()}, "examples": float(len(references))}


# ---------------------------------------------------------------- batches


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Ragged rows right-padded with ``value`` into a (B, L) long tensor."""
    out = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


@dataclass
class CollatingLoader(MemoryLoader):
    """``MemoryLoader`` (rank share, seeded shuffle per epoch) with a task's own ``collate_fn``."""

    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None

    def length(self, example: dict[str, Any]) -> int:
        return len(example["source"]) + len(example.get("target") or ())

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        assert self.collate_fn is not None
        return self.collate_fn(examples)


# ---------------------------------------------------------------- the task


@register("task", "text2text")
class Text2TextTask(FinetuneTask):
    """Text-to-text fine-tuning: teacher-forced lm loss, generated dev outputs scored with BLEU/chrF/ROUGE."""

    name = "text2text"
    Options = Text2TextOptions  # its task.<key> options (docs/config-reference.md)
    kept_targets = ("lm",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(Text2TextOptions, dict(self.inputs_.options), path="task")
        self.truncated: dict[str, dict[str, int]] = {}
        self.layout: Layout | None = None

    @property
    def selection_metric(self) -> str:  # type: ignore[override]
        return self.options.metric

    @property
    def seq2seq(self) -> bool:
        return self.cfg.model.decoder is not None

    # ---- model
    def check_model(self) -> None:
        """An encoder-decoder, or a causal (decoder-only) encoder, with an ``lm`` target (added when absent)."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = self.cfg.model
        if not self.seq2seq and getattr(model.encoder, "mask", None) != "causal":
            raise ConfigError(f"text2text needs an encoder-decoder model (T5, BART) or a decoder-only one (GPT-2, "
                              f"LLaMA: encoder mask causal); this model has encoder {model.encoder.type!r} with "
                              f"mask {getattr(model.encoder, 'mask', None)!r} and no decoder")
        if not any(t.type == "lm" for t in model.targets):
            data = to_dict(model)
            data["targets"] = [{"type": "lm", "transform": False, "tie_weights": True, "output_bias": False}]
            self.cfg.model = build(ModelConfig, data, Source(), "model")
            print(f"modaloom {self.name}: the model has no lm target; a new tied lm head is added", file=sys.stderr)

    # ---- data
    def examples(self, path: Path, need_target: bool, what: str) -> list[dict[str, Any]]:
        """Tokenized examples (reference text kept under ``label``); truncations counted under ``what``."""
        assert self.tokenizer is not None and self.layout is not None
        rows = read_pairs(path, need_target)
        tok, layout, limit = self.tokenizer, self.layout, self.cfg.data.seq_length
        firsts = tok.encode_batch([r.text_a for r in rows])
        with_b = [i for i, r in enumerate(rows) if r.text_b]
        seconds = dict(zip(with_b, tok.encode_batch([rows[i].text_b for i in with_b]), strict=True))
        labelled = all(r.label is not None for r in rows)
        for r in rows:
            if labelled and not str(r.label).strip():
                raise DataError(f"{r.where}: empty target")
        targets = tok.encode_batch([str(r.label) for r in rows]) if labelled else [None] * len(rows)
        counts = {"source": 0, "target": 0}
        out = []
        for i, (row, a, t) in enumerate(zip(rows, firsts, targets, strict=True)):
            source, cut = layout.source(list(a), seconds.get(i), limit)
            counts["source"] += cut
            example: dict[str, Any] = {"source": source, "index": i}
            if t is not None:
                target, cut = layout.target(list(t), self.options.tgt_seq_length)
                counts["target"] += cut
                example.update(target=target, label=str(row.label))
            out.append(example)
        self.truncated[what] = counts
        if counts["source"] or counts["target"]:
            print(f"modaloom {self.name}: {path}: {counts['source']} of {len(rows)} sources longer than "
                  f"{limit} tokens and {counts['target']} targets longer than {self.options.tgt_seq_length} "
                  f"truncated (kept from the front; a target keeps its end token)", file=sys.stderr)
        return out

    def prepare(self) -> None:
        cfg, paths = self.cfg, self.paths
        self.tokenizer, where = resolve_tokenizer(paths.init_from, self.inputs_.vocab)
        check_vocabulary(cfg, self.tokenizer, where)
        if cfg.model.tgt_embedding is not None and getattr(cfg.model.tgt_embedding, "vocab_size", 1) == 0:
            cfg.model.tgt_embedding.vocab_size = cfg.model.embedding.vocab_size
        self.check_model()
        self.layout = Layout.of(self.tokenizer)
        embedding = cfg.model.embedding
        if "pos" in embedding.parts:
            need = cfg.data.seq_length + (0 if self.seq2seq else self.options.tgt_seq_length)
            if need > embedding.max_seq_length:
                raise ConfigError(f"data.seq_length {cfg.data.seq_length}"
                                  f"{'' if self.seq2seq else f' + task.tgt_seq_length {self.options.tgt_seq_length}'}"
                                  f" = {need} exceeds the model's max_seq_length {embedding.max_seq_length}; "
                                  f"lower --seq-length or task.tgt_seq_length")
        self.train_examples = self.examples(paths.data, True, "train")
        self.dev_examples = self.examples(paths.eval_data, True, "dev") if paths.eval_data else None
        self.set_steps(len(self.train_examples))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Training tensors (when targets are known) plus the sources as token lists for generation."""
        assert self.layout is not None
        pad = self.layout.pad
        batch: dict[str, Any] = {"index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
                                 "sources": [e["source"] for e in examples]}
        if "target" not in examples[0]:
            return batch
        batch["references"] = [e["label"] for e in examples]
        if self.seq2seq:
            batch["input_ids"] = pad_rows([e["source"] for e in examples], pad)
            batch["attention_mask"] = pad_rows([[1] * len(e["source"]) for e in examples], 0)
            batch["decoder_input_ids"] = pad_rows([[self.layout.decoder_start] + e["target"][:-1]
                                                   for e in examples], pad)
            batch["decoder_attention_mask"] = pad_rows([[1] * len(e["target"]) for e in examples], 0)
            batch["lm_labels"] = pad_rows([e["target"] for e in examples], IGNORE)
        else:
            sequences = [e["source"] + e["target"] for e in examples]
            batch["input_ids"] = pad_rows([s[:-1] for s in sequences], pad)
            batch["attention_mask"] = pad_rows([[1] * (len(s) - 1) for s in sequences], 0)
            batch["lm_labels"] = pad_rows([[IGNORE] * (len(e["source"]) - 1) + e["target"] for e in examples],
                                          IGNORE)
        return batch

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> CollatingLoader:
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        assert self.layout is not None
        return CollatingLoader(examples, self.cfg.train.batch_size, self.layout.pad, shuffle=train,
                               seed=self.cfg.train.seed, rank=rank, world_size=world, collate_fn=self.collate,
                               group_by_length=self.cfg.train.group_by_length)

    def test_loader(self, path: Path) -> CollatingLoader:
        return self.loader(self.examples(path, True, "test"), False)

    def input_loader(self, path: Path) -> CollatingLoader:
        """Batches of a file to predict (targets optional) or evaluate (targets kept as references)."""
        return self.loader(self.examples(path, False, "input"), False)

    def data_description(self) -> str:
        kind = "encoder-decoder" if self.seq2seq else "decoder-only"
        return f"{len(self.train_examples)} {kind} training pairs in {self.paths.data}, {self.steps_per_epoch} steps/epoch"

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "tgt_seq_length": self.options.tgt_seq_length}

    # ---- model steps
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: v for k, v in batch.items() if k not in ("index", "sources", "references")}
        output = model(inputs)
        return output.loss, {"loss": output.loss.detach()}

    def generation_config(self) -> Any:
        """Decoding settings from the task options and the tokenizer's special ids."""
        from modaloom.generation import GenerationConfig

        assert self.layout is not None
        options = self.options
        return GenerationConfig(max_new_tokens=options.max_new_tokens or options.tgt_seq_length,
                                num_beams=options.num_beams, length_penalty=options.length_penalty,
                                eos_token_id=self.layout.end, pad_token_id=self.layout.pad,
                                decoder_start_token_id=self.layout.decoder_start if self.seq2seq else None)

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        from modaloom.generation import generate

        result = generate(getattr(model, "module", model), batch["sources"], self.generation_config())
        out = {"index": batch["index"], "tokens": result.token_lists()}
        if "references" in batch:
            out["references"] = batch["references"]
        return out

    def texts(self, outputs: dict[str, Any]) -> list[str]:
        """The generated texts in input order (special tokens dropped)."""
        assert self.tokenizer is not None and self.layout is not None
        hidden = {self.layout.end, self.layout.pad, self.layout.decoder_start}
        order = torch.argsort(outputs["index"]).tolist()
        return [clean_text(self.tokenizer.decode([t for t in outputs["tokens"][i] if t not in hidden]))
                for i in order]

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        if "references" not in outputs:
            raise DataError("the evaluation file has no targets; `evaluate` needs a file with targets")
        order = torch.argsort(outputs["index"]).tolist()
        references = [outputs["references"][i] for i in order]
        return text_metrics(self.texts(outputs), references, self.options.bleu_tokenize)

    def prediction_records(self, outputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for text in self.texts(outputs):
            yield {"output": text}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "seq_length": self.cfg.data.seq_length,
                "truncated": dict(self.truncated)}

    def generation_section(self) -> dict[str, Any]:
        """config.json's ``generation``: what ``modaloom generate`` and an HF export decode with."""
        assert self.layout is not None
        gen = self.generation_config()
        prefix = [self.layout.start] if self.layout.start is not None else []
        section = {"eos_token_id": gen.eos_token_id, "pad_token_id": gen.pad_token_id,
                   "max_new_tokens": gen.max_new_tokens, "num_beams": gen.num_beams,
                   "length_penalty": gen.length_penalty, "prompt_prefix_ids": prefix,
                   "prompt_suffix_ids": [self.layout.end]}
        if self.seq2seq:
            section["decoder_start_token_id"] = gen.decoder_start_token_id
        return section

    def export(self, checkpoint: Path) -> Path:
        from modaloom.atomic import atomic_write_json

        final = super().export(checkpoint)
        config = json.loads((final / "config.json").read_text(encoding="utf-8"))
        config["generation"] = self.generation_section()
        atomic_write_json(final / "config.json", config)
        return final

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore options and the tokenizer of a fine-tuned model folder."""
        self.options = build(Text2TextOptions, dict(section.get("options") or {}), path="task.options")
        self.tokenizer, where = resolve_tokenizer(model_dir, "")
        check_vocabulary(self.cfg, self.tokenizer, where)
        self.layout = Layout.of(self.tokenizer)
