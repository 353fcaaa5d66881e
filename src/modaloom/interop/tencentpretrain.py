"""Convert TencentPretrain checkpoints (a ``torch.save``'d state dict plus its flat JSON config) to modaloom.

The mapping is data: tables from TencentPretrain module names to modaloom module names, per part
(embedding parts, one encoder layer, one decoder layer, each target head). Every key of the checkpoint
must be consumed and every parameter of the model filled, with equal shapes, or nothing is loaded.

Two conventions differ and are converted here:

- **Segments.** TencentPretrain's segment table has 3 rows: 0 = padding, 1 = segment A, 2 = segment B.
  modaloom uses 0 = A, 1 = B. The rows are stored in the order [1, 2, 0] in a ``type_vocab_size: 3``
  table, so segment id 2 is TencentPretrain's padding row and reproduces its outputs on padded positions.
  Feed ``segment_ids`` = TP id - 1 for real tokens and 2 for padding, and ``attention_mask`` = TP id > 0.
- **Layer norm.** TencentPretrain's ``normal`` LayerNorm computes ``gamma * (x - mean) / (std + eps) + beta``
  with the *unbiased* standard deviation and eps = 1e-6 added to it. torch's LayerNorm divides by the
  biased one, sqrt(var + eps). Since std_unbiased = std_biased * sqrt(n / (n - 1)), the converted gamma is
  multiplied by sqrt((n - 1) / n) and the model's LayerNorm eps set to 1e-12; what remains is the eps
  term, below 1e-5 relative at the activation scales of trained models (checked against TencentPretrain's
  own outputs in tests/interop/test_tencentpretrain_checkpoint.py). ``normal_torch``, ``t5`` and ``rms``
  norms are copied unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from modaloom.config_schema import build, load_document
from modaloom.errors import CheckpointError, ConfigError
from modaloom.interop.tencentpretrain_config import translate
from modaloom.model import Model
from modaloom.model_config import ModelConfig
from modaloom.weights import load_weights_checked

SEGMENT_ROWS = [1, 2, 0]  # our row r holds TencentPretrain's row SEGMENT_ROWS[r]
CONVERTED_LAYERNORM_EPS = 1e-12

# Embedding parts: TencentPretrain module -> ours (inside ``embedding.`` / ``tgt_embedding.``).
EMBEDDING_TABLE = {
    "word.embedding": "parts.word",
    "pos.embedding": "parts.pos",
    "seg.embedding": "parts.seg",
    "layer_norm": "norm",
}
# One encoder layer (``encoder.transformer.{i}.`` -> ``encoder.stack.layers.{i}.``).
ENCODER_LAYER_TABLE = {
    "self_attn.linear_layers.0": "self_attn.query",
    "self_attn.linear_layers.1": "self_attn.key",
    "self_attn.linear_layers.2": "self_attn.value",
    "self_attn.final_linear": "self_attn.output",
    "feed_forward.linear_gate": "feed_forward.linear_gate",
    "feed_forward.linear_1": "feed_forward.linear_in",
    "feed_forward.linear_2": "feed_forward.linear_out",
    "layer_norm_1": "self_attn_norm",
    "layer_norm_2": "feed_forward_norm",
}
# One decoder layer (``decoder.transformer_decoder.{i}.`` -> ``decoder.stack.layers.{i}.``).
DECODER_LAYER_TABLE = {
    **{k: v for k, v in ENCODER_LAYER_TABLE.items() if not k.startswith("layer_norm")},
    "context_attn.linear_layers.0": "cross_attn.query",
    "context_attn.linear_layers.1": "cross_attn.key",
    "context_attn.linear_layers.2": "cross_attn.value",
    "context_attn.final_linear": "cross_attn.output",
    "layer_norm_1": "self_attn_norm",
    "layer_norm_2": "cross_attn_norm",
    "layer_norm_3": "feed_forward_norm",
}
# Whole-stack modules.
STACK_TABLE = {
    "encoder.linear": "encoder.stack.input_projection",  # factorized embeddings (ALBERT)
    "encoder.layer_norm": "encoder.stack.final_norm",
    "decoder.layer_norm": "decoder.stack.final_norm",
}
# Target heads (``target.<name>.`` -> ``targets.<name>.``).
TARGET_TABLES = {
    "mlm": {"linear_1": "head.dense", "layer_norm": "head.norm", "linear_2": "head.output"},
    "sp": {"linear_1": "pooler", "linear_2": "output"},
    "cls": {"linear_1": "pooler", "linear_2": "output"},
    "lm": {"output_layer": "head.output"},
}
# Parameter names inside a module: TencentPretrain's own LayerNorm says gamma/beta.
PARAM_NAMES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
NORM_MODULES = ("layer_norm", "norm")


def read_tencentpretrain_state(bin_path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a TencentPretrain ``.bin`` loaded with ``weights_only=True`` (no code is run)."""
    try:
        state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {bin_path}") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError ... for bad or unsafe files
        raise CheckpointError(f"cannot read {bin_path} as a plain-tensor state dict: "
                              f"{str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{bin_path} does not hold a state dict of tensors")
    return state


def tencentpretrain_model_config(config_path: str | Path, state: dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig of a TencentPretrain config, with sizes the JSON leaves out read from the weights."""
    flat, source = load_document(config_path)
    nested = translate(flat, source)["model"]
    _refuse_unconvertible(nested)
    for section, key in (("embedding", "embedding.word.embedding.weight"),
                         ("tgt_embedding", "tgt_embedding.word.embedding.weight")):
        if nested.get(section) and key in state:
            nested[section].setdefault("vocab_size", int(state[key].shape[0]))
    for target in nested["targets"]:
        head = {"cls": "target.cls.linear_2.weight"}.get(target["type"])
        if head and head in state:
            target["labels_num"] = int(state[head].shape[0])
    if _uses_tp_layernorm(flat):
        for section in ("embedding", "tgt_embedding", "encoder", "decoder"):
            if nested.get(section) and nested[section].get("norm") == "layernorm":
                nested[section]["norm_eps"] = CONVERTED_LAYERNORM_EPS
        for target in nested["targets"]:
            if target["type"] == "mlm":
                target["norm_eps"] = CONVERTED_LAYERNORM_EPS
    return build(ModelConfig, nested, source, "model")


def _uses_tp_layernorm(flat: dict[str, Any]) -> bool:
    return flat.get("layernorm", "normal") == "normal"


def _refuse_unconvertible(nested: dict[str, Any]) -> None:
    encoders = [nested["encoder"]] + ([nested["decoder"]] if nested.get("decoder") else [])
    for enc in encoders:
        if enc.get("type") != "transformer":
            raise ConfigError(f"convert_tencentpretrain supports transformer encoders only, not {enc.get('type')!r}")
        if enc.get("position", "none") != "none":
            raise ConfigError(f"convert_tencentpretrain does not map {enc['position']} position checkpoints yet "
                              f"(their TencentPretrain layout is unverified here)")
    for part in nested["embedding"]["parts"] + (nested.get("tgt_embedding") or {}).get("parts", []):
        if part not in ("word", "pos", "seg", "sinusoidal"):
            raise ConfigError(f"convert_tencentpretrain does not map the {part!r} embedding yet")
    for target in nested["targets"]:
        if target["type"] not in TARGET_TABLES:
            raise ConfigError(f"convert_tencentpretrain does not map the {target['type']!r} target; "
                              f"supported: {', '.join(TARGET_TABLES)}")


def _module_names(cfg: ModelConfig) -> dict[str, str]:
    """TencentPretrain module prefix -> modaloom module prefix for every module of ``cfg``."""
    names: dict[str, str] = {}
    for tp_side, ours in (("embedding", "embedding"), ("tgt_embedding", "tgt_embedding")):
        for tp_mod, our_mod in EMBEDDING_TABLE.items():
            names[f"{tp_side}.{tp_mod}"] = f"{ours}.{our_mod}"
    layer_count = 1 if cfg.encoder.share_layers else cfg.encoder.layers_num
    for i in range(layer_count):
        tp_prefix = "encoder.transformer." if cfg.encoder.share_layers else f"encoder.transformer.{i}."
        for tp_mod, our_mod in ENCODER_LAYER_TABLE.items():
            names[tp_prefix + tp_mod] = f"encoder.stack.layers.{i}.{our_mod}"
    if cfg.decoder is not None:
        for i in range(cfg.decoder.layers_num):
            for tp_mod, our_mod in DECODER_LAYER_TABLE.items():
                names[f"decoder.transformer_decoder.{i}.{tp_mod}"] = f"decoder.stack.layers.{i}.{our_mod}"
    names.update(STACK_TABLE)
    for target in cfg.targets:
        for tp_mod, our_mod in TARGET_TABLES.get(target.type, {}).items():  # fine-tuned heads: mapped apart
            names[f"target.{target.type}.{tp_mod}"] = f"targets.{target.label}.{our_mod}"
    return names


def map_state(state: dict[str, torch.Tensor], cfg: ModelConfig,
              rescale_layernorm: bool = True) -> dict[str, torch.Tensor]:
    """Rename (and where needed transform) TencentPretrain tensors into modaloom parameter names."""
    modules = _module_names(cfg)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module not in modules or param not in PARAM_NAMES:
            unknown.append(key)
            continue
        ours = f"{modules[module]}.{PARAM_NAMES[param]}"
        value = tensor.detach().clone()
        if module.endswith("seg.embedding"):
            if value.shape[0] != len(SEGMENT_ROWS):
                raise CheckpointError(f"{key}: expected {len(SEGMENT_ROWS)} segment rows, got {value.shape[0]}")
            value = value[SEGMENT_ROWS]
        if param == "gamma" and rescale_layernorm and module.rsplit(".", 1)[-1].startswith(NORM_MODULES):
            n = value.shape[0]
            value = value * math.sqrt((n - 1) / n)
        out[ours] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} TencentPretrain keys have no modaloom counterpart, e.g. "
                              f"{', '.join(unknown[:5])}; nothing was loaded")
    return out


def convert_tencentpretrain(bin_path: str | Path, config_path: str | Path) -> Model:
    """A modaloom Model holding the weights of a TencentPretrain checkpoint, in eval mode."""
    state = read_tencentpretrain_state(bin_path)
    cfg = tencentpretrain_model_config(config_path, state)
    flat, _ = load_document(config_path)
    mapped = map_state(state, cfg, rescale_layernorm=_uses_tp_layernorm(flat))
    model = Model(cfg)
    load_weights_checked(model, mapped, str(bin_path))
    return model.eval()


# ---------------------------------------------------------------- fine-tuned checkpoints: extractive QA

# finetune/run_cmrc.py's MachineReadingComprehension: embedding, encoder and ``output_layer`` (hidden -> 2:
# start, end), which is our ``span`` target's ``output``.
SPAN_HEAD = {"output_layer.weight": "targets.span.output.weight", "output_layer.bias": "targets.span.output.bias"}
# What run_cmrc.py / run_cmrc_infer.py do, as qa task options: one token per character, windows 128 characters
# apart, and its decoding (see ``modaloom.tasks.qa.decode_tencentpretrain``).
CMRC_TASK_OPTIONS = {"tokenization": "char", "decoding": "tencentpretrain", "doc_stride": 128}


def convert_tencentpretrain_span(bin_path: str | Path, config_path: str | Path) -> Model:
    """A modaloom Model with a ``span`` head from a checkpoint of TencentPretrain's ``finetune/run_cmrc.py``
    (its pre-training targets in the config are replaced by the span head), in eval mode."""
    from modaloom.config_schema import Source, to_dict

    state = read_tencentpretrain_state(bin_path)
    missing = [k for k in SPAN_HEAD if k not in state]
    if missing or state["output_layer.weight"].ndim != 2 or state["output_layer.weight"].shape[0] != 2:
        shape = tuple(state["output_layer.weight"].shape) if "output_layer.weight" in state else None
        raise CheckpointError(f"{bin_path} is not a run_cmrc.py checkpoint: it needs output_layer.weight of shape "
                              f"(2, hidden) and output_layer.bias (found output_layer.weight {shape})")
    head = {ours: state.pop(theirs).detach().clone() for theirs, ours in SPAN_HEAD.items()}
    targets = sorted({k.split(".")[1] for k in state if k.startswith("target.")})
    if targets:
        raise CheckpointError(f"{bin_path} holds pre-training heads ({', '.join(targets)}) besides output_layer; "
                              f"a run_cmrc.py checkpoint has none")
    data = to_dict(tencentpretrain_model_config(config_path, state))
    data["targets"] = [{"type": "span"}]
    cfg = build(ModelConfig, data, Source(), "model")
    flat, _ = load_document(config_path)
    mapped = map_state(state, cfg, rescale_layernorm=_uses_tp_layernorm(flat))
    mapped.update(head)
    model = Model(cfg)
    load_weights_checked(model, mapped, str(bin_path))
    return model.eval()


def modaloom_to_tencentpretrain(model: Model, rescale_layernorm: bool = True) -> dict[str, torch.Tensor]:
    """The TencentPretrain state dict (plain tensors, for ``torch.save``) of a model ``convert_tencentpretrain``
    can read; the inverse of ``map_state``. TencentPretrain LayerNorms get gamma/beta names."""
    cfg = model.config
    _refuse_unconvertible({"encoder": {"type": cfg.encoder.type, "position": cfg.encoder.position},
                           "decoder": None if cfg.decoder is None else
                           {"type": cfg.decoder.type, "position": cfg.decoder.position},
                           "embedding": {"parts": cfg.embedding.parts},
                           "tgt_embedding": {"parts": cfg.tgt_embedding.parts} if cfg.tgt_embedding else None,
                           "targets": [{"type": t.type} for t in cfg.targets]})
    inverse = {ours: tp for tp, ours in _module_names(cfg).items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        module, _, param = name.rpartition(".")
        if module not in inverse:
            raise CheckpointError(f"{name} has no TencentPretrain counterpart")
        tp_module = inverse[module]
        value = tensor.detach().clone().contiguous()
        is_layernorm = isinstance(model.get_submodule(module), torch.nn.LayerNorm)
        if is_layernorm and rescale_layernorm:
            if param == "weight":
                value = value / math.sqrt((value.shape[0] - 1) / value.shape[0])
            param = {"weight": "gamma", "bias": "beta"}[param]
        if tp_module.endswith("seg.embedding"):
            value = value[torch.argsort(torch.tensor(SEGMENT_ROWS))]
        out[f"{tp_module}.{param}"] = value
    return out


def tencentpretrain_batch(input_ids: torch.Tensor, segment_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A modaloom batch from TencentPretrain inputs (segment 0 = padding, 1 = A, 2 = B)."""
    real = segment_ids > 0
    return {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "segment_ids": torch.where(real, segment_ids - 1, torch.full_like(segment_ids, 2)),
    }


__all__ = ["convert_tencentpretrain", "convert_tencentpretrain_span", "map_state", "modaloom_to_tencentpretrain", "read_tencentpretrain_state", "tencentpretrain_batch",
           "tencentpretrain_model_config"]
