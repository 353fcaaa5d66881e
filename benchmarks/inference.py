"""Inference speed of modaloom vs `transformers` (and TencentPretrain), side by side in one run (interleaved).

Parts (``--parts``, default all):

- ``generation``: tokens/s of modaloom ``generate`` vs ``transformers.generate`` (below).
- ``predict``: samples/s of a fine-tuned tiny BERT classifier (TencentPretrain's tiny config, google_zh_vocab)
  in ``modaloom predict``'s path (read + tokenize + forward + records) vs the same model exported with
  ``convert --to hf`` run as ``BertForSequenceClassification`` (fast tokenizer + forward + softmax + records),
  same batch, same torch threads, eval mode, no grad; and the model forward alone on the same padded batches.
  The classifier is ``--classifier DIR``, else TencentPretrain's 1,000-step book_review checkpoint converted and
  fine-tuned for 8 steps (speed does not depend on the weights).
- ``e2e``: wall time including start-up of ``modaloom predict`` vs TencentPretrain's
  ``inference/run_classifier_infer.py`` (``--tp``, run read-only; its classifier head loads from the same
  checkpoint with ``strict=False``) on ``datasets/book_review/test_nolabel.tsv`` (8,000 lines), batch 64,
  seq 128, ``OMP_NUM_THREADS`` = ``--threads`` for both, alternating runs.

Ratios are modaloom / other throughput, so >= 1.0 means modaloom is at least as fast.


Generation: each model is a random-init `transformers` model (GPT-2 small config, T5-small config) converted with
`modaloom.interop.hf`, so both sides hold the same weights. Both generate from the same batch of prompts
(left-padded for GPT-2, of different lengths) with the same threads, greedy and beam search (4 beams),
a fixed number of new tokens (no eos), alternating runs; medians are reported. Ratio = modaloom tokens/s
/ transformers tokens/s, so >= 1.0 means modaloom is at least as fast. The outputs are checked equal.

    .venv/bin/python benchmarks/inference.py [--parts generation predict e2e] [--models gpt2 t5] [--batch 8]
        [--new-tokens 32] [--repeats 3] [--predict-batch 64] [--threads 2] [--limit 2000] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from side_by_side import BOOK, ROOT, TP_CHECKPOINT, TP_CONFIG, ZH_VOCAB

from modaloom.generation import GenerationConfig, generate, pad_prompts
from modaloom.interop.hf import hf_to_modaloom


def gpt2_small():
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, vocab 50257


def t5_small():
    import transformers

    config = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
    return transformers.T5ForConditionalGeneration(config).eval()


MODELS = {"gpt2": (gpt2_small, False), "t5": (t5_small, True)}
PARTS = ("generation", "predict", "e2e")


def prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab - 10, (16 + 3 * (i % 5),), generator=gen).tolist() for i in range(batch)]


def bench(name: str, batch: int, new_tokens: int, repeats: int) -> list[str]:
    import transformers

    build, seq2seq = MODELS[name]
    torch.manual_seed(0)
    hf = build()
    ours = hf_to_modaloom(hf).eval()
    rows = prompts(batch, hf.config.vocab_size)
    ids, mask = pad_prompts(rows, 0, left=not seq2seq)
    out = []
    for beams in (1, 4):
        # no eos: every row generates exactly new_tokens tokens on both sides
        hf_cfg = transformers.GenerationConfig(max_new_tokens=new_tokens,
                                               num_beams=beams, do_sample=False, pad_token_id=0,
                                               eos_token_id=None, decoder_start_token_id=0 if seq2seq else None)
        cfg = GenerationConfig(max_new_tokens=new_tokens, num_beams=beams, pad_token_id=0,
                               decoder_start_token_id=0)

        def run_hf(hf_cfg=hf_cfg):
            with torch.inference_mode():
                return hf.generate(input_ids=ids, attention_mask=mask, generation_config=hf_cfg)

        def run_ours(cfg=cfg):
            return generate(ours, rows, cfg)

        a, b = run_hf(), run_ours()  # warm-up, and the same tokens
        new = a[:, 1:] if seq2seq else a[:, ids.shape[1]:]
        same = new.tolist() == b.tokens.tolist()
        times_hf, times_ours = [], []
        for _ in range(repeats):
            for fn, times in ((run_hf, times_hf), (run_ours, times_ours)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        tokens = batch * new_tokens
        tps_hf, tps_ours = tokens / statistics.median(times_hf), tokens / statistics.median(times_ours)
        out.append(f"{name:5s} {'greedy' if beams == 1 else 'beam4':7s} {tps_hf:12.1f} {tps_ours:12.1f} "
                   f"{tps_ours / tps_hf:6.2f}x  {'yes' if same else 'NO'}")
    return out


# ---------------------------------------------------------------- classification: predict and end to end


def modaloom_command(*args: str) -> list[str]:
    """A ``modaloom`` command line for a child process (its environment comes from ``child_env``)."""
    return [sys.executable, "-m", "modaloom.cli.main", *args]


def child_env(threads: int) -> dict[str, str]:
    """This checkout's ``src`` first on the path, and ``threads`` torch/OpenMP threads."""
    path = f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_quiet(cmd: list[str], threads: int, cwd: Path | None = None) -> float:
    """Run ``cmd`` to completion (failing loudly, with its stderr) and return its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=child_env(threads), cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def tiny_classifier(work: Path, threads: int) -> Path:
    """A fine-tuned tiny BERT classifier folder (kept in ``work``): TencentPretrain's checkpoint converted,
    fine-tuned 8 steps of batch 32 on the first 256 training reviews."""
    model = work / "clf" / "model"
    if (model / "config.json").is_file():
        return model
    converted, train = work / "tp1k", work / "train256.tsv"
    if not (converted / "config.json").is_file():
        run_quiet(modaloom_command("convert", "--from", "tencentpretrain", "--to", "modaloom", str(TP_CHECKPOINT),
                                   str(converted), "--config", str(TP_CONFIG)), threads)
    lines = (BOOK / "train.tsv").read_text(encoding="utf-8").splitlines()[:257]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_quiet(modaloom_command("finetune", "--task", "classification", "--model", str(converted), "--vocab",
                               str(ZH_VOCAB), "--train", str(train), "--dev", str(train), "--out", str(work / "clf"),
                               "--steps", "8", "--batch-size", "32", "train.progress=false",
                               "train.tensorboard=false"), threads)
    return model


def hf_export(model: Path, work: Path, threads: int) -> Path:
    """The classifier exported with ``convert --to hf`` (kept in ``work``)."""
    out = work / "clf_hf"
    if not (out / "config.json").is_file():
        run_quiet(modaloom_command("convert", "--from", "modaloom", "--to", "hf", str(model), str(out)), threads)
    return out


def text_slice(source: Path, limit: int, work: Path) -> Path:
    """The first ``limit`` examples of ``source`` (header kept), or ``source`` itself when ``limit`` is 0."""
    if not limit:
        return source
    lines = source.read_text(encoding="utf-8").splitlines()
    path = work / f"{source.stem}_{limit}.tsv"
    path.write_text("\n".join(lines[:limit + 1]) + "\n", encoding="utf-8")
    return path


def bench_predict(model_dir: Path, hf_dir: Path, source: Path, batch: int, repeats: int) -> list[str]:
    """Samples/s of modaloom's predict path and of transformers on the same file, interleaved; medians."""
    import transformers

    from modaloom.cli.predict import load_for_inference
    from modaloom.train.steps import collect_outputs

    job, ours, device = load_for_inference(str(model_dir), None, batch)
    hf = transformers.BertForSequenceClassification.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    seq_length = int(job.cfg.data.seq_length)

    def run_ours() -> list[dict[str, Any]]:
        loader = job.input_loader(source)  # read + tokenize, as `modaloom predict`
        return list(job.prediction_records(collect_outputs(job, ours, loader, device)))

    def run_hf() -> list[dict[str, Any]]:
        texts = [line.split("\t")[-1] for line in source.read_text(encoding="utf-8").splitlines()[1:]]
        records = []
        with torch.no_grad():
            for start in range(0, len(texts), batch):
                enc = tokenizer(texts[start:start + batch], padding=True, truncation=True, max_length=seq_length,
                                return_tensors="pt")
                for row in hf(**enc).logits.softmax(-1).tolist():
                    records.append({"label": labels[max(range(len(row)), key=row.__getitem__)],
                                    "probabilities": {n: round(p, 6) for n, p in zip(labels, row, strict=True)}})
        return records

    batches = list(job.input_loader(source))

    def forward_ours() -> None:
        with torch.no_grad():
            for b in batches:
                ours({k: b[k] for k in ("input_ids", "segment_ids", "attention_mask")})

    def forward_hf() -> None:
        with torch.no_grad():
            for b in batches:
                hf(input_ids=b["input_ids"], token_type_ids=b["segment_ids"], attention_mask=b["attention_mask"])

    a, b = run_ours(), run_hf()  # warm-up, and the same labels
    agree = sum(x["label"] == y["label"] for x, y in zip(a, b, strict=True)) / len(a)
    out = []
    for name, fns in (("predict path", (run_hf, run_ours)), ("forward only", (forward_hf, forward_ours))):
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats):
            for fn, kept in zip(fns, times):
                start = time.perf_counter()
                fn()
                kept.append(time.perf_counter() - start)
        sps_hf, sps_ours = (len(a) / statistics.median(t) for t in times)
        out.append(f"{name:13s} {sps_hf:12.1f} {sps_ours:12.1f} {sps_ours / sps_hf:6.2f}x")
    out.append(f"({len(a)} examples of {source.name}, batch {batch}; same label for {agree:.2%} of them)")
    return out


def e2e_commands(model_dir: Path, work: Path, source: Path, batch: int,
                 tp_python: str = sys.executable) -> tuple[list[str], list[str]]:
    """(TencentPretrain's run_classifier_infer.py, run in its checkout; `modaloom predict`) on ``source``."""
    theirs = [tp_python, "inference/run_classifier_infer.py", "--load_model_path", str(TP_CHECKPOINT),
              "--vocab_path", str(ZH_VOCAB), "--config_path", str(TP_CONFIG), "--test_path", str(source),
              "--prediction_path", str(work / "pred_tencentpretrain.tsv"), "--labels_num", "2",
              "--seq_length", "128", "--batch_size", str(batch)]
    ours = modaloom_command("predict", "--model", str(model_dir), "--input", str(source), "--out",
                            str(work / "pred_modaloom.jsonl"), "--batch-size", str(batch))
    return theirs, ours


def bench_e2e(model_dir: Path, work: Path, source: Path, tp: Path, batch: int, repeats: int,
              threads: int) -> list[str]:
    """Wall seconds (start-up included) of `modaloom predict` and TencentPretrain's classifier inference."""
    theirs, ours = e2e_commands(model_dir, work, source, batch)
    walls: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        walls[0].append(run_quiet(theirs, threads, cwd=tp))
        walls[1].append(run_quiet(ours, threads))
    examples = len(source.read_text(encoding="utf-8").splitlines()) - 1
    tp_s, ours_s = statistics.median(walls[0]), statistics.median(walls[1])
    return [f"{'e2e (wall)':13s} {examples / tp_s:12.1f} {examples / ours_s:12.1f} {tp_s / ours_s:6.2f}x",
            f"({examples} examples of {source.name} incl. start-up: TencentPretrain {tp_s:.1f} s, "
            f"modaloom {ours_s:.1f} s, median of {repeats})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--predict-batch", type=int, default=64, help="classifier batch (predict and e2e)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, all sides")
    parser.add_argument("--classifier", type=Path, help="a fine-tuned modaloom classifier folder to use")
    parser.add_argument("--input", type=Path, default=BOOK / "test_nolabel.tsv", help="classifier input file")
    parser.add_argument("--limit", type=int, default=0, help="use the first N examples of --input (0: all)")
    parser.add_argument("--tp", type=Path, default=Path("/work/tp"), help="TencentPretrain checkout (e2e)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/modaloom-inference-bench"))
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    if "generation" in args.parts:
        print(f"generation: batch {args.batch}, new tokens {args.new_tokens}, median of {args.repeats}")
        print(f"{'model':5s} {'mode':7s} {'hf tok/s':>12s} {'ours tok/s':>12s} {'ratio':>7s}  same tokens")
        for name in args.models:
            for line in bench(name, args.batch, args.new_tokens, args.repeats):
                print(line, flush=True)
    if not {"predict", "e2e"} & set(args.parts):
        return
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.classifier or tiny_classifier(args.work, args.threads)
    source = text_slice(args.input, args.limit, args.work)
    print(f"classification (tiny BERT), samples/s, median of {args.repeats}")
    print(f"{'':13s} {'other':>12s} {'modaloom':>12s} {'ratio':>7s}   (other: transformers; e2e: TencentPretrain)")
    if "predict" in args.parts:
        for line in bench_predict(model, hf_export(model, args.work, args.threads), source, args.predict_batch,
                                  args.repeats):
            print(line, flush=True)
    if "e2e" in args.parts:
        for line in bench_e2e(model, args.work, source, args.tp, args.predict_batch, args.repeats, args.threads):
            print(line, flush=True)


if __name__ == "__main__":
    main()
