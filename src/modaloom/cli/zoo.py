"""`modaloom zoo`: the configs shipped with the package, with parameter counts and papers.

Any listed name works as ``--config NAME`` (e.g. ``--config bert/base``). Counts are computed on the meta
device, so listing allocates no weights.
"""

from __future__ import annotations

import argparse
import json

from modaloom.errors import ConfigError, choices_text, nearest

HELP = "list the zoo configs (usable as --config NAME) with parameter counts and papers"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this family's configs, e.g. bert")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {name, paper, parameters, path}")


def run(args: argparse.Namespace) -> int:
    from modaloom.zoo import zoo_families
    from modaloom.zoo.summary import format_count, zoo_entries

    if args.family is not None and args.family not in zoo_families():
        raise ConfigError(
            f"--family {args.family!r} is not a zoo family{nearest(args.family, zoo_families())}; "
            f"families: {choices_text(zoo_families())}"
        )
    entries = zoo_entries(args.family)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], ensure_ascii=False, indent=2))
        return 0
    width = max(len("config"), *(len(e.name) for e in entries))
    print(f"{'config':<{width}}  {'parameters':>10}  paper")
    for e in entries:
        print(f"{e.name:<{width}}  {format_count(e.parameters):>10}  {e.paper}")
    print(f"\n{len(entries)} configs; use one as `--config NAME`, e.g. --config {entries[0].name}")
    return 0
