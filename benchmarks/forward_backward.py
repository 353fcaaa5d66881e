"""Forward+backward time of modaloom vs its `transformers` counterpart, side by side in one run.

Each row builds the same architecture in both libraries (random init, same dims), then alternates timed
forward+backward passes on the same batch and reports medians. Ratio = transformers time / modaloom time,
so >= 1.0 means modaloom is at least as fast.

    .venv/bin/python benchmarks/forward_backward.py [--sizes small base] [--models bert gpt2 t5 vit clip]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from modaloom.model import build_model

B, L = 8, 128


def bert_pair(size: str):
    from transformers import BertConfig, BertForMaskedLM

    h, layers, heads = {"small": (512, 4, 8), "base": (768, 12, 12)}[size]
    hf = BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=h, num_hidden_layers=layers,
                                    num_attention_heads=heads, intermediate_size=4 * h))
    ours = build_model({
        "embedding": {"parts": ["word", "pos", "seg"], "vocab_size": 30522, "emb_size": h, "max_seq_length": 512},
        "encoder": {"hidden_size": h, "layers_num": layers, "heads_num": heads, "feedforward_size": 4 * h},
        "targets": [{"type": "mlm", "tie_weights": True}],
    })
    ids = torch.randint(1000, 30000, (B, L))
    labels = torch.full((B, L), -100)
    labels[:, ::7] = ids[:, ::7]  # ~15% of positions, as in MLM pre-training
    mask = torch.ones(B, L, dtype=torch.long)
    return (lambda: hf(input_ids=ids, attention_mask=mask, labels=labels).loss,
            lambda: ours({"input_ids": ids, "attention_mask": mask, "mlm_labels": labels}).loss)


def gpt2_pair(size: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    h, layers, heads = {"small": (512, 4, 8), "base": (768, 12, 12)}[size]
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_embd=h, n_layer=layers, n_head=heads, n_positions=1024))
    ours = build_model({
        "embedding": {"parts": ["word", "pos"], "vocab_size": 50257, "emb_size": h, "max_seq_length": 1024,
                      "norm": "none"},
        "encoder": {"hidden_size": h, "layers_num": layers, "heads_num": heads, "feedforward_size": 4 * h,
                    "act": "gelu_fast", "norm_position": "pre", "norm_eps": 1e-5, "mask": "causal"},
        "targets": [{"type": "lm", "tie_weights": True, "transform": False, "output_bias": False}],
    })
    ids = torch.randint(0, 50257, (B, L))
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100)], dim=1)
    return (lambda: hf(input_ids=ids, labels=ids).loss, lambda: ours({"input_ids": ids, "lm_labels": labels}).loss)


def t5_pair(size: str):
    from transformers import T5Config, T5ForConditionalGeneration

    h, layers, heads, ff = {"small": (512, 6, 8, 2048), "base": (768, 12, 12, 3072)}[size]
    hf = T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=h, d_kv=h // heads, d_ff=ff,
                                             num_layers=layers, num_heads=heads,
                                             decoder_start_token_id=0, pad_token_id=0))
    stack = {"hidden_size": h, "layers_num": layers, "heads_num": heads, "feedforward_size": ff, "act": "relu",
             "norm": "rms", "norm_eps": 1e-6, "norm_position": "pre", "position": "relative", "bias": False,
             "attention_scale": False}
    emb = {"parts": ["word"], "vocab_size": 32128, "emb_size": h, "norm": "none"}
    ours = build_model({
        "embedding": emb, "encoder": stack, "tgt_embedding": emb, "decoder": dict(stack, mask="causal"),
        "share_embedding": True,
        "targets": [{"type": "lm", "tie_weights": True, "transform": False, "output_bias": False,
                     "scale_before_output": True}],
    })
    src = torch.randint(0, 32128, (B, L))
    tgt = torch.randint(0, 32128, (B, L // 4))
    dec_in = torch.cat([torch.zeros(B, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
    return (lambda: hf(input_ids=src, labels=tgt).loss,
            lambda: ours({"input_ids": src, "decoder_input_ids": dec_in, "lm_labels": tgt}).loss)


def vit_pair(size: str):
    from transformers import ViTConfig, ViTForImageClassification

    h, layers, heads = {"small": (384, 6, 6), "base": (768, 12, 12)}[size]
    hf = ViTForImageClassification(ViTConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                                             intermediate_size=4 * h, num_labels=10))
    ours = build_model({
        "embedding": {"parts": ["patch", "pos"], "emb_size": h, "max_seq_length": 197, "norm": "none",
                      "patch_size": 16, "dropout": 0.0},  # ViTConfig's dropouts default to 0.0
        "encoder": {"hidden_size": h, "layers_num": layers, "heads_num": heads, "feedforward_size": 4 * h,
                    "norm_position": "pre", "dropout": 0.0},
        "targets": [{"type": "cls", "labels_num": 10, "pooler": False}],
    })
    pixels = torch.randn(B, 3, 224, 224)
    labels = torch.randint(0, 10, (B,))
    return (lambda: hf(pixel_values=pixels, labels=labels).loss,
            lambda: ours({"pixel_values": pixels, "labels": labels}).loss)


def clip_pair(size: str):
    from transformers import CLIPConfig, CLIPModel

    th, tl, vh, vl = {"small": (256, 4, 384, 4), "base": (512, 12, 768, 12)}[size]
    hf = CLIPModel(CLIPConfig(
        text_config={"hidden_size": th, "num_hidden_layers": tl, "num_attention_heads": th // 64,
                     "intermediate_size": 4 * th},
        vision_config={"hidden_size": vh, "num_hidden_layers": vl, "num_attention_heads": vh // 64,
                       "intermediate_size": 4 * vh, "patch_size": 32},
        projection_dim=512,
    ))
    text = {"parts": ["word", "pos"], "vocab_size": 49408, "emb_size": th, "max_seq_length": 77, "norm": "none",
            "dropout": 0.0}
    image = {"parts": ["patch", "pos"], "emb_size": vh, "max_seq_length": 50, "patch_size": 32,
             "patch_bias": False, "norm": "layernorm", "norm_eps": 1e-5, "dropout": 0.0}
    layer = {"act": "quick_gelu", "norm_position": "pre", "norm_eps": 1e-5, "dropout": 0.0}
    ours = build_model({
        "embedding": {"parts": ["dual"], "streams": [text, image]},
        "encoder": {"type": "dual", "streams": [
            dict(layer, hidden_size=th, layers_num=tl, heads_num=th // 64, feedforward_size=4 * th, mask="causal"),
            dict(layer, hidden_size=vh, layers_num=vl, heads_num=vh // 64, feedforward_size=4 * vh)]},
        "targets": [{"type": "clr", "feature_size": 512, "poolings": ["eos", "first"]}],
    })
    ids = torch.randint(0, 49407, (B, 77))
    pixels = torch.randn(B, 3, 224, 224)
    return (lambda: hf(input_ids=ids, pixel_values=pixels, return_loss=True).loss,
            lambda: ours({"input_ids": ids, "pixel_values": pixels}).loss)


PAIRS: dict[str, Callable] = {"bert": bert_pair, "gpt2": gpt2_pair, "t5": t5_pair, "vit": vit_pair,
                              "clip": clip_pair}


def time_step(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    loss = fn()
    loss.backward()
    return time.perf_counter() - start


def measure(make, size: str, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    hf_fn, ours_fn = make(size)
    for fn in (hf_fn, ours_fn):  # warm up both
        time_step(fn)
    hf_times, our_times = [], []
    for i in range(repeats):  # alternate so that machine load affects both alike
        order = (hf_fn, ours_fn) if i % 2 == 0 else (ours_fn, hf_fn)
        for fn in order:
            (hf_times if fn is hf_fn else our_times).append(time_step(fn))
    return statistics.median(hf_times), statistics.median(our_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["small", "base"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {B}, seq {L} (CLIP text 77), fp32, "
          f"median of {args.repeats}")
    print(f"{'model':<8}{'size':<7}{'transformers s':>16}{'modaloom s':>12}{'ratio':>8}")
    for name in args.models:
        for size in args.sizes:
            hf_s, ours_s = measure(PAIRS[name], size, args.repeats)
            print(f"{name:<8}{size:<7}{hf_s:>16.3f}{ours_s:>12.3f}{hf_s / ours_s:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
