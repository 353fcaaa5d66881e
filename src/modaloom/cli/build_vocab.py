"""`modaloom build-vocab`: train a WordPiece, BPE or SentencePiece vocabulary from a corpus."""

from __future__ import annotations

import argparse

from modaloom.data.tokenizers import load_tokenizer
from modaloom.data.vocab_builder import VOCAB_TYPES, build_vocab

HELP = "train a WordPiece (vocab.txt), byte-level BPE (tokenizer.json) or SentencePiece (.model) vocabulary"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", required=True, choices=VOCAB_TYPES)
    parser.add_argument("--corpus", required=True, nargs="+", help="text file(s), one sentence or document per line")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--out", required=True, help="file to write (vocab.txt, tokenizer.json or x.model)")
    parser.add_argument("--special-tokens", nargs="*", default=[], help="special tokens (default: per type)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None)
    case.add_argument("--no-lowercase", dest="lowercase", action="store_false")


def run(args: argparse.Namespace) -> int:
    path = build_vocab(args.type, args.corpus, args.vocab_size, args.out, args.lowercase, args.special_tokens)
    tokenizer = load_tokenizer({"type": args.type, "vocab": str(path),
                                **({"lowercase": args.lowercase} if args.lowercase is not None else {})})
    print(f"{path}: {tokenizer.vocab_size} tokens ({args.type})")
    return 0
