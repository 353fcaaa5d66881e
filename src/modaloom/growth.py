"""Model growth with parameter inheritance (GrowCLIP, Deng et al. 2023; Net2Net, Chen et al. 2016; progressive
stacking, Gong et al. 2019): a trained model made deeper or its feed-forward blocks wider, then trained on.

``grow_model(model, depth=N, ffn_size=F, streams=None, mode=None)`` returns a new ``Model`` whose transformer
encoder stacks (the ``transformer`` encoder, or the chosen streams of a ``dual`` one) have ``N`` more layers
and/or feed-forward width ``F``; every inherited weight is copied, and the report says whether the grown model
computes exactly the original function.

- depth: new layer ``L + k`` is a copy of layer ``k mod L`` (the stack repeated on top of itself, as progressive
  stacking). In ``identity`` mode (pre-norm stacks only, the default there) the copy's output projections
  (attention output, cross-attention output, feed-forward ``linear_out``: weights and biases) are zero, so the
  layer adds nothing to its residual stream: the grown model is function-preserving. A post-norm layer
  normalises after the residual sum, so no choice of its weights gives the identity in general; there the only
  mode is ``stack`` (the plain copy), which is not function-preserving and is reported as such.
- feed-forward width: the first ``F_old`` units keep their weights; the new units' input (and gate) rows are
  initialised as the model initialises a new layer and their ``linear_out`` columns are zero, so they add nothing
  until trained: function-preserving for pre- and post-norm stacks alike.
- hidden width is not grown (every part of the model reads it: embeddings, norms, heads); ALBERT's shared
  layers, decoders and other encoder types are refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from modaloom.config_schema import to_dict
from modaloom.errors import ConfigError
from modaloom.model import Model, build_model

DEPTH_MODES = ("identity", "stack")
# parameters whose zeroing makes a pre-norm layer the identity: every sublayer's projection into the residual
OUTPUT_PROJECTIONS = ("self_attn.output.", "cross_attn.output.", "feed_forward.linear_out.")
# feed-forward parameters whose dimension ``dim`` runs over the units
FFN_UNIT_DIMS = {"feed_forward.linear_in.weight": 0, "feed_forward.linear_in.bias": 0,
                 "feed_forward.linear_gate.weight": 0, "feed_forward.linear_gate.bias": 0,
                 "feed_forward.linear_out.weight": 1}


@dataclass
class StackGrowth:
    """What happened to one transformer stack: its config path, sizes before/after and the depth mode."""

    where: str  # config path of the stack, e.g. encoder or encoder.streams.1
    prefix: str  # its layers' state-dict prefix, e.g. encoder.stack.layers.
    layers: tuple[int, int]
    ffn_size: tuple[int, int]
    norm_position: str
    mode: str | None  # None: depth unchanged

    @property
    def function_preserving(self) -> bool:
        return self.mode != "stack"

    def describe(self) -> str:
        parts = []
        if self.layers[1] != self.layers[0]:
            how = "new layers copy the stack, output projections zero" if self.mode == "identity" \
                else "new layers copy the stack (not function-preserving)"
            parts.append(f"layers {self.layers[0]} -> {self.layers[1]} ({how})")
        if self.ffn_size[1] != self.ffn_size[0]:
            parts.append(f"feedforward_size {self.ffn_size[0]} -> {self.ffn_size[1]} (new units' outputs zero)")
        return f"{self.where} ({self.norm_position}-norm): " + ("; ".join(parts) or "unchanged")


@dataclass
class Growth:
    """The grown model and, per stack, what was done; ``overrides`` rebuild its shape from the old config."""

    model: Model
    stacks: list[StackGrowth] = field(default_factory=list)

    @property
    def function_preserving(self) -> bool:
        return all(s.function_preserving for s in self.stacks)

    @property
    def overrides(self) -> list[str]:
        out = []
        for s in self.stacks:
            if s.layers[1] != s.layers[0]:
                out.append(f"model.{s.where}.layers_num={s.layers[1]}")
            if s.ffn_size[1] != s.ffn_size[0]:
                out.append(f"model.{s.where}.feedforward_size={s.ffn_size[1]}")
        return out

    def record(self) -> dict[str, Any]:
        """The ``growth`` entry of the grown folder's config.json."""
        return {"function_preserving": self.function_preserving, "overrides": self.overrides,
                "stacks": [s.describe() for s in self.stacks]}


def _stacks(model_dict: dict[str, Any], streams: list[int] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(config path, layer key prefix, stack section) of every transformer stack to grow."""
    encoder = model_dict["encoder"]
    kind = encoder.get("type", "transformer")
    if kind == "transformer":
        if streams is not None:
            raise ConfigError(f"--stream is for dual encoders; this model's encoder is {kind!r}")
        found = [("encoder", "encoder.stack.layers.", encoder)]
    elif kind == "dual":
        chosen = list(range(len(encoder["streams"]))) if streams is None else streams
        bad = [i for i in chosen if not 0 <= i < len(encoder["streams"])]
        if bad:
            raise ConfigError(f"--stream {bad[0]}: the dual encoder has streams 0..{len(encoder['streams']) - 1}")
        found = [(f"encoder.streams.{i}", f"encoder.streams.{i}.stack.layers.", encoder["streams"][i]) for i in chosen]
        other = [w for w, _, s in found if s.get("type", "transformer") != "transformer"]
        if other:
            raise ConfigError(f"{other[0]} is not a transformer stack; growth handles transformer streams only")
    else:
        raise ConfigError(f"model growth handles encoder types 'transformer' and 'dual' (of transformers), "
                          f"not {kind!r}")
    shared = [w for w, _, s in found if s.get("share_layers")]
    if shared:
        raise ConfigError(f"{shared[0]} shares one layer across the stack (ALBERT); growing it would change every "
                          f"layer at once: not supported")
    return found


def _depth_mode(where: str, norm_position: str, mode: str | None) -> str:
    if mode is None:
        return "identity" if norm_position == "pre" else "stack"
    if mode not in DEPTH_MODES:
        raise ConfigError(f"depth mode {mode!r} is not one of {list(DEPTH_MODES)}")
    if mode == "identity" and norm_position != "pre":
        raise ConfigError(f"{where} is a post-norm stack: a new layer cannot be the identity there (the norm after "
                          f"the residual sum changes its input); use depth mode 'stack' (a copy, not "
                          f"function-preserving)")
    return mode


def _source_key(key: str, prefix: str, old_layers: int) -> tuple[str, bool]:
    """The old key a new key inherits from, and whether it lies in a new layer."""
    match = re.match(re.escape(prefix) + r"(\d+)\.(.*)", key)
    if match is None:
        return key, False
    index, rest = int(match.group(1)), match.group(2)
    if index < old_layers:
        return key, False
    return f"{prefix}{(index - old_layers) % old_layers}.{rest}", True


def grow_model(model: Model, depth: int = 0, ffn_size: int | None = None, streams: list[int] | None = None,
               mode: str | None = None, seed: int = 0) -> Growth:
    """``model`` with ``depth`` more layers and/or feed-forward width ``ffn_size`` (see the module docstring)."""
    if depth < 0:
        raise ConfigError(f"--depth adds layers: it must be >= 0, got {depth}")
    if depth == 0 and ffn_size is None:
        raise ConfigError("nothing to grow: give --depth N (more layers) and/or --ffn-size F (wider feed-forward)")
    data = to_dict(model.config)
    stacks = []
    for where, prefix, section in _stacks(data, streams):
        old_ffn = int(section["feedforward_size"])
        new_ffn = old_ffn if ffn_size is None else int(ffn_size)
        if new_ffn < old_ffn:
            raise ConfigError(f"--ffn-size {new_ffn} is below {where}.feedforward_size {old_ffn}: growth only widens")
        norm = section.get("norm_position", "post")
        layers = int(section["layers_num"])
        stacks.append(StackGrowth(where, prefix, (layers, layers + depth), (old_ffn, new_ffn), norm,
                                  _depth_mode(where, norm, mode) if depth else None))
        section["layers_num"], section["feedforward_size"] = layers + depth, new_ffn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = build_model(data)
    old_state = model.state_dict()
    new_state = grown.state_dict()
    with torch.no_grad():
        for key, tensor in new_state.items():
            stack = next((s for s in stacks if key.startswith(s.prefix)), None)
            source, is_new = _source_key(key, stack.prefix, stack.layers[0]) if stack else (key, False)
            if source not in old_state:
                raise ConfigError(f"grown model key {key!r} has no source {source!r} in the original model")
            _inherit(tensor, old_state[source], key)
            if stack is None:
                continue
            if stack.ffn_size[1] > stack.ffn_size[0] and key.endswith("feed_forward.linear_out.weight"):
                tensor[:, stack.ffn_size[0]:] = 0.0
            if is_new and stack.mode == "identity" and any(p in key for p in OUTPUT_PROJECTIONS):
                tensor.zero_()
    return Growth(grown, stacks)


def _inherit(new: torch.Tensor, old: torch.Tensor, key: str) -> None:
    """Copy ``old`` into ``new``: whole, or into the leading units of a widened feed-forward tensor."""
    if new.shape == old.shape:
        new.copy_(old)
        return
    dim = next((d for suffix, d in FFN_UNIT_DIMS.items() if key.endswith(suffix)), None)
    others_match = new.dim() == old.dim() and all(
        a == b for i, (a, b) in enumerate(zip(new.shape, old.shape, strict=True)) if i != dim)
    if dim is None or not others_match or new.shape[dim] < old.shape[dim]:
        raise ConfigError(f"{key}: shape {tuple(old.shape)} cannot be grown to {tuple(new.shape)}")
    new.narrow(dim, 0, old.shape[dim]).copy_(old)
