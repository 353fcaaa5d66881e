"""docs/zoo.md's table is generated from the zoo configs (meta-device counts, model.paper)."""

from __future__ import annotations

import time
from pathlib import Path

from modaloom import docs_gen
from modaloom.zoo import zoo_names

ZOO_MD = Path(__file__).resolve().parents[2] / "docs" / "zoo.md"


def test_committed_zoo_table_matches_the_zoo():
    text = ZOO_MD.read_text(encoding="utf-8")
    started = time.perf_counter()
    table = docs_gen.zoo_table()
    elapsed = time.perf_counter() - started
    expected = docs_gen.replace_between(text, docs_gen.ZOO_START, docs_gen.ZOO_END, table, str(ZOO_MD))
    assert text == expected, f"docs/zoo.md's table is out of date: run `{docs_gen.REGENERATE}` to regenerate"
    assert elapsed < 120, f"counting the zoo on the meta device took {elapsed:.0f}s"


def test_every_zoo_config_is_in_the_table():
    text = ZOO_MD.read_text(encoding="utf-8")
    table = text.split(docs_gen.ZOO_START, 1)[1].split(docs_gen.ZOO_END, 1)[0]
    cells = [line.split("|")[1].strip() for line in table.strip().splitlines()[2:]]
    listed = set()
    for cell in cells:
        family, first = cell.split(", ")[0].split("/", 1)
        listed |= {f"{family}/{size}" for size in [first, *cell.split(", ")[1:]]}
    assert listed == set(zoo_names())
