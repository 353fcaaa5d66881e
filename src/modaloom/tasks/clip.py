"""CLIP-style tasks on a dual model (a text stream and an image stream, aligned by a ``clr`` target).

``clip_retrieval`` fine-tunes the model on image-text pairs with its own contrastive target (the ``clr`` head
and its loss are kept; other targets are dropped). Data: TSV with header ``text path`` (image paths relative
to the TSV's folder) or JSONL ``{"text", "image"}`` (``tasks/image_io.py``). Captions are tokenized with the
model folder's tokenizer as the ``clip`` processor does (``[CLS] text [SEP]`` or bos/eos), cut to
``data.seq_length`` (at most the text stream's positions; counted). Evaluation ranks every caption of the file
against every distinct image of it (rows naming the same image file share it) and reports recall@1/5/10 both
ways (``i2t_r@K``: an image finds one of its captions in the top K; ``t2i_r@K``) and their mean
(``mean_recall``, which selects the best dev model). ``evaluate --task clip_retrieval --model DIR`` also ranks with
a model no fine-tuning saved (pre-trained, e.g. a VLMo trained with ``itm`` beside ``clr``, or converted). ``predict`` writes per row the cosine ``score`` of the
pair and the rank of its image among the file's images for its caption (``image_rank``) and of its caption
among the file's captions for its image (``text_rank``), 1 = first.

``zero_shot`` classifies images without training: ``modaloom evaluate --task zero_shot --model DIR --input
labelled.tsv [task.classes=a,b,c | task.classes=FILE] [task.template="a photo of a {}."]``. Each class name
becomes a prompt (the template with ``{}`` replaced by the name); an image takes the class whose prompt's
features are nearest (cosine). A prompt ensemble (CLIP paper, section 3.1.4): ``task.templates='["a photo of a
{}.", "a drawing of a {}."]'`` (a JSON list) or ``task.templates=FILE`` (one template per line); a class's
feature is then the mean of its prompts' normalised text features, normalised again (``ensemble_features``). ``DIR`` is a CLIP model folder with a tokenizer (``tokenizer/`` or
``vocab.txt``): fine-tuned by ``clip_retrieval``, pre-trained, or converted. The input is a labelled image file
(``label path`` TSV, ``{"label", "image"}`` JSONL, or an ImageFolder); without ``task.classes`` the classes are
its labels, sorted. Metrics: accuracy, macro-F1.

Re-ranking with the matching head (ALBEF's re-ranking, VLMo's fusion mode as a scorer): ``evaluate --task
zero_shot|clip_retrieval ... task.scorer=itm [task.rerank=K]`` takes each query's top K candidates by the contrastive
similarity (K classes per image; K images per caption and K captions per image) and orders them by the ``itm``
head's log-odds of "match", the pair encoded together (``modality_experts``: the fusion view); the other
candidates keep their contrastive order below them. Zero-shot averages the log-odds over a prompt ensemble's
templates, and its probabilities are a softmax over the K re-ranked classes. The model needs an ``itm`` target
(e.g. VLMo pre-trained with ``clr`` and ``itm``; ``finetune --task clip_retrieval`` drops it). Retrieval keeps
the evaluated pairs' pixels and token ids until the end to re-rank them (memory grows with the file).

Both tasks take the model's ``clr`` target, or a ``moco`` one (the same towers, projections and scale; in
evaluation it scores in-batch pairs as ``clr`` does, and fine-tuning keeps its momentum queues).

Models with more streams (a speech tower aligned to a CLIP: text, image and speech streams, a ``clr`` head per
pair, docs/objectives.md): ``task.head=NAME`` names the head whose two streams the task compares (``clip_pair``;
default: the only contrastive head, else the one over text and image; an error lists the heads otherwise). A head
over text and speech reads audio where the image would be: TSV ``text path`` / ``label path`` or JSONL with
``audio`` naming wav/flac/ogg files, or class folders of them (``tasks/audio_io.py``; filterbanks as the model's
training data made them, per its ``preprocessing.json``, else the ``speech_text`` defaults; ``evaluate ...
task.sample_rate=N task.normalize=false`` override that). Speech zero-shot matches each clip against the class prompts;
``task.scorer=itm`` reads images only. ``finetune --task clip_retrieval task.head=speech`` keeps that head alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from modaloom.config_schema import build, choice, to_dict
from modaloom.context import ForwardContext
from modaloom.data.images import CROP_MODES, IMAGE_NORMS
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.tasks.audio_io import (
    AUDIO_INPUT_KEYS,
    AudioInputOptions,
    AudioLoader,
    blank_features,
    model_audio_features,
    read_audio_bytes,
    recorded_audio_options,
)
from modaloom.tasks.classification import sort_labels
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.image_io import (
    IMAGE_PARTS,
    ImageLoader,
    ImageRow,
    image_embedding,
    load_images,
    model_transform,
    pad_ids,
    processor_norm,
    read_image_bytes,
    read_image_rows,
)

MODEL_KEYS = ("pixel_values", "input_ids", "attention_mask", "input_features", "feature_mask")
RECALL_KS = (1, 5, 10)


@dataclass
class ClipTaskOptions:
    """Options of ``clip_retrieval`` (``task.<key>=value``)."""

    norm: str = choice("", "", *IMAGE_NORMS)  # empty: the model's data processor's (clip: CLIP's mean/std)
    crop: str = choice("center", *CROP_MODES)  # training crop; evaluation always uses center
    scale_min: float = 0.9  # random_resized: smallest area fraction (CLIP-style mild crops)
    hflip: bool = False  # captions may say left or right
    skip_bad_images: bool = False  # training/dev: skip (and count) unreadable images instead of failing
    head: str = ""  # the clr target whose two streams are compared (its name); empty: the only one, or text+image


@dataclass
class ScorerOptions:
    """How ``evaluate`` orders candidates (``task.scorer``, ``task.rerank``; see the module docstring)."""

    # contrastive: cosine of the dual features; itm: the top ``rerank`` re-ordered by the itm head (fusion view)
    scorer: str = choice("contrastive", "contrastive", "itm")
    rerank: int = 10  # scorer itm: candidates per query re-ranked, the top ones by contrastive similarity


@dataclass
class ZeroShotOptions(ScorerOptions):
    """Options of ``zero_shot`` (``evaluate ... task.<key>=value``)."""

    classes: str = ""  # comma-separated names, or a file with one name per line; empty: the input's labels
    template: str = "a photo of a {}."  # the prompt of a class: {} is replaced by its name
    # a prompt ensemble: several templates (a list, or a file with one per line); empty: ``template`` alone
    templates: list[str] | str = field(default_factory=list)
    norm: str = choice("", "", *IMAGE_NORMS)  # empty: what the model was fine-tuned with, else CLIP's
    head: str = ""  # the clr target whose two streams are compared (its name); empty: the only one, or text+image


def stream_kind(section: Any) -> str:
    """What a dual model's stream reads: text (a word part), image (a patch part), speech, or other."""
    if "word" in section.parts:
        return "text"
    if any(p in section.parts for p in IMAGE_PARTS):
        return "image"
    return "speech" if "speech" in section.parts else "other"


def text_stream(model_cfg: Any) -> int:
    """Index of the text stream of a two-stream dual model whose other stream holds an image part; else a
    ConfigError. (Models with more streams: ``clip_pair``.)"""
    streams = list(getattr(model_cfg.embedding, "streams", None) or [])
    if model_cfg.embedding.parts != ["dual"] or len(streams) != 2:
        raise ConfigError(f"CLIP tasks need a dual model (embedding.parts [dual] with a text and an image stream), "
                          f"got embedding.parts {model_cfg.embedding.parts}")
    image = [i for i, s in enumerate(streams) if any(p in s.parts for p in IMAGE_PARTS)]
    text = [i for i, s in enumerate(streams) if "word" in s.parts]
    if len(image) != 1 or len(text) != 1 or image == text:
        raise ConfigError(f"CLIP tasks need one text stream (word part) and one image stream (patch part), got "
                          f"streams with parts {[s.parts for s in streams]}")
    return text[0]


CONTRASTIVE_TARGETS = ("clr", "moco")  # targets with the two projections and the scale these tasks read


@dataclass
class ClipPair:
    """The contrastive head a CLIP task reads and the two streams it compares: ``text`` and ``other`` (model
    stream indices), ``kind`` of the other (image or speech), ``text_side`` (0 or 1: the text's place in the
    head's pair of features)."""

    label: str
    text: int
    other: int
    kind: str
    text_side: int


def head_summary(model_cfg: Any, target: Any) -> str:
    streams = list(model_cfg.embedding.streams)
    pair = list(getattr(target, "streams", [0, 1]))
    kinds = "+".join(stream_kind(streams[i]) if i < len(streams) else "?" for i in pair)
    return f"{target.label} (streams {pair}: {kinds})"


def clip_pair(model_cfg: Any, head: str = "") -> ClipPair:
    """The ``clr`` (or ``moco``) target named ``head`` and its text and image/speech streams. Without a name: the
    model's only contrastive head, else the one comparing a text and an image stream; a ConfigError listing
    the heads otherwise. A two-stream model is read as before (``text_stream``)."""
    streams = list(getattr(model_cfg.embedding, "streams", None) or [])
    two_streams = model_cfg.embedding.parts != ["dual"] or len(streams) == 2
    text = text_stream(model_cfg) if two_streams else -1  # a model that is not CLIP-like is refused first
    heads = [t for t in model_cfg.targets if t.type in CONTRASTIVE_TARGETS]
    if not heads:
        raise ConfigError(f"CLIP tasks need a clr or moco target (contrastive head), the model has "
                          f"{[t.type for t in model_cfg.targets] or 'none'}")
    if two_streams:
        chosen = heads[0]
        if head and not any(t.label == head for t in heads):
            raise ConfigError(f"task.head {head!r}: the model's contrastive head is {heads[0].label!r}")
        return ClipPair(chosen.label, text, 1 - text, "image", list(chosen.streams).index(text))
    listing = ", ".join(head_summary(model_cfg, t) for t in heads)
    if head:
        chosen = next((t for t in heads if t.label == head), None)
        if chosen is None:
            raise ConfigError(f"task.head {head!r} is not a contrastive head of the model; its heads: {listing}")
    else:
        found = [t for t in heads if sorted(stream_kind(streams[i]) for i in t.streams) == ["image", "text"]]
        chosen = heads[0] if len(heads) == 1 else (found[0] if len(found) == 1 else None)
        if chosen is None:
            raise ConfigError(f"the model has {len(heads)} contrastive heads and none is the one over text and "
                              f"image: name one with task.head=NAME; its heads: {listing}")
    kinds = [stream_kind(streams[i]) for i in chosen.streams]
    if "text" not in kinds or kinds.count("text") != 1 or not {"image", "speech"} & set(kinds):
        raise ConfigError(f"task.head {chosen.label!r} compares streams {list(chosen.streams)} ({'+'.join(kinds)}); "
                          f"CLIP tasks read a head over a text stream and an image or speech stream: {listing}")
    side = kinds.index("text")
    return ClipPair(chosen.label, chosen.streams[side], chosen.streams[1 - side], kinds[1 - side], side)


def contrastive_label(model_cfg: Any) -> str:
    """The name of the model's ``clr`` (or ``moco``) target (the head that aligns the streams)."""
    return clip_pair(model_cfg).label


def itm_scorer(options: ScorerOptions, model_cfg: Any) -> str | None:
    """The name of the ``itm`` target that ``task.scorer=itm`` re-ranks with (None for the contrastive scorer);
    a ConfigError when the model has none or ``task.rerank`` is below 1."""
    if options.rerank < 1:
        raise ConfigError(f"task.rerank must be at least 1 (candidates re-ranked per query), got {options.rerank}")
    if options.scorer != "itm":
        return None
    for target in model_cfg.targets:
        if target.type == "itm":
            return target.label
    raise ConfigError(f"task.scorer=itm re-ranks with an itm target, the model has targets "
                      f"{[t.type for t in model_cfg.targets] or 'none'}; evaluate a model pre-trained with itm "
                      f"(finetune --task clip_retrieval drops it) or use task.scorer=contrastive")


@torch.no_grad()
def match_log_odds(model: Any, pairs: dict[str, torch.Tensor], label: str) -> torch.Tensor:
    """The itm target ``label``'s log-odds of "match" for each (image, text) row of ``pairs``, (P,), the pair
    encoded together in the target's view (``modality_experts``: fusion)."""
    inner = getattr(model, "module", model)
    target = inner.targets[label]
    hidden, mask = inner.encode(pairs, mode=target.encoder_mode)
    logits = target.head_logits(hidden, mask, ForwardContext()).float()
    return logits[:, 1] - logits[:, 0]


def rerank(scores: torch.Tensor, k: int, match: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           keep_rest: bool = True) -> torch.Tensor:
    """Ranking scores (Q, C) of Q queries over C candidates: each query's top ``k`` candidates by ``scores`` get
    ``match(query_index, candidate_index)`` (flat (Q * k,) tensors in, (Q * k,) scores out), placed above every
    other candidate, which keep their order by ``scores`` below (``keep_rest``) or get -inf."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    queries = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(k)
    matched = match(queries, top.reshape(-1)).view(-1, k).float().to(scores.device)
    if keep_rest:
        floor = matched.min(1, keepdim=True).values - 1
        rest = scores.float() - scores.float().max(1, keepdim=True).values + floor
    else:
        rest = torch.full_like(scores, float("-inf"), dtype=torch.float)
    return rest.scatter(1, top, matched)


def chunked(match: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            size: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``match`` over index pairs ``size`` at a time (bounds the pairs encoded at once)."""
    def run(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return torch.cat([match(queries[i:i + size], candidates[i:i + size]) for i in range(0, len(queries), size)])
    return run


def ensemble_features(per_template: list[torch.Tensor]) -> torch.Tensor:
    """Class features of a prompt ensemble: the mean over templates of each class's normalised text features
    (each (C, F)), normalised again, as the CLIP paper averages its 80 ImageNet prompts."""
    stacked = torch.stack([F.normalize(t.float(), dim=-1) for t in per_template])
    return F.normalize(stacked.mean(0), dim=-1)


def caption_ids(tokenizer: Any, texts: list[str], seq_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each caption with the tokenizer's start (cls/bos) and end (sep/eos) ids, cut to
    ``seq_length``; returns (ids, number of captions cut)."""
    def first(roles: tuple[str, ...]) -> int | None:
        return next((tokenizer.optional_id(r) for r in roles if tokenizer.optional_id(r) is not None), None)

    start, end = first(("cls", "bos")), first(("sep", "eos"))
    room = seq_length - (start is not None) - (end is not None)
    if room < 1:
        raise ConfigError(f"data.seq_length {seq_length} leaves no room for caption tokens")
    out, cut = [], 0
    for ids in tokenizer.encode_batch(texts):
        ids = list(ids)
        cut += len(ids) > room
        out.append([*([start] if start is not None else []), *ids[:room], *([end] if end is not None else [])])
    return out, cut


def pair_features(model: Any, batch: dict[str, Any], label: str, text_index: int) -> tuple[torch.Tensor, ...]:
    """(text, image) normalised features of a batch of pairs, as the ``clr`` target leaves them in the context;
    also the scale (exp logit_scale). The two streams are independent, so each row's features depend only on
    its own text or image."""
    ctx = ForwardContext()
    model({k: batch[k] for k in MODEL_KEYS if k in batch}, ctx)
    features = ctx.features[label]
    head = getattr(model, "module", model).targets[label]
    return features[text_index], features[1 - text_index], head.scale().detach()


def image_columns(image_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first row of each distinct image (M,), the column of each row's image (N,)) for ``image_id`` (N,)."""
    ids, column = torch.unique(image_id, return_inverse=True)
    rows = torch.tensor([int((image_id == i).nonzero()[0]) for i in ids])
    return rows, column


def recall_metrics(text: torch.Tensor, image: torch.Tensor, image_id: torch.Tensor) -> dict[str, float]:
    """Recall@K both ways over captions ``text`` (N, F) and images ``image`` (N, F) where rows with the same
    ``image_id`` show the same image (its first row's features stand for it)."""
    rows, gold = image_columns(image_id)
    sim = text.float() @ image[rows].float().T  # (N captions, M images)
    return recall_from_scores(sim, sim.T, gold)


def recall_from_scores(t2i: torch.Tensor, i2t: torch.Tensor, gold: torch.Tensor) -> dict[str, float]:
    """Recall@K both ways from ranking scores of each caption over the images ``t2i`` (N, M) and of each image
    over the captions ``i2t`` (M, N); ``gold`` (N,) is the column of each caption's image."""
    t2i_rank = (t2i > t2i.gather(1, gold[:, None])).sum(1) + 1  # images ranked above the right one
    # image -> text: the best-ranked of the image's captions
    own = gold[None, :] == torch.arange(i2t.shape[0])[:, None]
    best_own = i2t.masked_fill(~own, float("-inf")).max(1).values
    i2t_rank = (i2t > best_own[:, None]).sum(1) + 1
    out = {}
    for k in RECALL_KS:
        out[f"i2t_r@{k}"] = float((i2t_rank <= k).float().mean())
    for k in RECALL_KS:
        out[f"t2i_r@{k}"] = float((t2i_rank <= k).float().mean())
    out["mean_recall"] = sum(out.values()) / len(out)
    out["examples"] = float(t2i.shape[0])
    out["images"] = float(i2t.shape[0])
    return out


class ClipBase(FinetuneTask):
    """What both CLIP tasks share: the tokenizer, the image transform, the loader and the feature pass."""

    options: Any
    kept_targets = CONTRASTIVE_TARGETS  # the model's own head (projections, logit scale) is what these tasks use

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pair: ClipPair | None = None
        try:
            self.select_head(str(self.inputs_.options.get("head", "") or ""))
        except ConfigError:
            if sum(t.type in CONTRASTIVE_TARGETS for t in self.cfg.model.targets) < 2:
                raise
            # several heads and none chosen yet: `evaluate ... task.head=NAME` names one (set_options)
        self.truncated: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.audio_recorded: dict[str, Any] = {}  # the model folder's speech processor options (preprocessing.json)
        self.audio_override = AudioInputOptions()  # the user's task.sample_rate / task.normalize

    def select_head(self, head: str) -> None:
        """Read the contrastive head ``head`` (``clip_pair``): its name, its text side, its image or speech side."""
        self.pair = clip_pair(self.cfg.model, head)
        self.label = self.pair.label
        self.text_index = self.pair.text_side  # the text's place in the head's pair of features

    def head_for(self, head: str, scorer: str = "contrastive") -> None:
        """``set_options``' head: the one named, else the default one; the itm scorer reads images only."""
        if head or self.pair is None:
            self.select_head(head)
        assert self.pair is not None
        if scorer == "itm" and self.pair.kind != "image":
            raise ConfigError(f"task.scorer=itm re-ranks image-text pairs; head {self.pair.label!r} compares text "
                              f"with {self.pair.kind}: use task.scorer=contrastive")

    @property
    def kind(self) -> str:
        """What the head compares with text: image or speech."""
        if self.pair is None:
            self.select_head("")  # raises the error listing the heads
        assert self.pair is not None
        return self.pair.kind

    @property
    def media(self) -> str:
        return "audio" if self.kind == "speech" else "image"

    def read_media(self, rows: list[ImageRow], skip_bad: bool, what: str) -> Any:
        """The rows' images, or audio clips for a head over speech (``image_io.load_images``)."""
        read = read_audio_bytes if self.kind == "speech" else read_image_bytes
        return load_images(rows, skip_bad, what, self.name, read=read)

    @property
    def text_section(self) -> Any:
        streams = self.cfg.model.embedding.streams
        if self.pair is None:
            return next(s for s in streams if stream_kind(s) == "text")
        return streams[self.pair.text]

    @property
    def norm(self) -> str:
        return self.options.norm or processor_norm(self.cfg.data.processor or "clip", "clip")

    def set_tokenizer(self, model_dir: Path | None, vocab: str) -> None:
        """The model folder's tokenizer (or ``vocab``), and the audio options its preprocessing record holds."""
        from modaloom.data.preprocessing_record import read_record

        self.tokenizer, where = resolve_tokenizer(model_dir, vocab)
        check_vocabulary(self.cfg, self.tokenizer, where, self.text_section)
        self.audio_recorded = recorded_audio_options(read_record(model_dir))

    def set_audio_override(self, given: dict[str, Any]) -> None:
        """The user's ``task.sample_rate`` / ``task.normalize`` (evaluation options, ``AUDIO_INPUT_KEYS``), which
        win over the recorded audio options; refused for a head that reads no audio."""
        self.audio_override = build(AudioInputOptions, given, path="task")
        if given and self.kind != "speech":
            raise ConfigError(f"task.{' task.'.join(sorted(given))} set the audio features, but head "
                              f"{self.label!r} compares text with {self.kind}; drop them or name a speech head")

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> ImageLoader | AudioLoader:
        o = self.options
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        assert self.tokenizer is not None
        if self.kind == "speech":
            return AudioLoader(examples, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                               shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                               drop_last=False,
                               features=model_audio_features(self.cfg.model, self.audio_recorded, self.audio_override))
        crop, hflip = (o.crop, o.hflip) if train else ("center", False)
        transform = model_transform(self.cfg.model, self.norm, crop, hflip, getattr(o, "scale_min", 0.9))
        return ImageLoader(examples, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                           shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                           drop_last=False, transform=transform)


@register("task", "clip_retrieval")
class ClipRetrievalTask(ClipBase):
    """Contrastive fine-tuning of a dual text-image model on pairs; recall@K image<->text."""

    name = "clip_retrieval"
    Options = ClipTaskOptions  # its task.<key> options (docs/config-reference.md)
    selection_metric = "mean_recall"
    runs_any_model = True  # `evaluate --task clip_retrieval` also ranks with a pre-trained or converted model

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(ClipTaskOptions, dict(self.inputs_.options), path="task")
        self.scoring = ScorerOptions()
        self.itm: str | None = None  # the itm target re-ranking at evaluation (task.scorer=itm)
        self.scoring_model: Any = None

    def set_options(self, options: dict[str, Any]) -> None:
        """``evaluate``'s options: ``task.head``, ``task.scorer`` and ``task.rerank`` (see the module docstring)."""
        options = dict(options)
        head = str(options.pop("head", "") or "")  # task.head: which clr head (``clip_pair``)
        audio = {key: options.pop(key) for key in AUDIO_INPUT_KEYS if key in options}
        self.scoring = build(ScorerOptions, options, path="task")
        self.head_for(head, self.scoring.scorer)
        self.itm = itm_scorer(self.scoring, self.cfg.model)
        self.set_audio_override(audio)

    # ---- data
    def examples(self, path: Path, what: str, skip_bad: bool) -> list[dict[str, Any]]:
        """In-memory pairs of a file: image bytes, caption ids, the id of the image file (shared by rows)."""
        assert self.tokenizer is not None
        rows = read_image_rows(path, ("text",), media=self.media)
        loaded = self.read_media(rows, skip_bad, what)
        self.skipped[what] = len(loaded.skipped)
        ids, self.truncated[what] = caption_ids(self.tokenizer, [r.text or "" for r in loaded.rows],
                                                self.cfg.data.seq_length)
        image_ids: dict[Path, int] = {}
        out = []
        for i, (row, data, tokens) in enumerate(zip(loaded.rows, loaded.images, ids, strict=True)):
            image_id = image_ids.setdefault(row.image.resolve(), len(image_ids))
            out.append({"image": data, "where": row.where, "index": i, "input_ids": tokens, "image_id": image_id})
        return out

    def prepare(self) -> None:
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        cfg, paths = self.cfg, self.paths
        model = to_dict(cfg.model)
        self.head_for(self.options.head)
        model["targets"] = [model["targets"][[t.label for t in cfg.model.targets].index(self.label)]]
        cfg.model = build(ModelConfig, model, Source(), "model")
        self.set_tokenizer(paths.init_from, self.inputs_.vocab)
        positions = self.text_section.max_seq_length
        if cfg.data.seq_length > positions:
            if "data.seq_length" in self.inputs_.overridden:
                raise ConfigError(f"data.seq_length {cfg.data.seq_length} exceeds the text stream's max_seq_length "
                                  f"{positions}; lower --seq-length")
            cfg.data.seq_length = positions
        skip = self.options.skip_bad_images
        self.train_examples = self.examples(paths.data, "train", skip)
        self.dev_examples = self.examples(paths.eval_data, "dev", skip) if paths.eval_data else None
        self.set_steps(len(self.train_examples))

    def test_loader(self, path: Path) -> ImageLoader:
        return self.loader(self.examples(path, "test", False), False)

    def input_loader(self, path: Path) -> ImageLoader:
        loader = self.loader(self.examples(path, "input", False), False)
        for example in loader.examples:
            example["label"] = example["image_id"]  # `evaluate` needs labels: a pair's label is its image
        return loader

    def data_description(self) -> str:
        return (f"{len(self.train_examples)} {self.kind}-text pairs in {self.paths.data}, "
                f"{self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "norm": self.norm}

    # ---- model steps
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output = model({k: batch[k] for k in MODEL_KEYS if k in batch})
        return output.loss, dict(output.metrics)

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        text, image, _ = pair_features(model, batch, self.label, self.text_index)
        out = {"index": batch["index"], "text": text, "image": image, "image_id": batch["image_id"]}
        if self.itm is not None:  # the pairs themselves, re-encoded together once every row's features are known
            self.scoring_model = model
            width = self.cfg.data.seq_length - batch["input_ids"].shape[1]
            pad = self.tokenizer.special_id("pad", "padding") if self.tokenizer is not None else 0
            out["input_ids"] = F.pad(batch["input_ids"], (0, width), value=pad)
            out["attention_mask"] = F.pad(batch["attention_mask"], (0, width), value=0)
            out["pixel_values"] = batch["pixel_values"]
        return out

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        order = torch.argsort(outputs["index"])
        if self.itm is None:
            return recall_metrics(outputs["text"][order], outputs["image"][order], outputs["image_id"][order])
        return self.reranked_recall({key: value[order] for key, value in outputs.items()})

    @torch.no_grad()
    def reranked_recall(self, outputs: dict[str, Any]) -> dict[str, float]:
        """Recall@K with each caption's top ``rerank`` images and each image's top captions re-ranked by itm."""
        rows, gold = image_columns(outputs["image_id"])
        sim = outputs["text"].float() @ outputs["image"][rows].float().T  # (N captions, M images)
        device = next(self.scoring_model.parameters()).device

        def pairs(captions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
            batch = {"input_ids": outputs["input_ids"][captions], "attention_mask": outputs["attention_mask"][captions],
                     "pixel_values": outputs["pixel_values"][rows[images]]}
            return match_log_odds(self.scoring_model, {k: v.to(device) for k, v in batch.items()}, self.itm).cpu()

        size, k = self.cfg.train.batch_size, self.scoring.rerank
        t2i = rerank(sim, k, chunked(pairs, size))
        i2t = rerank(sim.T, k, chunked(lambda images, captions: pairs(captions, images), size))
        return {**recall_from_scores(t2i, i2t, gold), "rerank": float(k)}

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        order = torch.argsort(outputs["index"])
        text, image, image_id = outputs["text"][order], outputs["image"][order], outputs["image_id"][order]
        ids, column = torch.unique(image_id, return_inverse=True)
        rows = torch.tensor([int((image_id == i).nonzero()[0]) for i in ids])
        sim = text.float() @ image[rows].float().T  # (captions, images)
        own = sim.gather(1, column[:, None]).squeeze(1)
        image_rank = (sim > own[:, None]).sum(1) + 1
        text_rank = (sim.T[column] > own[:, None]).sum(1) + 1  # captions above this one for its image
        for score, i_rank, t_rank in zip(own.tolist(), image_rank.tolist(), text_rank.tolist(), strict=True):
            yield {"score": round(score, 6), "image_rank": i_rank, "text_rank": t_rank}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": {**to_dict(self.options), "norm": self.norm},
                "seq_length": self.cfg.data.seq_length, "truncated": dict(self.truncated),
                "skipped": dict(self.skipped)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore the options and the tokenizer of a fine-tuned model folder; a model this task did not save
        (pre-trained, converted: no ``seq_length`` in its section) gets the default options and captions cut to
        its text positions."""
        if "seq_length" not in section:
            self.cfg.data.seq_length = self.text_section.max_seq_length
            self.options = build(ClipTaskOptions, {}, path="task.options")
        else:
            self.options = build(ClipTaskOptions, dict(section.get("options") or {}), path="task.options")
        self.set_tokenizer(model_dir, "")


@register("task", "zero_shot")
class ZeroShotTask(ClipBase):
    """Zero-shot image classification with a CLIP model: prompts from class names, nearest prompt wins.

    It does not train (``finetune --task zero_shot`` is refused); ``evaluate --task zero_shot`` runs it on any
    CLIP model folder with a tokenizer."""

    name = "zero_shot"
    Options = ZeroShotOptions  # its task.<key> options (docs/config-reference.md)
    runs_any_model = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(ZeroShotOptions, {}, path="task")
        self.saved_norm = ""
        self.classes: list[str] = []
        self.prompts: tuple[int, torch.Tensor] | None = None  # (id of the model, prompt features)
        self.prompt_tokens: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per template: ids, mask (C, L)
        self.itm: str | None = None  # the itm target re-ranking the top classes (task.scorer=itm)

    def prepare(self) -> None:
        raise ConfigError("zero_shot does not train: fine-tune with --task clip_retrieval, then run "
                          "`modaloom evaluate --task zero_shot --model DIR --input LABELLED_FILE`")

    @property
    def norm(self) -> str:
        return self.options.norm or self.saved_norm or "clip"

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """The tokenizer of any CLIP model folder; the normalisation and caption length it was fine-tuned with."""
        self.saved_norm = str((section.get("options") or {}).get("norm") or "")
        if "seq_length" not in section:
            self.cfg.data.seq_length = self.text_section.max_seq_length
        self.set_tokenizer(model_dir, "")

    def set_options(self, options: dict[str, Any]) -> None:
        options = dict(options)
        if "template" in options and "templates" in options:
            raise ConfigError("give task.template (one prompt) or task.templates (an ensemble), not both")
        audio = {key: options.pop(key) for key in AUDIO_INPUT_KEYS if key in options}
        self.options = build(ZeroShotOptions, options, path="task")
        self.head_for(self.options.head, self.options.scorer)
        self.itm = itm_scorer(self.options, self.cfg.model)
        self.set_audio_override(audio)
        self.options.templates = self.template_list()
        self.prompts = self.prompt_tokens = None  # other templates: other prompts
        for template in self.options.templates or [self.options.template]:
            if "{}" not in template:
                raise ConfigError(f"task.template {template!r} has no {{}} for the class name")

    def template_list(self) -> list[str]:
        """``task.templates`` as a list: given as one, or read from a file with one template per line."""
        given = self.options.templates
        if isinstance(given, list):
            return [t for t in given if t.strip()]
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"task.templates {given!r} is neither a JSON list of templates nor a file; write "
                              f"task.templates='[\"a photo of a {{}}.\", \"a drawing of a {{}}.\"]' or name a file")
        templates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not templates:
            raise ConfigError(f"task.templates file {path} holds no template")
        return templates

    def class_names(self, rows: list[ImageRow]) -> list[str]:
        """``task.classes`` (a list or a file of names), else the labels of the input, sorted."""
        given = self.options.classes.strip()
        if not given:
            names = sort_labels({(r.label or "").strip() for r in rows} - {""})
            if not names:
                raise DataError("the input has no labels: give the class names with task.classes=a,b,c or a file")
            return names
        path = Path(given)
        if path.is_file():
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            names = [n.strip() for n in given.split(",") if n.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"task.classes needs at least 2 distinct names, got {names}")
        return names

    def input_loader(self, path: Path) -> ImageLoader:
        rows = read_image_rows(path, media=self.media)
        self.classes = self.class_names(rows)
        loaded = self.read_media(rows, False, "input")
        labelled = all(r.label is not None for r in rows)
        examples = []
        for i, (row, data) in enumerate(zip(loaded.rows, loaded.images, strict=True)):
            example: dict[str, Any] = {"image": data, "where": row.where, "index": i}
            if labelled:
                label = (row.label or "").strip()
                if label not in self.classes:
                    raise DataError(f"{row.where}: label {label!r} is not one of the classes {self.classes}")
                example["label"] = self.classes.index(label)
            examples.append(example)
        self.prompts = self.prompt_tokens = None
        return self.loader(examples, False)

    def prompt_features(self, model: Any, device: torch.device) -> torch.Tensor:
        """Normalised text features of every class (C, F), one forward pass per template, computed once per
        model; several templates are ensembled (``ensemble_features``)."""
        if self.prompts is not None and self.prompts[0] == id(model):
            return self.prompts[1]
        per_template = [self.template_features(model, device, ids, mask) for ids, mask in self.prompt_ids()]
        text = per_template[0] if len(per_template) == 1 else ensemble_features(per_template)
        self.prompts = (id(model), text)
        return text

    def prompt_ids(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per template (one, or the ensemble's), the padded token ids and mask (C, L) of the template filled
        with each class name; tokenized once per input file."""
        if self.prompt_tokens is None:
            pad = self.tokenizer.special_id("pad", "padding")
            self.prompt_tokens = []
            for template in list(self.options.templates) or [self.options.template]:
                ids, _ = caption_ids(self.tokenizer, [template.replace("{}", n) for n in self.classes],
                                     self.cfg.data.seq_length)
                self.prompt_tokens.append(pad_ids(ids, pad))
        return self.prompt_tokens

    def template_features(self, model: Any, device: torch.device, input_ids: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
        """Normalised text features (C, F) of one template's prompts (``prompt_ids``)."""
        batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
                 **{k: v.to(device) for k, v in self.blank_media(len(input_ids)).items()}}
        return pair_features(model, batch, self.label, self.text_index)[0]

    def blank_media(self, rows: int) -> dict[str, torch.Tensor]:
        """Inputs of the image or speech stream that text features are computed beside (not read by them)."""
        if self.kind == "speech":
            return blank_features(rows, self.cfg.model)
        section = image_embedding(self.cfg.model)
        return {"pixel_values": torch.zeros(rows, section.channels, section.image_height, section.image_width)}

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        media = {k: batch[k] for k in ("pixel_values", "input_features", "feature_mask") if k in batch}
        device = batch["index"].device
        prompts = self.prompt_features(model, device)
        ids, mask = pad_ids(caption_ids(self.tokenizer, [self.classes[0]], self.cfg.data.seq_length)[0],
                            self.tokenizer.special_id("pad", "padding"))
        rows = batch["index"].shape[0]  # any caption: the image (or speech) stream does not read it
        inputs = {**media, "input_ids": ids.expand(rows, -1).to(device),
                  "attention_mask": mask.expand(rows, -1).to(device)}
        _, image, scale = pair_features(model, inputs, self.label, self.text_index)
        out = {"index": batch["index"], "logits": scale * image @ prompts.T}
        if self.itm is not None:
            out["logits"] = rerank(out["logits"], self.options.rerank,
                                   chunked(self.prompt_matcher(model, batch["pixel_values"]), self.cfg.train.batch_size),
                                   keep_rest=False)
        if "task_labels" in batch:
            out["labels"] = batch["task_labels"]
        return out

    def prompt_matcher(self, model: Any, pixels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(image rows, class indices) -> the itm log-odds of each image with its class's prompt, averaged over the
        templates (a prompt ensemble)."""
        assert self.itm is not None
        prompts = self.prompt_ids()

        def match(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            rows = classes.cpu()  # the prompt tables live on the CPU; the indices come from the model's device
            per_template = [match_log_odds(model, {"pixel_values": pixels[images.to(pixels.device)],
                                                   "input_ids": ids[rows].to(pixels.device),
                                                   "attention_mask": mask[rows].to(pixels.device)}, self.itm)
                            for ids, mask in prompts]
            return torch.stack(per_template).mean(0)
        return match

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        if "labels" not in outputs:
            raise DataError("the evaluation file has no labels; `evaluate` needs a labelled file")
        pred, gold = outputs["logits"].argmax(-1).numpy(), outputs["labels"].numpy()
        return {"accuracy": float(accuracy_score(gold, pred)),
                "macro_f1": float(f1_score(gold, pred, average="macro", labels=list(range(len(self.classes))),
                                           zero_division=0)),
                "examples": float(len(gold)), "classes": float(len(self.classes))}

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        order = torch.argsort(outputs["index"])
        for row in outputs["logits"][order].softmax(-1).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            yield {"label": self.classes[best],
                   "probabilities": {n: round(p, 6) for n, p in zip(self.classes, row, strict=True)}}

    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options)}
