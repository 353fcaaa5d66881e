"""Translate TencentPretrain's flat JSON model configs into modaloom's nested config dict.

TencentPretrain describes a model with one flat namespace (``emb_size``, ``encoder: "transformer"``,
``target: ["mlm", "sp"]`` ...), optionally with ``stream_0`` / ``stream_1`` sub-namespaces for two-tower
(dual) models. ``translate`` maps every key it knows onto the ``model`` / ``data`` / ``train`` sections;
keys that only steer TencentPretrain's own scripts are listed in ``IGNORED_KEYS`` with the reason, and any
other key is refused, so that nothing is dropped silently. Configs that need a feature modaloom lacks
are refused with a one-line ConfigError naming that feature.

Conventions worth knowing (see docs/zoo.md):
- TencentPretrain's segment table has 3 rows (0 = padding, 1 = segment A, 2 = segment B); translated
  configs use ``type_vocab_size: 3`` so converted checkpoints fit (rows reordered to A, B, padding).
- TencentPretrain's embedding layer norm is always its own LayerNorm (eps 1e-6 added to the unbiased
  standard deviation); modaloom uses torch's LayerNorm. Training from scratch this makes no difference;
  ``interop.tencentpretrain.convert_tencentpretrain`` rescales the weights so outputs match.
- ``sinusoidalpos`` scales word embeddings by sqrt(emb_size), as TencentPretrain does.
"""

from __future__ import annotations

from typing import Any

from modaloom.config_schema import Source
from modaloom.errors import ConfigError, choices_text, nearest

# ---------------------------------------------------------------------------------------- name tables
EMBEDDING_PARTS = {
    "word": "word",
    "pos": "pos",
    "seg": "seg",
    "sinusoidalpos": "sinusoidal",
    "patch": "patch",
    "word_patch": "word_patch",
    "masked_patch": "masked_patch",
    "speech": "speech",
    "dual": "dual",
}
ENCODERS = {
    "transformer": "transformer",
    "rnn": "rnn", "birnn": "birnn",
    "lstm": "lstm", "bilstm": "bilstm",
    "gru": "gru", "bigru": "bigru",
    "gatedcnn": "gatedcnn",
    "dual": "dual",
}
BIDIRECTIONAL = {"rnn": "birnn", "lstm": "bilstm", "gru": "bigru"}
TARGETS = ("mlm", "sp", "lm", "bilm", "cls", "clr")
MASKS = {"fully_visible": "fully_visible", "causal": "causal", "causal_with_prefix": "prefix", "prefix": "prefix"}
NORMS = {"normal": "layernorm", "normal_torch": "layernorm", "t5": "t5", "rms": "rms"}
ACTS = {"gelu": "gelu", "gelu_fast": "gelu_fast", "gelu_new": "gelu_new", "quick_gelu": "quick_gelu",
        "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh"}
SCHEDULES = {"linear": "linear", "cosine": "cosine", "cosine_with_restarts": "cosine_with_restarts",
             "polynomial": "polynomial", "constant": "constant", "constant_with_warmup": "constant_with_warmup",
             "inverse_sqrt": "inverse_sqrt", "tri_stage": "tristage", "tristage": "tristage"}
OPTIMIZERS = {"adamw": "adamw", "adafactor": "adafactor"}
POOLINGS = ("first", "last", "mean", "max")
TP_LAYERNORM_EPS = 1e-6  # TencentPretrain's default layernorm_eps
TP_MAX_SEQ_LENGTH = 512  # its default max_seq_length

# Keys read by the translation (model, data or train), besides those in IGNORED_KEYS.
MAPPED_KEYS = frozenset({
    "emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num", "decoder_layers_num",
    "attention_head_size", "local_kv_heads_num", "hidden_act", "dropout", "max_seq_length", "vocab_size",
    "embedding", "tgt_embedding", "encoder", "decoder", "mask", "layernorm_positioning", "layernorm",
    "layernorm_eps", "remove_embedding_layernorm", "remove_transformer_bias", "remove_attention_scale",
    "relative_position_embedding", "relative_attention_buckets_num", "rotary_position_embedding",
    "alibi_position_embedding", "feed_forward", "parameter_sharing", "factorized_embedding_parameterization",
    "share_embedding", "tie_weights", "has_lmtarget_bias", "target", "labels_num", "pooling", "bidirectional",
    "has_residual_attention", "stream_0", "stream_1", "image_height", "image_width", "patch_size",
    "channels_num", "feature_size", "projection", "audio_feature_size", "conv_channels", "conv_kernel_sizes",
    "conv_layers_num", "max_audio_frames", "kernel_size", "block_size", "label_smoothing", "tokenizer",
    "image_tokenizer", "data_processor", "seq_length", "learning_rate", "warmup", "batch_size", "seed",
    "total_steps", "optimizer", "scheduler", "fp16", "accumulation_steps", "report_steps",
    "save_checkpoint_steps",
})

# TencentPretrain keys that are accepted and deliberately ignored, with the reason.
IGNORED_KEYS: dict[str, str] = {
    "image_preprocess": "image augmentation is chosen by the modaloom image processor (data side)",
    "audio_preprocess": "feature normalisation is chosen by the modaloom audio features (data side)",
    "specaugment": "SpecAugment settings belong to the audio features, not the model",
    "sampling_rate": "audio resampling is a features option",
    "ignore_index": "modaloom labels always mark ignored positions with -100",
    "attention": "modaloom always uses torch SDPA, which picks flash kernels itself",
    "layer_number_scale": "a fp16 overflow guard that cancels inside the softmax; no effect in fp32/bf16",
    "prefix_lm_loss": "the processor decides which positions carry lm_labels",
    "decay": "TencentPretrain's polynomial decay knob; use train.power",
    "fp16_opt_level": "apex option; modaloom uses torch autocast",
}

# Joint text+image vocabularies built by a VQGAN image tokenizer: the data side is missing.
_JOINT_IMAGE_TOKENIZERS = ("multimodal", "text_image")


def _fail(source: Source | None, key: str, message: str) -> ConfigError:
    where = source.where(key) if source is not None else key
    return ConfigError(f"{where}: {message}")


def _choose(table: dict[str, str] | tuple[str, ...], value: Any, key: str, source: Source | None) -> str:
    if value not in table:
        raise _fail(source, key, f"TencentPretrain value {value!r} is not supported{nearest(str(value), table)}; "
                                 f"valid choices: {choices_text(table)}")
    return table[value] if isinstance(table, dict) else value


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_keys(flat: dict[str, Any], source: Source | None, prefix: str = "") -> None:
    for key in flat:
        if key in MAPPED_KEYS or key in IGNORED_KEYS:
            continue
        raise _fail(source, f"{prefix}{key}", f"unknown TencentPretrain key {key!r}"
                    f"{nearest(key, MAPPED_KEYS | set(IGNORED_KEYS))}; modaloom cannot translate it")


def _refuse_missing_features(flat: dict[str, Any], source: Source | None) -> None:
    tokenizer = flat.get("tokenizer")
    if tokenizer in _JOINT_IMAGE_TOKENIZERS or (flat.get("image_tokenizer") and tokenizer != "vqgan"):
        raise _fail(source, "tokenizer", f"tokenizer {tokenizer!r} builds joint text+image token sequences with "
                                         "a VQGAN image tokenizer, which modaloom does not provide")
    if flat.get("has_residual_attention"):
        raise _fail(source, "has_residual_attention",
                    "residual attention (RealFormer) is not supported by modaloom's attention")
    if flat.get("encoder") == "dual" and "target" not in flat:
        raise _fail(source, "target", "a dual encoder without a target is TencentPretrain's siamese fine-tuning "
                                      "setup; modaloom has no siamese similarity head yet")


# ---------------------------------------------------------------------------------------- sections
def _norm_kind(flat: dict[str, Any], source: Source | None) -> str:
    return _choose(NORMS, flat.get("layernorm", "normal"), "layernorm", source)


def _embedding(flat: dict[str, Any], names: list[str], key: str, source: Source | None) -> dict[str, Any]:
    parts = [_choose(EMBEDDING_PARTS, name, key, source) for name in names]
    emb_size = int(flat.get("emb_size", flat.get("hidden_size", 768)))
    out: dict[str, Any] = {
        "parts": parts,
        "emb_size": emb_size,
        "max_seq_length": int(flat.get("max_seq_length", TP_MAX_SEQ_LENGTH)),
        "dropout": float(flat.get("dropout", 0.1)),
        # TencentPretrain's embedding norm is always its own LayerNorm with eps 1e-6, whatever `layernorm` says.
        "norm": "none" if flat.get("remove_embedding_layernorm", False) else "layernorm",
        "norm_eps": TP_LAYERNORM_EPS,
    }
    if "vocab_size" in flat:
        out["vocab_size"] = int(flat["vocab_size"])
    if "seg" in parts:
        out["type_vocab_size"] = 3
    if "sinusoidal" in parts and "word" in parts:
        out["scale_embedding"] = True
    if any(p in parts for p in ("patch", "word_patch", "masked_patch")):
        out["image_height"] = int(flat.get("image_height", 256))
        out["image_width"] = int(flat.get("image_width", 256))
        out["patch_size"] = int(flat.get("patch_size", 16))
        out["channels"] = int(flat.get("channels_num", 3))
    if "speech" in parts:
        out.update(_speech(flat, emb_size, source))
    return out


def _speech(flat: dict[str, Any], emb_size: int, source: Source | None) -> dict[str, Any]:
    """TencentPretrain lists every conv's output channels (the last is 2 * emb_size, halved by a GLU);
    modaloom lists the inner channels only and derives the last conv's width from emb_size."""
    kernels = [int(k) for k in _as_list(flat.get("conv_kernel_sizes", [5, 5]))]
    layers = int(flat.get("conv_layers_num", len(kernels)))
    if layers != len(kernels):
        raise _fail(source, "conv_layers_num", f"{layers} conv layers but {len(kernels)} conv_kernel_sizes")
    raw = flat.get("conv_channels", 1024)
    if isinstance(raw, (list, tuple)):
        channels = [int(c) for c in raw]
        if len(channels) != len(kernels):
            raise _fail(source, "conv_channels", f"{len(channels)} conv_channels for {len(kernels)} conv layers")
        if channels[-1] != 2 * emb_size:
            raise _fail(source, "conv_channels", f"the last conv must output 2 * emb_size = {2 * emb_size} "
                                                 f"channels (GLU), got {channels[-1]}")
        channels = channels[:-1]
    else:
        channels = [int(raw)] * (len(kernels) - 1)
    max_frames = int(flat.get("max_audio_frames", 6000))
    return {
        "audio_feature_size": int(flat.get("audio_feature_size", 80)),
        "conv_channels": channels,
        "conv_kernel_sizes": kernels,
        "max_seq_length": max(int(flat.get("max_seq_length", TP_MAX_SEQ_LENGTH)), max_frames),
    }


def _encoder(flat: dict[str, Any], source: Source | None, decoder: bool = False) -> dict[str, Any]:
    key = "decoder" if decoder else "encoder"
    name = flat.get(key, "transformer")
    kind = _choose(ENCODERS, name, key, source)
    if flat.get("bidirectional") and kind in BIDIRECTIONAL:
        kind = BIDIRECTIONAL[kind]
    hidden = int(flat.get("hidden_size", 768))
    out: dict[str, Any] = {
        "type": kind,
        "hidden_size": hidden,
        "layers_num": int(flat.get("decoder_layers_num" if decoder else "layers_num",
                                   flat.get("layers_num", 12))),
        "dropout": float(flat.get("dropout", 0.1)),
    }
    if kind == "gatedcnn":
        out["kernel_size"] = int(flat.get("kernel_size", 4))
        out["block_size"] = int(flat.get("block_size", 2))
    if kind != "transformer":
        return out
    heads = int(flat.get("heads_num", 12))
    out.update({
        "heads_num": heads,
        "feedforward_size": int(flat.get("feedforward_size", 4 * hidden)),
        "act": _choose(ACTS, flat.get("hidden_act", "gelu"), "hidden_act", source),
        "feed_forward": _choose(("dense", "gated"), flat.get("feed_forward", "dense"), "feed_forward", source),
        "norm": _norm_kind(flat, source),
        "norm_eps": float(flat.get("layernorm_eps", TP_LAYERNORM_EPS)),
        "norm_position": _choose(("pre", "post"), flat.get("layernorm_positioning", "post"),
                                 "layernorm_positioning", source),
        "mask": "causal" if decoder else _choose(MASKS, flat.get("mask", "fully_visible"), "mask", source),
        "bias": not flat.get("remove_transformer_bias", False),
        "attention_scale": not flat.get("remove_attention_scale", False),
        "share_layers": bool(flat.get("parameter_sharing", False)) and not decoder,
    })
    if "attention_head_size" in flat:
        out["head_size"] = int(flat["attention_head_size"])
    if "local_kv_heads_num" in flat:
        out["kv_heads_num"] = int(flat["local_kv_heads_num"])
    positions = [k for k in ("relative_position_embedding", "rotary_position_embedding", "alibi_position_embedding")
                 if flat.get(k)]
    if len(positions) > 1:
        raise _fail(source, positions[1], f"only one of {', '.join(positions)} can be set")
    if positions:
        out["position"] = {"relative_position_embedding": "relative", "rotary_position_embedding": "rotary",
                           "alibi_position_embedding": "alibi"}[positions[0]]
        if out["position"] == "relative":
            out["relative_buckets"] = int(flat.get("relative_attention_buckets_num", 32))
            out["relative_max_distance"] = 128
    return out


def _targets(flat: dict[str, Any], model: dict[str, Any], source: Source | None) -> list[dict[str, Any]]:
    names = _as_list(flat.get("target", ["mlm"]))
    parts = model["embedding"]["parts"]
    tie = bool(flat.get("tie_weights", False))
    pooling = _choose(POOLINGS, flat.get("pooling", "first"), "pooling", source)
    eps = float(flat.get("layernorm_eps", TP_LAYERNORM_EPS))
    act = _choose(ACTS, flat.get("hidden_act", "gelu"), "hidden_act", source)
    out = []
    for i, name in enumerate(names):
        name = _choose(TARGETS, name, f"target.{i}", source)
        if name == "mlm" and "masked_patch" in parts:
            # BEiT: masked image modelling over discrete visual tokens.
            vocab = int((flat.get("image_tokenizer") or {}).get("image_vocab_size", 8192))
            out.append({"type": "mae", "name": "mlm", "image_vocab_size": vocab,
                        "patch_size": model["embedding"].get("patch_size", 16)})
        elif name == "mlm":
            out.append({"type": "mlm", "tie_weights": tie, "act": act, "norm_eps": eps})
        elif name == "lm":
            out.append({"type": "lm", "transform": False, "tie_weights": tie,
                        "output_bias": bool(flat.get("has_lmtarget_bias", False)),
                        "label_smoothing": float(flat.get("label_smoothing", 0.0))})
        elif name == "bilm":
            out.append({"type": "bilm", "transform": False, "tie_weights": tie,
                        "output_bias": bool(flat.get("has_lmtarget_bias", False))})
        elif name == "sp":
            out.append({"type": "sp"})
        elif name == "cls":
            cls: dict[str, Any] = {"type": "cls", "pooling": pooling}
            if "labels_num" in flat:
                cls["labels_num"] = int(flat["labels_num"])
            out.append(cls)
        else:  # clr
            streams = [flat.get(f"stream_{j}", {}) for j in range(2)]
            out.append({
                "type": "clr",
                "feature_size": int(flat.get("feature_size", 512)),
                "projection": bool(flat.get("projection", True)),
                "poolings": [_choose(POOLINGS, s.get("pooling", pooling), f"stream_{j}.pooling", source)
                             for j, s in enumerate(streams)],
            })
    return out


def _stream(flat: dict[str, Any], index: int, source: Source | None) -> dict[str, Any]:
    """One tower of a dual model: the stream's own keys over the top-level ones."""
    key = f"stream_{index}"
    sub = flat.get(key)
    if not isinstance(sub, dict):
        raise _fail(source, key, f"a dual model needs a {key} mapping")
    _check_keys(sub, source, prefix=f"{key}.")
    shared = {k: v for k, v in flat.items() if k not in ("embedding", "encoder", "target", "stream_0", "stream_1")}
    return {**shared, **sub}


def _model(flat: dict[str, Any], source: Source | None) -> dict[str, Any]:
    names = _as_list(flat.get("embedding", ["word"]))
    if names == ["dual"]:
        streams = [_stream(flat, i, source) for i in range(2)]
        embedding = {"parts": ["dual"], "dropout": float(flat.get("dropout", 0.1)), "norm": "none",
                     "streams": [_embedding(s, _as_list(s.get("embedding", ["word"])), f"stream_{i}.embedding",
                                            source) for i, s in enumerate(streams)]}
        encoder = {"type": "dual", "streams": [_encoder(s, source) for s in streams]}
        model: dict[str, Any] = {"embedding": embedding, "encoder": encoder}
    else:
        model = {"embedding": _embedding(flat, names, "embedding", source), "encoder": _encoder(flat, source)}
    if flat.get("decoder"):
        if "tgt_embedding" not in flat:
            raise _fail(source, "tgt_embedding", "a decoder needs tgt_embedding (e.g. [\"word\", \"pos\"])")
        model["tgt_embedding"] = _embedding(flat, _as_list(flat["tgt_embedding"]), "tgt_embedding", source)
        model["decoder"] = _encoder(flat, source, decoder=True)
        if model["decoder"].get("position") == "rotary":
            raise _fail(source, "rotary_position_embedding", "rotary positions in a decoder are not supported")
    elif "tgt_embedding" in flat and "decoder_layers_num" in flat:
        raise _fail(source, "decoder", "decoder_layers_num and tgt_embedding are set but no decoder is named")
    if flat.get("share_embedding"):
        model["share_embedding"] = True
    if flat.get("factorized_embedding_parameterization") and model["embedding"].get("emb_size") == \
            model["encoder"].get("hidden_size"):
        raise _fail(source, "factorized_embedding_parameterization",
                    "factorized embeddings need emb_size smaller than hidden_size")
    model["targets"] = _targets(flat, model, source)
    return model


def _data(flat: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if "data_processor" in flat:
        data["processor"] = str(flat["data_processor"])
    if "seq_length" in flat:
        data["seq_length"] = int(flat["seq_length"])
    return data


def _train(flat: dict[str, Any], source: Source | None) -> dict[str, Any]:
    train: dict[str, Any] = {}
    if "optimizer" in flat:
        train["optimizer"] = _choose(OPTIMIZERS, flat["optimizer"], "optimizer", source)
        if train["optimizer"] == "adamw":  # TencentPretrain's trainer builds AdamW with correct_bias=False, always
            train["adam_bias_correction"] = False
    if "scheduler" in flat:
        train["schedule"] = _choose(SCHEDULES, flat["scheduler"], "scheduler", source)
    simple = {"learning_rate": ("lr", float), "batch_size": ("batch_size", int), "seed": ("seed", int),
              "total_steps": ("steps", int), "accumulation_steps": ("grad_accum_steps", int),
              "report_steps": ("log_every", int), "save_checkpoint_steps": ("save_every", int)}
    for key, (name, cast) in simple.items():
        if key in flat:
            train[name] = cast(flat[key])
    if "warmup" in flat:
        train["warmup_ratio"] = float(flat["warmup"])
    if flat.get("fp16"):
        train["precision"] = "fp16"
    return train


def translate(flat: dict[str, Any], source: Source | None = None) -> dict[str, Any]:
    """A nested ``{"model": ..., "data": ..., "train": ...}`` dict from a flat TencentPretrain config.

    Raises ConfigError (naming the file and key) for unknown keys, unsupported values and configs that
    need a feature modaloom does not have.
    """
    if not isinstance(flat, dict):
        raise ConfigError("a TencentPretrain config must be a JSON object")
    _check_keys(flat, source)
    _refuse_missing_features(flat, source)
    out: dict[str, Any] = {"model": _model(flat, source)}
    data = _data(flat)
    if data:
        out["data"] = data
    train = _train(flat, source)
    if train:
        out["train"] = train
    return out


__all__ = ["IGNORED_KEYS", "MAPPED_KEYS", "translate"]
