"""`modaloom <verb>`: one entry point; each verb lives in its own module under modaloom.cli.

A verb module defines ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``. Every error a
user can meet prints one line, ``--debug`` shows the traceback instead:

- errors caused by user input (ModaloomError) and operating-system errors (disk full, read-only file
  system, permission denied, a path that is a file) exit with code 2, the latter naming the path and cause;
- Ctrl-C prints ``interrupted`` and exits with 130 (worker processes ignore SIGINT and are stopped by the
  main process);
- a closed output pipe (``modaloom inspect DIR | head``) exits quietly with 141, the status a shell reports
  for a command killed by SIGPIPE, so that ``set -o pipefail`` scripts see the truncation as usual.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from modaloom.allocator import preload_allocator
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
    "grow": "modaloom.cli.grow",
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


EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
EXIT_INTERRUPTED = 130  # 128 + SIGINT

WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def os_error_text(exc: OSError, output: str | None = None) -> str:
    """One line naming the path and the cause: ``cannot write /x/y: No space left on device``.

    A write error that names no file (a full disk seen by ``write``) names the command's ``output`` instead.
    """
    cause = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if not paths and output and exc.errno in WRITE_ERRNOS:
        paths = [f"under {output}"]
    if exc.errno in WRITE_ERRNOS:
        action = "cannot write"
    elif exc.errno in (errno.ENOENT,):
        action = "cannot find"
    else:
        action = "cannot access"
    return f"{action} {' -> '.join(paths)}: {cause}" if paths else f"{action}: {cause}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests): nothing to flush
        pass


# a verb's list of positionals (key=value overrides, demo stages), which may come before, between or after options
POSITIONAL_LISTS = ("overrides", "options", "stages")


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` that also takes positionals after options: ``pretrain a=1 --steps 5 b=2``.

    argparse stops filling a ``nargs="*"`` positional at the first option and rejects later positionals as
    unrecognized; those are appended to the verb's list here, in order. Unknown options still fail as usual.
    """
    args, extra = parser.parse_known_args(argv)
    dest = next((name for name in POSITIONAL_LISTS if isinstance(getattr(args, name, None), list)), None)
    stray = [token for token in extra if dest is None or token.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if dest is not None:
        getattr(args, dest).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    """The ``modaloom`` command; ``argv`` None reads sys.argv and may first re-run with a faster malloc."""
    if argv is None:
        preload_allocator()
    parser = build_parser()
    args = parse_command_line(parser, argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USER_ERROR
    prefix = f"modaloom {args.verb}"
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ModaloomError as exc:
        if args.debug:
            raise
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        if args.debug:
            raise
        output = getattr(args, "out", None) or getattr(args, "dst", None)
        print(f"{prefix}: error: {os_error_text(exc, output)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
