"""Generation tokens/s of modaloom vs `transformers.generate`, side by side in one run (interleaved).

Each model is a random-init `transformers` model (GPT-2 small config, T5-small config) converted with
`modaloom.interop.hf`, so both sides hold the same weights. Both generate from the same batch of prompts
(left-padded for GPT-2, of different lengths) with the same threads, greedy and beam search (4 beams),
a fixed number of new tokens (no eos), alternating runs; medians are reported. Ratio = modaloom tokens/s
/ transformers tokens/s, so >= 1.0 means modaloom is at least as fast. The outputs are checked equal.

    .venv/bin/python benchmarks/inference.py [--models gpt2 t5] [--batch 8] [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, new tokens {args.new_tokens}, median of {args.repeats}")
    print(f"{'model':5s} {'mode':7s} {'hf tok/s':>12s} {'ours tok/s':>12s} {'ratio':>7s}  same tokens")
    for name in args.models:
        for line in bench(name, args.batch, args.new_tokens, args.repeats):
            print(line, flush=True)


if __name__ == "__main__":
    main()
