"""The rule engine behind HuggingFace conversion: name tables with layer placeholders and exact transforms.

A family describes a checkpoint layout as a list of ``Rule``s. Each rule names one or more HF keys and one
or more modaloom keys, with ``{i}``-style placeholders that ``Mapping.counts`` expands (``{i}`` over encoder
layers, ``{j}`` over decoder layers, any name a family likes), and a ``Transform`` that maps the HF tensors
to ours and back *exactly* (renames, transposes, fused-projection splits, reshapes).

Conversion in either direction checks everything before anything is loaded:
- every key the source holds is consumed by a rule, declared an alias of a tied key, or matched by an
  ``hf_ignore`` pattern (buffers such as ``position_ids``);
- every key the destination needs is produced (modaloom keys may instead be aliases of tied weights, or
  randomly initialised heads when a rule is ``optional`` and the checkpoint lacks it);
- every produced tensor has exactly the shape the destination model expects.
Anything else raises ``CheckpointError`` naming the keys.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from modaloom.errors import CheckpointError

Tensor = torch.Tensor
Shape = tuple[int, ...]


# ------------------------------------------------------------------------------------------ transforms
class Transform:
    """Maps the tensors of one rule from HF to modaloom (``to_ours``) and back (``to_hf``), exactly.

    Both directions receive the shapes the outputs must have, so that reshaping transforms need no
    configuration of their own.
    """

    def to_ours(self, tensors: list[Tensor], shapes: list[Shape]) -> list[Tensor]:
        raise NotImplementedError

    def to_hf(self, tensors: list[Tensor], shapes: list[Shape]) -> list[Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class Identity(Transform):
    def to_ours(self, tensors, shapes):
        return list(tensors)

    def to_hf(self, tensors, shapes):
        return list(tensors)


class Transpose(Transform):
    """2-D transpose: GPT-2's Conv1D stores (in, out) where a Linear stores (out, in)."""

    def to_ours(self, tensors, shapes):
        return [t.t().contiguous() for t in tensors]

    def to_hf(self, tensors, shapes):
        return [t.t().contiguous() for t in tensors]


class Reshape(Transform):
    """Same values, another shape (e.g. a (D,) class token stored as (1, 1, D))."""

    def to_ours(self, tensors, shapes):
        return [t.reshape(s).contiguous() for t, s in zip(tensors, shapes)]

    def to_hf(self, tensors, shapes):
        return [t.reshape(s).contiguous() for t, s in zip(tensors, shapes)]


@dataclass(frozen=True, repr=False)
class Split(Transform):
    """One fused HF tensor <-> several of ours, cut along ``dim`` (after an optional transpose).

    GPT-2's ``c_attn`` weight (hidden, 3*hidden) is ``Split(dim=0, transpose=True)`` into query, key and
    value (hidden, hidden) each; its bias is ``Split(dim=0)``. Piece sizes come from the expected shapes,
    so unequal pieces (grouped-query attention) work too.
    """

    dim: int = 0
    transpose: bool = False

    def to_ours(self, tensors, shapes):
        (fused,) = tensors
        if self.transpose:
            fused = fused.t()
        sizes = [s[self.dim] for s in shapes]
        if sum(sizes) != fused.shape[self.dim]:
            raise ValueError(f"cannot split {tuple(fused.shape)} along dim {self.dim} into {sizes}")
        return [p.contiguous() for p in torch.split(fused, sizes, dim=self.dim)]

    def to_hf(self, tensors, shapes):
        fused = torch.cat(list(tensors), dim=self.dim)
        if self.transpose:
            fused = fused.t()
        return [fused.contiguous()]


@dataclass(frozen=True, repr=False)
class Lambda(Transform):
    """An ad-hoc exact transform given as two functions over lists of tensors (use sparingly)."""

    forward: Callable[[list[Tensor], list[Shape]], list[Tensor]]
    backward: Callable[[list[Tensor], list[Shape]], list[Tensor]]

    def to_ours(self, tensors, shapes):
        return self.forward(tensors, shapes)

    def to_hf(self, tensors, shapes):
        return self.backward(tensors, shapes)


IDENTITY = Identity()
TRANSPOSE = Transpose()
RESHAPE = Reshape()


# ------------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    """HF key(s) <-> modaloom key(s) through ``transform``; patterns may hold ``{placeholders}``.

    ``optional``: the HF side may lack this rule's keys (a head of a headless architecture). On import
    our tensors then keep their random initialisation; on export they are left out; both are reported.
    """

    hf: str | tuple[str, ...]
    ours: str | tuple[str, ...]
    transform: Transform = IDENTITY
    optional: bool = False

    @property
    def hf_keys(self) -> tuple[str, ...]:
        return (self.hf,) if isinstance(self.hf, str) else tuple(self.hf)

    @property
    def ours_keys(self) -> tuple[str, ...]:
        return (self.ours,) if isinstance(self.ours, str) else tuple(self.ours)


def placeholders(pattern: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


def expand(patterns: Sequence[str], counts: dict[str, int],
           names: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """All instances of a group of patterns over the placeholders they use (same values across the group).

    A placeholder in ``counts`` ranges over 0..count-1 (layers); one in ``names`` is a fixed string (e.g.
    ``{mlm}`` -> the label of the model's mlm target).
    """
    names = names or {}
    used = sorted({n for p in patterns for n in placeholders(p) if n not in names})
    missing = [n for n in used if n not in counts]
    if missing:
        raise ValueError(f"patterns {list(patterns)} use placeholders {missing} without a count or name")
    out = []
    for values in itertools.product(*(range(counts[n]) for n in used)):
        env = {**names, **dict(zip(used, values))}
        out.append(tuple(p.format(**env) for p in patterns))
    return out


def wb(hf_module: str, ours_module: str, bias: bool = True) -> list[tuple[str, str]]:
    """(hf, ours) pairs for a module's weight and, optionally, its bias."""
    pairs = [(f"{hf_module}.weight", f"{ours_module}.weight")]
    if bias:
        pairs.append((f"{hf_module}.bias", f"{ours_module}.bias"))
    return pairs


def renames(pairs: Iterable[tuple[str, str]], hf_prefix: str = "", ours_prefix: str = "",
            transform: Transform | None = None, optional: bool = False) -> list[Rule]:
    """One rule per (hf, ours) pair, with prefixes prepended to both sides."""
    return [Rule(hf_prefix + h, ours_prefix + o, transform or IDENTITY, optional) for h, o in pairs]


@dataclass
class Mapping:
    """The rules that apply to one model, with the placeholder counts and the keys handled specially.

    - ``hf_ignore``: regular expressions (full match) of HF keys that carry nothing we need (buffers);
      they are skipped on import and left to the HF model's own initialisation on export.
    - ``hf_aliases``: HF key -> the HF key it is tied to (a tied output layer, a shared bias). On import an
      alias must equal its canonical key when both are stored; on export it gets the canonical tensor
      and is left out of the written file, as ``transformers`` does for tied weights.
    - ``hf_unused``: HF key -> HF key: a parameter HF's forward never reads (e.g. BERT's
      ``cls.predictions.bias`` when the decoder is untied); skipped on import, written as a copy of the
      other key on export.
    - ``ours_dropped``: regular expressions of modaloom keys an export may leave out (the heads of a
      base-model architecture); they are reported.
    """

    rules: list[Rule]
    counts: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    hf_ignore: tuple[str, ...] = ()
    hf_aliases: dict[str, str] = field(default_factory=dict)
    hf_unused: dict[str, str] = field(default_factory=dict)
    ours_dropped: tuple[str, ...] = ()

    def expanded(self) -> list[tuple[tuple[str, ...], tuple[str, ...], Rule]]:
        out = []
        for rule in self.rules:
            hf_n = len(rule.hf_keys)
            for keys in expand(rule.hf_keys + rule.ours_keys, self.counts, self.names):
                out.append((keys[:hf_n], keys[hf_n:], rule))
        return out

    def aliases(self) -> dict[str, str]:
        out = {}
        for alias, canonical in self.hf_aliases.items():
            for a, c in expand((alias, canonical), self.counts, self.names):
                out[a] = c
        return out

    def ignored(self, key: str) -> bool:
        return key in self.hf_unused or any(re.fullmatch(p, key) for p in self.hf_ignore)

    def dropped(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.ours_dropped)


# ------------------------------------------------------------------------------------------- conversion
def _sample(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class _Problems:
    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.items: list[str] = []

    def add(self, what: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.items.append(f"{len(keys)} {what}: {_sample(keys)}")

    def note(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if self.items:
            raise CheckpointError(f"{self.origin}: " + "; ".join(self.items) + "; nothing was converted")


def _apply(transform: Transform, direction: str, inputs: list[Tensor], shapes: list[Shape],
           names_in: Sequence[str], problems: _Problems) -> list[Tensor] | None:
    try:
        outs = getattr(transform, direction)(inputs, shapes)
    except (RuntimeError, ValueError) as exc:
        shown = ", ".join(f"{k} {tuple(t.shape)}" for k, t in zip(names_in, inputs))
        problems.note(f"cannot convert {shown} with {transform!r}: {exc}")
        return None
    if len(outs) != len(shapes):
        problems.note(f"{transform!r} gave {len(outs)} tensors for {list(names_in)}, expected {len(shapes)}")
        return None
    return outs


def hf_state_to_ours(mapping: Mapping, hf_state: dict[str, Tensor], ours_shapes: dict[str, Shape],
                     ours_aliases: dict[str, str], hf_shapes: dict[str, Shape] | None = None,
                     origin: str = "HF checkpoint") -> tuple[dict[str, Tensor], list[str]]:
    """Map an HF state dict onto our names. Returns (state, our keys left randomly initialised).

    ``ours_shapes`` are the shapes of the modaloom model being filled, ``ours_aliases`` its tied names
    (alias -> canonical, from ``modaloom.weights.tied_aliases``); ``hf_shapes``, when given, are checked too.
    """
    problems = _Problems(origin)
    hf = dict(hf_state)
    consumed: set[str] = set()
    for alias, canonical in mapping.aliases().items():
        if alias not in hf:
            continue
        consumed.add(alias)
        if canonical not in hf:
            hf[canonical] = hf[alias]
        elif hf[canonical].shape != hf[alias].shape or not torch.equal(hf[canonical], hf[alias]):
            problems.note(f"{alias} should be tied to {canonical} but holds different values")
    if hf_shapes is not None:
        bad = [f"{k} {tuple(v.shape)} (expected {tuple(hf_shapes[k])})" for k, v in hf.items()
               if k in hf_shapes and tuple(v.shape) != tuple(hf_shapes[k])]
        problems.add("HF tensors with unexpected shapes", bad)
    out: dict[str, Tensor] = {}
    missing, random_init, unknown, mismatched = [], [], [], []
    for hf_keys, ours_keys, rule in mapping.expanded():
        present = [k in hf for k in hf_keys]
        if not all(present):
            if rule.optional and not any(present):
                random_init.extend(ours_keys)
            else:
                missing.extend(k for k, p in zip(hf_keys, present) if not p)
            continue
        consumed.update(hf_keys)
        unknown.extend(k for k in ours_keys if k not in ours_shapes)
        if any(k not in ours_shapes for k in ours_keys):
            continue
        shapes = [tuple(ours_shapes[k]) for k in ours_keys]
        outs = _apply(rule.transform, "to_ours", [hf[k] for k in hf_keys], shapes, hf_keys, problems)
        if outs is None:
            continue
        for key, tensor, shape in zip(ours_keys, outs, shapes):
            if tuple(tensor.shape) != shape:
                mismatched.append(f"{key} {tuple(tensor.shape)} (model has {shape})")
            out[key] = tensor
    unexpected = [k for k in hf if k not in consumed and not mapping.ignored(k)]
    uncovered = [k for k in ours_shapes if k not in out and k not in ours_aliases and k not in random_init]
    problems.add("HF keys missing from the checkpoint", missing)
    problems.add("unexpected HF keys (not in the conversion table)", unexpected)
    problems.add("table names modaloom keys the model lacks", unknown)
    problems.add("modaloom keys no rule fills", uncovered)
    problems.add("shape mismatches", mismatched)
    problems.raise_if_any()
    return out, random_init


def ours_state_to_hf(mapping: Mapping, ours_state: dict[str, Tensor], ours_aliases: dict[str, str],
                     hf_shapes: dict[str, Shape], origin: str = "modaloom model") -> tuple[dict[str, Tensor], list[str]]:
    """Map our state dict onto HF names. Returns (full HF state incl. aliases, our keys left out)."""
    problems = _Problems(origin)
    out: dict[str, Tensor] = {}
    consumed: set[str] = set()
    missing, unknown, mismatched = [], [], []
    for hf_keys, ours_keys, rule in mapping.expanded():
        if rule.optional and not any(k in hf_shapes for k in hf_keys):
            continue  # the HF architecture has no place for this (a head of a base model): dropped below
        if not all(k in ours_state for k in ours_keys):
            missing.extend(k for k in ours_keys if k not in ours_state)
            continue
        consumed.update(ours_keys)
        unknown.extend(k for k in hf_keys if k not in hf_shapes)
        if any(k not in hf_shapes for k in hf_keys):
            continue
        shapes = [tuple(hf_shapes[k]) for k in hf_keys]
        outs = _apply(rule.transform, "to_hf", [ours_state[k] for k in ours_keys], shapes, ours_keys, problems)
        if outs is None:
            continue
        for key, tensor, shape in zip(hf_keys, outs, shapes):
            if tuple(tensor.shape) != shape:
                mismatched.append(f"{key} {tuple(tensor.shape)} (HF model has {shape})")
            out[key] = tensor
    for alias, canonical in mapping.aliases().items():
        if alias in hf_shapes and canonical in out:
            out[alias] = out[canonical]
    for unused, source in mapping.hf_unused.items():
        if unused in hf_shapes and source in out:
            out[unused] = out[source].clone()
    left = [k for k in ours_state if k not in consumed and k not in ours_aliases]
    optional_ours = {k for _, ours_keys, rule in mapping.expanded() if rule.optional for k in ours_keys}
    dropped = [k for k in left if mapping.dropped(k) or k in optional_ours]
    unmapped = [k for k in left if k not in dropped]
    uncovered = [k for k in hf_shapes if k not in out and not mapping.ignored(k)]
    problems.add("modaloom keys the table needs but the model lacks", missing)
    problems.add("modaloom keys HF has no place for", unmapped)
    problems.add("table names HF keys the HF model lacks", unknown)
    problems.add("HF keys no rule fills", uncovered)
    problems.add("shape mismatches", mismatched)
    problems.raise_if_any()
    return out, dropped
