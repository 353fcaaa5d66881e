"""The ``sentence_embedding`` task: one shared encoder, pooled into a sentence vector, trained so that cosine
similarity follows meaning (``task.kind``):

- ``siamese``: pairs ``label text_a text_b`` (TencentPretrain's ``run_classifier_siamese.py`` TSV, or JSONL
  with the same keys); the cosine similarity of the two vectors regresses on the label with a mean squared
  error, as sentence-transformers' CosineSimilarityLoss. A float score or a 0/1 label; labels are divided by
  ``task.label_max`` (0: 1 when every training label lies in [-1, 1], else the largest, e.g. 5 for STS-B).
- ``simcse``: unsupervised SimCSE (Gao et al. 2021): every sentence is encoded twice with dropout and the two
  views are positives for each other against the rest of the batch, with the registered ``infonce`` loss
  (symmetric, scale ``1 / task.temperature``, gathered over ranks). Input: plain text (one sentence a line),
  or TSV/JSONL with ``text_a``; a row with ``text_b`` makes a supervised pair (``text_b`` is its positive).

Sentences are tokenized as ``modaloom features`` does (``[CLS] text [SEP]``, cut from the end to
``data.seq_length``, counted), pooled over real tokens (``task.pooling``: mean, first, max, last). Dev and
``evaluate``: a labelled pair file; Spearman (scipy) between cosine similarity and gold score (the
selection metric) and Pearson. ``predict``: a pair file gives ``{"similarity": cos}`` per pair, a single
sentence file ``{"embedding": [...]}`` per sentence; ``modaloom features --pooling <task.pooling>`` gives
the same vectors as an array. The model keeps the source model's heads untouched (frozen while training),
so the exported folder converts to HuggingFace as its source did.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from modaloom.config_schema import build, choice, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.text2text import CollatingLoader, pad_rows
from modaloom.tasks.text_io import Row, encode_pairs, read_rows, read_sentences


@dataclass
class SentenceEmbeddingOptions:
    """Options of the sentence_embedding task (``task.<key>=value``), recorded in the fine-tuned model."""

    # siamese: cosine regresses on pair labels; simcse: two dropout views are positives
    kind: str = choice("siamese", "siamese", "simcse")
    # how the tokens become one sentence vector (real tokens only)
    pooling: str = choice("mean", "mean", "first", "max", "last")
    temperature: float = 0.05  # simcse: InfoNCE logits are cosine / temperature
    label_max: float = 0.0  # siamese: labels are divided by it; 0: from the training file (see the docstring)

    def check(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"task.temperature must be > 0, got {self.temperature}")
        if self.label_max < 0:
            raise ConfigError(f"task.label_max must be >= 0 (0: from the training file), got {self.label_max}")


def read_pair_rows(path: Path, need_label: bool) -> list[Row]:
    """Labelled (or not) sentence pairs; a row without ``text_b`` names its file and line."""
    rows = read_rows(path, need_label)
    for row in rows:
        if row.text_b is None:
            raise DataError(f"{row.where}: no text_b; a pair file needs the columns label text_a text_b")
    return rows


def score_of(row: Row) -> float:
    """A pair's gold score as a finite float."""
    try:
        value = float(row.label)
    except (TypeError, ValueError):
        raise DataError(f"{row.where}: label {row.label!r} is not a number (a similarity score or 0/1)") from None
    if not math.isfinite(value):
        raise DataError(f"{row.where}: label {row.label!r} is not a finite number")
    return value


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in fp32."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def correlations(predicted: torch.Tensor, gold: torch.Tensor) -> dict[str, float]:
    """Spearman and Pearson (scipy); NaN when either side is constant or there are fewer than 2 pairs."""
    from scipy.stats import pearsonr, spearmanr

    p, g = predicted.double().numpy(), gold.double().numpy()
    constant = len(g) < 2 or p.std() == 0 or g.std() == 0
    return {"spearman": float("nan") if constant else float(spearmanr(p, g)[0]),
            "pearson": float("nan") if constant else float(pearsonr(p, g)[0]), "examples": float(len(g))}


@register("task", "sentence_embedding")
class SentenceEmbeddingTask(FinetuneTask):
    """Siamese cosine regression or SimCSE contrastive training of a pooled encoder; Spearman on STS pairs."""

    name = "sentence_embedding"
    Options = SentenceEmbeddingOptions  # its task.<key> options (docs/config-reference.md)
    selection_metric = "spearman"
    kept_targets = ("*",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(SentenceEmbeddingOptions, dict(self.inputs_.options), path="task")
        self.truncated: dict[str, int] = {}
        self.label_max = self.options.label_max or 1.0
        self.contrastive: Any = None

    # ---- data
    def encode(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """``[CLS] text [SEP]`` per text, cut to ``data.seq_length``; (ids, how many were cut)."""
        assert self.tokenizer is not None
        encoded = encode_pairs(self.tokenizer, [Row("", t) for t in texts], self.cfg.data.seq_length)
        return encoded.input_ids, encoded.truncated

    def examples(self, rows: list[Row], with_scores: bool, what: str, source: Path) -> list[dict[str, Any]]:
        """Examples ``a`` [, ``b``] [, ``label``] of the rows; truncations counted under ``what``."""
        firsts, cut = self.encode([r.text_a for r in rows])
        pairs = [i for i, r in enumerate(rows) if r.text_b is not None]
        seconds, cut_b = self.encode([rows[i].text_b for i in pairs]) if pairs else ([], 0)
        second_of = dict(zip(pairs, seconds, strict=True))
        self.truncated[what] = cut + cut_b
        if cut + cut_b:
            print(f"modaloom {self.name}: {cut + cut_b} sentences of {source} were longer than "
                  f"{self.cfg.data.seq_length} tokens and truncated (from their end)", file=sys.stderr)
        out = []
        for i, (row, a) in enumerate(zip(rows, firsts, strict=True)):
            example: dict[str, Any] = {"a": a, "index": i}
            if i in second_of:
                example["b"] = second_of[i]
            if with_scores:
                example["label"] = score_of(row)
            out.append(example)
        return out

    def pair_examples(self, path: Path, need_label: bool, what: str) -> list[dict[str, Any]]:
        rows = read_pair_rows(path, need_label)
        return self.examples(rows, all(r.label is not None for r in rows), what, path)

    def prepare(self) -> None:
        cfg, paths = self.cfg, self.paths
        self.tokenizer, where = resolve_tokenizer(paths.init_from, self.inputs_.vocab)
        check_vocabulary(cfg, self.tokenizer, where)
        embedding = cfg.model.embedding
        if "pos" in embedding.parts and cfg.data.seq_length > embedding.max_seq_length:
            if "data.seq_length" in self.inputs_.overridden:
                raise ConfigError(f"data.seq_length {cfg.data.seq_length} exceeds the model's max_seq_length "
                                  f"{embedding.max_seq_length}; lower --seq-length")
            cfg.data.seq_length = embedding.max_seq_length
        if self.options.kind == "siamese":
            self.train_examples = self.pair_examples(paths.data, True, "train")
            if not self.options.label_max:
                largest = max(abs(e["label"]) for e in self.train_examples)
                self.label_max = 1.0 if largest <= 1.0 else largest
        else:
            rows = read_sentences(paths.data)
            self.train_examples = self.examples(rows, False, "train", paths.data)
            for example in self.train_examples:
                example.setdefault("b", example["a"])  # the same tokens again: a second view under dropout
            if len(self.train_examples) < 2:
                raise DataError(f"{paths.data}: simcse needs at least 2 sentences (the others in a batch are the "
                                f"negatives)")
        self.dev_examples = self.pair_examples(paths.eval_data, True, "dev") if paths.eval_data else None
        self.set_steps(len(self.train_examples))

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The ``a`` sentences then the ``b`` ones (or ``a`` again: simcse's second view) as one padded batch."""
        assert self.tokenizer is not None
        pad = self.tokenizer.special_id("pad", "padding")
        rows = [e["a"] for e in examples] + [e["b"] for e in examples if "b" in e]
        batch: dict[str, Any] = {"input_ids": pad_rows(rows, pad),
                                 "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
                                 "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}
        batch["segment_ids"] = torch.zeros_like(batch["input_ids"])
        if "label" in examples[0]:
            batch["scores"] = torch.tensor([e["label"] for e in examples], dtype=torch.float32)
        return batch

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> CollatingLoader:
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        assert self.tokenizer is not None
        return CollatingLoader(examples, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                               shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                               collate_fn=self.collate)

    def test_loader(self, path: Path) -> CollatingLoader:
        return self.loader(self.pair_examples(path, True, "test"), False)

    def input_loader(self, path: Path) -> CollatingLoader:
        """A pair file (similarities; scores kept when every row has one) or sentences (embeddings)."""
        rows = read_sentences(path)
        if any(r.text_b is not None for r in rows):
            rows = read_pair_rows(path, need_label=False)
        labelled = all(r.label is not None for r in rows) and all(r.text_b is not None for r in rows)
        return self.loader(self.examples(rows, labelled, "input", path), False)

    def data_description(self) -> str:
        what = "pairs" if self.options.kind == "siamese" else "sentences"
        return f"{len(self.train_examples)} training {what} in {self.paths.data} ({self.options.kind})"

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "kind": self.options.kind}

    # ---- model
    def build_model(self) -> Any:
        """The source model, its heads (unused here) frozen unless they share a weight with the encoder side."""
        model = super().build_model()
        shared = {id(p) for part in (model.embedding, model.encoder) for p in part.parameters()}
        for p in model.targets.parameters():
            if id(p) not in shared:
                p.requires_grad_(False)
        return model

    def vectors(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """Pooled sentence vectors of every row of the batch (the ``a`` rows, then the ``b`` rows)."""
        from modaloom.heads import pool

        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids")}
        if hasattr(model, "module"):  # DDP: its forward syncs the gradients; the frozen heads run too
            hidden = model(inputs).hidden
        else:
            hidden, _ = model.encode(inputs)
        return pool(hidden, batch["attention_mask"].bool(), self.options.pooling)

    def infonce(self) -> Any:
        """The registered ``infonce`` loss (built once)."""
        from modaloom.losses import build_loss

        if self.contrastive is None:
            self.contrastive = build_loss(SimpleNamespace(label=self.name, gather=True), "infonce")
        return self.contrastive

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        vectors = self.vectors(model, batch)
        a, b = vectors.chunk(2)
        if self.options.kind == "siamese":
            similarity = cosine(a, b)
            loss = F.mse_loss(similarity, batch["scores"].to(similarity.device) / self.label_max)
            return loss, {"loss": loss.detach()}
        scale = torch.tensor(1.0 / self.options.temperature, device=vectors.device)
        scores = self.infonce()(F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1), scale)
        accuracy = (scores.logits_01.argmax(-1) == scores.labels).float().mean()
        return scores.loss, {"loss": scores.loss.detach(), "accuracy": accuracy.detach()}

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        vectors = self.vectors(model, batch).float()
        count = len(batch["index"])
        out: dict[str, Any] = {"index": batch["index"]}
        if vectors.shape[0] == 2 * count:
            out["similarity"] = cosine(vectors[:count], vectors[count:])
        else:
            out["embedding"] = vectors
        if "scores" in batch:
            out["scores"] = batch["scores"]
        return out

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        if "scores" not in outputs or "similarity" not in outputs:
            raise DataError("evaluation needs a labelled pair file (label text_a text_b)")
        return correlations(outputs["similarity"], outputs["scores"])

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        order = torch.argsort(outputs["index"])
        if "similarity" in outputs:
            for value in outputs["similarity"][order].tolist():
                yield {"similarity": round(value, 6)}
            return
        for row in outputs["embedding"][order].tolist():
            yield {"embedding": [round(x, 6) for x in row]}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "seq_length": self.cfg.data.seq_length,
                "label_max": self.label_max, "truncated": dict(self.truncated)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore options, the label scale and the tokenizer of a fine-tuned model folder."""
        self.options = build(SentenceEmbeddingOptions, dict(section.get("options") or {}), path="task.options")
        self.label_max = float(section.get("label_max") or 1.0)
        self.tokenizer, where = resolve_tokenizer(model_dir, "")
        check_vocabulary(self.cfg, self.tokenizer, where)
