"""Image-text matching with hard negatives mined in the batch (``itm`` with ``negatives: hard``): the sampler,
the re-encoded pairs and their loss, and a tiny ViLT-like model that learns with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modaloom.targets.itm as itm_module
from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.model import build_model
from modaloom.targets.hard_negatives import (
    all_pairs,
    known_matches,
    pair_batch,
    sample_hard_negatives,
    unmasked_text,
)
from tests.model.test_parts_vision import IMAGE, N, encoder


def test_hard_negatives_never_pick_the_positive():
    g = torch.Generator().manual_seed(0)
    for size in (2, 3, 7):
        scores = torch.randn(size, size, generator=g)
        scores.diagonal().fill_(50.0)  # the positive dominates the softmax yet is never drawn
        for _ in range(200):
            picked = sample_hard_negatives(scores, generator=g)
            assert (picked != torch.arange(size)).all()
    assert sample_hard_negatives(torch.zeros(2, 2)).tolist() == [1, 0]  # one choice each
    with pytest.raises(ValueError, match="at least 2 x 2"):
        sample_hard_negatives(torch.zeros(1, 1))


def test_hard_negatives_follow_the_softmax_of_the_other_scores():
    scores = torch.tensor([[9.0, 1.0, 0.0, -1.0],
                           [2.0, 5.0, 2.0, 0.0],
                           [0.5, 0.0, 3.0, 1.5],
                           [0.0, 0.0, 0.0, 0.0]])
    blocks, calls = 500, 12  # 500 independent copies of the 4 x 4 case per call (other blocks score -1e9)
    tiled = torch.full((4 * blocks, 4 * blocks), -1e9)
    for b in range(blocks):
        tiled[4 * b:4 * b + 4, 4 * b:4 * b + 4] = scores
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(4, 4)
    rows = torch.arange(4).repeat(blocks)
    for _ in range(calls):
        picked = sample_hard_negatives(tiled, generator=g)
        assert (picked // 4 == torch.arange(4 * blocks) // 4).all()  # draws stay in their block
        counts.index_put_((rows, picked % 4), torch.ones(4 * blocks), accumulate=True)
    draws = blocks * calls
    expected = torch.softmax(scores.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf")), dim=-1)
    # standard error of each frequency is below sqrt(.25 / 6000) = .0065; the tolerance is 6 of them
    assert torch.allclose(counts / draws, expected, atol=0.04)
    assert counts.diagonal().sum() == 0
    assert expected[0, 1] > 0.6  # the check is not vacuous: draws are far from uniform


def test_excluded_columns_are_never_drawn_and_a_row_without_any_draws_none():
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # 0 <-> 1 by far the most similar
    exclude = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    for _ in range(50):
        assert sample_hard_negatives(scores, generator=g, exclude=exclude).tolist()[:2] == [2, 2]
    everything = torch.ones(3, 3, dtype=torch.bool)
    assert sample_hard_negatives(scores, exclude=everything).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="exclude must match"):
        sample_hard_negatives(scores, exclude=torch.zeros(2, 2, dtype=torch.bool))


def test_known_matches_are_rows_with_an_identical_text_or_image():
    batch = {"input_ids": torch.tensor([[1, 5, 2], [1, 5, 2], [1, 6, 2], [1, 7, 2]]),
             "attention_mask": torch.ones(4, 3, dtype=torch.long),
             "pixel_values": torch.tensor([[0.0], [1.0], [2.0], [0.0]])}
    same = known_matches(batch, torch.tensor([0, 1, 2, 3]), ["pixel_values"], ["input_ids", "attention_mask"])
    assert same.tolist() == [[True, True, False, True], [True, True, False, False], [False, False, True, False],
                             [True, False, False, True]]  # 0/1 share a text, 0/3 an image
    # the rows asked for, in their order: rows 1 and 2 share nothing
    assert known_matches(batch, torch.tensor([1, 2]), ["pixel_values"], ["input_ids"]).tolist() == [
        [True, False], [False, True]]


def test_hard_itm_never_draws_an_identical_caption_as_a_negative():
    torch.manual_seed(0)
    model = build_model(vilt_hard_config())
    batch = pair_data(3)
    batch["input_ids"][1] = batch["input_ids"][0]  # rows 0 and 1: the same caption, so each matches both images
    # rows 0 and 1 may only draw row 2 (row 2 either of them), on both sides
    known = known_matches(batch, torch.arange(3), ["pixel_values"], ["input_ids", "attention_mask"])
    for _ in range(10):
        assert sample_hard_negatives(torch.zeros(3, 3), exclude=known).tolist()[:2] == [2, 2]
    assert model(batch).metrics["itm_hard_negatives"] == 6
    same = {key: value[:2] for key, value in batch.items()}  # two rows, one caption: nothing to draw
    assert model(same).metrics["itm_hard_negatives"] == 0
    off = build_model(vilt_hard_config(exclude_matches=False))
    assert off(same).metrics["itm_hard_negatives"] == 4  # the paper's plain rule: any other row


def test_pair_batches_combine_one_rows_image_with_another_rows_text():
    batch = {"pixel_values": torch.arange(3).view(3, 1) * 10, "input_ids": torch.arange(3).view(3, 1),
             "attention_mask": torch.ones(3, 1), "mlm_labels": torch.zeros(3, 1)}
    pairs = pair_batch(batch, torch.tensor([0, 2]), torch.tensor([1, 0]), ["pixel_values"],
                       ["input_ids", "attention_mask"])
    assert set(pairs) == {"pixel_values", "input_ids", "attention_mask"}
    assert pairs["pixel_values"].view(-1).tolist() == [0, 20] and pairs["input_ids"].view(-1).tolist() == [1, 0]
    grid = all_pairs(batch, torch.tensor([0, 2]), ["pixel_values"], ["input_ids"])
    assert grid["pixel_values"].view(-1).tolist() == [0, 0, 20, 20] and grid["input_ids"].view(-1).tolist() == [0, 2, 0, 2]


def vilt_hard_config(**itm) -> dict:
    return dict(embedding=dict(parts=["word_patch", "pos", "seg"], vocab_size=40, emb_size=16,
                               max_seq_length=5 + N + 1, dropout=0.0, norm="layernorm", **IMAGE),
                encoder=encoder(), targets=[dict(dict(type="itm", negatives="hard"), **itm)])


def pair_data(size: int, seed: int = 0) -> dict:
    """Image k is a noisy constant colour k; caption k names it with token 10 + k (a learnable matching)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randn(size, 3, 1, 1, generator=g)
    pixels = colours.expand(size, 3, 8, 12) + 0.1 * torch.randn(size, 3, 8, 12, generator=g)
    ids = torch.stack([torch.tensor([1, 10 + k, 2]) for k in range(size)])
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "itm_labels": torch.ones(size, dtype=torch.long)}


def test_unmasked_text_restores_the_tokens_the_mlm_labels_name():
    batch = {"input_ids": torch.tensor([[1, 4, 9, 2], [1, 7, 30, 2]]),  # 4: [MASK]; 30: a random replacement
             "mlm_labels": torch.tensor([[-100, 5, -100, -100], [-100, 7, 8, -100]]),  # row 1: 7 kept as itself
             "itm_labels": torch.ones(2, dtype=torch.long)}
    out = unmasked_text(batch)
    assert out["input_ids"].tolist() == [[1, 5, 9, 2], [1, 7, 8, 2]]
    assert batch["input_ids"][0, 1] == 4 and out["itm_labels"] is batch["itm_labels"]  # a copy; the rest shared
    clean = {**batch, "mlm_labels": torch.full((2, 4), -100)}
    assert unmasked_text(clean) is clean and unmasked_text({"input_ids": batch["input_ids"]})["input_ids"] is \
        batch["input_ids"]
    # labels over a text + image sequence run past the text: the text's positions come first
    longer = unmasked_text({**batch, "mlm_labels": torch.cat([batch["mlm_labels"], torch.full((2, 3), 6)], 1)})
    assert longer["input_ids"].tolist() == [[1, 5, 9, 2], [1, 7, 8, 2]]
    shorter = unmasked_text({**batch, "mlm_labels": batch["mlm_labels"][:, :2]})
    assert shorter["input_ids"].tolist() == [[1, 5, 9, 2], [1, 7, 30, 2]]
    with pytest.raises(ValueError, match="with the rows of input_ids"):
        unmasked_text({**batch, "mlm_labels": torch.zeros(3, 4, dtype=torch.long)})


def masked_copies(size: int) -> dict:
    """``pair_data`` with rows 0 and 1 showing one caption [1, 10, 2], MLM-masked at different positions (3 is
    the mask token): as written they are identical, as masked they differ."""
    batch = pair_data(size)
    batch["input_ids"][1] = batch["input_ids"][0]
    batch["mlm_labels"] = torch.full_like(batch["input_ids"], -100)
    batch["mlm_labels"][0, 1], batch["input_ids"][0, 1] = 10, 3
    batch["mlm_labels"][1, 2], batch["input_ids"][1, 2] = 2, 3
    return batch


def test_hard_itm_matches_captions_as_written_not_as_masked(monkeypatch):
    """The vilt processor masks every caption: two rows of one caption masked differently are still known to
    match (never drawn as each other's negative), and the positives and the mined negatives are encoded with
    their captions unmasked, as ViLT and ALBEF compute ITM on unmasked text."""
    torch.manual_seed(0)
    model = build_model(dict(vilt_hard_config(), init_std=0.3))  # wide enough weights that masking shows
    target = model.targets["itm"]
    two = {key: value[:2] for key, value in masked_copies(2).items()}
    assert model(two).metrics["itm_hard_negatives"] == 0  # one caption: nothing to draw
    masked = build_model(vilt_hard_config(unmasked_text=False))
    assert masked(two).metrics["itm_hard_negatives"] == 4  # read masked, the copies look like two captions
    batch = masked_copies(4)
    picks = []
    monkeypatch.setattr(itm_module, "sample_hard_negatives", lambda scores, generator=None, exclude=None:
                        picks.append(sample_hard_negatives(scores, exclude=exclude)) or picks[-1])
    out = model(batch)
    text_pick, image_pick = picks
    assert set(text_pick[:2].tolist()) <= {2, 3} and set(image_pick[:2].tolist()) <= {2, 3}
    with torch.no_grad():
        written = unmasked_text(batch)
        rows = torch.arange(4)
        negatives = pair_batch(written, torch.cat([rows, image_pick]), torch.cat([text_pick, rows]),
                               ["pixel_values"], ["input_ids", "attention_mask"])
        logits = torch.cat([target.head_logits(*model.encode(written), ForwardContext()),
                            target.head_logits(*model.encode(negatives), ForwardContext())])
        as_masked = target.head_logits(*model.encode(batch), ForwardContext())
    assert torch.allclose(out.loss, F.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 8)), atol=1e-5)
    assert torch.allclose(out.logits["itm"], logits[:4], atol=1e-5)
    assert (as_masked - logits[:4]).abs().max() > 0.05  # the check is not vacuous: masking matters


def test_data_itm_reads_unmasked_captions_and_needs_the_model_to_reencode_them():
    torch.manual_seed(0)
    model = build_model(dict(vilt_hard_config(negatives="data"), init_std=0.3))
    plain = build_model(dict(vilt_hard_config(negatives="data", unmasked_text=False), init_std=0.3))
    plain.load_state_dict(model.state_dict())
    target, batch = model.targets["itm"], masked_copies(3)
    batch["itm_labels"] = torch.tensor([1, 0, 1])
    with torch.no_grad():
        written = target.head_logits(*model.encode(unmasked_text(batch)), ForwardContext())
        as_masked = target.head_logits(*model.encode(batch), ForwardContext())
        out, out_plain = model(batch), plain(batch)
    assert torch.allclose(out.logits["itm"], written, atol=1e-5)
    assert torch.allclose(out.loss, F.cross_entropy(written, batch["itm_labels"]), atol=1e-5)
    assert torch.allclose(out_plain.logits["itm"], as_masked, atol=1e-5)  # unmasked_text: false, as before
    assert (written - as_masked).abs().max() > 0.05
    with pytest.raises(ConfigError, match="unmasked_text: false"):
        target(torch.zeros(3, 4, 16), None, batch, ForwardContext())


def test_hard_itm_scores_every_pair_and_reencodes_the_drawn_negatives(monkeypatch):
    torch.manual_seed(0)
    model = build_model(vilt_hard_config(mining_chunk=3))
    target = model.targets["itm"]
    batch = pair_data(4)
    batch["itm_labels"] = torch.tensor([1, 1, 0, 1])  # row 2 is a data negative: not an anchor
    seen = []

    def recording(scores, generator=None, exclude=None):
        picked = sample_hard_negatives(scores, generator, exclude)
        seen.append((scores.clone(), picked))
        return picked

    monkeypatch.setattr(itm_module, "sample_hard_negatives", recording)
    out = model(batch)
    anchors = torch.tensor([0, 1, 3])
    (scores, text_pick), (scores_t, image_pick) = seen
    assert torch.equal(scores_t, scores.T)
    with torch.no_grad():  # the scores: the head's log-odds of "match" for every anchor image x anchor text
        grid = all_pairs(batch, anchors, ["pixel_values"], ["input_ids", "attention_mask"])
        logits = target.head_logits(*model.encode(grid), ForwardContext())
        assert torch.allclose(scores, (logits[:, 1] - logits[:, 0]).view(3, 3), atol=1e-5)
        negatives = pair_batch(batch, torch.cat([anchors, anchors[image_pick]]),
                               torch.cat([anchors[text_pick], anchors]), ["pixel_values"],
                               ["input_ids", "attention_mask"])
        all_logits = torch.cat([target.head_logits(*model.encode(batch), ForwardContext()),
                                target.head_logits(*model.encode(negatives), ForwardContext())])
        labels = torch.tensor([1, 1, 0, 1] + [0] * 6)
    assert torch.allclose(out.loss, F.cross_entropy(all_logits, labels), atol=1e-5)
    assert out.metrics["itm_hard_negatives"] == 6 and out.metrics["itm_count"] == 10
    assert out.logits["itm"].shape == (4, 2)


def test_hard_itm_without_enough_anchors_or_labels_and_option_checks():
    model = build_model(vilt_hard_config())
    one = {key: value[:1] for key, value in pair_data(2).items()}
    out = model(one)
    assert out.metrics["itm_hard_negatives"] == 0 and out.metrics["itm_count"] == 1
    unlabeled = {key: value for key, value in pair_data(3).items() if key != "itm_labels"}
    assert model(unlabeled).loss is None
    with pytest.raises(ConfigError, match="ctx.encode"):
        model.targets["itm"](torch.zeros(2, 4, 16), None, {"itm_labels": torch.ones(2, dtype=torch.long)},
                             ForwardContext())
    with pytest.raises(ConfigError, match="overlap"):
        build_model(vilt_hard_config(image_keys=["pixel_values"], text_keys=["pixel_values"]))
    with pytest.raises(ConfigError, match="negatives"):
        build_model(vilt_hard_config(negatives="random"))


def test_hard_itm_learns_on_a_tiny_single_stream_model():
    """Six matched colour-caption pairs, negatives mined every step: the loss leaves the 0.637 plateau of
    predicting the label prior (1 positive in 3 pairs) and matching pairs score above mismatched ones."""
    torch.manual_seed(0)
    model = build_model(vilt_hard_config())
    batch = pair_data(6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def margin() -> float:  # mean log-odds of the matching pairs minus that of the 30 mismatched ones
        with torch.no_grad():
            scores = model.targets["itm"].pair_scores(batch, torch.arange(6), ForwardContext(encode=model.encode))
        return (scores.diagonal().mean() - (scores.sum() - scores.diagonal().sum()) / 30).item()

    start = margin()
    losses = []
    for _ in range(60):
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.02, losses
    assert abs(start) < 0.05 and margin() > 0.1


# ---- mining from the contrastive similarities (ALBEF, VLMo): a tiny VLMo, text stream 0, image stream 1
def vlmo_hard_config(itm: dict | None = None, clr_first: bool = True) -> dict:
    from tests.model.test_modality_experts import config

    targets = [dict(type="clr", feature_size=4), dict(type="itm", negatives="hard", **(itm or {}))]
    return config(targets=targets if clr_first else targets[::-1])


def vlmo_pairs(rows: int) -> dict:
    """Row k: text token 4 + k, image filled with k: a re-encoded pair names its text row and image row."""
    ids = (4 + torch.arange(rows)).view(rows, 1).expand(rows, 4).contiguous()
    pixels = torch.arange(rows, dtype=torch.float).view(rows, 1, 1, 1).expand(rows, 3, 8, 8).contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "itm_labels": torch.ones(rows, dtype=torch.long)}


def test_mining_follows_the_softmax_of_the_contrastive_similarities():
    """ctx.similarities[clr][t, i] is text t against image i (text is stream 0). With log 3 at [1, 0] image 0's
    negative is text 1 three times in four (else text 2) and text 1's is image 0 three times in four."""
    torch.manual_seed(0)
    model = build_model(vlmo_hard_config())
    target, data, draws = model.targets["itm"], vlmo_pairs(3), 400
    assert target.mining_source == "clr" and target.text_stream == 0
    sims = torch.zeros(3, 3)
    sims[1, 0] = torch.log(torch.tensor(3.0))
    encoded = []

    def recording(inputs):
        encoded.append((inputs["pixel_values"][:, 0, 0, 0].long(), inputs["input_ids"][:, 0] - 4))
        return model.encode(inputs, mode="fusion")

    hidden, mask = model.encode(data, mode="fusion")
    for _ in range(draws):
        out = target(hidden, mask, data, ForwardContext(encode=recording, similarities={"clr": sims}))
    assert out.metrics["itm_hard_negatives"] == 6
    counts = torch.zeros(2, 3, 3)  # [0]: text drawn for image i, [1]: image drawn for text t
    for image, text in encoded:
        assert torch.equal(image[:3], torch.arange(3)) and torch.equal(text[3:], torch.arange(3))
        counts[0, torch.arange(3), text[:3]] += 1
        counts[1, torch.arange(3), image[3:]] += 1
    expected = torch.tensor([[[0, .75, .25], [.5, 0, .5], [.5, .5, 0]],
                             [[0, .5, .5], [.75, 0, .25], [.5, .5, 0]]])
    assert torch.allclose(counts / draws, expected, atol=0.09), counts / draws  # 4 standard errors
    with pytest.raises(ConfigError, match="did not run before itm"):
        target(hidden, mask, data, ForwardContext(encode=recording))


@pytest.mark.parametrize("mining, extra_passes", [("auto", 0), ("fusion", 25)])
def test_contrastive_mining_encodes_only_the_2n_negatives(monkeypatch, mining, extra_passes):
    """One forward of clr + itm on 5 pairs: the fusion view encodes the batch's N rows and the 2N negatives, not
    the N^2 pairs that mining: fusion scores; the scores drawn from are the clr logits (scale x image-text
    cosine) of the same pass."""
    torch.manual_seed(0)
    rows = 5
    model = build_model(vlmo_hard_config(dict(mining=mining)))
    encoded, seen = [], []
    model.encoder.register_forward_pre_hook(lambda mod, args: encoded.append((args[3].encoder_mode, len(args[0][0]))))
    monkeypatch.setattr(itm_module, "sample_hard_negatives",
                        lambda scores, generator=None, exclude=None: seen.append(scores)
                        or sample_hard_negatives(scores, exclude=exclude))
    ctx = ForwardContext()
    out = model(vlmo_pairs(rows), ctx)
    assert sum(n for mode, n in encoded if mode == "fusion") == rows + 2 * rows + extra_passes, encoded
    assert sum(n for mode, n in encoded if mode == "dual") == rows
    assert out.metrics["itm_hard_negatives"] == 2 * rows and torch.isfinite(out.loss)
    if mining == "auto":
        text, image = ctx.features["clr"]
        expected = model.targets["clr"].scale() * image @ text.T
        assert torch.allclose(seen[0], expected, atol=1e-5) and torch.allclose(seen[1], expected.T, atol=1e-5)
        assert not seen[0].requires_grad


def test_mining_choice_and_its_errors():
    assert build_model(vilt_hard_config()).targets["itm"].mining_source is None  # auto without clr: fusion
    assert build_model(vlmo_hard_config(dict(mining="fusion"))).targets["itm"].mining_source is None
    with pytest.raises(ConfigError, match="needs a clr target"):
        build_model(vilt_hard_config(mining="contrastive"))
    with pytest.raises(ConfigError, match="before itm"):
        build_model(vlmo_hard_config(clr_first=False))
    assert build_model(vlmo_hard_config(dict(mining="fusion"), clr_first=False)).targets["itm"].mining_source is None
    plain = build_model(vilt_hard_config(negatives="data"))  # the default, also accepted when written out
    assert plain.targets["itm"].cfg.negatives == "data" and plain.targets["itm"].mining_source is None
