"""Train a vocabulary from a corpus: WordPiece (vocab.txt), byte-level BPE (tokenizer.json) or
SentencePiece (.model). Output files are written to a temp name and renamed when complete."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from modaloom.atomic import atomic_file
from modaloom.errors import DataError

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BPE_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
VOCAB_TYPES = ("wordpiece", "bpe", "sentencepiece")
_NAMES = {"wordpiece": "vocab.txt", "bpe": "tokenizer.json", "sentencepiece": "spm.model"}


def corpus_lines(paths: Sequence[str | Path]) -> Iterator[str]:
    """Non-blank lines of the corpora, streamed; undecodable bytes are replaced (training only)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if line.strip():
                        yield line.rstrip("\n")
        except OSError as exc:
            raise DataError(f"cannot read corpus {path}: {exc.strerror or exc}") from None


def build_vocab(vocab_type: str, corpora: Sequence[str | Path], vocab_size: int, out: str | Path,
                lowercase: bool | None = None, special_tokens: Sequence[str] = ()) -> Path:
    """Train and write a vocabulary; returns the written path."""
    if vocab_type not in VOCAB_TYPES:
        raise DataError(f"unknown vocabulary type {vocab_type!r}; valid: {', '.join(VOCAB_TYPES)}")
    if vocab_size < 10:
        raise DataError(f"vocab size must be at least 10, got {vocab_size}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"--out {out} is a directory; give the vocabulary file to write, e.g. {out / _NAMES[vocab_type]}")
    for corpus in corpora:
        if Path(corpus).exists() and Path(corpus).resolve() == out.resolve():
            raise DataError(f"--out {out} is one of the corpora; choose another file name")
    if next(corpus_lines(corpora), None) is None:
        raise DataError(f"no text to learn a vocabulary from: {', '.join(map(str, corpora))} "
                        "holds only blank lines")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        if vocab_type == "sentencepiece":
            _train_sentencepiece(corpora, vocab_size, tmp, bool(lowercase), special_tokens)
        else:
            _train_hf(vocab_type, corpora, vocab_size, tmp, lowercase, special_tokens)
    return out


def _train_hf(vocab_type: str, corpora: Sequence[str | Path], vocab_size: int, tmp: Path,
              lowercase: bool | None, special_tokens: Sequence[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_type == "wordpiece":
        specials = list(special_tokens or WORDPIECE_SPECIALS)
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]" if "[UNK]" in specials else specials[0]))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase is not False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                            continuing_subword_prefix="##", show_progress=False)
    else:
        specials = list(special_tokens or BPE_SPECIALS)
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    tokenizer.train_from_iterator(corpus_lines(corpora), trainer=trainer)
    if vocab_type == "wordpiece":
        vocab = tokenizer.get_vocab()
        with open(tmp, "w", encoding="utf-8") as handle:
            for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
                handle.write(token + "\n")
    else:
        tokenizer.save(str(tmp))


def _train_sentencepiece(corpora: Sequence[str | Path], vocab_size: int, tmp: Path, lowercase: bool,
                         special_tokens: Sequence[str]) -> None:
    import sentencepiece

    lines = corpus_lines(corpora)
    if lowercase:
        lines = (line.lower() for line in lines)
    prefix = tmp.with_name(tmp.name + "_spm")
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=lines, model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
            pad_id=0, unk_id=1, bos_id=2, eos_id=3, character_coverage=0.9995, hard_vocab_limit=False,
            user_defined_symbols=list(special_tokens or ("<mask>",)), minloglevel=2)
    except RuntimeError as exc:
        raise DataError(f"SentencePiece training failed: {exc}") from None
    os.replace(prefix.with_suffix(prefix.suffix + ".model"), tmp)
    Path(str(prefix) + ".vocab").unlink(missing_ok=True)
