"""The data section of a config (owned by the data pipeline), plus tokenizer and masking options."""

from __future__ import annotations

from dataclasses import dataclass, field

from modaloom.config_schema import choice
from modaloom.errors import ConfigError

SPECIAL_TOKEN_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
DEFAULT_SEQ_LENGTH = 128  # data.seq_length where no dataset gives one (a dry run without --data)


def seq_length_without_data(max_seq_length: int) -> int:
    """``data.seq_length`` 0 (the dataset's) where no dataset is read: 128, at most the model's positions."""
    return min(DEFAULT_SEQ_LENGTH, int(max_seq_length)) if max_seq_length else DEFAULT_SEQ_LENGTH


@dataclass
class TokenizerConfig:
    """Which tokenizer to load and how. Special tokens are named per role; empty = the type's default."""

    type: str = choice("wordpiece", "wordpiece", "bpe", "sentencepiece", "char", "space")
    vocab: str = ""  # vocab.txt, vocab.json, tokenizer.json or .model
    merges: str = ""  # BPE merges.txt beside a vocab.json
    lowercase: bool | None = None  # None = the type's usual choice: wordpiece True (as BERT), others False
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token text, e.g. {"cls": "[CLS]"}
    sentinel_count: int = 100  # T5-style <extra_id_N> tokens looked up (not added) when present

    def validate(self) -> None:
        unknown = set(self.special_tokens) - set(SPECIAL_TOKEN_ROLES)
        if unknown:
            raise ConfigError(f"special_tokens: unknown role(s) {sorted(unknown)}; valid roles: "
                              f"{', '.join(SPECIAL_TOKEN_ROLES)}")


@dataclass
class MaskingOptions:
    """Token masking at load time (new masks every epoch): BERT 80/10/10, whole-word, SpanBERT spans."""

    mask_prob: float = 0.15  # fraction of the tokens chosen for prediction
    replace_with_mask: float = 0.8  # of the chosen tokens: -> [MASK]
    replace_with_random: float = 0.1  # -> a random token; the rest stay unchanged
    whole_word: bool = False  # mask every piece of a word (WordPiece '##' continuations; CJK: per char)
    span: bool = False  # SpanBERT: geometric span lengths
    span_geo_prob: float = 0.2  # span: p of the geometric distribution of span lengths
    span_max_length: int = 10  # span: longest span in tokens

    def validate(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.replace_with_mask < 0 or self.replace_with_random < 0 or \
                self.replace_with_mask + self.replace_with_random > 1.0:
            raise ConfigError("replace_with_mask + replace_with_random must be within [0, 1], got "
                              f"{self.replace_with_mask} + {self.replace_with_random}")
        if not 0.0 < self.span_geo_prob <= 1.0 or self.span_max_length < 1:
            raise ConfigError(f"span_geo_prob must be in (0, 1] and span_max_length >= 1, got "
                              f"{self.span_geo_prob}, {self.span_max_length}")


@dataclass
class DataConfig:
    """How training batches are drawn from a preprocessed dataset directory (given on the command line)."""

    processor: str = ""  # empty = the processor recorded in the dataset manifest
    seq_length: int = 0  # tokens per example at most (longer records are cut); 0: the dataset's own (its manifest)
    padding: str = choice("longest", "longest", "max_length", "packing",
                          doc="pad to the longest in the batch, to seq_length, or pack records")
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    shuffle: bool = True  # shuffle the records every epoch (seeded, resumable)
    # Load-time masking overrides (keys of MaskingOptions); empty keeps what the dataset manifest says.
    masking: dict[str, float | int | bool] = field(default_factory=dict)

    def validate(self) -> None:
        if self.seq_length < 0:
            raise ConfigError(f"seq_length must be positive (or 0: the dataset's), got {self.seq_length}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.masking:
            from modaloom.config_schema import build

            build(MaskingOptions, dict(self.masking), path="masking")
