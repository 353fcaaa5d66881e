"""What an exported HF folder needs beside the weights: tokenizer files and, for a fine-tuned classifier,
its label names, so that ``transformers.pipeline`` runs on it with real tokens and labels.

The one place where ``convert --to hf`` writes them (``write_tokenizer_and_labels``):

- tokenizer: a modaloom model folder keeps its tokenizer in ``tokenizer/`` (``Tokenizer.save``). A WordPiece
  vocabulary becomes ``vocab.txt`` + ``tokenizer_config.json`` (``BertTokenizer``, its lower-casing and special
  tokens) + ``special_tokens_map.json``; a byte-level BPE one ``vocab.json`` + ``merges.txt`` (``GPT2Tokenizer``).
- labels: the ``task`` section of a fine-tuned model (``modaloom finetune``) gives ``id2label``/``label2id``
  and ``problem_type`` in ``config.json``;
- generation: a ``generation`` section (a ``text2text`` model) gives ``generation_config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from modaloom.atomic import atomic_write_json
from modaloom.errors import ConfigError

ROLES = {"unk": "unk_token", "cls": "cls_token", "sep": "sep_token", "pad": "pad_token", "mask": "mask_token",
         "bos": "bos_token", "eos": "eos_token"}
PROBLEM_TYPES = {"single": "single_label_classification", "multi_label": "multi_label_classification",
                 "regression": "regression"}


def _special_tokens(tokenizer: Any, roles: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for role in roles:
        index = tokenizer.optional_id(role)
        if index is not None:
            out[ROLES[role]] = tokenizer.id_to_token(index)
    return out


def write_tokenizer_files(src: Path, out: Path, max_length: int) -> list[str]:
    """HF tokenizer files for the modaloom tokenizer saved in ``src/tokenizer``; returns the names written."""
    from modaloom.data.tokenizers import TOKENIZER_JSON, load_tokenizer_dir

    folder = src / "tokenizer"
    if not (folder / TOKENIZER_JSON).is_file():
        return []
    tokenizer = load_tokenizer_dir(folder)
    spec = tokenizer.config
    written = []
    if spec.type == "wordpiece":
        shutil.copyfile(spec.vocab, out / "vocab.txt")
        specials = _special_tokens(tokenizer, ("unk", "cls", "sep", "pad", "mask"))
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": spec.lowercase is not False,
                  "strip_accents": None, "tokenize_chinese_chars": True, "model_max_length": max_length, **specials}
        written.append("vocab.txt")
    elif spec.type == "bpe" and spec.merges:
        shutil.copyfile(spec.vocab, out / "vocab.json")
        shutil.copyfile(spec.merges, out / "merges.txt")
        specials = _special_tokens(tokenizer, ("unk", "bos", "eos", "pad"))
        config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, **specials}
        written += ["vocab.json", "merges.txt"]
    else:
        return []
    atomic_write_json(out / "tokenizer_config.json", config)
    atomic_write_json(out / "special_tokens_map.json", specials)
    return [*written, "tokenizer_config.json", "special_tokens_map.json"]


def write_labels(src: Path, out: Path) -> list[str]:
    """``id2label``/``label2id``/``problem_type`` in ``out/config.json`` from a fine-tuned model's task section."""
    task = json.loads((src / "config.json").read_text(encoding="utf-8")).get("task") or {}
    labels = task.get("labels") or []
    kind = (task.get("options") or {}).get("kind", "single")
    if not labels and kind != "regression":
        return []
    path = out / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if labels:
        config["id2label"] = {str(i): str(name) for i, name in enumerate(labels)}
        config["label2id"] = {str(name): i for i, name in enumerate(labels)}
    if task.get("name") == "tagging":  # BertForTokenClassification: labels per token, no problem_type
        atomic_write_json(path, config)
        return ["id2label", "label2id"]
    config["problem_type"] = PROBLEM_TYPES.get(kind, PROBLEM_TYPES["single"])
    atomic_write_json(path, config)
    return ["id2label", "label2id", "problem_type"]


GENERATION_KEYS = ("decoder_start_token_id", "eos_token_id", "pad_token_id", "max_new_tokens", "num_beams",
                   "length_penalty")


def write_generation_config(src: Path, out: Path) -> list[str]:
    """``generation_config.json`` from a model folder's ``generation`` section (a ``text2text`` model's special
    ids and decoding settings), so that HF ``generate`` and the text-generation pipeline decode as
    ``modaloom predict`` does (greedy unless beams were set)."""
    section = json.loads((src / "config.json").read_text(encoding="utf-8")).get("generation") or {}
    config = {key: section[key] for key in GENERATION_KEYS if section.get(key) is not None}
    if not config:
        return []
    config["do_sample"] = False
    if "eos_token_id" in config:
        config.setdefault("bos_token_id", (section.get("prompt_prefix_ids") or [None])[0])
    atomic_write_json(out / "generation_config.json", {k: v for k, v in config.items() if v is not None})
    return ["generation_config.json"]


def write_tokenizer_and_labels(src: Path, out: Path, max_length: int) -> list[str]:
    """The above for a modaloom model folder ``src`` exported into the HF folder ``out``."""
    if not src.is_dir():
        return []
    return write_tokenizer_files(src, out, max_length) + write_labels(src, out) + write_generation_config(src, out)


def check_classifier_head(cfg: Any, architecture: str | None) -> None:
    """HF's ``...ForSequenceClassification`` pools the first token through a dense + tanh pooler; a ``cls``
    head that pools otherwise would be exported with other outputs, so it is refused. An image model's head
    (ViT) goes to ``ViTForImageClassification``, a linear layer on the class token: it must pool ``first``."""
    if "patch" in getattr(cfg.embedding, "parts", ()):
        for target in cfg.targets:
            if target.type == "cls" and getattr(target, "pooling", "first") != "first":
                raise ConfigError(f"the cls head pools with {target.pooling!r}, but HF's ViTForImageClassification "
                                  f"classifies the class token; fine-tune with task.pooling=first to export it")
        return
    if architecture is not None and not architecture.endswith("ForSequenceClassification"):
        return
    for target in cfg.targets:
        if target.type == "cls" and (getattr(target, "pooling", "first") != "first"
                                     or not getattr(target, "pooler", True)):
            raise ConfigError(
                f"the cls head pools with {target.pooling!r}{'' if target.pooler else ' without a pooler'}, but "
                f"HF's ...ForSequenceClassification pools the first token through a dense + tanh pooler; "
                f"fine-tune with task.pooling=first task.pooler=true to export a classifier, or export the "
                f"encoder alone with --architecture BertModel")


def check_tagger_head(cfg: Any) -> None:
    """A ``tagger`` with a CRF cannot be exported: HF's ``...ForTokenClassification`` has no transition scores,
    so its predictions would differ from ``modaloom predict``."""
    for target in cfg.targets:
        if target.type == "tagger" and getattr(target, "crf", False):
            raise ConfigError("the tagger has a CRF layer, which HF's ...ForTokenClassification cannot hold (its "
                              "predictions would differ from modaloom's Viterbi decoding); fine-tune without "
                              "task.crf to export to HF, or export the encoder alone with --architecture BertModel")
