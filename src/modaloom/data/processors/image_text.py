"""Image-text pairs: ``clip`` (contrastive: image + caption) and ``vilt`` (caption MLM + image-text
matching with load-time random mismatches drawn deterministically from the rest of the dataset)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modaloom.data.config import MaskingOptions
from modaloom.data.masking import mask_tokens
from modaloom.data.processors.base import SkipRecord, SourceRecord
from modaloom.data.processors.vision import ImageOptions, ImageProcessor, pick_column, row_of
from modaloom.data.storage import FieldSpec, StoredDataset
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register

CAPTION_COLUMNS = ("caption", "text", "text_a", "sentence", "title", "txt")  # txt: webdataset


@dataclass
class ClipOptions(ImageOptions):
    text_column: str = ""  # empty: the first of caption, text, text_a, sentence, title
    crop: str = "random_resized"
    scale_min: float = 0.9  # CLIP-style mild crops
    hflip: bool = False  # captions may say "left" / "right"
    norm: str = "clip"


class CaptionIds:
    """The caption half of the pair processors (``clip``, ``speech_text``): the caption column of a row
    (``text_column``, else the first of ``CAPTION_COLUMNS``) as ``[CLS] ids [SEP]`` (or bos/eos), cut to
    seq_length; call ``set_caption_ids()`` once the tokenizer is set. ``store_caption`` counts the cut
    captions of the records kept as ``truncated`` (so the manifest always has the count, 0 included)."""

    name: str
    tokenizer: Any
    options: Any
    seq_length: int
    start_id: int | None
    end_id: int | None
    count: Callable[..., None]  # Processor.count

    def set_caption_ids(self) -> None:
        self.start_id = self._first_id(("cls", "bos"))
        self.end_id = self._first_id(("sep", "eos"))

    def _first_id(self, roles: tuple[str, ...]) -> int | None:
        for role in roles:
            found = self.tokenizer.optional_id(role)
            if found is not None:
                return found
        return None

    def texts(self, record: SourceRecord) -> list[str]:
        if not isinstance(record.value, Mapping):
            return []
        try:
            return [pick_column(record.value, self.options.text_column, CAPTION_COLUMNS, "caption")]
        except SkipRecord:
            return []

    def caption_ids(self, record: SourceRecord) -> tuple[np.ndarray, bool]:
        """(the caption's ids with its specials, whether it was cut to seq_length); SkipRecord if empty."""
        pick_column(row_of(record, self.name), self.options.text_column, CAPTION_COLUMNS, "caption")
        ids = list(record.encoded[0]) if record.encoded else []
        if not ids:
            raise SkipRecord("empty_caption: the caption has no tokens")
        specials = [i for i in (self.start_id, self.end_id) if i is not None]
        budget = self.seq_length - len(specials)
        cut = len(ids) > budget
        ids = ids[:budget]
        if self.start_id is not None:
            ids = [self.start_id, *ids]
        if self.end_id is not None:
            ids = [*ids, self.end_id]
        return np.asarray(ids), cut

    def store_caption(self, record: SourceRecord, media: Callable[[SourceRecord], tuple[str, np.ndarray]]
                      ) -> dict[str, Any]:
        """The stored record of a pair: the caption's ``input_ids`` and ``media(record)``'s field; the
        caption counts as ``truncated`` only once the media is read, so skipped pairs are not counted."""
        ids, cut = self.caption_ids(record)  # a plain text line is an error naming file and line
        field, value = media(record)
        self.count("truncated", int(cut))
        return {field: value, "input_ids": ids}


@register("processor", "clip")
class ClipProcessor(CaptionIds, ImageProcessor):
    """Image + caption -> ``pixel_values``, ``input_ids`` ([CLS] caption [SEP] or bos/eos, at most
    seq_length); captions longer than that are cut (counted in the manifest's ``counts.truncated``)."""

    name = "clip"
    Options = ClipOptions
    needs_tokenizer = True

    def __init__(self, tokenizer: Any, seq_length: int, options: Any = None, seed: int = 7):
        super().__init__(tokenizer, seq_length, options, seed)
        self.set_caption_ids()

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"image": FieldSpec("uint8"), "input_ids": FieldSpec(self.id_dtype)}

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        yield self.store_caption(record, lambda r: ("image", self.stored_image(r)))

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"pixel_values": self.pixels(stored, rng),
                "input_ids": np.asarray(stored["input_ids"], dtype=np.int64)}


@dataclass
class ViltOptions(ClipOptions):
    norm: str = "half"
    image_height: int = 384
    image_width: int = 384
    mismatch_prob: float = 0.5  # share of pairs whose image is replaced by another record's (itm_labels 0)
    mask_prob: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1
    whole_word: bool = False

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.mismatch_prob <= 1.0:
            raise ConfigError(f"mismatch_prob must be in [0, 1], got {self.mismatch_prob}")
        self.masking().validate()

    def masking(self) -> MaskingOptions:
        return MaskingOptions(mask_prob=self.mask_prob, replace_with_mask=self.replace_with_mask,
                              replace_with_random=self.replace_with_random, whole_word=self.whole_word)


@register("processor", "vilt")
class ViltProcessor(ClipProcessor):
    """Image + caption -> ``pixel_values``, masked ``input_ids``, ``mlm_labels`` and ``itm_labels``.

    With probability ``mismatch_prob`` the image comes from another record, chosen with the example's RNG
    among all records but this one (so it depends only on seed, epoch and index); ``itm_labels`` is then 0.
    The loader binds the dataset (``bind_dataset``) and passes each record's global ``index``.
    """

    name = "vilt"
    Options = ViltOptions
    required_tokens = ("mask",)

    def __init__(self, tokenizer: Any, seq_length: int, options: Any = None, seed: int = 7):
        super().__init__(tokenizer, seq_length, options, seed)
        self.mask_id = tokenizer.special_id("mask", needed_by="processor 'vilt'")
        self.special = np.zeros(max(tokenizer.vocab_size, 1), dtype=bool)
        special_ids = [i for i in tokenizer.all_special_ids() if 0 <= i < len(self.special)]
        self.special[special_ids] = True
        self.masking = self.options.masking()
        self.word_start = tokenizer.word_start_table() if self.options.whole_word else None
        self.dataset: StoredDataset | None = None

    def bind_dataset(self, dataset: StoredDataset) -> None:
        """Give access to other records, for mismatched (negative) image-text pairs."""
        self.dataset = dataset

    def other_index(self, index: int, rng: np.random.Generator) -> int:
        assert self.dataset is not None
        other = int(rng.integers(0, len(self.dataset) - 1))
        return other + 1 if other >= index else other

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator,
                     index: int | None = None) -> dict[str, np.ndarray]:
        options = self.options
        image = stored["image"]
        matched = 1
        if rng.random() < options.mismatch_prob:
            if self.dataset is None or index is None or len(self.dataset) < 2:
                raise DataError("vilt needs the dataset and record index for mismatched pairs "
                                "(use modaloom.data.loader, or set mismatch_prob 0)")
            image = self.dataset[self.other_index(index, rng)]["image"]
            matched = 0
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        maskable = ~self.special[np.clip(ids, 0, len(self.special) - 1)]
        word_start = None if self.word_start is None else self.word_start[np.clip(ids, 0, len(self.word_start) - 1)]
        input_ids, mlm_labels = mask_tokens(ids, maskable, rng, self.masking, self.mask_id,
                                            self.tokenizer.vocab_size, word_start)
        return {"pixel_values": self.transform(image, rng), "input_ids": input_ids, "mlm_labels": mlm_labels,
                "itm_labels": np.asarray(matched, dtype=np.int64)}
