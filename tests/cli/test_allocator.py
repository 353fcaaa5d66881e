"""``modaloom.allocator``: the command re-runs itself once with jemalloc (or tcmalloc, mimalloc) preloaded,
as MODALOOM_ALLOCATOR chooses, and says what it could not do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modaloom import allocator
from modaloom.train.memory import release_free_memory
from tests.child_env import child_env

SRC = Path(__file__).resolve().parents[2] / "src"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")


@pytest.fixture
def fake_libraries(monkeypatch):
    """jemalloc missing, tcmalloc 'installed' as libfake_tc.so, mimalloc missing."""
    found = {"tcmalloc_minimal": "libfake_tc.so"}
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda stem: found.get(stem))


def test_configured_library_follows_the_environment(fake_libraries, monkeypatch):
    monkeypatch.delenv(allocator.ENV_CHOICE, raising=False)
    assert allocator.configured_library() == "libfake_tc.so"
    monkeypatch.setenv(allocator.ENV_CHOICE, "system")
    assert allocator.configured_library() is None


def test_choices(fake_libraries, tmp_path):
    assert allocator.choose_library("system") == (None, "")
    assert allocator.choose_library("auto") == ("libfake_tc.so", "")  # the first one installed
    assert allocator.choose_library("tcmalloc") == ("libfake_tc.so", "")
    lib, warning = allocator.choose_library("jemalloc")
    assert lib is None and "apt install libjemalloc2" in warning
    lib, warning = allocator.choose_library("jemaloc")
    assert lib is None and "'jemaloc'" in warning and "auto, system, jemalloc, tcmalloc, mimalloc" in warning
    path = tmp_path / "libmine.so"
    path.write_bytes(b"")
    assert allocator.choose_library(str(path)) == (str(path), "")


@linux_only
def test_re_runs_once_with_the_library_preloaded(fake_libraries, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.setattr(allocator.sys, "orig_argv", ["python3", "-m", "modaloom", "pretrain", "--steps", "5"])
    allocator.preload_allocator({"LD_PRELOAD": "libother.so", "HOME": "/h"})
    exe, argv, env = calls.pop()
    assert exe == sys.executable and argv == [sys.executable, "-m", "modaloom", "pretrain", "--steps", "5"]
    assert env["LD_PRELOAD"] == "libfake_tc.so libother.so" and env["HOME"] == "/h"
    assert env[allocator.ENV_ACTIVE] == "libfake_tc.so"
    for environ in ({allocator.ENV_ACTIVE: "libfake_tc.so"},  # already the re-run process
                    {allocator.ENV_CHOICE: "system"},
                    {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}):  # the user preloaded one already
        allocator.preload_allocator(environ)
    assert calls == []


@linux_only
def test_a_missing_library_warns_and_runs_on(fake_libraries, monkeypatch, capsys):
    monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail("must not re-run"))
    allocator.preload_allocator({allocator.ENV_CHOICE: "mimalloc"})
    assert "apt install libmimalloc2.0" in capsys.readouterr().err


def run_module(code: str, **env: str) -> str:
    full = child_env(tests=False, threads=None, **env)
    full.pop(allocator.ENV_ACTIVE, None)
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@linux_only
def test_the_command_runs_with_an_installed_allocator():
    lib = next((lib for lib in map(allocator.find_library, allocator.LIBRARIES) if lib), None)
    if lib is None:
        pytest.skip("no jemalloc, tcmalloc or mimalloc installed")
    code = ("import sys; from modaloom.cli.main import main; sys.argv = ['modaloom', 'zoo']; "
            "import modaloom.allocator as a; sys.orig_argv = [sys.executable, '-c', "
            "'from modaloom.allocator import active_allocator; print(active_allocator())']; main()")
    assert run_module(code) in allocator.LIBRARIES  # re-run with the library, which it then reports
    assert run_module(code, MODALOOM_ALLOCATOR="system").splitlines()[0].startswith("config")  # ran `zoo` as is
    assert run_module("from modaloom.allocator import active_allocator; print(active_allocator())") == "system"


@linux_only
def test_release_free_memory_names_the_allocator():
    assert release_free_memory() in ("glibc", "jemalloc", "tcmalloc", "mimalloc", None)
    if os.confstr("CS_GNU_LIBC_VERSION") and allocator.active_allocator() == "system":
        assert release_free_memory() == "glibc"
