"""Export checks by a round trip: modaloom config -> HF config -> modaloom config, compared field by field.

A family only says how to translate a config each way (``HFFamily.hf_config`` and ``to_modaloom_config``);
what an HF family cannot hold is exactly what does not survive the trip, and the refusal names every such
field with our value and the one the family gives back. So that equal models compare equal:
- derived defaults are written out on both sides first (``final_norm: null`` is ``true`` on a pre-norm
  stack, ``head_size: 0`` is ``hidden_size // heads_num``, a target's ``vocab_size: 0`` is the embedding's);
- values that select one and the same computation compare equal (``SAME_VALUES``);
- fields no HF config holds are skipped: ``COMMON_IGNORE`` for every family, plus a family's own
  ``export_ignore`` (glob patterns over the dotted keys, e.g. ``targets.*.weight``).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from modaloom.config_schema import to_dict
from modaloom.errors import ConfigError
from modaloom.model_config import ModelConfig

# field name -> {value: the value that computes the same thing}
SAME_VALUES = {
    "act": {"swish": "silu"},  # one function under two names
    "norm": {"t5": "rms"},  # one RMSNorm module (layers/norms.py)
    "type": {"nsp": "sp", "sop": "sp"},  # one sentence-prediction head; NSP and SOP differ in the data only
}

# Fields no HF config holds, whatever the family: bookkeeping and training knobs.
COMMON_IGNORE = (
    "paper",  # the publication a zoo config reproduces
    "targets.*.name",  # a metric prefix; the tables find targets by type
    "targets.*.weight",  # loss weight
    "targets.*.label_smoothing",  # loss option
    "targets.*.gather",  # distributed gathering of contrastive features
)

_MISSING = object()


def _write_out_stack(stack: dict[str, Any], embedding: dict[str, Any] | None) -> None:
    """Replace a stack's "derive it" defaults (0 / None) by the values they stand for, in place."""
    if stack.get("type") == "dual":
        embedded = (embedding or {}).get("streams") or []
        for i, stream in enumerate(stack.get("streams") or []):
            _write_out_stack(stream, embedded[i] if i < len(embedded) else None)
        return
    heads = stack.get("heads_num") or 1
    if "head_size" in stack and not stack["head_size"]:
        stack["head_size"] = stack.get("hidden_size", 0) // heads
    if "kv_heads_num" in stack and not stack["kv_heads_num"]:
        stack["kv_heads_num"] = heads
    if stack.get("final_norm", False) is None:
        stack["final_norm"] = stack.get("norm_position") == "pre"
    if stack.get("attention_dropout", False) is None:
        stack["attention_dropout"] = stack.get("dropout")
    if stack.get("input_projection", False) is None and embedding is not None:
        stack["input_projection"] = embedding.get("emb_size") != stack.get("hidden_size")


def _write_out_targets(data: dict[str, Any]) -> None:
    """A target's ``source: auto`` and its sizes left at 0, written out (as the model resolves them)."""
    has_decoder = data.get("decoder") is not None
    for target in data.get("targets") or []:
        if target.get("source") == "auto":
            target["source"] = "decoder" if has_decoder else "encoder"
        reads_decoder = has_decoder and target.get("source") == "decoder"
        embedding = data.get("tgt_embedding" if reads_decoder else "embedding") or {}
        stack = data.get("decoder" if reads_decoder else "encoder") or {}
        vocab = embedding.get("vocab_size") or (data.get("embedding") or {}).get("vocab_size")
        if target.get("vocab_size") == vocab:
            target["vocab_size"] = 0
        if target.get("hidden_size") == stack.get("hidden_size"):
            target["hidden_size"] = 0


def written_out(cfg: ModelConfig) -> dict[str, Any]:
    """``to_dict(cfg)`` with derived defaults written out, so that two equal models give equal dicts."""
    data = to_dict(cfg)
    _write_out_stack(data["encoder"], data.get("embedding"))
    if data.get("decoder") is not None:
        _write_out_stack(data["decoder"], data.get("tgt_embedding"))
    _write_out_targets(data)
    return data


def _same(key: str, value: Any) -> Any:
    return SAME_VALUES.get(key, {}).get(value, value) if isinstance(value, str) else value


def _ignored(path: str, ignore: Iterable[str]) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in ignore)


def differences(ours: Any, theirs: Any, ignore: Iterable[str], path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, our value, their value) for every field that differs, skipping ``ignore`` patterns."""
    ignore = tuple(ignore)
    if path and _ignored(path, ignore):
        return []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = []
        for key in [*ours, *(k for k in theirs if k not in ours)]:
            child = f"{path}.{key}" if path else key
            out += differences(ours.get(key, _MISSING), theirs.get(key, _MISSING), ignore, child)
        return out
    sections = isinstance(ours, list) and any(isinstance(v, dict) for v in [*ours, *(theirs or [])])
    if sections and isinstance(theirs, list) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in differences(a, b, ignore, f"{path}.{i}")]
    last = path.rsplit(".", 1)[-1]
    if _same(last, ours) == _same(last, theirs) and type(ours) is type(theirs) or _numbers_equal(ours, theirs):
        return []
    return [(path, ours, theirs)]


def _numbers_equal(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and a == b


def _show(value: Any) -> str:
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(str(v.get("type", "{...}")) for v in value) + "]"
    return repr(value)


def describe(path: str, ours: Any, theirs: Any, family: str) -> str:
    """One refused field, e.g. ``model.encoder.norm_position is 'pre' but bert only has 'post'``."""
    key = f"model.{path}"
    if isinstance(ours, dict) and theirs in (None, _MISSING):
        return f"{key} is set but {family} has none"
    if ours in (None, _MISSING) and isinstance(theirs, dict):
        return f"{key} is not set but {family} always has one"
    if theirs is _MISSING:
        return f"{key} is {_show(ours)} but {family} has no such field"
    return f"{key} is {_show(ours)} but {family} only has {_show(theirs)}"


def check_round_trip(family: str, cfg: ModelConfig, back: ModelConfig, ignore: Iterable[str] = ()) -> None:
    """Refuse ``cfg`` naming each field ``back`` (its round trip through an HF config) does not reproduce."""
    found = differences(written_out(cfg), written_out(back), (*COMMON_IGNORE, *ignore))
    if found:
        raise ConfigError(f"cannot export to HF {family}: "
                          + "; ".join(describe(path, a, b, family) for path, a, b in found))
