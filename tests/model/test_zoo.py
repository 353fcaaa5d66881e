"""The model zoo (configs/): every file loads, names its paper, and matches published parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modaloom import registry
from modaloom.config import load_config
from modaloom.model import Model
from modaloom.model_config import ModelConfig

ZOO = Path(__file__).resolve().parents[2] / "configs"
ZOO_FILES = sorted(ZOO.rglob("*.yaml"))

EXPECTED = {
    "bert": ["tiny", "mini", "small", "medium", "base", "large"], "roberta": ["base", "large"],
    "albert": ["base", "large", "xlarge", "xxlarge"], "xlm-roberta": ["base", "large"],
    "gpt2": ["small", "medium", "large", "xl"], "t5": ["small", "base", "large"],
    "t5-v1_1": ["small", "base", "large"], "bart": ["base", "large"], "llama": ["7b", "13b", "tiny"],
    "elmo": ["bilstm"], "gatedcnn": ["9", "13"], "vit": ["b16", "b32", "l16"], "beit": ["base"], "mae": ["base"],
    "clip": ["vit-b32", "vit-b16"], "vilt": ["base"], "s2t": ["small", "medium", "large"],
}

# Parameter counts of the same architectures as counted by `transformers` for the published checkpoints
# (with their pre-training / task heads), in millions.
PUBLISHED_M = {
    "bert/base": 110.1, "bert/large": 336.2, "roberta/base": 124.7, "roberta/large": 355.4,
    "xlm-roberta/base": 278.3, "xlm-roberta/large": 560.1, "albert/base": 11.8, "albert/large": 17.9,
    "albert/xlarge": 59.0, "albert/xxlarge": 223.2, "gpt2/small": 124.4, "gpt2/medium": 354.8,
    "gpt2/large": 774.0, "gpt2/xl": 1557.6, "t5/small": 60.5, "t5/base": 222.9, "t5/large": 737.7,
    "t5-v1_1/small": 77.0, "t5-v1_1/base": 247.6, "t5-v1_1/large": 783.2, "bart/base": 139.4,
    "bart/large": 406.3, "llama/7b": 6738.4, "llama/13b": 13015.9, "vit/b16": 86.6, "vit/b32": 88.2,
    "vit/l16": 304.3, "clip/vit-b32": 151.3, "clip/vit-b16": 149.6,
}
FORWARD_LIMIT = 15e6  # full-size forward/backward only below this size; the others run shrunk


def name(path: Path) -> str:
    return path.relative_to(ZOO).with_suffix("").as_posix()


def missing_parts(cfg: ModelConfig) -> list[str]:
    """Registered-part names the config uses that are not registered (yet)."""
    needed = []
    for emb in (cfg.embedding, cfg.tgt_embedding):
        if emb is not None:
            needed += [("embedding", p) for s in [emb, *emb.streams] for p in s.parts]
    needed += [("encoder", e.type) for e in [cfg.encoder, *cfg.encoder.streams]]
    needed += [("target", t.type) for t in cfg.targets]
    return [f"{kind} {n!r}" for kind, n in needed if n not in registry.names(kind)]


def meta_model(cfg: ModelConfig) -> Model:
    with torch.device("meta"):
        return Model(cfg)


def test_zoo_is_complete():
    present = {name(p) for p in ZOO_FILES}
    wanted = {f"{family}/{size}" for family, sizes in EXPECTED.items() for size in sizes}
    assert wanted <= present, sorted(wanted - present)


@pytest.mark.parametrize("path", ZOO_FILES, ids=name)
def test_zoo_config_loads_and_names_its_paper(path: Path):
    cfg = load_config(path)
    assert cfg.model.paper, "model.paper must name the publication"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and cfg.model.paper.split(",")[0] in first


@pytest.mark.parametrize("path", ZOO_FILES, ids=name)
def test_zoo_model_builds_on_meta(path: Path):
    cfg = load_config(path).model
    missing = missing_parts(cfg)
    if missing:
        pytest.skip(f"not registered yet: {', '.join(missing)}")
    model = meta_model(cfg)
    count = model.num_parameters()
    assert count > 0
    if name(path) in PUBLISHED_M:
        published = PUBLISHED_M[name(path)] * 1e6
        assert abs(count - published) / published < 0.02, f"{count / 1e6:.1f}M vs published {published / 1e6:.1f}M"


def random_batch(cfg: ModelConfig, batch: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = cfg.embedding.vocab_size
    out = {"input_ids": torch.randint(0, vocab, (batch, length), generator=g),
           "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    out["attention_mask"][1, -2:] = 0
    if "seg" in cfg.embedding.parts and cfg.embedding.type_vocab_size > 1:
        out["segment_ids"] = torch.cat([torch.zeros(batch, length // 2), torch.ones(batch, length // 2)], 1).long()
    if cfg.decoder is not None:
        out["decoder_input_ids"] = torch.randint(0, cfg.tgt_embedding.vocab_size, (batch, length - 2), generator=g)
    for t in cfg.targets:
        if t.type == "mlm":
            labels = torch.full((batch, length), -100)
            labels[:, 1] = out["input_ids"][:, 1]
            out["mlm_labels"] = labels
        elif t.type in ("sp", "sop", "nsp"):
            out["sp_labels"] = torch.tensor([0, 1])
        elif t.type == "lm":
            source = out.get("decoder_input_ids", out["input_ids"])
            out["lm_labels"] = torch.roll(source, -1, dims=1)
    return out


SMALL = [p for p in ZOO_FILES if not missing_parts(load_config(p).model)
         and meta_model(load_config(p).model).num_parameters() < FORWARD_LIMIT]


def shrink(cfg: ModelConfig) -> ModelConfig:
    """The same architecture (norms, positions, masks, tying, heads) at toy sizes."""
    for emb in (cfg.embedding, cfg.tgt_embedding):
        if emb is not None:
            emb.vocab_size = min(emb.vocab_size, 300) if emb.vocab_size else 0
            emb.emb_size = 32 if emb.emb_size != cfg.encoder.hidden_size else 64
            emb.max_seq_length = min(emb.max_seq_length, 64)
    for enc in (cfg.encoder, cfg.decoder):
        if enc is not None:
            enc.hidden_size, enc.heads_num, enc.feedforward_size = 64, 4, 96
            enc.layers_num = 2
            enc.head_size = 16 if enc.head_size else 0
            enc.kv_heads_num = 2 if enc.kv_heads_num else 0
    return cfg


def train_step(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = Model(cfg)
    out = model(random_batch(cfg))
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("path", SMALL, ids=name)
def test_small_zoo_model_trains_one_step(path: Path):
    train_step(load_config(path).model)


@pytest.mark.parametrize("path", [p for p in ZOO_FILES if p not in SMALL], ids=name)
def test_shrunk_zoo_model_trains_one_step(path: Path):
    cfg = load_config(path).model
    missing = missing_parts(cfg)
    if missing:
        pytest.skip(f"not registered yet: {', '.join(missing)}")
    train_step(shrink(cfg))
