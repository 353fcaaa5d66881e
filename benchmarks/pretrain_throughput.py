"""Pre-training throughput (and memory) of modaloom vs `transformers`, side by side in one run.

Both sides run full training steps on the same batches from the same modaloom loader (data loading is
inside the timed loop): modaloom through its Trainer, `transformers` (BertForPreTraining /
GPT2LMHeadModel) through a plain PyTorch loop with torch's AdamW and gradient clipping. The first steps
are warm-up and not timed. Tokens are counted as batch x sequence length per step, as TencentPretrain
reports them.

    python benchmarks/pretrain_throughput.py                 # BERT tiny, BERT mini, GPT-2 rows
    python benchmarks/pretrain_throughput.py --rows bert-tiny --steps 40
    python benchmarks/pretrain_throughput.py --memory        # peak RSS, BERT-base batch 8 seq 128
    python benchmarks/pretrain_throughput.py --memory-breakdown  # tiny BERT 32x128: memory by part

Data: TencentPretrain's book-review corpus with the Chinese BERT vocabulary (BERT rows) and its CLUE
sample with the GPT-2 BPE vocabulary (GPT-2 row), from ../shared/data/tencentpretrain, preprocessed once
into --work with `modaloom preprocess`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tencentpretrain"
TARGETS = {"ratio": 1.2, "bert-tiny tokens/s": 19000, "memory ratio": 1.1}

ROWS: dict[str, dict[str, Any]] = {
    "bert-tiny": {"config": "bert/tiny", "data": "bert", "batch": 32, "seq": 128},
    "bert-mini": {"config": "bert/mini", "data": "bert", "batch": 32, "seq": 128},
    "gpt2-small": {"config": "gpt2/small", "data": "lm", "batch": 4, "seq": 256},
    "bert-base": {"config": "bert/base", "data": "bert", "batch": 8, "seq": 128},
}
DATA = {
    "bert": {"corpus": "corpora/book_review_train_bert.txt", "vocab": ["--vocab", "models/google_zh_vocab.txt"],
             "processor": "bert", "vocab_size": 21128},
    "lm": {"corpus": "corpora/CLUECorpusSmall_sampled.txt",
           "vocab": ["--vocab", "models/huggingface_gpt2_vocab.txt", "--merges", "models/huggingface_gpt2_merges.txt"],
           "processor": "lm", "vocab_size": 50257},
}


def prepare(kind: str, seq: int, work: Path) -> Path:
    """Preprocess the row's corpus once (cached in ``work``)."""
    spec = DATA[kind]
    out = work / f"{kind}-{seq}"
    if (out / "manifest.json").is_file():
        return out
    vocab = [a if a.startswith("--") else str(SHARED / a) for a in spec["vocab"]]
    cmd = [sys.executable, "-m", "modaloom.cli.main", "preprocess", "--processor", spec["processor"],
           "--corpus", str(SHARED / spec["corpus"]), "--out", str(out), "--seq-length", str(seq),
           "--workers", "2", "--overwrite", *vocab]
    subprocess.run(cmd, check=True)
    return out


def job_config(row: dict[str, Any], data: Path, steps: int, overrides: list[str]) -> Any:
    from modaloom.tasks import load_job_config
    from modaloom.zoo import zoo_path

    vocab = DATA[row["data"]]["vocab_size"]
    return load_job_config(str(zoo_path(row["config"])), [
        f"model.embedding.vocab_size={vocab}", f"data.seq_length={row['seq']}", f"train.steps={steps}",
        f"train.batch_size={row['batch']}", "train.lr=1e-4", "train.warmup_steps=0", "train.log_every=0",
        "train.progress=false", "train.tensorboard=false", "train.schedule=constant", *overrides])


def loader(cfg: Any, data: Path) -> Any:
    from modaloom.data.loader import build_loader

    return build_loader(data, batch_size=cfg.train.batch_size, seed=cfg.train.seed, seq_length=cfg.data.seq_length,
                        padding="max_length", num_workers=cfg.data.num_workers)


def run_modaloom(cfg: Any, data: Path, out: Path) -> dict[str, float]:
    from modaloom.config_schema import to_dict
    from modaloom.model import build_model
    from modaloom.train.trainer import Trainer

    torch.manual_seed(0)
    model = build_model(cfg.model)
    trainer = Trainer(model, cfg.train, loader(cfg, data), out, model_config=to_dict(cfg.model),
                      seq_length=cfg.data.seq_length)
    summary = trainer.fit()
    return {"samples_per_second": summary["samples_per_second"], "tokens_per_second": summary["tokens_per_second"],
            "mfu": summary["mfu"] or 0.0, "loss": summary.get("final_loss") or float("nan")}


def hf_model(cfg: Any) -> torch.nn.Module:
    """The same architecture in `transformers`."""
    import transformers

    emb, enc = cfg.model.embedding, cfg.model.encoder
    if enc.mask == "causal":
        conf = transformers.GPT2Config(vocab_size=emb.vocab_size, n_positions=emb.max_seq_length, n_embd=enc.hidden_size,
                                       n_layer=enc.layers_num, n_head=enc.heads_num, n_inner=enc.feedforward_size,
                                       activation_function=enc.act, layer_norm_epsilon=enc.norm_eps,
                                       resid_pdrop=enc.dropout, embd_pdrop=emb.dropout, attn_pdrop=enc.dropout)
        conf._attn_implementation = "sdpa"
        return transformers.GPT2LMHeadModel(conf)
    conf = transformers.BertConfig(vocab_size=emb.vocab_size, hidden_size=enc.hidden_size,
                                   num_hidden_layers=enc.layers_num, num_attention_heads=enc.heads_num,
                                   intermediate_size=enc.feedforward_size, hidden_act=enc.act,
                                   max_position_embeddings=emb.max_seq_length, layer_norm_eps=enc.norm_eps,
                                   hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.dropout)
    conf._attn_implementation = "sdpa"
    return transformers.BertForPreTraining(conf)


def hf_inputs(batch: dict[str, torch.Tensor], causal: bool) -> dict[str, torch.Tensor]:
    if causal:  # modaloom's lm_labels are already shifted; transformers shifts inside
        ids = batch["input_ids"]
        labels = torch.cat([ids[:, :1], batch["lm_labels"]], dim=1)[:, : ids.shape[1]]
        return {"input_ids": ids, "attention_mask": batch.get("attention_mask"), "labels": labels}
    return {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask"),
            "token_type_ids": batch.get("segment_ids"), "labels": batch["mlm_labels"],
            "next_sentence_label": batch.get("sp_labels")}


def run_transformers(cfg: Any, data: Path, warmup: int = 1) -> dict[str, float]:
    """A plain PyTorch loop: forward, backward, clip, AdamW step; the first ``warmup`` steps not timed."""
    torch.manual_seed(0)
    model = hf_model(cfg)
    model.train()
    causal = cfg.model.encoder.mask == "causal"
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    samples = tokens = 0
    start = None
    loss = torch.zeros(())
    step = 0
    for batch in loader(cfg, data).forever():
        if step == warmup:
            start, samples, tokens = time.perf_counter(), 0, 0
        loss = model(**hf_inputs(batch, causal)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += batch["input_ids"].shape[0]
        tokens += batch["input_ids"].numel()
        step += 1  # noqa: SIM113 (the loop is endless; steps end it)
        if step >= cfg.train.steps:
            break
    elapsed = time.perf_counter() - (start or time.perf_counter())
    return {"samples_per_second": samples / elapsed, "tokens_per_second": tokens / elapsed, "loss": float(loss.detach())}


def throughput(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{args.steps} steps per row (first steps untimed)")
    header = f"{'row':<11} {'batch x seq':>11} {'framework':<13} {'samples/s':>10} {'tokens/s':>10} {'MFU':>7}"
    print(header)
    print("-" * len(header))
    failed = []
    for name in args.rows:
        row = ROWS[name]
        data = prepare(row["data"], row["seq"], work)
        cfg = job_config(row, data, args.steps, args.override)
        ours = run_modaloom(cfg, data, work / f"run-{name}")
        theirs = run_transformers(cfg, data)
        shape = f"{row['batch']}x{row['seq']}"
        print(f"{name:<11} {shape:>11} {'modaloom':<13} {ours['samples_per_second']:>10.1f} "
              f"{ours['tokens_per_second']:>10.0f} {ours['mfu']:>7.3f}")
        print(f"{'':<11} {'':>11} {'transformers':<13} {theirs['samples_per_second']:>10.1f} "
              f"{theirs['tokens_per_second']:>10.0f} {'':>7}")
        ratio = ours["samples_per_second"] / theirs["samples_per_second"]
        print(f"{'':<11} {'':>11} {'ratio':<13} {ratio:>10.2f}x  (target >= {TARGETS['ratio']}x)")
        if ratio < TARGETS["ratio"]:
            failed.append(f"{name}: {ratio:.2f}x")
        if name == "bert-tiny" and ours["tokens_per_second"] < TARGETS["bert-tiny tokens/s"]:
            failed.append(f"bert-tiny: {ours['tokens_per_second']:.0f} tokens/s < {TARGETS['bert-tiny tokens/s']}")
    print("targets missed: " + "; ".join(failed) if failed else "all targets met")
    return 1 if failed else 0


def memory_worker(framework: str, args: argparse.Namespace) -> None:
    """One framework in a fresh process, so that its peak RSS is its own."""
    from modaloom.train.monitor import peak_rss_mb

    row = ROWS["bert-base"]
    data = prepare(row["data"], row["seq"], Path(args.work))
    cfg = job_config(row, data, args.memory_steps, args.override)
    if framework == "modaloom":
        run_modaloom(cfg, data, Path(args.work) / "run-memory")
    else:
        run_transformers(cfg, data, warmup=1)
    print(json.dumps({"framework": framework, "peak_rss_mb": peak_rss_mb()}))


def memory(args: argparse.Namespace) -> int:
    prepare("bert", 128, Path(args.work))
    results = {}
    for framework in ("modaloom", "transformers"):
        cmd = [sys.executable, __file__, "--memory-worker", framework, "--work", args.work, "--threads", str(args.threads),
               "--memory-steps", str(args.memory_steps)] + [x for o in args.override for x in ("--override", o)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[framework] = json.loads(out)["peak_rss_mb"]
    ratio = results["modaloom"] / results["transformers"]
    print(f"peak RSS training BERT-base (batch 8, seq 128, {args.memory_steps} steps): modaloom "
          f"{results['modaloom']:.0f} MB, transformers {results['transformers']:.0f} MB, ratio {ratio:.2f} "
          f"(target <= {TARGETS['memory ratio']})")
    return 0 if ratio <= TARGETS["memory ratio"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["bert-tiny", "bert-mini", "gpt2-small"], choices=sorted(ROWS))
    parser.add_argument("--steps", type=int, default=30, help="steps per row and framework (the first untimed)")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "modaloom" / "bench"))
    parser.add_argument("--override", action="append", default=[], help="config override for both sides")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    parser.add_argument("--memory", action="store_true", help="peak RSS mode (BERT-base, batch 8, seq 128)")
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--memory-breakdown", action="store_true", help="tiny BERT 32x128: resident memory by "
                        "part (benchmarks/memory_breakdown.py)")
    parser.add_argument("--memory-worker", choices=["modaloom", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_breakdown:
        data = prepare("bert", 128, Path(args.work))
        script = Path(__file__).with_name("memory_breakdown.py")
        return subprocess.run([sys.executable, str(script), str(data), "--threads", str(args.threads or 2)]).returncode
    if args.memory_worker:
        memory_worker(args.memory_worker, args)
        return 0
    return memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    sys.exit(main())
