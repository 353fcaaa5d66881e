"""Convert TencentPretrain's fine-tuned classifier and tagger checkpoints into fine-tuned modaloom model folders.

TencentPretrain's ``finetune/run_classifier.py`` and ``run_ner.py`` save the encoder (``embedding.*``,
``encoder.*``, mapped as for pre-trained checkpoints by ``interop.tencentpretrain``) plus a head of their own:

- classifier: the pooled first token (or ``pooling`` of the config) through ``output_layer_1`` + tanh, then
  ``output_layer_2``: the ``cls`` target with ``pooler: true`` (``pooler`` and ``output``);
- tagger: ``output_layer`` on every token, optionally ``crf.{start_transitions,end_transitions,transitions}``
  (the ``pytorch-crf`` layout): the ``tagger`` target (``output``, ``crf`` with the same parameter names).
  ``run_ner.py`` adds a ``[PAD]`` class after the labels of ``label2id.json``; it is kept as the last label so
  that the argmax is the same, and counts as ``O`` for entities.

The label names are not in those checkpoints; ``labels`` gives them (``read_labels``: a ``label2id.json`` or
a comma-separated list in id order). The folder's ``task`` section records them with the tokenization
TencentPretrain used (``[CLS] text [SEP]`` for the classifier; for the tagger each space-separated token
looked up whole in the vocabulary, no special tokens), so that ``modaloom predict`` gives its predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modaloom.config_schema import Source, build, load_document, to_dict
from modaloom.errors import CheckpointError, ConfigError
from modaloom.model import Model
from modaloom.model_config import ModelConfig
from modaloom.weights import load_weights_checked

# TencentPretrain head module -> modaloom module under ``targets.<label>.``
CLASSIFIER_HEAD = {"output_layer_1": "pooler", "output_layer_2": "output"}
TAGGER_HEAD = {"output_layer": "output", "crf": "crf"}
HEAD_PARAMS = ("weight", "bias", "start_transitions", "end_transitions", "transitions")
PAD_LABEL = "[PAD]"  # the class run_ner.py appends after label2id.json's labels
BODY_PREFIXES = ("embedding.", "encoder.")
DEFAULT_SEQ_LENGTH = 128  # run_classifier.py's and run_ner.py's default


@dataclass
class FinetunedConversion:
    """A converted fine-tuned model, its ``task`` section and which head it had."""

    model: Model
    task: dict[str, Any]
    head: str  # "classifier" or "tagger"
    notes: list[str] = field(default_factory=list)


def finetuned_head(keys: Any) -> str | None:
    """``classifier`` / ``tagger`` when the state-dict keys hold run_classifier.py's / run_ner.py's head."""
    keys = set(keys)
    if {"output_layer_1.weight", "output_layer_2.weight"} <= keys:
        return "classifier"
    if "output_layer.weight" in keys:
        return "tagger"
    return None


def checkpoint_keys(bin_path: str | Path) -> list[str]:
    """The keys of a TencentPretrain ``.bin`` (memory-mapped: no tensor is read); [] when unreadable so."""
    try:
        state = torch.load(str(bin_path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old (non-zip) file cannot be mapped: the full read reports any real problem
        return []
    return list(state) if isinstance(state, dict) else []


def read_labels(value: str) -> list[str]:
    """Label names in id order from a ``label2id.json`` file or a comma-separated list (``0,1``)."""
    from modaloom.tasks.tagging import read_label2id

    if Path(value).is_file():
        return read_label2id(value)
    labels = [x.strip() for x in value.split(",")]
    if value.endswith(".json") or not all(labels):
        raise ConfigError(f"--labels {value!r} is neither a label2id.json file nor a comma-separated list of "
                          f"label names (e.g. 0,1 or O,B-PER,I-PER)")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--labels {value!r} names a label twice")
    return labels


def _head_labels(head: str, labels: list[str], classes: int, bin_path: Path) -> list[str]:
    if head == "tagger" and len(labels) + 1 == classes and PAD_LABEL not in labels:
        return [*labels, PAD_LABEL]
    if len(labels) != classes:
        extra = f" (or {classes - 1} plus run_ner.py's {PAD_LABEL})" if head == "tagger" else ""
        raise ConfigError(f"{bin_path} has a {head} of {classes} classes but --labels names {len(labels)}: "
                          f"give {classes} labels{extra} in id order")
    return labels


def _map_head(state: dict[str, torch.Tensor], table: dict[str, str], label: str,
              bin_path: Path) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module not in table or param not in HEAD_PARAMS:
            unknown.append(key)
            continue
        out[f"targets.{label}.{table[module]}.{param}"] = tensor.detach().clone()
    if unknown:
        raise CheckpointError(f"{bin_path}: {len(unknown)} keys of the fine-tuned head have no modaloom counterpart, "
                              f"e.g. {', '.join(unknown[:5])}; nothing was loaded")
    return out


def convert_tencentpretrain_finetuned(bin_path: str | Path, config_path: str | Path, labels: list[str],
                                      seq_length: int | None = None) -> FinetunedConversion:
    """A fine-tuned classifier or tagger checkpoint of TencentPretrain -> model + ``task`` section;
    ``seq_length`` (tokens per example at prediction) defaults to 128, or the model's positions if fewer."""
    from modaloom.interop.tencentpretrain import (
        _uses_tp_layernorm,
        map_state,
        read_tencentpretrain_state,
        tencentpretrain_model_config,
    )
    from modaloom.tasks.classification import ClassificationOptions
    from modaloom.tasks.tagging import TaggingOptions

    bin_path = Path(bin_path)
    state = read_tencentpretrain_state(bin_path)
    head = finetuned_head(state)
    if head is None:
        raise CheckpointError(f"{bin_path} holds no run_classifier.py head (output_layer_1/2) nor run_ner.py head "
                              f"(output_layer); convert a pre-trained checkpoint without --labels")
    body = {k: v for k, v in state.items() if k.startswith(BODY_PREFIXES)}
    rest = {k: v for k, v in state.items() if not k.startswith(BODY_PREFIXES)}
    flat, _ = load_document(config_path)
    base = tencentpretrain_model_config(config_path, body)
    mapped = map_state(body, base, rescale_layernorm=_uses_tp_layernorm(flat))
    model_dict = to_dict(base)
    if head == "classifier":
        classes = int(state["output_layer_2.weight"].shape[0])
        labels = _head_labels(head, labels, classes, bin_path)
        pooling = str(flat.get("pooling", "first"))
        model_dict["targets"] = [{"type": "cls", "labels_num": classes, "pooling": pooling, "pooler": True}]
        mapped.update(_map_head(rest, CLASSIFIER_HEAD, "cls", bin_path))
        options = to_dict(build(ClassificationOptions, {"kind": "single", "pooling": pooling, "pooler": True},
                                path="task"))
        task = {"name": "classification", "options": options, "labels": labels, "seq_length": seq_length}
    else:
        classes = int(state["output_layer.weight"].shape[0])
        labels = _head_labels(head, labels, classes, bin_path)
        crf = "crf.transitions" in state
        model_dict["targets"] = [{"type": "tagger", "labels_num": classes, "crf": crf}]
        mapped.update(_map_head(rest, TAGGER_HEAD, "tagger", bin_path))
        options = to_dict(build(TaggingOptions, {"crf": crf, "tokenize": "lookup", "special_tokens": False},
                                path="task"))
        task = {"name": "tagging", "options": options, "labels": labels, "seq_length": seq_length}
    cfg = build(ModelConfig, model_dict, Source(), "model")
    if seq_length is None:
        seq_length = task["seq_length"] = min(DEFAULT_SEQ_LENGTH, cfg.embedding.max_seq_length)
    if seq_length > cfg.embedding.max_seq_length:
        raise ConfigError(f"--seq-length {seq_length} exceeds the model's max_seq_length {cfg.embedding.max_seq_length}")
    model = Model(cfg)
    load_weights_checked(model, mapped, str(bin_path))
    return FinetunedConversion(model.eval(), task, head)
