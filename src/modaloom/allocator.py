"""The C allocator a ``modaloom`` command runs with: jemalloc (or tcmalloc, mimalloc) when installed.

A training step frees and reallocates the same large buffers many times. glibc's malloc keeps them in
fragmented heaps (a tiny BERT's pre-training peaks at ~830 MiB with it, ~455 MiB with jemalloc at the same
speed; ``benchmarks/vs_tencentpretrain.py`` measures both), and mapping each buffer on its own instead
(``train.mmap_threshold_mb``) costs a page fault per touched page. A different malloc must be loaded before
the process starts, so the command line re-runs itself once with the library in ``LD_PRELOAD``, as
PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) does.

``MODALOOM_ALLOCATOR`` chooses: ``auto`` (default: the first of jemalloc, tcmalloc, mimalloc found on the
system, else glibc's), ``system`` (never re-run), one of those names, or the path of a shared library.
Linux only; elsewhere the system allocator is kept.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

ENV_CHOICE = "MODALOOM_ALLOCATOR"
ENV_ACTIVE = "MODALOOM_ALLOCATOR_PRELOADED"  # set in the re-run process: never re-run twice
LIBRARIES = {"jemalloc": ("jemalloc",), "tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "mimalloc": ("mimalloc",)}
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4", "mimalloc": "libmimalloc2.0"}


def find_library(name: str) -> str | None:
    """The shared library (soname or path) of allocator ``name``, or None when it is not installed."""
    for stem in LIBRARIES[name]:
        found = ctypes.util.find_library(stem)
        if found:
            return found
    return None


def choose_library(choice: str) -> tuple[str | None, str]:
    """(library to preload or None, a warning for the user or "") for a ``MODALOOM_ALLOCATOR`` value."""
    choice = choice.strip() or "auto"
    if choice == "system":
        return None, ""
    if choice == "auto":
        return next((lib for lib in map(find_library, LIBRARIES) if lib), None), ""
    if choice in LIBRARIES:
        lib = find_library(choice)
        if lib is None:
            return None, (f"{ENV_CHOICE}={choice}: the library is not installed (Debian/Ubuntu: apt install "
                          f"{PACKAGES[choice]}); using the system allocator")
        return lib, ""
    if Path(choice).is_file():
        return choice, ""
    return None, (f"{ENV_CHOICE}={choice!r} is not one of auto, system, {', '.join(LIBRARIES)} or the path of "
                  "a shared library; using the system allocator")


def configured_library() -> str | None:
    """The library that ``MODALOOM_ALLOCATOR`` (default ``auto``) makes the ``modaloom`` command preload here."""
    return choose_library(os.environ.get(ENV_CHOICE, "auto"))[0]


def preload_allocator(environ: dict[str, str] | None = None) -> None:
    """Re-run this process with the chosen allocator preloaded (returns only when nothing is to be done).

    Called first thing by the ``modaloom`` command, before torch is imported; ``environ`` is os.environ.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or env.get(ENV_ACTIVE) or not getattr(sys, "orig_argv", None):
        return
    lib, warning = choose_library(env.get(ENV_CHOICE, "auto"))
    if warning:
        print(f"modaloom: warning: {warning}", file=sys.stderr)
    preloaded = env.get("LD_PRELOAD", "")
    if lib is None or any(stem in preloaded for stems in LIBRARIES.values() for stem in stems):
        return  # nothing to load, or the user preloaded an allocator already
    preload = " ".join(filter(None, [lib, preloaded]))
    child = {**env, "LD_PRELOAD": preload, ENV_ACTIVE: lib}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], child)
    except OSError as exc:  # keep running as we are
        print(f"modaloom: warning: cannot re-run with {lib} preloaded ({exc}); using the system allocator",
              file=sys.stderr)


def active_allocator() -> str:
    """The malloc this process runs with: jemalloc, tcmalloc, mimalloc, or "system" (from its mapped libraries)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "system"
    for name, stems in LIBRARIES.items():
        if any(f"lib{stem}." in maps or f"lib{stem}-" in maps for stem in stems):
            return name
    return "system"
