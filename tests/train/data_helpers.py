"""Small real datasets for trainer/CLI tests, written with the data package's processors and storage."""

from __future__ import annotations

from pathlib import Path

import yaml

from modaloom.data.processors.base import SourceRecord, build_processor
from modaloom.data.storage import DatasetWriter
from modaloom.data.tokenizers import load_tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "fast", "across", "green", "hills", "and", "birds", "sang", "songs", "of", "summer", "rain", "fell", "over", "old", "towns", "where", "people", "read", "books", "near", "warm", "fires", "every", "night"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: Path, extra: int = 0, reverse: bool = False) -> Path:
    """A WordPiece vocabulary; ``reverse`` gives the same tokens (same size) in another order."""
    words = sorted(set(WORDS), reverse=reverse)
    tokens = SPECIALS + words + [f"extra{i}" for i in range(extra)]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def sentences(count: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(count)]


def write_dataset(directory: Path, processor: str = "bert", documents: int = 60, seq_length: int = 32,
                  vocab_extra: int = 0, reverse_vocab: bool = False) -> Path:
    """A preprocessed dataset of ``documents`` 4-sentence documents (or lines for ``lm``/``mlm``)."""
    vocab = write_vocab(directory.parent / f"vocab-{directory.name}.txt", vocab_extra, reverse_vocab)
    tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    proc = build_processor(processor, tokenizer, seq_length)
    records = []
    text = sentences(documents * 4)
    for i in range(documents):
        if proc.input_kind == "document":
            records.append(SourceRecord("corpus.txt", i * 5 + 1, text[i * 4:i * 4 + 4], lines=list(range(4))))
        else:
            records.append(SourceRecord("corpus.txt", i + 1, " ".join(text[i * 4:i * 4 + 4])))
    result = proc.process_chunk(records, 0)
    with DatasetWriter(directory, proc.fields) as writer:
        writer.add_batch(result.batch)
        tokenizer.save(writer.path / "tokenizer")
        writer.close({"processor": proc.manifest_entry(),
                      "tokenizer": {"vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint()}})
    return directory


def tiny_bert_config(path: Path, vocab_size: int = 0, layers: int = 1, train: dict | None = None) -> Path:
    config = {
        "model": {
            "embedding": {"parts": ["word", "pos", "seg"], "vocab_size": vocab_size, "emb_size": 16,
                          "max_seq_length": 64, "dropout": 0.1},
            "encoder": {"hidden_size": 16, "layers_num": layers, "heads_num": 2, "feedforward_size": 32},
            "targets": [{"type": "mlm", "tie_weights": True}, {"type": "sp"}],
        },
        "data": {"seq_length": 32},
        "train": {"steps": 6, "batch_size": 4, "lr": 1e-3, "log_every": 2, "progress": False,
                  "tensorboard": False, **(train or {})},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
