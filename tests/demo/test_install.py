"""Installing what the demo needs: pip and apt-get are replaced by fakes, nothing is really installed."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from modaloom.demo import install
from modaloom.errors import DataError


class FakeRun:
    """Stands in for subprocess.run: records argv and env, returns the next exit code, can run a side effect."""

    def __init__(self, codes=(0,), effect=None):
        self.calls: list[list[str]] = []
        self.envs: list[dict | None] = []
        self.codes, self.effect = list(codes), effect

    def __call__(self, argv, env=None, **_):
        self.calls.append(list(argv))
        self.envs.append(env)
        code = self.codes.pop(0) if self.codes else 0
        if code == 0 and self.effect:
            self.effect(argv)
        return subprocess.CompletedProcess(argv, code)


def test_python_package_present_runs_nothing(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(install.subprocess, "run", fake)
    assert install.ensure_python_package("pyyaml==6.0.3", "yaml").__name__ == "yaml"
    assert fake.calls == []


def test_python_package_missing_is_pip_installed_into_this_interpreter(monkeypatch):
    name = "modaloom_fake_corpus_pkg"
    fake = FakeRun(effect=lambda argv: monkeypatch.setitem(sys.modules, name, types.ModuleType(name)))
    monkeypatch.setattr(install.subprocess, "run", fake)
    module = install.ensure_python_package("fake-corpus==1.0", name, no_deps=True)
    assert module.__name__ == name
    assert fake.calls == [[sys.executable, "-m", "pip", "install", "-q", "fake-corpus==1.0", "--no-deps"]]


def test_python_package_pip_failure_names_the_command(monkeypatch):
    monkeypatch.setattr(install.subprocess, "run", FakeRun(codes=[1]))
    with pytest.raises(DataError, match=r"could not install fake-corpus==1.0 .*pip install fake-corpus==1.0`"):
        install.ensure_python_package("fake-corpus==1.0", "modaloom_fake_corpus_pkg")


def test_python_package_still_missing_after_pip_is_an_error(monkeypatch):
    monkeypatch.setattr(install.subprocess, "run", FakeRun())
    with pytest.raises(DataError, match="still fails"):
        install.ensure_python_package("other-name", "modaloom_fake_corpus_pkg")


def test_probe_is_a_path_or_a_binary_name(tmp_path):
    assert install.probe_present(tmp_path)
    assert not install.probe_present(tmp_path / "absent")
    assert not install.probe_present(str(tmp_path / "absent"))
    assert install.probe_present(Path(sys.executable).name) or install.probe_present("sh")
    assert not install.probe_present("modaloom-no-such-binary")


def root_with_apt(monkeypatch, root: bool, apt: bool) -> None:
    monkeypatch.setattr(install, "is_root", lambda: root)
    real_which = install.shutil.which
    monkeypatch.setattr(install.shutil, "which",
                        lambda name: ("/usr/bin/apt-get" if apt else None) if name == "apt-get" else real_which(name))


def test_debian_package_present_runs_nothing(monkeypatch, tmp_path):
    fake = FakeRun()
    monkeypatch.setattr(install.subprocess, "run", fake)
    root_with_apt(monkeypatch, True, True)
    install.ensure_debian_package("dataset-fashion-mnist", tmp_path)
    assert fake.calls == []


def test_debian_package_not_root_names_sudo_apt_get(monkeypatch, tmp_path):
    fake = FakeRun()
    monkeypatch.setattr(install.subprocess, "run", fake)
    root_with_apt(monkeypatch, False, True)
    with pytest.raises(DataError, match="`sudo apt-get install espeak-ng`"):
        install.ensure_debian_package("espeak-ng", "modaloom-no-such-binary")
    assert fake.calls == []
    root_with_apt(monkeypatch, True, False)
    with pytest.raises(DataError, match=r"\(Debian package espeak-ng\) is missing; install it with your system's package manager"):
        install.ensure_debian_package("espeak-ng", "modaloom-no-such-binary")


def test_debian_package_as_root_is_installed_with_apt_get(monkeypatch, tmp_path, capsys):
    probe = tmp_path / "fashion-mnist"
    fake = FakeRun(effect=lambda argv: probe.mkdir() if argv[1] == "install" else None)
    monkeypatch.setattr(install.subprocess, "run", fake)
    root_with_apt(monkeypatch, True, True)
    install.ensure_debian_package("dataset-fashion-mnist", probe)
    assert fake.calls == [["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]]
    assert fake.envs[0]["DEBIAN_FRONTEND"] == "noninteractive"
    assert "$ apt-get install -y -q dataset-fashion-mnist" in capsys.readouterr().err


def test_debian_package_retries_after_apt_get_update(monkeypatch, tmp_path):
    probe = tmp_path / "fashion-mnist"
    fake = FakeRun(codes=[100, 0, 0], effect=lambda argv: probe.mkdir() if argv[1] == "install" else None)
    monkeypatch.setattr(install.subprocess, "run", fake)
    root_with_apt(monkeypatch, True, True)
    install.ensure_debian_package("dataset-fashion-mnist", probe)
    assert [call[1] for call in fake.calls] == ["install", "update", "install"]


def test_debian_package_failures_are_clear(monkeypatch, tmp_path):
    root_with_apt(monkeypatch, True, True)
    monkeypatch.setattr(install.subprocess, "run", FakeRun(codes=[100, 0, 100]))
    with pytest.raises(DataError, match=r"apt-get could not install nope \(exit 100\)"):
        install.ensure_debian_package("nope", tmp_path / "absent")
    monkeypatch.setattr(install.subprocess, "run", FakeRun())
    with pytest.raises(DataError, match="installed nope but .* is still missing"):
        install.ensure_debian_package("nope", tmp_path / "absent")


def test_python_package_without_loading_checks_only_that_it_is_installed(monkeypatch):
    name = "modaloom_fake_data_pkg"
    installed: list[str] = []
    fake = FakeRun(effect=lambda argv: installed.append(name))
    monkeypatch.setattr(install.subprocess, "run", fake)
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda n: object() if n in installed else None)
    assert install.ensure_python_package("fake-data==1.0", name, no_deps=True, load=False) is None
    assert len(fake.calls) == 1  # installed once; its modules were never imported
    assert name not in sys.modules


def test_the_allocator_is_offered_never_required(monkeypatch, capsys):
    import modaloom.allocator as allocator

    installed: list[str] = []
    monkeypatch.setattr(allocator.ctypes.util, "find_library",
                        lambda stem: "libjemalloc.so.2" if installed and stem == "jemalloc" else None)
    fake = FakeRun(codes=[100, 0, 0], effect=lambda argv: installed.append(argv[-1]) if argv[1] == "install" else None)
    monkeypatch.setattr(install.subprocess, "run", fake)
    root_with_apt(monkeypatch, False, True)
    assert install.offer_allocator() is None and fake.calls == []  # not root: a note, nothing run
    assert "apt-get install libjemalloc2" in capsys.readouterr().err
    root_with_apt(monkeypatch, True, True)
    assert install.offer_allocator() == "libjemalloc.so.2"
    assert [call[1] for call in fake.calls] == ["install", "update", "install"]
    assert install.offer_allocator() == "libjemalloc.so.2" and len(fake.calls) == 3  # present: nothing more
    installed.clear()
    failing = FakeRun(codes=[100, 100])
    monkeypatch.setattr(install.subprocess, "run", failing)
    assert install.offer_allocator() is None  # apt-get failed: the demo goes on with the system's malloc
    assert "system's malloc" in capsys.readouterr().err
