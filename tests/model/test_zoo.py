"""The model zoo (src/modaloom/zoo/): every file loads, names its paper, and matches published parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modaloom.config import load_config
from modaloom.model import Model
from modaloom.model_config import EmbeddingConfig, EncoderConfig, ModelConfig, streams_of
from modaloom.zoo import ZOO_DIR, zoo_names, zoo_path
from modaloom.zoo.summary import meta_model, missing_parts, zoo_entry

ZOO_FILES = [zoo_path(n) for n in zoo_names()]

EXPECTED = {
    "bert": ["tiny", "mini", "small", "medium", "base", "large"], "roberta": ["base", "large"],
    "albert": ["base", "large", "xlarge", "xxlarge"], "xlm-roberta": ["base", "large"],
    "gpt2": ["small", "medium", "large", "xl"], "t5": ["small", "base", "large"],
    "t5-v1_1": ["small", "base", "large"], "bart": ["base", "large"], "llama": ["7b", "13b", "tiny"],
    "elmo": ["bilstm"], "gatedcnn": ["9", "13"], "vit": ["b16", "b32", "l16"], "beit": ["base"], "mae": ["base"],
    "clip": ["vit-b32", "vit-b16"], "vilt": ["base"], "s2t": ["small", "medium", "large"],
    "vlmo": ["tiny", "base"],
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
    "vit/l16": 304.3, "mae/base": 111.9, "clip/vit-b32": 151.3, "clip/vit-b16": 149.6,
}
FORWARD_LIMIT = 15e6  # full-size forward/backward only below this size; the others run shrunk


def name(path: Path) -> str:
    return path.relative_to(ZOO_DIR).with_suffix("").as_posix()


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
    missing = missing_parts(load_config(path).model)
    if missing:
        pytest.skip(f"not registered yet: {', '.join(missing)}")
    count = zoo_entry(name(path)).parameters  # the count `modaloom zoo` shows, computed on the meta device
    assert count is not None and count > 0
    if name(path) in PUBLISHED_M:
        published = PUBLISHED_M[name(path)] * 1e6
        assert abs(count - published) / published < 0.02, f"{count / 1e6:.1f}M vs published {published / 1e6:.1f}M"


def streams(emb: EmbeddingConfig | None) -> list[EmbeddingConfig]:
    """The embedding configs that hold parts: the streams of a dual embedding, else the embedding itself."""
    if emb is None:
        return []
    return streams_of(emb) or [emb]


def text_vocab(cfg: ModelConfig) -> int:
    """Vocabulary of the source text (0 when the source has no text: images, speech)."""
    return max((getattr(s, "vocab_size", 0) for s in streams(cfg.embedding) if {"word", "word_patch"} & set(s.parts)), default=0)


def image_stream(cfg: ModelConfig) -> EmbeddingConfig | None:
    images = [s for s in streams(cfg.embedding) if {"patch", "masked_patch", "word_patch"} & set(s.parts)]
    return images[0] if images else None


def patch_mask(batch: int, patches: int, g: torch.Generator) -> torch.Tensor:
    """(B, N) bool, true = masked: 3/4 of the patches (MAE's ratio), the same number in every row."""
    masked = patches * 3 // 4
    order = torch.stack([torch.randperm(patches, generator=g) for _ in range(batch)])
    return order < masked


def random_batch(cfg: ModelConfig, batch: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    """Every batch key the model's parts and targets read (docs/architecture.md), with labels for each target."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    vocab = text_vocab(cfg)
    if vocab:
        out["input_ids"] = torch.randint(0, vocab, (batch, length), generator=g)
        out["attention_mask"] = torch.ones(batch, length, dtype=torch.long)
        out["attention_mask"][1, -2:] = 0
    if any("seg" in s.parts and s.type_vocab_size > 1 and "word_patch" not in s.parts for s in streams(cfg.embedding)):
        out["segment_ids"] = torch.cat([torch.zeros(batch, length // 2), torch.ones(batch, length // 2)], 1).long()
    image = image_stream(cfg)
    if image is not None:
        shape = (batch, image.channels, image.image_height, image.image_width)
        out["pixel_values"] = torch.randn(shape, generator=g)
        if {"masked_patch", "drop_masked"} & set(image.parts):
            out["patch_mask"] = patch_mask(batch, image.num_patches, g)
    speech = [s for s in streams(cfg.embedding) if "speech" in s.parts]
    if speech:
        frames = 4 * length
        out["input_features"] = torch.randn(batch, frames, speech[0].audio_feature_size, generator=g)
        out["feature_mask"] = torch.ones(batch, frames, dtype=torch.long)
        out["feature_mask"][1, -5:] = 0
    if cfg.decoder is not None:
        tgt_vocab = cfg.tgt_embedding.vocab_size or vocab
        out["decoder_input_ids"] = torch.randint(0, tgt_vocab, (batch, length - 2), generator=g)
    for t in cfg.targets:
        if t.type == "mlm":  # text positions only, as the data processors make them (also for ViLT)
            labels = torch.full((batch, length), -100)
            labels[:, 1] = out["input_ids"][:, 1]
            out["mlm_labels"] = labels
        elif t.type in ("sp", "sop", "nsp"):
            out["sp_labels"] = torch.arange(batch) % 2
        elif t.type == "itm":
            out["itm_labels"] = torch.arange(batch) % 2
        elif t.type == "cls":
            out["labels"] = torch.arange(batch) % t.labels_num
        elif t.type in ("lm", "bilm"):
            source = out.get("decoder_input_ids", out.get("input_ids"))
            out["lm_labels"] = torch.roll(source, -1, dims=1)
            if t.type == "bilm":
                out["bilm_labels_backward"] = torch.roll(source, 1, dims=1)
        elif t.type == "mae" and t.image_vocab_size:
            labels = torch.randint(0, t.image_vocab_size, out["patch_mask"].shape, generator=g)
            out["image_token_labels"] = labels.masked_fill(~out["patch_mask"], -100)
    return out


SMALL = [p for p in ZOO_FILES if not missing_parts(load_config(p).model)
         and meta_model(load_config(p).model).num_parameters() < FORWARD_LIMIT]


def shrink_embedding(emb: EmbeddingConfig, hidden_size: int) -> None:
    """Toy widths; images keep their part layout with a grid of at most 4 x 4 patches of 8 x 8 pixels."""
    if getattr(emb, "vocab_size", 0):
        emb.vocab_size = min(emb.vocab_size, 300)
    emb.emb_size = 32 if emb.emb_size != hidden_size else 64
    emb.max_seq_length = min(emb.max_seq_length, 64)
    if {"patch", "masked_patch", "word_patch"} & set(emb.parts):
        rows, columns = emb.image_height // emb.patch_size, emb.image_width // emb.patch_size
        emb.patch_size = 8
        emb.image_height, emb.image_width = 8 * min(rows, 4), 8 * min(columns, 4)
        assert emb.max_seq_length >= emb.num_patches + int(emb.cls_token) + 8  # patches, class token, text
    if "speech" in emb.parts:
        emb.audio_feature_size = 16
        emb.conv_channels = [64] * len(emb.conv_channels)


def shrink_encoder(enc: EncoderConfig) -> None:
    enc.hidden_size, enc.layers_num = 64, 2
    if enc.type in ("transformer", "modality_experts"):
        enc.heads_num, enc.feedforward_size = 4, 96
        enc.head_size = 16 if enc.head_size else 0
        enc.kv_heads_num = 2 if enc.kv_heads_num else 0


def shrink(cfg: ModelConfig) -> ModelConfig:
    """The same architecture (norms, positions, masks, tying, heads, streams) at toy sizes."""
    if streams_of(cfg.embedding) and not streams_of(cfg.encoder):  # two streams into one encoder (VLMo)
        for emb in streams_of(cfg.embedding):
            shrink_embedding(emb, cfg.encoder.hidden_size)
        shrink_encoder(cfg.encoder)
        cfg.embedding.emb_size = streams_of(cfg.embedding)[0].emb_size  # the width a tied mlm head reads
    elif streams_of(cfg.embedding):  # dual: stream i of the embedding feeds stream i of the encoder
        for emb, enc in zip(streams_of(cfg.embedding), streams_of(cfg.encoder), strict=True):
            shrink_embedding(emb, enc.hidden_size)
            shrink_encoder(enc)
    else:
        shrink_embedding(cfg.embedding, cfg.encoder.hidden_size)
        shrink_encoder(cfg.encoder)
    if cfg.decoder is not None:
        shrink_embedding(cfg.tgt_embedding, cfg.decoder.hidden_size)
        shrink_encoder(cfg.decoder)
    image = image_stream(cfg)
    for t in cfg.targets:
        if t.type == "clr":
            t.feature_size = min(t.feature_size, 32)
        if t.type in ("mlm", "lm") and getattr(t, "vocab_size", 0):  # a word table of its own size (VLMo's mlm)
            t.vocab_size = min(t.vocab_size, 300)
        if t.type == "mae":
            t.patch_size = image.patch_size
            t.image_vocab_size = min(t.image_vocab_size, 300)
            t.decoder_layers_num = min(t.decoder_layers_num, 2)
            t.decoder_hidden_size, t.decoder_heads_num, t.decoder_feedforward_size = 32, 4, 64
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
