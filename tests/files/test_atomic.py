"""Atomic files and folders: a failure at any step leaves the old content or the new, never less."""

import os
from pathlib import Path

import pytest

from modaloom import atomic
from modaloom.atomic import (
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    recover_stale,
    replace_directory,
    swap_directory,
)
from modaloom.errors import ModaloomError

OLD = {"model.bin": "old weights", "config.json": "old config", "tokenizer/vocab.txt": "a\nb\n", "notes.md": "mine"}
NEW = {"model.bin": "new weights", "config.json": "new config"}
CARRIED = {k: v for k, v in OLD.items() if k not in NEW}  # files other tools put beside the model


def make_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def write_new(directory: Path) -> None:
    with replace_directory(directory) as tmp:
        make_tree(tmp, NEW)


def assert_old_or_new(directory: Path) -> None:
    assert tree(directory) in (OLD, {**CARRIED, **NEW})


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


class FailingReplace:
    """``os.replace`` that fails from call number ``fail_at`` on (``times`` calls; 0 = for good)."""

    def __init__(self, fail_at: int, times: int = 1):
        self.fail_at, self.times, self.calls = fail_at, times, 0
        self.real = os.replace

    def __call__(self, src, dst):
        self.calls += 1
        failing = self.calls >= self.fail_at and (self.times == 0 or self.calls < self.fail_at + self.times)
        if failing:
            raise OSError(f"simulated crash at os.replace #{self.calls}")
        return self.real(src, dst)


# ---------------------------------------------------------------- files


def test_atomic_writers_replace_content(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"name": "äö", "n": 1})
    assert path.read_text(encoding="utf-8") == '{\n  "name": "äö",\n  "n": 1\n}\n'
    atomic_write_text(path, "text")
    assert path.read_text() == "text"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["f.json"]


def test_exception_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_file(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_failed_rename_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")
    monkeypatch.setattr(atomic.os, "replace", FailingReplace(1))
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_os_error_without_a_file_name_names_the_target(tmp_path):
    path = tmp_path / "f.txt"
    with pytest.raises(OSError) as err, atomic_file(path):
        raise OSError(28, "No space left on device")  # what write() says on a full disk
    assert err.value.errno == 28 and err.value.filename == str(path)
    assert leftovers(tmp_path) == []


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(FileNotFoundError, match="produced no file"), atomic_file(path):
        pass
    assert path.read_text() == "old"


def test_temp_name_keeps_the_suffix_and_is_hidden(tmp_path):
    with atomic_file(tmp_path / "curves.png") as tmp:
        assert tmp.suffix == ".png" and tmp.name.startswith(".") and tmp.parent == tmp_path
        tmp.write_bytes(b"png")


# ---------------------------------------------------------------- folders


def test_replace_directory_keeps_files_other_tools_put_there(tmp_path):
    target = tmp_path / "m"
    make_tree(target, OLD)
    write_new(target)
    assert tree(target) == {**CARRIED, **NEW}
    assert leftovers(tmp_path) == []


def test_replace_directory_without_keep_existing_holds_only_the_new_files(tmp_path):
    target = tmp_path / "m"
    make_tree(target, OLD)
    with replace_directory(target, keep_existing=False) as tmp:
        make_tree(tmp, NEW)
    assert tree(target) == NEW
    assert leftovers(tmp_path) == []


def test_new_folder_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_new(tmp_path / "m")
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~umask


def test_stale_old_folder_does_not_cost_user_files(tmp_path):
    """The reported bug: the second rename failed on a stale ``.m.old`` and the carried-over files were deleted."""
    target = tmp_path / "m"
    make_tree(target, OLD)
    stale = tmp_path / ".m.old"
    make_tree(stale, {"model.bin": "older weights"})
    with pytest.raises(ModaloomError, match=r"\.m\.old"):
        write_new(target)
    assert tree(target) == OLD
    assert tree(stale) == {"model.bin": "older weights"}
    assert leftovers(tmp_path) == [".m.old"]


def test_stale_old_folder_is_put_back_when_the_target_is_missing(tmp_path):
    target = tmp_path / "m"
    make_tree(tmp_path / ".m.old", OLD)  # a crash between the two renames
    write_new(target)
    assert tree(target) == {**CARRIED, **NEW}
    assert leftovers(tmp_path) == []


def test_stale_temp_folder_of_an_earlier_crash_is_left_alone(tmp_path):
    target = tmp_path / "m"
    make_tree(target, OLD)
    stale = tmp_path / ".m.0badc0de.tmp"
    make_tree(stale, {"model.bin": "half"})
    write_new(target)
    assert tree(target) == {**CARRIED, **NEW}
    assert tree(stale) == {"model.bin": "half"}


def test_exception_while_writing_leaves_the_old_folder(tmp_path):
    target = tmp_path / "m"
    make_tree(target, OLD)
    with pytest.raises(RuntimeError), replace_directory(target) as tmp:
        (tmp / "model.bin").write_text("half")
        raise RuntimeError("writer died")
    assert tree(target) == OLD
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 2])
def test_failed_rename_at_each_step_keeps_a_complete_folder(tmp_path, monkeypatch, fail_at):
    """One rename fails (the handlers still run): the target is the old or the new content, nothing extra."""
    target = tmp_path / "m"
    make_tree(target, OLD)
    replace = FailingReplace(fail_at)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        write_new(target)
    assert replace.calls >= fail_at
    assert tree(target) == OLD
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 2])
def test_crash_at_each_step_is_repaired_by_the_next_write(tmp_path, monkeypatch, fail_at):
    """Every rename from ``fail_at`` on fails, as if the process died there; nothing the user had is lost."""
    target = tmp_path / "m"
    make_tree(target, OLD)
    monkeypatch.setattr(atomic.os, "replace", FailingReplace(fail_at, times=0))
    with pytest.raises((OSError, ModaloomError), match="simulated crash"):
        write_new(target)
    monkeypatch.undo()
    recover_stale(target)
    assert_old_or_new(target)
    write_new(target)
    assert tree(target) == {**CARRIED, **NEW}
    assert leftovers(tmp_path) == []


def test_crash_before_the_old_folder_is_removed_is_refused_then_clear(tmp_path, monkeypatch):
    target = tmp_path / "m"
    make_tree(target, OLD)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)  # died before removing .m.old
    write_new(target)
    monkeypatch.undo()
    assert tree(target) == {**CARRIED, **NEW}
    assert tree(tmp_path / ".m.old") == OLD
    with pytest.raises(ModaloomError, match=r"\.m\.old.*remove it"):
        write_new(target)
    assert tree(target) == {**CARRIED, **NEW}


def test_swap_directory_publishes_and_refuses_a_file_target(tmp_path):
    new = tmp_path / "new"
    make_tree(new, NEW)
    swap_directory(new, tmp_path / "d")
    assert tree(tmp_path / "d") == NEW and not new.exists()
    (tmp_path / "f").write_text("a file")
    make_tree(new, NEW)
    with pytest.raises(ModaloomError, match="not a directory"):
        swap_directory(new, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "a file"


def test_carried_over_files_are_links_not_moves(tmp_path):
    """The old folder stays whole until the swap: carried files are linked (or copied), never moved."""
    target = tmp_path / "m"
    make_tree(target, OLD)
    with replace_directory(target) as tmp:
        make_tree(tmp, NEW)
        snapshot = tree(target)
    assert snapshot == OLD
    assert tree(target) == {**CARRIED, **NEW}


def test_carried_over_files_are_copied_where_links_are_unsupported(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError("links not supported here")

    target = tmp_path / "m"
    make_tree(target, OLD)
    monkeypatch.setattr(atomic.os, "link", no_links)
    write_new(target)
    assert tree(target) == {**CARRIED, **NEW}
