"""`modaloom <verb>`: one entry point; each verb lives in its own module under modaloom.cli.

A verb module defines ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``. Errors caused by
user input (ModaloomError) print one line and exit with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from modaloom.errors import ModaloomError

VERBS: dict[str, str] = {
    "preprocess": "modaloom.cli.preprocess",
    "pretrain": "modaloom.cli.pretrain",
    "finetune": "modaloom.cli.finetune",
    "predict": "modaloom.cli.predict",
    "evaluate": "modaloom.cli.evaluate",
    "generate": "modaloom.cli.generate",
    "features": "modaloom.cli.features",
    "convert": "modaloom.cli.convert",
    "build-vocab": "modaloom.cli.build_vocab",
    "inspect": "modaloom.cli.inspect",
    "demo": "modaloom.cli.demo",
    "zoo": "modaloom.cli.zoo",
}


def available_verbs() -> dict[str, object]:
    """Verb name -> imported module, for the verbs that exist in this installation."""
    out = {}
    for verb, module_name in VERBS.items():
        try:
            out[verb] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modaloom",
        description="Pre-train, fine-tune, evaluate and convert models composed of embedding, encoder, "
        "target embedding, decoder and target.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in available_verbs().items():
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ModaloomError as exc:
        if args.debug:
            raise
        print(f"modaloom {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modaloom {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
