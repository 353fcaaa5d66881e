"""Generated documentation: the config reference and the zoo table, rendered from the code itself.

``python -m modaloom.docs_gen`` rewrites docs/config-reference.md and the table between the
``<!-- zoo-table:start -->`` / ``<!-- zoo-table:end -->`` markers of docs/zoo.md; ``--check`` only compares
and exits 1 naming the stale files. tests/docs/ run the check, so the docs cannot drift from the schema.

A field's description is, in this order: the ``doc`` of its field metadata (``choice(..., doc=...)``), the
comment at the end of its line, or the comment lines directly above it, read from the dataclass's source.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from modaloom import registry

REGENERATE = "python -m modaloom.docs_gen"
ZOO_START, ZOO_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


# ---- field descriptions from the source
@functools.cache
def _source_comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment, or the comment block right above it, in ``cls``'s own body."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}  # line index -> comment text
    code_lines: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0] - 1] = tok.string.lstrip("#").strip()
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                code_lines.add(tok.start[0] - 1)
    except (tokenize.TokenError, IndentationError):
        return {}
    body_indent = None
    out: dict[str, str] = {}
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class "))
    for index, line in enumerate(lines[first + 1:], start=first + 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", '"""', "@")):
            continue
        indent = len(line) - len(line.lstrip())
        body_indent = indent if body_indent is None else body_indent
        match = re.match(r"(\w+)\s*:", stripped)
        if indent != body_indent or not match or stripped.startswith(("def ", "class ")):
            continue
        name = match.group(1)
        if index in comments and index in code_lines:
            out[name] = comments[index]
            continue
        above = []
        cursor = index - 1
        while cursor > 0 and cursor in comments and cursor not in code_lines:
            above.insert(0, comments[cursor])
            cursor -= 1
        if above:
            out[name] = " ".join(above)
    return out


def field_doc(cls: type, field: dataclasses.Field) -> str:
    """The description of ``field`` of dataclass ``cls`` ('' when it has none)."""
    doc = field.metadata.get("doc", "")
    if doc:
        return doc
    for owner in cls.__mro__:
        if field.name in owner.__dict__.get("__annotations__", {}):
            return _source_comments(owner).get(field.name, "")
    return ""


# ---- rendering values and types
def type_text(tp: Any) -> str:
    """A field's type in the words a config author needs: ``int``, ``list of str``, ``float or null``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_text(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list of {type_text(arg)}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A default as it would be written in a YAML/JSON config."""
    if dataclasses.is_dataclass(value):
        return "{...}"
    text = json.dumps(value, ensure_ascii=False, default=lambda v: "{...}")
    return text.replace('"{...}"', "{...}")


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_rows(cls: type) -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, choices, description) for each init field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = default_of(f)
        default_text = "required" if default is dataclasses.MISSING else value_text(default)
        choices = ", ".join(f"`{c}`" for c in f.metadata.get("choices", ()))
        yield f.name, type_text(hints[f.name]), default_text, choices, field_doc(cls, f)


def table(cls: type) -> str:
    rows = ["| key | type | default | choices | description |", "|---|---|---|---|---|"]
    for key, tp, default, choices, doc in field_rows(cls):
        rows.append(f"| `{key}` | {_cell(tp)} | `{_cell(default)}` | {_cell(choices)} | {_cell(doc)} |")
    return "\n".join(rows)


def _first_line(obj: Any) -> str:
    """The first line of ``obj``'s docstring, with reST double backticks as Markdown code."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].replace("``", "`") if doc.strip() else ""


# ---- what the reference covers
def _registered(kind: str) -> dict[str, type]:
    import modaloom.model  # noqa: F401  (registers every part)
    import modaloom.tasks  # noqa: F401  (registers every task)

    found = {name: registry.get(kind, name) for name in sorted(registry.names(kind))}
    # only the package's own: tests and user code may register toy parts in the same process
    return {name: cls for name, cls in found.items() if cls.__module__.startswith("modaloom.")}


def _options_groups(kind: str) -> tuple[list[tuple[list[str], type]], list[str]]:
    """Registered names of ``kind`` grouped by their ``Options`` class, and the names without options."""
    groups: dict[type, list[str]] = {}
    bare: list[str] = []
    for name, cls in _registered(kind).items():
        options = getattr(cls, "Options", None)
        if options is None or not dataclasses.fields(options):
            bare.append(name)
        else:
            groups.setdefault(options, []).append(name)
    return [(names, options) for options, names in groups.items()], bare


def documented_classes() -> list[tuple[str, type]]:
    """(section, dataclass) for every table the reference renders: what must have a description per field."""
    from modaloom.config import Config
    from modaloom.data.config import DataConfig, MaskingOptions
    from modaloom.model_config import EmbeddingConfig, ModelConfig, StackFields, TargetConfig
    from modaloom.train.config import InitFrom, LoraSettings, TrainConfig

    out: list[tuple[str, type]] = [("job config", Config), ("model", ModelConfig),
                                   ("model.embedding", EmbeddingConfig), ("model.encoder", StackFields),
                                   ("model.targets[]", TargetConfig), ("data", DataConfig),
                                   ("data.masking", MaskingOptions), ("train", TrainConfig),
                                   ("train.lora", LoraSettings), ("train.init_from[]", InitFrom)]
    for kind in ("embedding", "encoder", "decoder", "target", "loss", "task", "processor"):
        groups, _ = _options_groups(kind)
        out += [(f"{kind} {', '.join(names)}", options) for names, options in groups]
    return out


# ---- the reference
INTRO = f"""# Config reference

Generated from the config dataclasses by `{REGENERATE}`; do not edit by hand (tests/docs/ fail
when this file and the code differ). A job config has three sections, `model`, `data` and `train`; any key can be
set in a YAML/JSON file or overridden on the command line with its dotted path (`train.lr=3e-4`,
`model.encoder.layers_num=2`, `model.targets.0.labels_num=3`). Unknown keys, wrong types and values outside
the choices are errors naming the key and the valid choices.

A section holds the fields shared by its kind, plus the options of the parts it selects: an embedding has
the options of each part in `parts`, an encoder or decoder those of its `type`, a target those of its `type`
and, when it has a `loss` option, of that loss. Task options are given as `task.<key>=value` to
`modaloom finetune` / `predict` / `evaluate`; processor options as `--option KEY=VALUE` to
`modaloom preprocess`. See docs/architecture.md for how sections are composed.
"""


def _part_sections(kind: str, title: str, intro: str, path: str) -> list[str]:
    groups, bare = _options_groups(kind)
    out = [f"## {title}\n\n{intro}"]
    for names, options in groups:
        classes = _registered(kind)
        what = "\n".join(f"- `{n}`: {_first_line(classes[n])}" for n in names if _first_line(classes[n]))
        heading = ", ".join(f"`{n}`" for n in names)
        out.append(f"### {path} {heading}\n\n{what}\n\n{table(options)}".replace("\n\n\n", "\n\n"))
    if bare:
        out.append(f"Without options of their own: {', '.join(f'`{n}`' for n in bare)}.")
    return out


def config_reference() -> str:
    """The whole docs/config-reference.md."""
    from modaloom.data.config import DataConfig, MaskingOptions
    from modaloom.model_config import EmbeddingConfig, ModelConfig, StackFields, TargetConfig
    from modaloom.train.config import InitFrom, LoraSettings, TrainConfig

    parts = [INTRO]
    parts.append(f"## model\n\n{_first_line(ModelConfig)}\n\n{table(ModelConfig)}")
    parts.append(f"## model.embedding, model.tgt_embedding\n\n{_first_line(EmbeddingConfig)} "
                 f"Shared fields:\n\n{table(EmbeddingConfig)}")
    parts += _part_sections("embedding", "Embedding parts", "Options added by each part named in `parts`.",
                            "part")
    parts.append(f"## model.encoder, model.decoder\n\nShared fields (`type` picks the registered encoder or "
                 f"decoder):\n\n{table(StackFields)}")
    parts += _part_sections("encoder", "Encoder types", "Options added by `model.encoder.type`.", "encoder")
    parts += _part_sections("decoder", "Decoder types", "Options added by `model.decoder.type`.", "decoder")
    parts.append(f"## model.targets[]\n\n{_first_line(TargetConfig)}\n\n{table(TargetConfig)}")
    parts += _part_sections("target", "Target types", "Options added by `type` in `model.targets[]`.", "target")
    parts += _part_sections("loss", "Losses", "Options added by a target's `loss`.", "loss")
    parts.append(f"## data\n\n{_first_line(DataConfig)}\n\n{table(DataConfig)}")
    parts.append(f"### data.masking\n\n{_first_line(MaskingOptions)} Keys of `data.masking` override the "
                 f"dataset's; the same keys are the `masking.*` options of the text processors.\n\n"
                 f"{table(MaskingOptions)}")
    parts.append(f"## train\n\n{_first_line(TrainConfig)} The global batch of one optimizer step is "
                 f"`batch_size * grad_accum_steps * world_size` examples.\n\n{table(TrainConfig)}")
    parts.append(f"### train.lora\n\n{_first_line(LoraSettings)}\n\n{table(LoraSettings)}")
    parts.append(f"### train.init_from[]\n\n{_first_line(InitFrom)}\n\n{table(InitFrom)}")
    parts += _part_sections("task", "Task options", "`task.<key>=value` after `modaloom finetune --task NAME` "
                            "(recorded in the fine-tuned model and reused by predict / evaluate).", "task")
    parts += _part_sections("processor", "Processor options", "`--option KEY=VALUE` of "
                            "`modaloom preprocess --processor NAME` (nested keys dotted: "
                            "`masking.whole_word=true`).", "processor")
    return "\n\n".join(p.strip() for p in parts) + "\n"


# ---- the zoo table
def zoo_table() -> str:
    """docs/zoo.md's table: one row per family and paper, sizes by parameter count, counted on the meta device."""
    from modaloom.zoo.summary import format_count, zoo_entries

    rows: dict[tuple[str, str], list[tuple[str, int | None]]] = {}
    for entry in zoo_entries():
        family, size = entry.name.split("/", 1)
        rows.setdefault((family, entry.paper), []).append((size, entry.parameters))
    lines = ["| config | parameters | paper |", "|---|---|---|"]
    for (family, paper), sizes in rows.items():
        sizes.sort(key=lambda s: (s[1] is None, s[1] or 0))
        names = ", ".join(f"{family}/{sizes[0][0]}" if i == 0 else size for i, (size, _) in enumerate(sizes))
        counts = ", ".join(format_count(count) for _, count in sizes)
        lines.append(f"| {names} | {counts} | {_cell(paper)} |")
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, content: str, where: str) -> str:
    """``text`` with what lies between the ``start`` and ``end`` marker lines replaced by ``content``."""
    try:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
    except ValueError:
        raise ValueError(f"{where}: markers {start} ... {end} not found; add them around the table") from None
    return f"{head}{start}\n{content}\n{end}{tail}"


def generated(docs: Path) -> dict[Path, str]:
    """Each generated file under ``docs`` with the text it should have."""
    zoo = docs / "zoo.md"
    return {
        docs / "config-reference.md": config_reference(),
        zoo: replace_between(zoo.read_text(encoding="utf-8"), ZOO_START, ZOO_END, zoo_table(), str(zoo)),
    }


def stale(docs: Path) -> list[Path]:
    """The generated files under ``docs`` whose text differs from what the code renders now."""
    return [path for path, text in generated(docs).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="docs", help="the docs folder of a source checkout (default: docs)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 naming the stale files")
    args = parser.parse_args(argv)
    docs = Path(args.docs)
    if not (docs / "zoo.md").exists():
        parser.error(f"{docs}/zoo.md not found: run from the repository root or give --docs DIR")
    if args.check:
        old = stale(docs)
        for path in old:
            print(f"{path} is out of date: run `{REGENERATE}` to regenerate", file=sys.stderr)
        return 1 if old else 0
    for path, text in generated(docs).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
