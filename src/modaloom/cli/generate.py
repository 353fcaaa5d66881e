"""`modaloom generate --model DIR --prompt TEXT` (or `--input F`): continue prompts with a model's lm head.

The model folder's ``tokenizer/`` encodes the prompts and decodes the output; the decoding itself is
``modaloom.generation.generate``. A folder whose ``config.json`` ``generation`` section holds
``prompt_prefix_ids`` / ``prompt_suffix_ids`` (a ``text2text`` model: its start and separator tokens) frames
every prompt with them, as the model was trained. With ``--input`` every line is a prompt and ``--out`` (JSONL, written
atomically) gets one record per line, in order; without ``--out`` the records go to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modaloom.errors import DataError

HELP = "generate text from prompts with a decoder-only or encoder-decoder model (greedy, sampling, beams)"


def _early_stopping(value: str) -> bool | str:
    choices = {"true": True, "false": False, "never": "never"}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"choose true, false or never, not {value!r}")
    return choices[value.lower()]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="modaloom model folder (with tokenizer/)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    source.add_argument("--input", help="text file, one prompt per line")
    parser.add_argument("--out", help="JSONL output, one record per prompt (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="new tokens per prompt at most")
    parser.add_argument("--min-new-tokens", type=int, default=0, help="eos is forbidden before this many")
    parser.add_argument("--num-beams", type=int, default=1, help="> 1: beam search")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score / length ** this")
    parser.add_argument("--early-stopping", type=_early_stopping, default=False, help="beam search: true, "
                        "false or never (as transformers)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of taking the best token")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k best tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample within this probability mass")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    parser.add_argument("--stop", action="append", default=[], help="stop a row once its text holds this "
                        "string (repeatable; greedy and sampling)")
    parser.add_argument("--seed", type=int, help="seed for sampling (reproducible runs)")
    parser.add_argument("--eos-id", type=int, help="end-of-sequence id (default: the tokenizer's eos)")
    parser.add_argument("--pad-id", type=int, help="pad id (default: the eos id)")
    parser.add_argument("--decoder-start-id", type=int, help="encoder-decoder: first decoder token (default: "
                        "config.json generation.decoder_start_token_id, eos for BART, else the pad id)")


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; an empty line is an error naming the file and line (outputs line up 1:1)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty prompt; remove the line or write a prompt on it")
    if not lines:
        raise DataError(f"{path} holds no prompts")
    return lines


def folder_defaults(model_dir: Path) -> dict[str, Any]:
    """Generation defaults saved beside the model: config.json's ``generation`` and ``interop`` sections."""
    data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    defaults = dict(data.get("generation") or {})
    defaults["model_type"] = (data.get("interop") or {}).get("model_type")
    return defaults


def generation_config(args: argparse.Namespace, model, tokenizer, defaults: dict[str, Any]):
    from modaloom.generation import GenerationConfig

    eos = args.eos_id if args.eos_id is not None else defaults.get("eos_token_id", tokenizer.optional_id("eos"))
    pad = args.pad_id if args.pad_id is not None else defaults.get("pad_token_id", tokenizer.optional_id("pad"))
    start = args.decoder_start_id
    if start is None and model.decoder is not None:
        start = defaults.get("decoder_start_token_id")
        if start is None:
            start = eos if defaults.get("model_type") == "bart" else pad
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, do_sample=args.do_sample,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, num_beams=args.num_beams, length_penalty=args.length_penalty,
        early_stopping=args.early_stopping, eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=start,
        stop_strings=list(args.stop), seed=args.seed)


def run(args: argparse.Namespace) -> int:
    import modaloom
    from modaloom.data.tokenizers import load_tokenizer_dir
    from modaloom.generation import generate
    from modaloom.tasks.base import write_jsonl

    model_dir = Path(args.model)
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    prompts = list(args.prompt) if args.prompt else read_prompts(Path(args.input))
    if args.prompt and any(not p.strip() for p in prompts):
        raise DataError("--prompt is empty; give some text")
    out = Path(args.out) if args.out else None
    if out is not None and args.input and out.resolve() == Path(args.input).resolve():
        raise DataError(f"--out {out} is the input file; choose another path")
    model = modaloom.load(model_dir, map_location=args.device)
    if not (model_dir / "tokenizer").is_dir():
        raise DataError(f"{model_dir} has no tokenizer/ folder; generate needs it to encode and decode text")
    tokenizer = load_tokenizer_dir(model_dir / "tokenizer")
    if tokenizer.vocab_size > model.config.embedding.vocab_size:
        raise DataError(f"{model_dir}/tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
                        f"only {model.config.embedding.vocab_size}: the tokenizer does not match the model")
    defaults = folder_defaults(model_dir)
    cfg = generation_config(args, model, tokenizer, defaults)
    hidden = set(cfg.eos_ids) | ({cfg.pad_token_id} if cfg.pad_token_id is not None else set())

    def text_of(ids: list[int]) -> str:
        return tokenizer.decode([i for i in ids if i not in hidden])

    records = []
    for first in range(0, len(prompts), args.batch_size):
        chunk = prompts[first:first + args.batch_size]
        frame = defaults.get("prompt_prefix_ids") or [], defaults.get("prompt_suffix_ids") or []
        encoded = [[*frame[0], *ids, *frame[1]] for ids in tokenizer.encode_batch(chunk)]
        result = generate(model, encoded, cfg, decode=text_of)
        for prompt, tokens in zip(chunk, result.token_lists()):
            records.append({"prompt": prompt, "text": text_of(tokens), "tokens": tokens})
    if out is None:
        print("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), end="")
        return 0
    write_jsonl(out, records)
    print(f"wrote {len(records)} records to {out}")
    return 0
