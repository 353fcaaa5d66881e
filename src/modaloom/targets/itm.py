"""``itm``: image-text matching (ViLT, ALBEF): does this caption belong to this image? Binary head on the
first token of a single-stream encoder, labels ``itm_labels`` (1 = matching pair).

``negatives: data`` (default) reads the batch's pairs and labels as given (the ``vilt`` processor makes
random mismatches). ``negatives: hard`` adds mined negatives, as ALBEF does: the head scores every
(image, text) pair among the batch's matching rows (log-odds of "match", without gradient), each image gets
a text drawn from softmax(scores) over the other rows' texts and each text an image likewise
(``hard_negatives.sample_hard_negatives``), and the model's encoder (``ctx.encode``) re-encodes those 2N
pairs, labelled 0, beside the batch's own rows. Scoring every pair costs N^2 extra encoder passes without
gradient per step on a single-stream model; mining is within each rank's batch (the re-encoded inputs must be
local), as ALBEF mines within the local batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modaloom.config_schema import choice
from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.registry import register
from modaloom.targets.base import TargetOutput, classification_metrics
from modaloom.targets.hard_negatives import all_pairs, pair_batch, sample_hard_negatives
from modaloom.targets.text import SentencePrediction, SentencePredictionOptions


@dataclass
class ImageTextMatchingOptions(SentencePredictionOptions):
    negatives: str = choice("data", "hard")  # data: itm_labels as given; hard: plus negatives mined in the batch
    image_keys: list[str] = field(default_factory=lambda: ["pixel_values"])  # the image side of a pair
    text_keys: list[str] = field(default_factory=lambda: ["input_ids", "attention_mask"])  # the text side
    mining_chunk: int = 256  # pairs encoded at once while scoring every pair for mining

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

    def head_logits(self, hidden, mask, ctx: ForwardContext) -> torch.Tensor:
        """The head's (B, 2) logits, without a loss."""
        return super().forward(hidden, mask, {}, ctx).logits

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        labels = batch.get(self.label_key)
        if getattr(self.cfg, "negatives", "data") != "hard" or labels is None:
            return super().forward(hidden, mask, batch, ctx)
        if ctx.encode is None:
            raise ConfigError("itm with negatives: hard re-encodes pairs through ctx.encode; call it via Model")
        logits = self.head_logits(hidden, mask, ctx)
        anchors = torch.nonzero(labels == 1).squeeze(1)
        all_logits, all_labels, mined = logits, labels, 0
        if anchors.numel() >= 2:
            scores = self.pair_scores(batch, anchors, ctx)  # (A, A): [image a, text b]
            text_for_image = anchors[sample_hard_negatives(scores)]
            image_for_text = anchors[sample_hard_negatives(scores.T)]
            negatives = pair_batch(batch, torch.cat([anchors, image_for_text]),
                                   torch.cat([text_for_image, anchors]), self.cfg.image_keys, self.cfg.text_keys)
            neg_hidden, neg_mask = ctx.encode(negatives)
            neg_logits = self.head_logits(neg_hidden, neg_mask, ctx)
            mined = neg_logits.shape[0]
            all_logits = torch.cat([logits, neg_logits])
            all_labels = torch.cat([labels, labels.new_zeros(mined)])
        loss, metrics = classification_metrics(self.cfg.label, all_logits, all_labels, self.loss)
        metrics[f"{self.cfg.label}_hard_negatives"] = torch.tensor(mined, device=logits.device)
        return TargetOutput(loss, metrics, logits)

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
