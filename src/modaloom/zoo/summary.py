"""What each zoo config builds: parameter count on the meta device (no weights allocated) and its paper.

The one parameter counter for the zoo: ``modaloom zoo``, docs/zoo.md's table and tests/model/test_zoo.py
all read their counts from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from modaloom import registry
from modaloom.config import load_config
from modaloom.model import Model
from modaloom.model_config import ModelConfig, streams_of
from modaloom.zoo import zoo_names, zoo_path


def missing_parts(cfg: ModelConfig) -> list[str]:
    """Registered-part names the config uses that are not registered (yet), as ``kind 'name'``."""
    needed = []
    for emb in (cfg.embedding, cfg.tgt_embedding):
        if emb is not None:
            needed += [("embedding", p) for s in [emb, *streams_of(emb)] for p in s.parts]
    needed += [("encoder", e.type) for e in [cfg.encoder, *streams_of(cfg.encoder)]]
    needed += [("target", t.type) for t in cfg.targets]
    return [f"{kind} {n!r}" for kind, n in needed if n not in registry.names(kind)]


def meta_model(cfg: ModelConfig) -> Model:
    """The model built on the meta device: shapes and counts without memory or initialisation time."""
    with torch.device("meta"):
        return Model(cfg)


@dataclass(frozen=True)
class ZooEntry:
    """One zoo config as ``modaloom zoo`` shows it; ``parameters`` is None when a part is not registered."""

    name: str
    paper: str
    parameters: int | None
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def zoo_entry(name: str) -> ZooEntry:
    """Load the zoo config ``name`` and count its parameters (shared/tied ones once) on the meta device."""
    path = zoo_path(name)
    cfg = load_config(path).model
    count = None if missing_parts(cfg) else meta_model(cfg).num_parameters()
    return ZooEntry(name=name, paper=cfg.paper, parameters=count, path=str(path))


def zoo_entries(family: str | None = None) -> list[ZooEntry]:
    """Every zoo entry (of one family when given), sorted by name."""
    return [zoo_entry(name) for name in zoo_names(family)]


def format_count(count: int | None) -> str:
    """Millions below a billion (``110.1M``), billions above (``6.74B``), as docs/zoo.md writes them."""
    if count is None:
        return "-"
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
