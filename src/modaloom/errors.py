"""Errors a user can act on. The CLI turns any ModaloomError into a one-line message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModaloomError(Exception):
    """Base class for errors caused by user input (configs, files, arguments), not by bugs."""


class ConfigError(ModaloomError):
    """A config file or option is invalid: unknown key, bad type, bad value, inconsistent sizes."""


class CheckpointError(ModaloomError):
    """A checkpoint does not match the model: missing or unexpected keys, shape mismatch."""


class DataError(ModaloomError):
    """Input data cannot be read or does not match what the config expects."""


def nearest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest valid choice, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def choices_text(choices: Iterable[str]) -> str:
    return ", ".join(sorted(str(c) for c in choices))
