"""`modaloom inspect DIR`: what a dataset (or, later, model) directory holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from modaloom.errors import DataError

HELP = "print a dataset directory's manifest, counts and a few decoded samples"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="dataset directory (written by modaloom preprocess)")
    parser.add_argument("--samples", type=int, default=3, help="how many records to decode")
    parser.add_argument("--examples", action="store_true", help="also show load-time examples (masked etc.)")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if (path / "manifest.json").exists():
        return inspect_dataset(path, args.samples, args.examples)
    if (path / "config.json").exists():
        raise DataError(f"{path} looks like a model directory; inspecting models is not supported yet")
    raise DataError(f"{path} is neither a dataset directory (no manifest.json) nor a model directory")


def _show(value: np.ndarray, tokenizer: Any, is_ids: bool) -> str:
    if value.ndim == 0:
        return str(value.item())
    if is_ids and tokenizer is not None:
        ids = [int(i) for i in value if 0 <= int(i) < tokenizer.vocab_size]
        return f"[{len(value)}] {tokenizer.decode(ids)[:300]}"
    return f"[{len(value)}] {value[:24].tolist()}{' ...' if len(value) > 24 else ''}"


def inspect_dataset(path: Path, samples: int, examples: bool) -> int:
    from modaloom.data.processors.base import processor_from_dataset
    from modaloom.data.storage import open_dataset

    dataset = open_dataset(path)
    manifest = dict(dataset.manifest)
    skipped = manifest.pop("skipped", {})
    shards = manifest.pop("shards", [])
    print(json.dumps(manifest, ensure_ascii=False, indent=2))
    print(f"shards: {len(shards)}; records: {len(dataset)}")
    print(f"skipped: {skipped.get('count', 0)} {json.dumps(skipped.get('by_reason', {}), ensure_ascii=False)}")
    for row in skipped.get("first", [])[:5]:
        print(f"  {row['file']}:{row['line']}: {row['reason']}")
    processor = processor_from_dataset(dataset)
    tokenizer = processor.tokenizer
    id_fields = {n for n, s in dataset.fields.items() if n.endswith("ids") and s.kind == "sequence"}
    rng = np.random.default_rng(0)
    for index in range(min(samples, len(dataset))):
        record = dataset[index]
        print(f"--- record {index}")
        for name, value in record.items():
            print(f"  {name}: {_show(np.asarray(value), tokenizer, name in id_fields)}")
        if examples:
            for key, value in processor.make_example(record, rng).items():
                print(f"  > {key}: {_show(np.asarray(value), tokenizer, key.endswith('input_ids'))}")
    return 0
