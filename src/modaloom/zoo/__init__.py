"""The model zoo: config files shipped inside the package, each named ``family/size`` (``bert/base``).

Wherever a config path is accepted (``modaloom.config``, hence every ``--config``), an existing path wins;
otherwise the value may name a zoo entry (``bert/base``, ``bert/base.yaml`` or the checkout path
``configs/bert/base.yaml``). ``modaloom zoo`` lists the entries with their parameter counts and papers.
This module only touches the file system, so that resolving a name does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from modaloom.errors import ConfigError, choices_text, nearest

ZOO_DIR = Path(__file__).resolve().parent
SUFFIX = ".yaml"
CHECKOUT_PREFIX = "configs/"  # the zoo's folder at the root of a source checkout (a symlink to ZOO_DIR)


def zoo_names(family: str | None = None) -> list[str]:
    """Every zoo config as ``family/size``, sorted; only those of ``family`` when it is given."""
    names = sorted(p.relative_to(ZOO_DIR).with_suffix("").as_posix() for p in ZOO_DIR.glob(f"*/*{SUFFIX}"))
    return [n for n in names if family is None or n.split("/")[0] == family]


def zoo_families() -> list[str]:
    """The families (first part of the names), sorted."""
    return sorted({n.split("/")[0] for n in zoo_names()})


def _as_name(value: str) -> str:
    """``bert/base``, ``bert/base.yaml`` and ``configs/bert/base.yaml`` all mean ``bert/base``."""
    name = str(value).replace("\\", "/").strip()
    name = name.removeprefix("./").removeprefix(CHECKOUT_PREFIX)
    return name.removesuffix(SUFFIX)


def _unknown(value: str, what: str) -> ConfigError:
    """The error for a value that names nothing: the nearest names and how to list them all."""
    name = _as_name(value)
    family = name.split("/")[0]
    if family in zoo_families():
        sizes = [n.split("/", 1)[1] for n in zoo_names(family)]
        listing = f"zoo {family} configs: {choices_text(sizes)}"
    else:
        listing = f"zoo families: {choices_text(zoo_families())}"
    return ConfigError(
        f"config {str(value)!r} is {what}{nearest(name, zoo_names())}; {listing}; "
        f"`modaloom zoo` lists every zoo config"
    )


def zoo_path(name: str) -> Path:
    """The file of the zoo config ``name`` (``family/size``, ``.yaml`` optional); ConfigError if unknown."""
    key = _as_name(name)
    if key not in zoo_names():
        raise _unknown(name, "not a zoo config")
    return ZOO_DIR / f"{key}{SUFFIX}"


def resolve_config(value: str | Path) -> Path:
    """The file a config value means: an existing path always, else a zoo entry; ConfigError for neither."""
    path = Path(value)
    if path.exists():
        return path
    if _as_name(str(value)) in zoo_names():
        return zoo_path(str(value))
    raise _unknown(str(value), "neither an existing file nor a zoo config")
