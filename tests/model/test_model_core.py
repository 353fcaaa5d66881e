"""Model composition: building, tying, targets, save/load and refusal of mismatched checkpoints."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import modaloom
from modaloom.context import ForwardContext
from modaloom.errors import CheckpointError, ConfigError
from modaloom.model import build_model

TINY_BERT = {
    "embedding": {"parts": ["word", "pos", "seg"], "vocab_size": 50, "emb_size": 16, "max_seq_length": 32},
    "encoder": {"hidden_size": 16, "layers_num": 2, "heads_num": 2, "feedforward_size": 32},
    "targets": [{"type": "mlm", "tie_weights": True}, {"type": "sp"}],
}


def bert_batch(b: int = 2, n: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 50, (b, n))
    labels = torch.full((b, n), -100)
    labels[:, 2] = ids[:, 2]
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "segment_ids": torch.zeros_like(ids),
            "mlm_labels": labels, "sp_labels": torch.tensor([0, 1])}


def test_loss_is_weighted_sum_and_metrics_present():
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["targets"][1]["weight"] = 0.5
    model = build_model(cfg).eval()
    out = model(bert_batch())
    expected = out.metrics["mlm_loss"] + 0.5 * out.metrics["sp_loss"]
    assert torch.allclose(out.loss, expected)
    assert out.metrics["mlm_count"].item() == 2
    assert 0.0 <= out.metrics["sp_accuracy"].item() <= 1.0


def test_padding_does_not_change_real_positions():
    model = build_model(TINY_BERT).eval()
    batch = bert_batch()
    full = model.encode({k: v[1:2, :6] for k, v in batch.items() if v.dim() == 2})[0]
    padded = model.encode({k: v[1:2] for k, v in batch.items() if v.dim() == 2})[0]
    assert torch.allclose(full, padded[:, :6], atol=1e-5)


def test_tied_output_shares_storage_and_survives_save(tmp_path):
    model = build_model(TINY_BERT)
    assert model.targets["mlm"].head.output.weight is model.embedding.parts["word"].weight
    model.save(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert sum(k.endswith("parts.word.weight") or k.endswith("head.output.weight") for k in keys) == 1
    loaded = modaloom.load(tmp_path / "m").eval()
    model.eval()
    assert loaded.targets["mlm"].head.output.weight is loaded.embedding.parts["word"].weight
    batch = bert_batch()
    assert torch.equal(model(batch).loss, loaded(batch).loss)


def test_backward_reaches_every_parameter():
    model = build_model(TINY_BERT)
    model(bert_batch()).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_missing_key_is_refused_and_nothing_loaded(tmp_path):
    model = build_model(TINY_BERT)
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    dropped = next(k for k in state if "feed_forward" in k)
    del state[dropped]
    state = {k: v + 1.0 for k, v in state.items()}
    save_file(state, str(path))
    fresh = build_model(TINY_BERT)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing keys"):
        fresh.load_weights(path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_shape_mismatch_names_the_key(tmp_path):
    model = build_model(TINY_BERT)
    other = json.loads(json.dumps(TINY_BERT))
    other["encoder"]["feedforward_size"] = 48
    build_model(other).save(tmp_path / "o")
    with pytest.raises(CheckpointError, match="shape mismatch: .*feed_forward"):
        model.load_weights(tmp_path / "o" / "model.safetensors")


def test_save_over_existing_folder_keeps_other_files(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "vocab.txt").write_text("[PAD]\n")
    build_model(TINY_BERT).save(target)
    assert (target / "vocab.txt").read_text() == "[PAD]\n"
    assert (target / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_albert_sharing_and_factorized_embedding():
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["embedding"]["emb_size"] = 8
    cfg["encoder"]["share_layers"] = True
    cfg["encoder"]["layers_num"] = 6
    model = build_model(cfg)
    assert len(model.encoder.stack.layers) == 1
    assert model.encoder.stack.input_projection.weight.shape == (16, 8)
    assert model.targets["mlm"].head.output.weight.shape == (50, 8)
    model(bert_batch()).loss.backward()


def test_encoder_decoder_cached_decoding_matches_full_pass():
    stack = {"hidden_size": 16, "layers_num": 2, "heads_num": 2, "feedforward_size": 32, "norm": "rms",
             "norm_position": "pre", "position": "relative", "bias": False, "attention_scale": False,
             "dropout": 0.0}
    emb = {"parts": ["word"], "vocab_size": 40, "emb_size": 16, "norm": "none", "dropout": 0.0}
    model = build_model({"embedding": emb, "encoder": stack, "tgt_embedding": emb,
                         "decoder": dict(stack, mask="causal"), "share_embedding": True,
                         "targets": [{"type": "lm", "tie_weights": True, "transform": False,
                                      "output_bias": False, "scale_before_output": True}]}).eval()
    src = torch.randint(0, 40, (1, 7))
    dec = torch.randint(0, 40, (1, 5))
    full = model({"input_ids": src, "decoder_input_ids": dec}).logits["lm"]
    memory, mmask = model.encode({"input_ids": src})
    self_caches, cross_caches = model.decoder.new_caches()
    steps = []
    for t in range(5):
        ctx = ForwardContext(decoder_caches=self_caches, cross_caches=cross_caches, decoder_past_length=t)
        hidden, _ = model.decode({"decoder_input_ids": dec[:, t:t + 1]}, memory, mmask, ctx)
        steps.append(model.targets["lm"](hidden, None, {}, ctx).logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_causal_encoder_cache_matches_full_pass():
    model = build_model({
        "embedding": {"parts": ["word", "pos"], "vocab_size": 30, "emb_size": 16, "max_seq_length": 16,
                      "dropout": 0.0},
        "encoder": {"hidden_size": 16, "layers_num": 2, "heads_num": 4, "kv_heads_num": 2,
                    "feedforward_size": 32, "mask": "causal", "position": "rotary", "norm_position": "pre",
                    "feed_forward": "gated", "act": "silu", "norm": "rms", "dropout": 0.0},
        "targets": [{"type": "lm", "transform": False}],
    }).eval()
    ids = torch.randint(0, 30, (1, 6))
    full = model({"input_ids": ids}).logits["lm"]
    caches = model.encoder.new_caches()
    steps = []
    for t in range(6):
        ctx = ForwardContext(encoder_caches=caches, past_length=t)
        hidden, _ = model.encode({"input_ids": ids[:, t:t + 1]}, ctx)
        steps.append(model.targets["lm"](hidden, None, {}, ctx).logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_unknown_target_names_valid_choices():
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["targets"][0]["type"] = "mlmm"
    with pytest.raises(ConfigError, match=r"unknown target 'mlmm' \(did you mean 'mlm'\?\).*valid choices"):
        build_model(cfg)


def test_tie_weights_without_word_part_is_refused():
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["embedding"]["parts"] = ["word", "pos"]
    cfg["targets"] = [{"type": "lm", "tie_weights": True, "transform": False}]
    build_model(cfg)  # fine: has a word part
    cfg["embedding"]["parts"] = ["pos"]
    with pytest.raises(ConfigError, match=r"unknown key 'vocab_size' for embedding parts \[pos\]"):
        build_model(cfg)  # the word part's options are checked against the parts chosen
    del cfg["embedding"]["vocab_size"]
    with pytest.raises(ConfigError, match="starts with 'pos'"):
        build_model(cfg)


def test_load_rejects_non_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a modaloom model folder"):
        modaloom.load(tmp_path)


def test_explicit_input_projection_for_equal_sizes():
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["encoder"]["input_projection"] = True
    model = build_model(cfg)
    assert model.encoder.stack.input_projection.weight.shape == (16, 16)
    cfg["embedding"]["emb_size"] = 8
    cfg["encoder"]["input_projection"] = False
    with pytest.raises(ConfigError, match="input_projection is false"):
        build_model(cfg)


def test_mlm_labels_may_cover_only_the_text_prefix():
    model = build_model(TINY_BERT).eval()
    batch = bert_batch()
    hidden, mask = model.encode(batch)
    short = {"mlm_labels": batch["mlm_labels"][:, :4]}
    out = model.targets["mlm"](hidden, mask, short, {})
    assert out.metrics["mlm_count"].item() == 2
