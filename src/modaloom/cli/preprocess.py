"""`modaloom preprocess`: raw corpus -> dataset directory of sharded, memory-mapped records."""

from __future__ import annotations

import argparse
import sys

from modaloom.config_schema import parse_overrides, set_dotted
from modaloom.data.config import SPECIAL_TOKEN_ROLES, TokenizerConfig
from modaloom.data.preprocess import preprocess
from modaloom.data.readers import FORMATS, ReaderOptions
from modaloom.data.tokenizers import guess_tokenizer_type
from modaloom.errors import ConfigError
from modaloom.registry import names

HELP = "turn a raw corpus into a dataset directory (tokenized, sharded, memory-mapped) for pretrain"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processor", required=True, help=f"data type: {', '.join(names('processor'))}")
    parser.add_argument("--corpus", required=True, nargs="+",
                        help="corpus file(s) (text, TSV, JSONL, Parquet, webdataset .tar; brace patterns such as "
                             "'shards-{000..009}.tar'), an image folder or a `datasets` save_to_disk folder")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--vocab", default="", help="vocab.txt, vocab.json, tokenizer.json or SentencePiece .model")
    parser.add_argument("--merges", default="", help="BPE merges.txt (with a GPT-2 style vocab)")
    parser.add_argument("--tokenizer", default="", choices=["", "wordpiece", "bpe", "sentencepiece", "char", "space"],
                        help="tokenizer type (default: guessed from the vocabulary file)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="lowercase text (default: on for wordpiece, off for others)")
    case.add_argument("--no-lowercase", dest="lowercase", action="store_false")
    parser.add_argument("--special-token", action="append", default=[], metavar="ROLE=TOKEN",
                        help="name a special token, e.g. mask=<mask> (roles: pad unk cls sep mask bos eos)")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1 = in-process)")
    parser.add_argument("--format", default="", choices=["", *FORMATS], help="corpus format (default: by suffix)")
    parser.add_argument("--text-field", default="",
                        help="field holding the text for line/document processors in JSONL, Parquet, `datasets` "
                             "and webdataset inputs (default: text or a sentences list; txt in webdataset)")
    parser.add_argument("--split", default="", help="split of a `datasets` DatasetDict folder (e.g. train)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shard-mb", type=float, default=256.0,
                        help="start a new shard after about this many MB (a killed run resumes from complete shards)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset at --out (never a folder that is not a dataset)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="processor option, e.g. masking.whole_word=true, noise_density=0.2")


def special_tokens(items: list[str]) -> dict[str, str]:
    """``ROLE=TOKEN`` arguments as a dict; anything else is an error naming the expected form."""
    specials = {}
    for item in items:
        role, sep, token = item.partition("=")
        if not sep or not role or not token:
            raise ConfigError(f"--special-token {item!r}: expected ROLE=TOKEN, e.g. mask=[MASK] "
                              f"(roles: {', '.join(SPECIAL_TOKEN_ROLES)})")
        specials[role] = token
    return specials


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if not args.shard_mb > 0:
        raise ConfigError(f"--shard-mb must be positive, got {args.shard_mb}")
    specials = special_tokens(args.special_token)
    if specials and not args.vocab:
        raise ConfigError("--special-token names tokens of a vocabulary: pass --vocab too")
    tokenizer = None
    if args.vocab:
        tokenizer = TokenizerConfig(type=args.tokenizer or guess_tokenizer_type(args.vocab, args.merges),
                                    vocab=args.vocab, merges=args.merges, lowercase=args.lowercase,
                                    special_tokens=specials)
        tokenizer.validate()
    options: dict = {}
    for key, value in parse_overrides(args.option):
        set_dotted(options, key, value)
    manifest = preprocess(args.processor, args.corpus, args.out, tokenizer=tokenizer, seq_length=args.seq_length,
                          workers=args.workers, options=options, corpus_format=args.format, seed=args.seed,
                          overwrite=args.overwrite, shard_bytes=max(1, int(args.shard_mb * (1 << 20))),
                          reader=ReaderOptions(text_field=args.text_field, split=args.split))
    print(summary(args.out, manifest), file=sys.stdout)
    return 0


def summary(out: str, manifest: dict) -> str:
    """One line: records, tokens, inputs, time, texts cut to seq_length, skips by reason, and what a resumed
    run reused."""
    counts = manifest["counts"]
    skipped = manifest["skipped"]
    line = (f"{out}: {counts['records']} records, {counts['tokens']} tokens from {counts['input_records']} "
            f"inputs in {manifest['seconds']:.2f} s")
    if "truncated" in counts:
        line += f"; truncated {counts['truncated']} to seq_length {manifest['processor']['seq_length']}"
    line += f"; skipped {skipped['count']}"
    if skipped["count"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped["by_reason"].items()))
        line += f" ({reasons}; every one in {out}/{skipped['all_in']})"
    if "resumed" in manifest:
        line += f"; resumed: reused {manifest['resumed']['shards']} complete shard(s) of an interrupted run"
    return line
