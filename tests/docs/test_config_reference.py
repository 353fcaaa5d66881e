"""docs/config-reference.md is generated from the config dataclasses and must match them."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from modaloom import docs_gen
from modaloom.config_schema import choice

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_reference_matches_the_code():
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert committed == docs_gen.config_reference(), (
        f"docs/config-reference.md is out of date: run `{docs_gen.REGENERATE}` to regenerate")


def test_every_config_field_has_a_description():
    # processor options (modaloom preprocess --option) are rendered too but not yet all described
    missing = [f"{section}: {cls.__module__}.{cls.__qualname__}.{key}"
               for section, cls in docs_gen.documented_classes() if not section.startswith("processor ")
               for key, *_, doc in docs_gen.field_rows(cls) if not doc]
    assert not missing, "fields without a description (add a comment or choice(doc=...)):\n" + "\n".join(missing)


def test_reference_covers_every_section_and_registered_part():
    text = docs_gen.config_reference()
    for heading in ("## model", "## data", "### data.masking", "## train", "### train.lora",
                    "### encoder `transformer`", "### target `clr`", "### loss `siglip`", "### task `qa`"):
        assert f"\n{heading}" in text, heading
    assert "| `heads_num` | int | `12` |" in text
    assert "`adamw`, `adafactor`, `sgd`" in text


@dataclass
class _Toy:
    inline: int = 1  # said at the end of the line
    # said above,
    # over two lines
    above: str = "x"
    chosen: str = choice("a", "a", "b", doc="said by the choice")
    bare: bool = False
    listed: list[int] = dataclasses.field(default_factory=lambda: [1, 2])


def test_field_descriptions_come_from_metadata_then_comments():
    docs = {f.name: docs_gen.field_doc(_Toy, f) for f in dataclasses.fields(_Toy)}
    assert docs == {"inline": "said at the end of the line", "above": "said above, over two lines",
                    "chosen": "said by the choice", "bare": "", "listed": ""}
    rows = {row[0]: row for row in docs_gen.field_rows(_Toy)}
    assert rows["chosen"][1:4] == ("str", '"a"', "`a`, `b`")
    assert rows["listed"][1:3] == ("list of int", "[1, 2]")


def test_inherited_fields_take_the_description_of_the_class_that_declares_them():
    @dataclass
    class Child(_Toy):
        extra: float = 0.5  # the child's own

    docs = {f.name: docs_gen.field_doc(Child, f) for f in dataclasses.fields(Child)}
    assert docs["inline"] == "said at the end of the line" and docs["extra"] == "the child's own"


def test_check_names_the_stale_file_and_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docs_gen, "zoo_table", lambda: "| config |")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zoo.md").write_text(f"x\n{docs_gen.ZOO_START}\n| config |\n{docs_gen.ZOO_END}\ny\n")
    shutil.copy(DOCS / "config-reference.md", docs / "config-reference.md")
    (docs / "config-reference.md").write_text("# edited by hand\n")
    assert docs_gen.main(["--check", "--docs", str(docs)]) == 1
    err = capsys.readouterr().err
    assert "config-reference.md is out of date: run `python -m modaloom.docs_gen` to regenerate" in err
    assert "zoo.md" not in err
    assert docs_gen.main(["--docs", str(docs)]) == 0
    assert docs_gen.main(["--check", "--docs", str(docs)]) == 0


def test_missing_markers_are_named():
    with pytest.raises(ValueError, match="zoo.md: markers .* not found"):
        docs_gen.replace_between("no markers here", docs_gen.ZOO_START, docs_gen.ZOO_END, "t", "zoo.md")
