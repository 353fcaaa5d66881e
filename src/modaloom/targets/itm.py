"""``itm``: image-text matching (ViLT, ALBEF): does this caption belong to this image? Binary head on the
first token of a single-stream encoder, labels ``itm_labels`` (1 = matching pair).

``negatives: data`` (default) reads the batch's pairs and labels as given (the ``vilt`` processor makes
random mismatches). ``negatives: hard`` adds mined negatives, as ALBEF does: among the batch's matching rows
each image gets a text drawn from softmax(scores) over the other rows' texts and each text an image likewise
(``hard_negatives.sample_hard_negatives``), and the model's encoder (``ctx.encode``) re-encodes those 2N
pairs, labelled 0, beside the batch's own rows. ``exclude_matches`` (default on) never draws a pair known to
match, as BLIP leaves out pairs of the same image id: a row whose text or image is identical to the anchor's
(``hard_negatives.known_matches``); an anchor with no other candidate gets no negative on that side.
``mining`` says where the scores come from:

- ``contrastive`` (ALBEF, VLMo): the similarity logits the model's ``clr`` target left in
  ``ctx.similarities`` in the same pass (scale x cosine, detached; the ``clr`` target must come before
  ``itm`` in ``targets``). Costs nothing beyond the 2N re-encoded pairs;
- ``fusion`` (ViLT, a single-stream model without a contrastive target): the itm head's log-odds of "match"
  for every (image, text) pair, without gradient (``pair_scores``): N^2 extra encoder passes per step,
  ``mining_chunk`` pairs at a time;
- ``auto`` (default): ``contrastive`` when the model has a ``clr`` target, else ``fusion``.

Mining is within each rank's batch (the re-encoded inputs must be local), as ALBEF mines within the local batch.

``unmasked_text`` (default on): matching reads the captions as written, as ViLT and ALBEF compute ITM on unmasked
text while their MLM reads masked text. When the batch carries ``mlm_labels`` (the ``vilt`` processor masks every
caption) the masking is undone (``hard_negatives.unmasked_text``) and the batch's pairs are re-encoded through
``ctx.encode`` (one more pass of the fusion view); the mined negatives and ``exclude_matches`` use those captions
too. Read masked, a positive whose distinguishing word is masked cannot be told from a mismatch, and two rows of
one caption masked at different positions look like different captions, so ``exclude_matches`` lets the miner
draw them as negatives: the likeliest draws, being the most similar pairs, and false. With both, ITM from mined
negatives stayed at its prior (docs/objectives.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modaloom.config_schema import choice
from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import TargetOutput, classification_metrics
from modaloom.targets.hard_negatives import (
    all_pairs,
    known_matches,
    pair_batch,
    sample_hard_negatives,
    unmasked_text,
)
from modaloom.targets.text import SentencePrediction, SentencePredictionOptions


@dataclass
class ImageTextMatchingOptions(SentencePredictionOptions):
    negatives: str = choice("data", "data", "hard")  # data: itm_labels as given; hard: plus negatives mined in the batch
    image_keys: list[str] = field(default_factory=lambda: ["pixel_values"])  # the image side of a pair
    text_keys: list[str] = field(default_factory=lambda: ["input_ids", "attention_mask"])  # the text side
    # where hard negatives are drawn from: the clr target's similarities (contrastive), every pair scored by the
    # itm head (fusion), or contrastive when the model has a clr target (auto)
    mining: str = choice("auto", "auto", "contrastive", "fusion")
    mining_chunk: int = 256  # pairs encoded at once while scoring every pair for mining: fusion
    exclude_matches: bool = True  # hard: never draw a row whose text or image is identical to the anchor's
    unmasked_text: bool = True  # match captions as written: undo mlm_labels' masking, re-encode the pairs (ViLT, ALBEF)

    def check(self) -> None:
        if self.mining_chunk < 1:
            raise ConfigError(f"mining_chunk must be at least 1, got {self.mining_chunk}")
        if set(self.image_keys) & set(self.text_keys):
            raise ConfigError(f"itm image_keys {self.image_keys} and text_keys {self.text_keys} overlap")


@register("target", "itm")
class ImageTextMatching(SentencePrediction):
    """The sentence-prediction head (``pooler``, ``output``) read against ``itm_labels``."""

    Options = ImageTextMatchingOptions
    label_key = "itm_labels"
    encoder_mode = "fusion"  # the pair in one sequence (a VLMo model as a fusion encoder)

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        self.mining_source, self.text_stream = mining_source(cfg, model_cfg)

    def head_logits(self, hidden, mask, ctx: ForwardContext) -> torch.Tensor:
        """The head's (B, 2) logits, without a loss."""
        return super().forward(hidden, mask, {}, ctx).logits

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        labels = batch.get(self.label_key)
        if self.cfg.unmasked_text:
            text = unmasked_text(batch)
            if text is not batch:  # masked captions: the pairs again, with their text as written
                if ctx.encode is None:
                    raise ConfigError("itm re-encodes the batch's pairs with their MLM masking undone through "
                                      "ctx.encode; call it via Model, or set unmasked_text: false")
                batch = text
                hidden, mask = ctx.encode(batch)
        if getattr(self.cfg, "negatives", "data") != "hard" or labels is None:
            return super().forward(hidden, mask, batch, ctx)
        if ctx.encode is None:
            raise ConfigError("itm with negatives: hard re-encodes pairs through ctx.encode; call it via Model")
        logits = self.head_logits(hidden, mask, ctx)
        anchors = torch.nonzero(labels == 1).squeeze(1)
        all_logits, all_labels, mined = logits, labels, 0
        # pairs known to match (identical text or image) are never drawn; the mask is symmetric, so serves both sides
        exclude = known_matches(batch, anchors, self.cfg.image_keys, self.cfg.text_keys) \
            if self.cfg.exclude_matches and anchors.numel() >= 2 else None
        if anchors.numel() >= 2 and (exclude is None or not bool(exclude.all())):
            scores = self.mining_scores(batch, anchors, ctx)  # (A, A): [image a, text b]
            texts = sample_hard_negatives(scores, exclude=exclude)
            images = sample_hard_negatives(scores.T, exclude=exclude)
            by_image, by_text = texts >= 0, images >= 0  # anchors that found a negative on each side
            negatives = pair_batch(batch, torch.cat([anchors[by_image], anchors[images[by_text]]]),
                                   torch.cat([anchors[texts[by_image]], anchors[by_text]]), self.cfg.image_keys,
                                   self.cfg.text_keys)
            neg_hidden, neg_mask = ctx.encode(negatives)
            neg_logits = self.head_logits(neg_hidden, neg_mask, ctx)
            mined = neg_logits.shape[0]
            all_logits = torch.cat([logits, neg_logits])
            all_labels = torch.cat([labels, labels.new_zeros(mined)])
        loss, metrics = classification_metrics(self.cfg.label, all_logits, all_labels, self.loss)
        metrics[f"{self.cfg.label}_hard_negatives"] = torch.tensor(mined, device=logits.device)
        return TargetOutput(loss, metrics, logits)

    def mining_scores(self, batch, rows: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Scores of every (image of rows[a], text of rows[b]) pair, (A, A), that negatives are drawn from: the
        contrastive target's similarity logits of this pass, else the itm head's (``pair_scores``)."""
        if self.mining_source is None:
            return self.pair_scores(batch, rows, ctx)
        sims = ctx.similarities.get(self.mining_source)
        if sims is None:
            raise ConfigError(f"itm mining: contrastive reads the similarities of target {self.mining_source!r} "
                              f"from ctx.similarities, but it did not run before itm in this pass; call the model "
                              f"(Model.forward), not the itm target alone")
        size = batch[self.label_key].shape[0]
        if tuple(sims.shape) != (size, size):
            raise ConfigError(f"itm mining: contrastive needs {self.mining_source!r}'s similarities of this batch "
                              f"({size} x {size}), got {tuple(sims.shape)}")
        image_by_text = sims.T if self.text_stream == 0 else sims  # rows: images, columns: texts
        return image_by_text.detach()[rows][:, rows]

    @torch.no_grad()
    def pair_scores(self, batch, rows: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Log-odds of "match" for every (image of rows[a], text of rows[b]) pair, (A, A)."""
        assert ctx.encode is not None
        pairs = all_pairs(batch, rows, self.cfg.image_keys, self.cfg.text_keys)
        total = rows.shape[0] ** 2
        out = []
        for start in range(0, total, self.cfg.mining_chunk):
            chunk = {key: value[start:start + self.cfg.mining_chunk] for key, value in pairs.items()}
            hidden, mask = ctx.encode(chunk)
            logits = self.head_logits(hidden, mask, ctx).float()
            out.append(logits[:, 1] - logits[:, 0])
        return torch.cat(out).view(rows.shape[0], rows.shape[0])


def mining_source(cfg: TargetConfig, model_cfg: ModelConfig) -> tuple[str | None, int]:
    """(name of the ``clr`` target whose similarities itm mines from, None: fusion scoring; index of the text
    stream of the dual embedding) for an itm section, per its ``mining`` option (see the module docstring)."""
    if getattr(cfg, "negatives", "data") != "hard" or cfg.mining == "fusion":
        return None, 0
    labels = [t.label for t in model_cfg.targets]
    before = labels[:labels.index(cfg.label)] if cfg.label in labels else labels
    sources = [t.label for t in model_cfg.targets if t.type == "clr"]
    if not sources:
        if cfg.mining == "auto":
            return None, 0
        raise ConfigError(f"itm mining: contrastive needs a clr target in the model, the targets are {labels}; "
                          f"add one or set mining: fusion (every pair scored by the itm head)")
    source = sources[0]
    if source not in before:
        raise ConfigError(f"itm mining: {cfg.mining} reads the similarities of clr target {source!r}, which must come "
                          f"before itm in targets (order now {labels}); move it up or set mining: fusion")
    streams = list(getattr(model_cfg.embedding, "streams", None) or [])
    text = [i for i, s in enumerate(streams) if "word" in s.parts]
    if len(streams) != 2 or len(text) != 1:
        raise ConfigError(f"itm mining: {cfg.mining} needs a dual embedding with one text stream (word part), got "
                          f"streams with parts {[s.parts for s in streams]}; set mining: fusion")
    return source, text[0]
