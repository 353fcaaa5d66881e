"""`modaloom features`: one vector per sentence from a model's encoder, pooled, optionally L2-normalised.

Input: plain text (one sentence per line), or a TSV/JSONL example file (``text_a`` [, ``text_b``]).
Output: a float32 ``.npy`` array (sentences x hidden size), rows in input order, written atomically.
With ``--pooling mean --normalize`` on all-MiniLM-L6-v2 this is sentence-transformers' ``encode``.

A dual model (CLIP, or text + image + speech aligned by several ``clr`` heads) gives one side of a contrastive
head with ``--side text|image|speech [--head NAME]``: the head's projected, normalised features
(``tasks/dual_features.py``); image and speech inputs are TSV/JSONL lists naming the files (or class folders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = ("sentence features from a model's encoder (first/mean/max/last pooling, optional L2 norm) to .npy; "
        "a dual model's contrastive features of text, images or speech (--side)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (pre-trained, converted or fine-tuned)")
    parser.add_argument("--input", required=True, help="text file (one sentence a line), or TSV/JSONL examples")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    parser.add_argument("--pooling", default="mean", choices=["first", "mean", "max", "last"],
                        help="how token vectors become one (default mean)")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise every vector")
    parser.add_argument("--vocab", default="", help="vocabulary file (default: the model folder's tokenizer)")
    parser.add_argument("--seq-length", type=int, default=0,
                        help="maximum tokens per sentence (default: the model's max_seq_length)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass")
    parser.add_argument("--side", choices=["text", "image", "speech"],
                        help="dual models: the contrastive features of this side of a clr head (--input: sentences "
                             "for text; a TSV/JSONL list naming image or audio files, or class folders, otherwise)")
    parser.add_argument("--head", default="",
                        help="dual models with several clr heads: the head's name (default: the only one, or the "
                             "one over text and image), e.g. --head speech for a speech tower aligned to a CLIP")
    parser.add_argument("--audio-option", action="append", default=[], metavar="KEY=VALUE",
                        help="--side speech: sample_rate=N or normalize=true|false, instead of what the model's "
                             "training data recorded (preprocessing.json; default 16000, true)")


def run(args: argparse.Namespace) -> int:
    from modaloom.errors import ConfigError
    from modaloom.tasks.features import sentence_features, write_npy

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out {out} must end in .npy")
    if args.side:
        from modaloom.tasks.dual_features import dual_features

        if args.vocab:
            raise ConfigError("--side reads the model folder's own tokenizer; drop --vocab")
        vectors, truncated = dual_features(Path(args.model), Path(args.input), args.side, args.head,
                                           batch_size=args.batch_size, seq_length=args.seq_length,
                                           audio_options=audio_options(args.audio_option))
    elif args.head:
        raise ConfigError("--head picks a clr head of a dual model; give --side text|image|speech with it")
    elif args.audio_option:
        raise ConfigError("--audio-option sets how a dual model reads audio; give --side speech with it")
    else:
        vectors, truncated = sentence_features(Path(args.model), Path(args.input), args.pooling, args.normalize,
                                               vocab=args.vocab, seq_length=args.seq_length,
                                               batch_size=args.batch_size)
    write_npy(out, vectors, inputs=[Path(args.input), Path(args.model)])
    note = f"; {truncated} truncated to the sequence length" if truncated else ""
    print(f"{vectors.shape[0]} x {vectors.shape[1]} features written to {out}{note}", file=sys.stderr)
    return 0


def audio_options(items: list[str]) -> dict[str, object]:
    """``--audio-option KEY=VALUE`` items as {key: JSON value or string}; an item without ``=`` is refused."""
    from modaloom.cli.finetune import typed_key_values

    return typed_key_values(items, "", "--audio-option takes KEY=VALUE (sample_rate=8000, normalize=false)")
