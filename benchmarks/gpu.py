"""GPU readiness: train GPT-2 small in bf16 with torch.compile and fused AdamW on one CUDA device, and
print tokens/s and model FLOPs utilisation (MFU) against the device's bf16 peak.

The model, the step and the optimizer are the project's own: ``build_model`` from the zoo config, the
``Trainer``'s ``train_step`` (bf16 autocast, clipping, ``parallelize``'s ``torch.compile``) and
``build_optimizer`` (torch's fused AdamW, forced with ``train.optimizer_impl=fused``). Batches are random
token ids already on the device, so the figure is the model's speed, not the data loader's. The first
``--warmup`` steps (compilation) are not timed.

    python benchmarks/gpu.py                                  # GPT-2 small, batch 16 x 1024, 30 steps
    python benchmarks/gpu.py --batch-size 8 --steps 50 train.activation_checkpointing=true
    python benchmarks/gpu.py --cpu-smoke                      # reduced form for CI (automatic without CUDA)

MFU = FLOPs per token x tokens/s / peak. FLOPs per token are ``modaloom.train.flops.flops_per_token``
(6 x linear weights + 12 x layers x hidden x seq), which leaves out GPT-2's output layer because it is
tied to the word embedding; ``mfu_with_head`` adds that layer's 6 x vocab x hidden, since the LM head runs
on every position. Peaks are NVIDIA's dense (no sparsity) bf16 tensor-core figures from the product
datasheets: H100 SXM 989 TFLOPS, H100 NVL 835, H100 PCIe 756, H200 989 (the H100 SXM's compute),
H200 NVL 835, A100 312, L40S 362, L4 121. Another device needs ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

import torch

PEAK_BF16_TFLOPS = (  # substring of torch.cuda.get_device_name() -> dense bf16 TFLOPS; first match wins
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
TARGET_MFU = 0.5  # on an H100/H200-class device
SMOKE = ["model.encoder.layers_num=2", "model.encoder.hidden_size=64", "model.embedding.emb_size=64",
         "model.encoder.heads_num=4", "model.encoder.feedforward_size=256", "model.embedding.vocab_size=512",
         "train.threads=1"]  # one thread: CI machines are small and often shared


def known_peak(device_name: str) -> float | None:
    """The dense bf16 peak in FLOP/s of a device named like ``torch.cuda.get_device_name()``, if known."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def job_config(args: argparse.Namespace, smoke: bool) -> Any:
    from modaloom.tasks import load_job_config
    from modaloom.zoo import zoo_path

    return load_job_config(str(zoo_path(args.config)), [
        *(SMOKE if smoke else []), f"train.batch_size={args.batch_size}", f"data.seq_length={args.seq_length}",
        f"train.steps={args.warmup + args.steps}", "train.precision=bf16", "train.optimizer=adamw",
        "train.optimizer_impl=fused", f"train.compile={'false' if args.no_compile else 'true'}",
        "train.progress=false", "train.tensorboard=false", "train.log_every=0", "train.schedule=constant",
        *args.overrides])


def random_batches(cfg: Any, device: torch.device, count: int = 4) -> list[dict[str, torch.Tensor]]:
    """Full micro-batches of random token ids with next-token labels, already on ``device``."""
    generator = torch.Generator().manual_seed(0)
    b, s, vocab = cfg.train.batch_size, cfg.data.seq_length, cfg.model.embedding.vocab_size
    batches = []
    for _ in range(count):
        ids = torch.randint(0, vocab, (b, s + 1), generator=generator)
        batches.append({"input_ids": ids[:, :-1].to(device), "lm_labels": ids[:, 1:].to(device)})
    return batches


def tied_head_flops(model: torch.nn.Module, cfg: Any) -> float:
    """Training FLOPs per token of an LM output layer tied to the word embedding (not in flops_per_token)."""
    if not any(t.type == "lm" and getattr(t, "tie_weights", False) for t in cfg.model.targets):
        return 0.0
    return 6.0 * cfg.model.embedding.vocab_size * cfg.model.embedding.emb_size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, time ``args.steps`` Trainer steps; the result as a dict."""
    from modaloom.model import build_model
    from modaloom.train.distributed import DistInfo
    from modaloom.train.flops import flops_per_token
    from modaloom.train.trainer import Trainer

    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    if smoke:
        args.batch_size, args.seq_length = min(args.batch_size, 2), min(args.seq_length, 32)
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        args.no_compile = True  # compiling on the CPU needs a C++ toolchain and minutes
    cfg = job_config(args, smoke)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with tempfile.TemporaryDirectory() as out:  # the Trainer writes only when saving, which this never does
        trainer = Trainer(model, cfg.train, random_batches(cfg, device), out,
                          info=DistInfo(device=device), seq_length=cfg.data.seq_length)
        for _ in range(args.warmup):
            trainer.train_step()
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss, _, _ = trainer.train_step()
        sync(device)
        elapsed = time.perf_counter() - start
    tokens = cfg.train.batch_size * cfg.data.seq_length * cfg.train.grad_accum_steps * args.steps
    tps = tokens / elapsed
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else known_peak(name) if device.type == "cuda" else None
    per_token = flops_per_token(trainer.raw_model, cfg.data.seq_length)
    head = tied_head_flops(trainer.raw_model, cfg)
    return {
        "device": name, "smoke": smoke, "config": args.config, "compile": cfg.train.compile,
        "parameters": trainer.raw_model.num_parameters(), "batch_size": cfg.train.batch_size,
        "seq_length": cfg.data.seq_length, "steps": args.steps, "seconds": round(elapsed, 4),
        "tokens_per_second": round(tps, 1), "flops_per_token": per_token, "peak_flops": peak,
        "mfu": round(per_token * tps / peak, 4) if peak else None,
        "mfu_with_head": round((per_token + head) * tps / peak, 4) if peak else None,
        "final_loss": float(loss), "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda" else None,
    }


def report(result: dict[str, Any]) -> str:
    """The result as the lines a person reads."""
    mfu = "n/a (no bf16 peak known for this device: pass --peak-tflops)"
    if result["mfu"] is not None:
        mfu = (f"{result['mfu']:.1%} (with the tied LM head {result['mfu_with_head']:.1%}) of "
               f"{result['peak_flops'] / 1e12:.0f} TFLOPS; target >= {TARGET_MFU:.0%} on H100/H200")
    lines = [
        f"device: {result['device']}{' (CPU smoke run: tiny model, no compile)' if result['smoke'] else ''}",
        f"model: {result['config']}, {result['parameters']:,} parameters, bf16 autocast, fused AdamW, "
        f"compile {result['compile']}",
        f"batch {result['batch_size']} x seq {result['seq_length']}, {result['steps']} timed steps in "
        f"{result['seconds']:.2f} s, loss {result['final_loss']:.3f}",
        f"tokens/s: {result['tokens_per_second']:,.0f}",
        f"MFU: {mfu}",
    ]
    if result["max_memory_gib"] is not None:
        lines.append(f"peak CUDA memory: {result['max_memory_gib']} GiB")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gpt2/small", help="zoo name or config file (default gpt2/small)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak, when the "
                        "table does not know it")
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced form on the CPU (tiny model, 2 steps, no "
                        "compile); automatic when there is no CUDA device")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_length < 2:
        parser.error("--steps, --batch-size must be >= 1, --seq-length >= 2 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
