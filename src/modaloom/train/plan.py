"""A plan before a run: parameters and per-rank memory of a training job, built on the meta device.

``plan_run(cfg, world_size, device)`` builds the model on torch's meta device (shapes, no storage, seconds
even for 7B), counts its parameters per part and estimates the bytes one rank holds while training as the
Trainer trains (``train/trainer.py``, ``train/parallelize.py``):

- weights: fp32 always. Mixed precision is autocast over fp32 weights, so there is no separate master copy;
  under bf16/fp16 autocast keeps a 2-byte copy of every matmul weight for the backward pass (counted with
  the activations, since it lives exactly as long as they do);
- gradients: fp32, one per trainable parameter; DDP adds its gradient buckets (the same size again);
- optimizer state: AdamW two fp32 moments; SGD one fp32 buffer with momentum, none without; Adafactor a row
  and a column vector per matrix and a full vector per 1-D parameter;
- FSDP (``train.parallel=fsdp`` with more than one rank) divides weights, gradients and optimizer state by
  the world size and adds its working set: the root's own parameters (embeddings, heads, final norm: not in
  a repeated block) gathered whole, two gathered blocks (the current one and the prefetched next) and one
  block's unsharded gradients;
- activations of one micro-batch: an analytic count of the tensors autograd saves in each transformer layer
  of this code base (see ``layer_activation_bytes``), plus the embedding, the output heads and the loss's
  transient gradient; activation checkpointing keeps each block's input and one block's activations.

The estimated peak is ``weights + optimizer + max(gradients, activations)`` (+ DDP's buckets or FSDP's
working set): during the backward pass gradients grow as saved activations are freed, so both are not at
their maximum at once; with gradient accumulation the gradients live through the next forward and add.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from modaloom.errors import ConfigError
from modaloom.train.config import resolve_precision

PARTS = ("embedding", "encoder", "tgt_embedding", "decoder", "targets")
FP32 = 4
GIB = 1024**3


@dataclass
class Plan:
    """What ``plan_run`` found: counts, sizes in bytes per rank, and the notes behind them."""

    parameters: dict[str, int]  # per part, plus "total" and "trainable"
    world_size: int
    parallel: str  # none / ddp / fsdp, as the Trainer resolves it
    precision: str
    optimizer: str
    device: str
    batch_size: int
    seq_length: int
    grad_accum_steps: int
    tokens_per_step: int
    memory: dict[str, int]  # weights, gradients, optimizer, activations, [ddp_buckets, fsdp_working_set]
    peak: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters per part (a tied weight counted once, in the part that owns it first), total, trainable."""
    counts = dict.fromkeys(PARTS, 0)
    total = trainable = 0
    for name, param in model.named_parameters():  # tied parameters appear once, under their first name
        part = name.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + param.numel()
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {**{k: v for k, v in counts.items() if v or k in ("embedding", "encoder", "targets")},
            "total": total, "trainable": trainable}


def optimizer_bytes(model: nn.Module, optimizer: str, momentum: float) -> int:
    """Bytes of optimizer state for the trainable parameters (torch's AdamW, Adafactor, SGD)."""
    total = 0
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if optimizer == "adamw":
            total += 2 * FP32 * param.numel()
        elif optimizer == "sgd":
            total += FP32 * param.numel() if momentum else 0
        elif optimizer == "adafactor":  # a row and a column vector per matrix, a full vector otherwise
            n = param.numel()
            total += FP32 * (n // param.shape[-1] + n // param.shape[-2] if param.ndim >= 2 else n)
        else:
            raise ConfigError(f"train.optimizer {optimizer!r} has no memory estimate; valid: adamw, adafactor, sgd")
    return total


@dataclass
class Precision:
    """Bytes per activation element (``elem``), per saved norm input (fp32 under autocast too) and per
    dropout mask (bool on CUDA; a tensor of the activation dtype on the CPU)."""

    elem: int
    norm: int
    mask: int


def precision_of(precision: str, device: str) -> Precision:
    elem = FP32 if precision == "fp32" else 2
    return Precision(elem=elem, norm=FP32, mask=1 if device == "cuda" else elem)


def layer_activation_bytes(enc: Any, batch: int, seq: int, bytes_: Precision, device: str,
                           memory_len: int = 0) -> int:
    """Bytes autograd saves in one transformer layer for ``batch`` sequences of ``seq`` positions.

    Counted from what each op of ``layers/transformer_layer.py`` keeps for its backward (checked with
    ``torch.autograd.graph.saved_tensors_hooks`` on the CPU): a LayerNorm its input and two statistics, an
    RMSNorm its input, its normalised output and one statistic; a linear its input; attention q, k, v (k and
    v repeated to all heads under grouped-query attention) and then either the fused kernel's output and
    log-sum-exp, or (torch's math path: the CPU with attention dropout, in fp32 even under autocast) the
    softmax, the dropout mask and the dropped-out probabilities, each heads x seq x seq per sequence; a dense feed-forward its two
    intermediate tensors, a gated one four; a residual dropout its mask. This is Korthikanti et al. 2022's
    count (34 sbh + 5 a s^2 b bytes per layer in fp16) specialised to this code. ``memory_len`` > 0 adds
    cross-attention over that many encoder positions (a decoder layer).
    """
    h, heads, e = enc.hidden_size, enc.heads_num, bytes_.elem
    inner = heads * enc.head_dim
    tokens = batch * seq
    attn_dropout = (enc.dropout if enc.attention_dropout is None else enc.attention_dropout) > 0
    fused = device == "cuda" or not attn_dropout
    norm = 0 if enc.norm == "none" else bytes_.norm + (e if enc.norm in ("rms", "t5") else 0)
    stats = 0 if enc.norm == "none" else FP32 * (2 if enc.norm == "layernorm" else 1)
    residual_mask = bytes_.mask * h if enc.dropout > 0 else 0

    # torch's math path on the CPU computes in fp32 whatever autocast hands it (q, k, v and probabilities)
    core = FP32 if device == "cpu" and not fused else e

    def attention(k_len: int, cross: bool) -> int:
        k_tokens = batch * k_len
        saved = e * tokens * (h + inner) + core * (tokens * inner + k_tokens * 2 * inner)  # in, out; q, k, v
        if cross:
            saved += e * k_tokens * h  # the encoder states fed to k and v
        if fused:
            return saved + FP32 * heads * tokens  # log-sum-exp per query and head
        mask = core if device == "cpu" else 1
        return saved + heads * tokens * k_len * (core + (mask + core if attn_dropout else 0))

    sublayers = 3 if memory_len else 2
    total = sublayers * tokens * (norm * h + stats + residual_mask)
    total += attention(seq, cross=False)
    if memory_len:
        total += attention(memory_len, cross=True)
    ff = 4 if enc.feed_forward == "gated" else 2
    return total + e * tokens * (h + ff * enc.feedforward_size)


def stack_activation_bytes(enc: Any, batch: int, seq: int, bytes_: Precision, device: str, checkpointing: bool,
                           memory_len: int = 0) -> tuple[int, int, str]:
    """(saved bytes, bytes of one block recomputed in the backward pass, note) of an encoder or decoder
    stack; the note says when the figure is a rough one."""
    if getattr(enc, "type", "") == "dual":
        parts = [stack_activation_bytes(s, batch, seq, bytes_, device, checkpointing) for s in enc.streams]
        return (sum(p[0] for p in parts), max(p[1] for p in parts),
                "dual encoder: each stream counted at data.seq_length positions")
    if getattr(enc, "type", "") != "transformer":
        hidden, layers = getattr(enc, "hidden_size", 0), getattr(enc, "layers_num", 1)
        rough = 16 * bytes_.elem * batch * seq * hidden * layers
        return rough, 0, f"{enc.type} encoder: rough figure (16 activations of hidden size per position and layer)"
    layers = enc.layers_num
    one = layer_activation_bytes(enc, batch, seq, bytes_, device, memory_len)
    final = (bytes_.norm + (bytes_.elem if enc.norm in ("rms", "t5") else 0)) * batch * seq * enc.hidden_size \
        if enc.use_final_norm else 0
    if checkpointing:  # each block keeps its input; one block's activations exist again during its recompute
        return layers * bytes_.elem * batch * seq * enc.hidden_size + final, one, ""
    return layers * one + final, 0, ""


TARGET_ROWS = {"lm": 1.0, "mae": 1.0, "bilm": 2.0}  # rows the head runs on, per position; mlm: masked share


def head_bytes(target: nn.Module, rows: int, bytes_: Precision, chunked: bool = False,
               device: str = "cpu") -> tuple[int, int]:
    """(saved, transient) bytes of one target head over ``rows`` rows.

    Saved: each linear's input and, for the inner ones (a transform), their output's activation and norm
    inputs; the loss's fp32 log-probabilities. Transient: the gradients of the log-probabilities and of the
    logits, which exist together at the start of the backward pass. With the ``chunked`` vocabulary loss
    (``targets/vocab_loss.py``) no logits are kept: the output layer's gradients (rows, weight, bias) are
    saved instead, and one chunk's logits come and go.
    """
    linears = [m for m in target.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return 0, 0
    classes = max(m.out_features for m in linears)
    saved = 0 if chunked else FP32 * rows * classes
    for m in linears:
        if m.out_features != classes:
            saved += (bytes_.elem + bytes_.norm) * rows * m.out_features
        elif chunked:  # gradients of its input rows, weight and bias, made in the forward pass
            saved += FP32 * (rows * m.in_features + m.weight.numel() + (classes if m.bias is not None else 0))
            continue
        saved += bytes_.elem * rows * m.in_features
    if chunked:
        from modaloom.targets.vocab_loss import chunk_rows

        return saved, FP32 * min(rows, chunk_rows(classes, device)) * classes
    return saved, 2 * FP32 * rows * classes


def uses_chunked_loss(target: nn.Module, precision: str) -> bool:
    """Whether training computes this target's loss chunk by chunk (fp32 vocabulary targets, plain loss)."""
    from modaloom.targets.text import VocabularyTarget

    return isinstance(target, VocabularyTarget) and target.chunkable() and precision == "fp32"


def matmul_weight_count(model: nn.Module) -> int:
    """Weights autocast copies to bf16/fp16 for matmuls: every nn.Linear weight (tied ones once)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def planned_seq_length(cfg: Any) -> int:
    """``data.seq_length``, or where it is 0 (the dataset's, and no manifest was read) what a run without data
    would take (``data.config.seq_length_without_data``)."""
    from modaloom.data.config import seq_length_without_data

    return int(cfg.data.seq_length) or seq_length_without_data(cfg.model.embedding.max_seq_length)


def activation_bytes(cfg: Any, model: nn.Module, bytes_: Precision, device: str) -> tuple[int, list[str]]:
    """Bytes alive at the end of one micro-batch's forward pass (and the loss's transient gradients)."""
    mcfg, train = cfg.model, cfg.train
    batch, seq = train.batch_size, planned_seq_length(cfg)
    tokens = batch * seq
    notes = []
    emb = mcfg.embedding
    total = tokens * emb.emb_size * ((bytes_.norm if emb.norm != "none" else 0)
                                     + (bytes_.mask if emb.dropout > 0 else 0))
    ckpt = train.activation_checkpointing
    encoder, recompute, note = stack_activation_bytes(mcfg.encoder, batch, seq, bytes_, device, ckpt)
    total += encoder
    notes += [note] if note else []
    if mcfg.decoder is not None:
        decoder, again, note = stack_activation_bytes(mcfg.decoder, batch, seq, bytes_, device, ckpt,
                                                      memory_len=seq)
        total += decoder + tokens * mcfg.tgt_embedding.emb_size * bytes_.mask * (mcfg.tgt_embedding.dropout > 0)
        recompute = max(recompute, again)
        notes += [note] if note else []
    mask_prob = float((cfg.data.masking or {}).get("mask_prob", 0.15))
    transient = 0
    for tcfg in mcfg.targets:
        share = mask_prob if tcfg.type == "mlm" else TARGET_ROWS.get(tcfg.type, 0.0)
        rows = int(round(tokens * share)) if share else batch
        target = model.targets[tcfg.label]
        saved, passing = head_bytes(target, rows, bytes_, uses_chunked_loss(target, train.precision), device)
        total += saved
        transient = max(transient, passing)
    if train.precision != "fp32":
        total += 2 * matmul_weight_count(model)
        notes.append(f"{train.precision} autocast keeps a 2-byte copy of every matmul weight until the backward "
                     f"pass (counted in activations); the weights themselves stay fp32 (no separate master copy)")
    # the loss's gradients come and go before any checkpointed block is recomputed
    return total + max(transient, recompute), notes


def build_on_meta(model_cfg: Any) -> nn.Module:
    """The configured model with every tensor on the meta device: shapes only, no memory, no init cost."""
    from modaloom.model import build_model

    with torch.device("meta"):
        return build_model(model_cfg)


def effective_parallel(parallel: str, world_size: int) -> str:
    """``train.parallel`` as the Trainer applies it: none on one rank, ddp for auto."""
    if world_size <= 1 or parallel == "none":
        return "none"
    return "ddp" if parallel == "auto" else parallel


def fsdp_working_set(model: nn.Module) -> int:
    """Unsharded fp32 bytes FSDP2 holds at once: the root's own parameters, two gathered blocks (current and
    prefetched) and one block's gradients before they are reduce-scattered."""
    from modaloom.train.distributed import repeated_blocks

    blocks = repeated_blocks(model)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return FP32 * (root + 3 * largest)


def planned_precision(precision: str, device: str) -> str:
    """``train.precision`` as the planned run would settle it; ``auto`` for a CUDA device that this machine does
    not have is taken as bf16 (every current data-centre GPU has it)."""
    if precision == "auto" and device == "cuda" and not torch.cuda.is_available():
        return "bf16"
    return resolve_precision(precision, device)


def plan_run(cfg: Any, world_size: int = 1, device: str = "cpu") -> Plan:
    """Parameters and per-rank memory of training ``cfg`` (a job Config) on ``world_size`` ranks of
    ``device`` ("cpu" or "cuda"), from a model built on the meta device."""
    from modaloom.freeze import set_trainable_parts

    if world_size < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {world_size}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not planned for; valid: cpu, cuda")
    train = dataclasses.replace(cfg.train, precision=planned_precision(cfg.train.precision, device))
    model = build_on_meta(cfg.model)
    set_trainable_parts(model, train)  # train.lora adds adapters, train.freeze / lora freeze the rest
    params = count_parameters(model)
    parallel = effective_parallel(train.parallel, world_size)
    shard = world_size if parallel == "fsdp" else 1
    trainable = params["trainable"]
    memory = {
        "weights": FP32 * params["total"] // shard,
        "gradients": FP32 * trainable // shard,
        "optimizer": optimizer_bytes(model, train.optimizer, train.momentum) // shard,
    }
    bytes_ = precision_of(train.precision, device)
    memory["activations"], notes = activation_bytes(cfg, model, bytes_, device)
    extra = 0
    if parallel == "ddp":
        memory["ddp_buckets"] = extra = FP32 * trainable
        notes.append("DDP keeps gradient buckets as large as the gradients for the whole run")
    elif parallel == "fsdp":
        memory["fsdp_working_set"] = extra = fsdp_working_set(model)
        if train.precision != "fp32":
            notes.append("FSDP2 is applied without a mixed-precision policy: autocast's 2-byte weight copies are "
                         "made from the gathered weights, so they are the whole model's on every rank")
    if train.grad_accum_steps > 1:  # gradients of earlier micro-batches live through the next forward
        moving = memory["gradients"] + memory["activations"]
    else:
        moving = max(memory["gradients"], memory["activations"])
    peak = memory["weights"] + memory["optimizer"] + extra + moving
    seq = planned_seq_length(cfg)
    tokens = train.batch_size * seq * train.grad_accum_steps * world_size
    return Plan(parameters=params, world_size=world_size, parallel=parallel, precision=train.precision,
                optimizer=train.optimizer, device=device, batch_size=train.batch_size,
                seq_length=seq, grad_accum_steps=train.grad_accum_steps, tokens_per_step=tokens,
                memory=memory, peak=peak, notes=notes)


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (GiB, MiB, KiB, B)."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_plan(plan: Plan) -> str:
    """The plan as a plain-text table (parameters, memory per rank, tokens per step) and its notes."""
    lines = [f"parameters: {plan.parameters['total']:,} ({plan.parameters['trainable']:,} trainable)"]
    for part, count in plan.parameters.items():
        if part not in ("total", "trainable"):
            lines.append(f"  {part:<22} {count:>16,}")
    lines.append(f"memory per rank ({plan.world_size} rank(s), parallel {plan.parallel}, {plan.precision}, "
                 f"{plan.optimizer}, {plan.device}; micro-batch {plan.batch_size} x {plan.seq_length}):")
    for key, value in plan.memory.items():
        lines.append(f"  {key:<22} {human_bytes(value):>16}")
    lines.append(f"  {'estimated peak':<22} {human_bytes(plan.peak):>16}")
    lines.append(f"tokens per step: {plan.tokens_per_step:,} (batch {plan.batch_size} x seq {plan.seq_length} x "
                 f"grad_accum {plan.grad_accum_steps} x {plan.world_size} rank(s))")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
