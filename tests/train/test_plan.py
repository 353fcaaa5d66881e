"""``modaloom.train.plan``: parameter counts, optimizer state, activations and the estimated peak, checked
against real tensors: optimizer state after a step, bytes autograd saves, and the measured peak of a few
CPU training steps (``tests/train/plan_helpers.py``)."""

from __future__ import annotations

import pytest
import torch

from modaloom.model import build_model
from modaloom.tasks.base import load_job_config
from modaloom.train.config import TrainConfig
from modaloom.train.optim import build_optimizer
from modaloom.train.plan import (
    FP32,
    count_parameters,
    format_plan,
    head_bytes,
    human_bytes,
    layer_activation_bytes,
    optimizer_bytes,
    plan_run,
    precision_of,
    uses_chunked_loss,
)
from modaloom.zoo import zoo_path
from tests.train.plan_helpers import measured_peak, synthetic_batch

GPT2_TINY = ["model.encoder.layers_num=2", "model.encoder.hidden_size=128", "model.embedding.emb_size=128",
             "model.encoder.heads_num=4", "model.encoder.feedforward_size=512"]

# (zoo config, overrides): head-heavy (large vocabularies) and layer-heavy cases, fp32 and bf16, accumulation
MEASURED = {
    "bert-tiny": ("bert/tiny", ["train.batch_size=8", "data.seq_length=64"]),
    "bert-tiny-4l-bf16": ("bert/tiny", ["model.embedding.vocab_size=500", "model.encoder.layers_num=4",
                                        "train.batch_size=8", "data.seq_length=128", "train.precision=bf16"]),
    "gpt2-tiny-accum2": ("gpt2/small", [*GPT2_TINY, "train.batch_size=4", "data.seq_length=64",
                                        "train.grad_accum_steps=2"]),
    "llama-tiny": ("llama/tiny", ["train.batch_size=16", "data.seq_length=128"]),
    "llama-tiny-6l-ckpt": ("llama/tiny", ["model.encoder.layers_num=6", "train.batch_size=8", "data.seq_length=128",
                                          "train.activation_checkpointing=true"]),
}


def job(name: str, overrides: list[str]):
    return load_job_config(str(zoo_path(name)), ["train.progress=false", "train.tensorboard=false", *overrides])


@pytest.mark.parametrize("case", sorted(MEASURED))
def test_estimated_peak_is_within_20_percent_of_the_measured_one(case):
    name, overrides = MEASURED[case]
    cfg = job(name, [*overrides, "train.threads=1"])  # one thread: the peak is the same, a shared machine is not
    estimate = plan_run(cfg, world_size=1, device="cpu")
    measured = measured_peak(cfg, steps=2)
    assert measured > 0, "the profiler recorded no CPU memory events"
    ratio = estimate.peak / measured
    print(f"{case}: estimated {human_bytes(estimate.peak)}, measured {human_bytes(measured)}, ratio {ratio:.3f}")
    assert 0.8 <= ratio <= 1.2, (case, estimate.memory, measured)


def test_counts_per_part_match_the_built_model():
    cfg = job("bert/tiny", [])
    model = build_model(cfg.model)
    counts = count_parameters(model)
    assert counts["total"] == model.num_parameters() == counts["trainable"]
    assert counts["embedding"] + counts["encoder"] + counts["targets"] == counts["total"]
    assert counts["embedding"] > 30522 * 128  # the word table, counted once although the MLM head ties it


@pytest.mark.parametrize("optimizer,extra", [("adamw", {}), ("sgd", {"momentum": 0.9}), ("sgd", {}),
                                             ("adafactor", {})])
def test_optimizer_state_matches_torch_after_one_step(optimizer, extra):
    cfg = job("llama/tiny", [])
    model = build_model(cfg.model)
    train = TrainConfig(optimizer=optimizer, **extra)
    opt = build_optimizer(model, train, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    small = job("llama/tiny", ["train.batch_size=2", "data.seq_length=8"])
    model(synthetic_batch(small, generator)).loss.backward()
    opt.step()
    real = sum(t.numel() * t.element_size() for state in opt.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.ndim > 0)
    assert optimizer_bytes(model, optimizer, train.momentum) == real


@pytest.mark.parametrize("name,overrides", [
    ("bert/tiny", ["model.embedding.vocab_size=100"]),  # post-norm, dropout: math attention on the CPU
    ("llama/tiny", []),  # pre-norm RMS, gated, grouped-query, no dropout: fused attention
    ("gpt2/small", GPT2_TINY + ["model.embedding.vocab_size=100"]),  # pre-norm, dropout
])
def test_one_layer_count_matches_what_autograd_saves(name, overrides):
    cfg = job(name, overrides)
    model = build_model(cfg.model).train()
    stack = model.encoder.stack
    b, s, h = 3, 40, cfg.model.encoder.hidden_size
    rotary = stack.rotary(s, 0, torch.device("cpu"), torch.float32) if stack.rotary is not None else None
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(b, s, h, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stack.layers[0](x, None, cfg.model.encoder.mask == "causal", rotary)
    estimate = layer_activation_bytes(cfg.model.encoder, b, s, precision_of("fp32", "cpu"), "cpu")
    assert abs(estimate / sum(saved.values()) - 1) < 0.06


def test_parallel_modes_shard_or_copy():
    cfg = job("bert/tiny", ["train.parallel=auto"])
    one = plan_run(cfg, 1)
    ddp = plan_run(cfg, 4)
    assert one.parallel == "none" and ddp.parallel == "ddp"
    assert ddp.memory["weights"] == one.memory["weights"] and ddp.memory["ddp_buckets"] == one.memory["gradients"]
    assert ddp.tokens_per_step == 4 * one.tokens_per_step == 4 * 32 * 128
    fsdp = plan_run(job("bert/tiny", ["train.parallel=fsdp"]), 4)
    assert fsdp.memory["optimizer"] == one.memory["optimizer"] // 4 and fsdp.memory["fsdp_working_set"] > 0
    accum = plan_run(job("bert/tiny", ["train.grad_accum_steps=2"]), 1)
    assert accum.peak == one.peak + min(one.memory["gradients"], one.memory["activations"])


def test_llama_7b_on_8_ranks_with_fsdp_and_bf16():
    cfg = job("llama/7b", ["train.parallel=fsdp", "train.precision=bf16", "data.seq_length=2048",
                           "train.batch_size=1"])
    plan = plan_run(cfg, world_size=8, device="cuda")
    print("\n" + format_plan(plan))
    n = 6_738_415_616  # LLaMA-7B's published parameter count
    assert plan.parameters["total"] == n
    assert plan.memory["weights"] == FP32 * n // 8 and plan.memory["optimizer"] == 2 * FP32 * n // 8
    assert plan.tokens_per_step == 2048 * 8
    # the bf16 copies of the matmul weights (the whole model: FSDP2 without a mixed-precision policy)
    assert plan.memory["activations"] > 2 * n
    assert 30 * 1024**3 < plan.peak < 45 * 1024**3


def test_precision_auto_is_planned_as_the_device_would_settle_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_run(job("bert/tiny", ["train.precision=auto"]), 1, device="cuda").precision == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert plan_run(job("bert/tiny", ["train.precision=auto"]), 1, device="cpu").precision == "fp32"


def test_a_chunked_vocabulary_loss_is_planned_as_gradient_buffers_and_one_chunk_not_the_logits():
    model = build_model(job("bert/tiny", []).model)
    mlm, sp = model.targets["mlm"], model.targets["sp"]
    assert uses_chunked_loss(mlm, "fp32") and not uses_chunked_loss(mlm, "bf16")
    assert not uses_chunked_loss(sp, "fp32")
    fp32, rows, vocab, width = precision_of("fp32", "cpu"), 600, 30522, 128
    full_saved, full_transient = head_bytes(mlm, rows, fp32)
    saved, transient = head_bytes(mlm, rows, fp32, chunked=True)
    logits_and_input = FP32 * rows * vocab + FP32 * rows * width
    gradient_buffers = FP32 * (rows * width + vocab * width + vocab)
    assert full_saved - saved == logits_and_input - gradient_buffers
    assert full_transient == 2 * FP32 * rows * vocab and transient == FP32 * 34 * vocab  # 34 rows: 4 MiB
