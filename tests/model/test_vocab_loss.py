"""The chunked vocabulary cross-entropy: the loss, gradients and metrics of the full logits, without keeping them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modaloom.model import build_model
from modaloom.targets.text import ROW_BUCKET, VocabularyTarget, bucket_rows
from modaloom.targets.vocab_loss import chunk_rows, vocab_cross_entropy
from modaloom.tasks import load_job_config
from modaloom.zoo import zoo_path


def _leaves(rows: int = 13, features: int = 6, vocab: int = 37, bias: bool = True):
    torch.manual_seed(0)
    h = torch.randn(rows, features, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, features, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, dtype=torch.float64, requires_grad=True) if bias else None
    labels = torch.randint(0, vocab, (rows,))
    labels[[2, 7]] = -100
    return h, w, b, labels


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 4, 100])
def test_chunked_loss_and_gradients_equal_the_full_logits(smoothing, bias, rows):
    h, w, b, labels = _leaves(bias=bias)
    loss, correct, count = vocab_cross_entropy(h, w, b, labels, smoothing, rows=rows)
    grads = torch.autograd.grad(loss * 3.0, [t for t in (h, w, b) if t is not None])
    logits = F.linear(h, w, b)
    ref = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=smoothing)
    ref_grads = torch.autograd.grad(ref * 3.0, [t for t in (h, w, b) if t is not None])
    assert torch.allclose(loss, ref, rtol=1e-12, atol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    valid = labels != -100
    assert int(count) == int(valid.sum()) == 11
    assert int(correct) == int(((logits.argmax(-1) == labels) & valid).sum())


def test_no_gradients_are_made_for_inputs_that_do_not_need_them():
    h, w, b, labels = _leaves()
    loss, _, _ = vocab_cross_entropy(h.detach(), w, b.detach(), labels)
    (grad_w,) = torch.autograd.grad(loss, [w])
    ref = F.cross_entropy(F.linear(h.detach(), w, b.detach()), labels, ignore_index=-100)
    assert torch.allclose(grad_w, torch.autograd.grad(ref, [w])[0], rtol=1e-10)


def test_every_label_ignored_gives_nan_like_cross_entropy():
    h, w, b, labels = _leaves()
    loss, correct, count = vocab_cross_entropy(h, w, b, torch.full_like(labels, -100))
    assert torch.isnan(loss) and int(count) == 0 and int(correct) == 0


def test_chunk_rows_and_shape_errors():
    assert chunk_rows(21128) == 49 and chunk_rows(21128, "cuda") == 794 and chunk_rows(10**9) == 1
    h, w, b, labels = _leaves()
    with pytest.raises(ValueError, match=r"\(rows, features\)"):
        vocab_cross_entropy(h.unsqueeze(0), w, b, labels)


def _tiny_bert(overrides: list[str] | None = None):
    cfg = load_job_config(str(zoo_path("bert/tiny")), ["model.embedding.vocab_size=97", "model.encoder.layers_num=1",
                                                       "model.embedding.dropout=0", "model.encoder.dropout=0",
                                                       *(overrides or [])])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ids = torch.randint(5, 97, (3, 10))
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4, 6]] = torch.randint(5, 97, (3, 3))
    batch = {"input_ids": ids, "segment_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
             "mlm_labels": labels, "sp_labels": torch.tensor([0, 1, 0])}
    return model, batch


def _step(model, batch, chunked: bool):
    VocabularyTarget.chunked_loss = chunked
    try:
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.loss.backward()
    finally:
        VocabularyTarget.chunked_loss = True
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [[], ["model.targets.0.tie_weights=false"]])
def test_masked_lm_with_chunked_loss_trains_like_the_full_logits(overrides):
    model, batch = _tiny_bert(overrides)
    model.train()
    chunked, chunked_grads = _step(model, batch, True)
    full, full_grads = _step(model, batch, False)
    assert "mlm" not in chunked.logits and full.logits["mlm"].shape == (9, 97)
    assert torch.allclose(chunked.loss, full.loss, rtol=1e-6)
    for key in ("mlm_loss", "mlm_accuracy", "mlm_count"):
        assert torch.allclose(chunked.metrics[key].float(), full.metrics[key].float(), rtol=1e-6), key
    assert chunked_grads.keys() == full_grads.keys() and "embedding.parts.word.weight" in chunked_grads
    for name, grad in full_grads.items():
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_without_gradients_the_masked_lm_still_returns_its_logits():
    model, batch = _tiny_bert()
    with torch.no_grad():
        out = model(batch)
    assert out.logits["mlm"].shape == (9, 97) and torch.isfinite(out.metrics["mlm_loss"])


def test_a_second_backward_pass_through_the_chunked_loss_is_an_error_that_says_what_to_do():
    h, w, b, labels = _leaves()
    loss, _, _ = vocab_cross_entropy(h, w, b, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="chunked_loss = False"):
        loss.backward()


def test_in_eval_mode_with_gradients_the_masked_lm_keeps_its_logits():
    model, batch = _tiny_bert()
    out = model.eval()(batch)
    assert out.logits["mlm"].shape == (9, 97) and out.loss.requires_grad


def test_under_cpu_autocast_the_selected_rows_are_padded_to_few_shapes_with_the_same_loss():
    model, batch = _tiny_bert()
    model.train()
    rows = torch.randn(9, 4)
    labels = torch.arange(9)
    assert bucket_rows(rows, labels)[0] is rows  # outside autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded, padded_labels = bucket_rows(rows, labels)
        assert padded.shape == (ROW_BUCKET, 4) and torch.equal(padded[:9], rows)
        assert torch.equal(padded_labels[:9], labels) and (padded_labels[9:] == -100).all()
        seen = []
        handle = model.targets["mlm"].head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
        out = model(batch)
        handle.remove()
    assert seen == [ROW_BUCKET] and out.logits["mlm"].shape == (9, 97)  # 9 masked rows in, 9 logits out
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the padded rows' loss is the unpadded rows' loss
        selected = batch["mlm_labels"] != -100
        hidden = torch.randn(int(selected.sum()), model.targets["mlm"].head.output.in_features)
        target = model.targets["mlm"]
        direct = target.loss(target.head(hidden), batch["mlm_labels"][selected])
        padded_loss = target.vocabulary_loss(hidden, batch["mlm_labels"][selected]).loss
    assert torch.allclose(direct.float(), padded_loss.float(), rtol=1e-3)
