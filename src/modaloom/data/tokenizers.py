"""Tokenizers on HF ``tokenizers`` (WordPiece, byte-level BPE, char, space) and ``sentencepiece``.

``load_tokenizer(TokenizerConfig)`` builds one by type; ``tok.save(dir)`` / ``load_tokenizer_dir(dir)``
keep a copy beside a dataset or model. Special tokens are looked up per role (pad, unk, cls, sep, mask,
bos, eos, sentinels) in the tokenizer's own vocabulary: configured names first, then each type's usual
names. A role a processor needs but the vocabulary lacks raises DataError naming the token.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from modaloom.atomic import atomic_file, atomic_write_json
from modaloom.config_schema import build
from modaloom.data.config import TokenizerConfig
from modaloom.data.wordpiece_fast import IsolatedChars
from modaloom.errors import DataError
from modaloom.registry import get, register

# Role -> names tried in order when the config does not name the token.
DEFAULT_SPECIALS: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "unk": ("[UNK]", "<unk>", "<|endoftext|>"),
    "cls": ("[CLS]", "<s>", "<cls>", "<|endoftext|>"),
    "sep": ("[SEP]", "</s>", "<sep>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>", "[CLS]", "<|endoftext|>"),
    "eos": ("</s>", "[SEP]", "<|endoftext|>"),
}
SENTINEL_PATTERNS = ("<extra_id_{}>", "[unused{}]")  # T5's names, else BERT's unused slots (1-based)
TOKENIZER_JSON = "modaloom_tokenizer.json"


class Tokenizer:
    """Common interface: encode / encode_batch / decode, vocab_size, special ids, fingerprint, save."""

    type_name = ""

    def __init__(self, config: TokenizerConfig):
        self.config = config
        self._special: dict[str, int | None] = {}
        self._word_start: np.ndarray | None = None

    # ---- to implement -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, index: int) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def files(self) -> list[Path]:
        """The vocabulary files this tokenizer was built from."""
        return [Path(p) for p in (self.config.vocab, self.config.merges) if p]

    # ---- shared -----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def optional_id(self, role: str) -> int | None:
        """The id of a special role, or None when the vocabulary has none."""
        if role not in self._special:
            configured = self.config.special_tokens.get(role)
            names = (configured,) if configured else DEFAULT_SPECIALS.get(role, ())
            found = None
            for name in names:
                found = self.token_to_id(name)
                if found is not None:
                    break
            self._special[role] = found
        return self._special[role]

    def special_id(self, role: str, needed_by: str = "") -> int:
        """The id of a special role; DataError naming the token if the vocabulary lacks it."""
        found = self.optional_id(role)
        if found is None:
            configured = self.config.special_tokens.get(role)
            names = (configured,) if configured else DEFAULT_SPECIALS.get(role, ())
            who = f" ({needed_by} needs it)" if needed_by else ""
            raise DataError(
                f"vocabulary {self.config.vocab or self.type_name} has no {role} token{who}: tried "
                f"{', '.join(repr(n) for n in names)}; add it to the vocabulary or set "
                f"tokenizer.special_tokens.{role}")
        return found

    pad_id = property(lambda self: self.special_id("pad"))
    unk_id = property(lambda self: self.special_id("unk"))
    cls_id = property(lambda self: self.special_id("cls"))
    sep_id = property(lambda self: self.special_id("sep"))
    mask_id = property(lambda self: self.special_id("mask"))
    bos_id = property(lambda self: self.special_id("bos"))
    eos_id = property(lambda self: self.special_id("eos"))

    @property
    def sentinel_ids(self) -> list[int]:
        """T5 sentinels ``<extra_id_0>``... (or BERT's ``[unused1]``...) present in the vocabulary."""
        for pattern in SENTINEL_PATTERNS:
            first = 1 if "unused" in pattern else 0
            ids = []
            for i in range(first, first + self.config.sentinel_count):
                found = self.token_to_id(pattern.format(i))
                if found is None:
                    break
                ids.append(found)
            if ids:
                return ids
        return []

    def special_ids(self) -> dict[str, int]:
        """Every special role present, for the manifest."""
        roles = {role: self.optional_id(role) for role in DEFAULT_SPECIALS}
        return {role: i for role, i in roles.items() if i is not None}

    def all_special_ids(self) -> set[int]:
        return set(self.special_ids().values()) | set(self.sentinel_ids)

    def word_start_table(self) -> np.ndarray:
        """Bool per vocabulary id: True when the token starts a word (for whole-word masking)."""
        if self._word_start is None:
            self._word_start = np.array(
                [self._starts_word(self.id_to_token(i)) for i in range(self.vocab_size)], dtype=bool)
        return self._word_start

    def _starts_word(self, token: str) -> bool:
        return True

    def fingerprint(self) -> str:
        """Stable hash of the vocabulary files' bytes and the options (not their paths)."""
        digest = hashlib.sha256()
        for path in self.files():
            digest.update(Path(path).read_bytes())
        options = {k: v for k, v in asdict(self.config).items() if k not in ("vocab", "merges")}
        digest.update(json.dumps(options, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        """Copy the vocabulary files into ``directory`` with a small JSON so it loads on its own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        for key in ("vocab", "merges"):
            if config[key]:
                source = Path(config[key])
                with atomic_file(directory / source.name) as tmp:
                    shutil.copyfile(source, tmp)
                config[key] = source.name
        atomic_write_json(directory / TOKENIZER_JSON, config)
        return directory


class VocabularyWarning(UserWarning):
    """A vocabulary that loads but is probably not what its author meant (e.g. a repeated token)."""


_WARNED_VOCABS: set[str] = set()  # warn once per file and process (workers fork after the first load)


def _read_lines_vocab(path: str) -> dict[str, int]:
    """A vocab.txt: one token per line, id = line number (0-based); a later duplicate wins, as in HF."""
    try:
        with open(path, encoding="utf-8") as handle:
            tokens = [line.rstrip("\n").rstrip("\r") for line in handle]
    except OSError as exc:
        raise DataError(f"cannot read vocabulary {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"vocabulary {path} is not UTF-8 text (byte {exc.start})") from None
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise DataError(f"vocabulary {path} is empty")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) < len(tokens) and str(path) not in _WARNED_VOCABS:
        _WARNED_VOCABS.add(str(path))
        warnings.warn(_duplicates_message(path, tokens), VocabularyWarning, stacklevel=2)
    return vocab


def _duplicates_message(path: str, tokens: list[str]) -> str:
    """Which tokens repeat, on which lines (1-based), and which ids they leave unused."""
    lines: dict[str, list[int]] = {}
    for number, token in enumerate(tokens, 1):
        lines.setdefault(token, []).append(number)
    repeated = [(token, numbers) for token, numbers in lines.items() if len(numbers) > 1]
    shown = "; ".join(f"{token!r} on lines {', '.join(map(str, numbers))}" for token, numbers in repeated[:5])
    more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    unused = sum(len(numbers) - 1 for _, numbers in repeated)
    return (f"vocabulary {path} repeats {len(repeated)} token(s): {shown}{more}. The last line wins (as in "
            f"transformers), so {unused} id(s) of the earlier lines are never produced; remove the repeats "
            f"unless the ids must match a model trained with this file")


class HFTokenizer(Tokenizer):
    """A tokenizer backed by HF ``tokenizers.Tokenizer`` (Rust, multi-threaded ``encode_batch``)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        self.backend = self._build()
        self._register_specials()

    def _build(self) -> Any:
        raise NotImplementedError

    def _register_specials(self) -> None:
        """Special tokens present in the vocabulary are matched whole in text, as transformers does."""
        from tokenizers import AddedToken

        present = []
        for role in DEFAULT_SPECIALS:
            index = self.optional_id(role)
            if index is not None:
                present.append(self.id_to_token(index))
        if present:
            self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in set(present)])

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (a vocab.txt with a repeated token leaves a gap in the ids)."""
        if getattr(self, "_vocab_size", None) is None:
            self._vocab_size = max(self.backend.get_vocab(with_added_tokens=True).values()) + 1
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, index: int) -> str:
        return self.backend.id_to_token(int(index)) or ""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


@register("tokenizer", "wordpiece")
class WordPieceTokenizer(HFTokenizer):
    """BERT WordPiece from vocab.txt: same normalization (CJK chars split, optional lowercase) and ids as
    transformers' BertTokenizerFast."""

    type_name = "wordpiece"

    def _build(self) -> Any:
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, normalizers, pre_tokenizers

        vocab = _read_lines_vocab(self.config.vocab)
        unk = self.config.special_tokens.get("unk") or next((t for t in DEFAULT_SPECIALS["unk"] if t in vocab), None)
        if unk is None:
            raise DataError(f"vocabulary {self.config.vocab} has no unk token: tried "
                            f"{', '.join(DEFAULT_SPECIALS['unk'])}; set tokenizer.special_tokens.unk")
        backend = Backend(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=self.config.lowercase is not False)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        return backend

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The backend's ids; characters that always stand alone (CJK, punctuation) are looked up."""
        if getattr(self, "_isolated", None) is None:
            self._isolated = IsolatedChars(self.backend)
        return self._isolated.encode_batch(texts)

    def _starts_word(self, token: str) -> bool:
        return not token.startswith("##")


@register("tokenizer", "bpe")
class ByteLevelBPETokenizer(HFTokenizer):
    """Byte-level BPE: GPT-2 ``vocab.json`` + ``merges.txt``, or a full ``tokenizer.json``."""

    type_name = "bpe"

    def _build(self) -> Any:
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers

        vocab = self.config.vocab
        try:
            with open(vocab, "rb") as handle:
                is_json = handle.read(1) == b"{"
            if is_json and not self.config.merges:  # a full tokenizer.json
                backend = Backend.from_file(vocab)
                backend.post_processor = None
                return backend
            if not self.config.merges:
                raise DataError(f"BPE vocabulary {vocab} needs its merges file (--merges)")
            if is_json:  # GPT-2 vocab.json
                backend = Backend(models.BPE.from_file(vocab, self.config.merges))
            else:  # one token per line (TencentPretrain's huggingface_gpt2_vocab.txt)
                backend = Backend(models.BPE(_read_lines_vocab(vocab), _read_merges(self.config.merges)))
        except DataError:
            raise
        except Exception as exc:  # tokenizers raises plain Exception on bad files
            raise DataError(f"cannot load BPE vocabulary {vocab} / {self.config.merges}: {exc}") from None
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        return backend

    def _starts_word(self, token: str) -> bool:
        return token.startswith("Ġ") or not token[:1].isalnum()


def _read_merges(path: str) -> list[tuple[str, str]]:
    """A merges.txt: optional '#version' header, then one 'left right' pair per line."""
    with open(path, encoding="utf-8") as handle:
        pairs = []
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line or (number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise DataError(f"{path}:{number}: a merge must be two tokens separated by a space, got {line!r}")
            pairs.append((parts[0], parts[1]))
    return pairs


def _char_or_space(config: TokenizerConfig, per_char: bool) -> Any:
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    vocab = _read_lines_vocab(config.vocab)
    unk = config.special_tokens.get("unk") or next((t for t in DEFAULT_SPECIALS["unk"] if t in vocab), None)
    if unk is None:
        raise DataError(f"vocabulary {config.vocab} has no unk token; set tokenizer.special_tokens.unk")
    backend = Backend(models.WordLevel(vocab, unk_token=unk))
    if config.lowercase:
        backend.normalizer = normalizers.Lowercase()
    steps = [pre_tokenizers.WhitespaceSplit()]
    if per_char:
        steps.append(pre_tokenizers.Split(Regex("."), behavior="isolated"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.Fuse() if per_char else None
    return backend


@register("tokenizer", "char")
class CharTokenizer(HFTokenizer):
    """One token per character (whitespace dropped), ids from a one-token-per-line vocab."""

    type_name = "char"

    def _build(self) -> Any:
        return _char_or_space(self.config, per_char=True)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.id_to_token(i) for i in ids)


@register("tokenizer", "space")
class SpaceTokenizer(HFTokenizer):
    """Whitespace-separated tokens (text already segmented), ids from a one-token-per-line vocab."""

    type_name = "space"

    def _build(self) -> Any:
        return _char_or_space(self.config, per_char=False)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.id_to_token(i) for i in ids)


@register("tokenizer", "sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` (T5, XLM-R, LLaMA style); pad/unk/bos/eos come from the model itself."""

    type_name = "sentencepiece"

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(config.vocab)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"cannot load SentencePiece model {config.vocab}: {exc}") from None
        self._builtin = {"pad": self.sp.pad_id(), "unk": self.sp.unk_id(), "bos": self.sp.bos_id(),
                         "eos": self.sp.eos_id()}

    def optional_id(self, role: str) -> int | None:
        if role not in self._special and not self.config.special_tokens.get(role):
            builtin = self._builtin.get(role, -1)
            if builtin >= 0:
                self._special[role] = builtin
        return super().optional_id(role)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def token_to_id(self, token: str) -> int | None:
        index = self.sp.PieceToId(token)
        if index == self.sp.unk_id() and token != self.sp.IdToPiece(index):
            return None
        return index

    def id_to_token(self, index: int) -> str:
        return self.sp.IdToPiece(int(index))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.config.lowercase:
            texts = [t.lower() for t in texts]
        return self.sp.Encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.Decode([int(i) for i in ids])

    def _starts_word(self, token: str) -> bool:
        return token.startswith("▁")


def load_tokenizer(spec: TokenizerConfig | dict[str, Any]) -> Tokenizer:
    """Build a tokenizer from its config (or a dict of the same keys)."""
    if isinstance(spec, dict):
        spec = build(TokenizerConfig, spec, path="tokenizer")
    if not spec.vocab:
        raise DataError(f"tokenizer type {spec.type!r} needs a vocabulary file (--vocab)")
    if spec.vocab and not Path(spec.vocab).is_file():
        raise DataError(f"vocabulary file {spec.vocab} does not exist")
    if spec.merges and not Path(spec.merges).is_file():
        raise DataError(f"merges file {spec.merges} does not exist")
    return get("tokenizer", spec.type, where="tokenizer.type")(spec)


def load_tokenizer_dir(directory: str | Path) -> Tokenizer:
    """Restore a tokenizer written by ``Tokenizer.save``."""
    directory = Path(directory)
    path = directory / TOKENIZER_JSON
    if not path.exists():
        raise DataError(f"{directory} holds no saved tokenizer ({TOKENIZER_JSON} missing)")
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("vocab", "merges"):
        if data.get(key):
            data[key] = str(directory / data[key])
    return load_tokenizer(data)


def guess_tokenizer_type(vocab: str, merges: str = "") -> str:
    """sentencepiece for .model, bpe for merges or a JSON vocab, else wordpiece (when --tokenizer is absent)."""
    if vocab.endswith(".model"):
        return "sentencepiece"
    if merges or vocab.endswith(".json"):
        return "bpe"
    try:
        with open(vocab, "rb") as handle:
            if handle.read(1) == b"{":
                return "bpe"
    except OSError:
        pass
    return "wordpiece"
