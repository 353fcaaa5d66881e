"""CLIP (``model_type: clip``, ``CLIPModel``): a dual model, text and image towers plus the ``clr`` target.

Stream 0 is the text tower: ``[word, pos]`` embeddings, a causal pre-norm transformer whose final norm is
HF's ``final_layer_norm``. Stream 1 is the image tower: ``[patch, pos]`` with a class token and a patch
convolution without bias, HF's ``pre_layrnorm`` as the stream's embedding norm, a pre-norm transformer whose
final norm is HF's ``post_layernorm`` (HF applies it to the class token only; we apply it to every position,
which gives the same pooled vector). The ``clr`` target pools text by ``eos`` and images by ``first``,
projects without bias (``text_projection`` / ``visual_projection``) and holds ``logit_scale``.

Text pooling: HF takes the position of the largest input id when ``eos_token_id == 2`` (configs written
before transformers PR #24773), otherwise the first occurrence of ``eos_token_id``. The ``clr`` target's
``eos_id`` says the same: ``None`` pools at the largest id (written as ``eos_token_id: 2``), an id pools at
its first occurrence (written as itself). ``eos_id: 2`` has no HF form (HF reads 2 as the legacy rule), so
its export is refused.

``CLIPModel``'s ``base_model_prefix`` is ``clip`` but it has no ``clip`` attribute, so the converter treats
it as a base model and adds ``clip.`` to its keys; the tables below are written with that prefix.

A ``moco`` target (``clr`` plus momentum towers and key queues) exports as the ``clr`` target it extends: its
towers, projections and ``logit_scale`` are ``clr``'s parameters. The momentum copies and the queues live in the
training hook's checkpointed state, not in the model's weights, so they are not exported (``CLIPModel`` has no
place for them); ``momentum`` and ``queue_size`` are training options and are left out of the HF config.
"""

from __future__ import annotations

from typing import Any

from modaloom.config_schema import to_dict
from modaloom.errors import ConfigError
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    attention_dropout,
    build_config,
    first_target,
    hf_activation,
    register_family,
)
from modaloom.interop.hf.mapping import Mapping, Rule, renames, wb
from modaloom.model_config import ModelConfig
from modaloom.targets.contrastive import initial_logit_scale

PREFIX = "clip."
TEXT_EMB = "embedding.streams.0."
IMAGE_EMB = "embedding.streams.1."

# One CLIPEncoderLayer: under <tower>.encoder.layers.{n}. -> encoder.streams.<s>.stack.layers.{n}.
CLIP_LAYER = [
    *wb("self_attn.q_proj", "self_attn.query"),
    *wb("self_attn.k_proj", "self_attn.key"),
    *wb("self_attn.v_proj", "self_attn.value"),
    *wb("self_attn.out_proj", "self_attn.output"),
    *wb("layer_norm1", "self_attn_norm"),
    *wb("mlp.fc1", "feed_forward.linear_in"),
    *wb("mlp.fc2", "feed_forward.linear_out"),
    *wb("layer_norm2", "feed_forward_norm"),
]

TEXT_EMBEDDINGS = [
    ("text_model.embeddings.token_embedding.weight", TEXT_EMB + "parts.word.weight"),
    ("text_model.embeddings.position_embedding.weight", TEXT_EMB + "parts.pos.weight"),
]

IMAGE_EMBEDDINGS = [
    ("vision_model.embeddings.class_embedding", IMAGE_EMB + "parts.patch.cls_token"),
    ("vision_model.embeddings.patch_embedding.weight", IMAGE_EMB + "parts.patch.projection.weight"),
    ("vision_model.embeddings.position_embedding.weight", IMAGE_EMB + "parts.pos.weight"),
    *wb("vision_model.pre_layrnorm", IMAGE_EMB + "norm"),
]

# Legacy eos convention of CLIPTextModel: pool at the largest input id.
LEGACY_EOS = 2


def _side(value: Any, name: str) -> int:
    """An int, or a pair of equal ints (image_size / patch_size may be given as [h, w])."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ConfigError(f"HF option vision_config.{name}={value!r} is not supported (square sizes only)")


def _eos_id(t: Any) -> int | None:
    """The clr target's ``eos_id`` for an HF text config: None for the legacy rule, else the id itself."""
    eos = t.eos_token_id
    if eos == LEGACY_EOS:
        return None
    if not isinstance(eos, int) or not 0 <= eos < t.vocab_size:
        raise ConfigError(
            f"HF option text_config.eos_token_id={eos!r} is not supported: CLIP pools text at the first "
            f"occurrence of that id, which must be a token id below vocab_size ({t.vocab_size})"
        )
    return eos


# the options a moco target adds to clr's: training-time only, with no place in a CLIPConfig
MOCO_ONLY = ("momentum", "queue_size")


def clr_view(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with its first ``moco`` target read as the ``clr`` target it exports as (same label, so the same
    weight keys; ``logit_scale_init`` written out, as the two losses may differ in their default); else ``cfg``."""
    if first_target(cfg, "clr") is not None or first_target(cfg, "moco") is None:
        return cfg
    data = to_dict(cfg)
    index = next(i for i, t in enumerate(cfg.targets) if t.type == "moco")
    moco = cfg.targets[index]
    target = {k: v for k, v in data["targets"][index].items() if k not in MOCO_ONLY}
    target.update(type="clr", name=moco.label, loss="infonce", logit_scale_init=initial_logit_scale(moco))
    data["targets"][index] = target
    return build_config(data, "CLIPModel")


def _towers(cfg: ModelConfig) -> Any:
    """(text embedding, image embedding, text encoder, image encoder, clr target), or a ConfigError naming
    what is not CLIP's shape (the round trip cannot compare a model it cannot translate)."""
    emb, enc, clr = cfg.embedding.streams, cfg.encoder.streams, first_target(cfg, "clr")
    problems = [f"model.{key}.streams has {len(streams)} entries but clip only has 2"
                for key, streams in (("embedding", emb), ("encoder", enc)) if len(streams) != 2]
    if clr is None:
        problems.append(f"model.targets is {[t.type for t in cfg.targets]} but clip only has ['clr']")
    if problems:
        raise ConfigError("; ".join(problems))
    return emb[0], emb[1], enc[0], enc[1], clr


class CLIPFamily(HFFamily):
    model_types = ("clip",)
    architectures = {"CLIPModel": "text and image towers with projections and logit_scale (clr target)"}
    base_architecture = "CLIPModel"
    export_ignore = (
        "embedding.norm", "embedding.norm_eps", "embedding.dropout",  # a dual embedding has none (its streams do)
        # CLIP's towers have attention dropout only
        "embedding.streams.*.dropout", "encoder.streams.*.dropout",
    )

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        """As every family's, with a ``moco`` target exported as its ``clr`` (see the module docstring)."""
        return super().to_hf_config(clr_view(cfg), architecture)

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        self.check_architecture(architecture)
        t, v = hf_config.text_config, hf_config.vision_config
        size, patch = _side(v.image_size, "image_size"), _side(v.patch_size, "patch_size")
        pad = t.pad_token_id if isinstance(t.pad_token_id, int) and 0 <= t.pad_token_id < t.vocab_size else 0
        text = dict(parts=["word", "pos"], vocab_size=t.vocab_size, emb_size=t.hidden_size,
                    max_seq_length=t.max_position_embeddings, pad_id=pad, norm="none", dropout=0.0)
        image = dict(parts=["patch", "pos"], emb_size=v.hidden_size, image_height=size, image_width=size,
                     patch_size=patch, channels=v.num_channels, cls_token=True, patch_bias=False,
                     max_seq_length=(size // patch) ** 2 + 1, norm="layernorm", norm_eps=v.layer_norm_eps,
                     dropout=0.0)
        streams = []
        for c, prefix, mask in ((t, "text_config", "causal"), (v, "vision_config", "fully_visible")):
            streams.append(dict(
                type="transformer", hidden_size=c.hidden_size, layers_num=c.num_hidden_layers,
                heads_num=c.num_attention_heads, feedforward_size=c.intermediate_size,
                act=activation_from_hf(c.hidden_act, f"{prefix}.hidden_act"), norm="layernorm",
                norm_eps=c.layer_norm_eps, norm_position="pre", final_norm=True, mask=mask, dropout=0.0,
                attention_dropout=float(c.attention_dropout or 0.0),
            ))
        target = dict(type="clr", feature_size=hf_config.projection_dim, projection=True, projection_bias=False,
                      logit_scale_init=float(hf_config.logit_scale_init_value), learnable_scale=True,
                      poolings=["eos", "first"], eos_id=_eos_id(t))
        data = dict(embedding=dict(parts=["dual"], streams=[text, image]),
                    encoder=dict(type="dual", streams=streams), targets=[target], init_std=t.initializer_range)
        return build_config(data, architecture)

    def architecture_for(self, cfg: ModelConfig) -> str:
        return "CLIPModel"

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import CLIPConfig

        te, ie, tx, ix, clr = _towers(cfg)
        text = dict(
            vocab_size=te.vocab_size, hidden_size=tx.hidden_size, intermediate_size=tx.feedforward_size,
            projection_dim=clr.feature_size, num_hidden_layers=tx.layers_num, num_attention_heads=tx.heads_num,
            max_position_embeddings=te.max_seq_length, hidden_act=hf_activation(tx.act),
            layer_norm_eps=tx.norm_eps, attention_dropout=attention_dropout(tx), initializer_range=cfg.init_std,
            pad_token_id=te.pad_id, eos_token_id=LEGACY_EOS if clr.eos_id is None else clr.eos_id,
            bos_token_id=te.vocab_size - 2 if te.vocab_size > 2 else None,
        )
        vision = dict(
            hidden_size=ix.hidden_size, intermediate_size=ix.feedforward_size, projection_dim=clr.feature_size,
            num_hidden_layers=ix.layers_num, num_attention_heads=ix.heads_num, num_channels=ie.channels,
            image_size=ie.image_height, patch_size=ie.patch_size, hidden_act=hf_activation(ix.act),
            layer_norm_eps=ix.norm_eps, attention_dropout=attention_dropout(ix), initializer_range=cfg.init_std,
        )
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=clr.feature_size,
                          logit_scale_init_value=initial_logit_scale(clr))

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        p = PREFIX
        clr = first_target(clr_view(cfg), "clr")
        label = clr.label if clr is not None else "clr"
        target = f"targets.{label}."
        rules = [
            *renames(TEXT_EMBEDDINGS, p),
            *renames(CLIP_LAYER, p + "text_model.encoder.layers.{i}.", "encoder.streams.0.stack.layers.{i}."),
            *renames(wb("text_model.final_layer_norm", "encoder.streams.0.stack.final_norm"), p),
            *renames(IMAGE_EMBEDDINGS, p),
            *renames(CLIP_LAYER, p + "vision_model.encoder.layers.{j}.", "encoder.streams.1.stack.layers.{j}."),
            *renames(wb("vision_model.post_layernorm", "encoder.streams.1.stack.final_norm"), p),
            Rule(p + "text_projection.weight", target + "projections.0.weight"),
            Rule(p + "visual_projection.weight", target + "projections.1.weight"),
            Rule(p + "logit_scale", target + "logit_scale"),
        ]
        text_layers, image_layers = (s.layers_num for s in cfg.encoder.streams)
        return Mapping(rules, counts={"i": text_layers, "j": image_layers},
                       hf_ignore=(r".*\.position_ids",))


register_family(CLIPFamily())
