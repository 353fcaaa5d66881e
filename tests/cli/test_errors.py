"""Bad input and a hostile environment through the real CLI: one line on stderr, the right exit code."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modaloom
from modaloom import atomic
from modaloom.cli.main import main
from modaloom.data import storage
from tests.child_env import child_env
from tests.train.data_helpers import sentences, tiny_bert_config, write_dataset, write_vocab

SRC = Path(modaloom.__file__).resolve().parents[1]  # the subprocess runs the package under test


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def corpus(tmp_path: Path, lines: int = 40) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(sentences(lines)) + "\n", encoding="utf-8")
    return path


def preprocess(tmp_path: Path, out: Path, *extra: str) -> int:
    return main(["preprocess", "--processor", "lm", "--corpus", str(corpus(tmp_path)), "--vocab",
                 str(write_vocab(tmp_path / "vocab.txt")), "--out", str(out), "--seq-length", "16", *extra])


def raise_os_error(code: int, filename: str | None = None):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), *([filename] if filename else []))

    return fail


def test_disk_full_names_the_file_and_the_cause(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(atomic, "_fsync_file", raise_os_error(errno.ENOSPC))  # an atomic write fails
    assert preprocess(tmp_path, tmp_path / "ds") == 2
    err = one_line(capsys)
    assert err.startswith(f"modaloom preprocess: error: cannot write {tmp_path}/")  # the file, not a temp name
    assert err.rstrip().endswith(": No space left on device")
    assert not (tmp_path / "ds").exists()


def test_disk_full_without_a_file_name_names_the_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(storage._ShardWriter, "write", raise_os_error(errno.ENOSPC))
    out = tmp_path / "ds"
    assert preprocess(tmp_path, out) == 2
    assert one_line(capsys) == f"modaloom preprocess: error: cannot write under {out}: No space left on device\n"


def test_debug_shows_the_traceback_of_an_os_error(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_fsync_file", raise_os_error(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left"):
        preprocess(tmp_path, tmp_path / "ds", "--debug")


def test_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro" / "vocab.txt"

    def read_only_mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    assert main(["build-vocab", "--type", "wordpiece", "--corpus", str(corpus(tmp_path)), "--vocab-size", "50",
                 "--out", str(out)]) == 2
    err = one_line(capsys)
    assert err == f"modaloom build-vocab: error: cannot write {out.parent}: Read-only file system\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_permission_denied_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["build-vocab", "--type", "wordpiece", "--corpus", str(corpus(tmp_path)), "--vocab-size", "50",
                 "--out", str(locked / "vocab.txt")]) == 2
    assert "Permission denied" in one_line(capsys)


def test_out_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert preprocess(tmp_path, tmp_path / "file" / "ds") == 2
    err = one_line(capsys)
    assert err.startswith("modaloom preprocess: error: cannot ") and "Not a directory" in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf", "1e999"])
def test_non_finite_float_override_names_the_override(tmp_path, value, capsys):
    data = write_dataset(tmp_path / "data", processor="bert", documents=8)
    config = tiny_bert_config(tmp_path / "c.yaml")
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "o"),
                 f"train.lr={value}"]) == 2
    err = one_line(capsys)
    assert f"override train.lr={value} (config {config}): expected a finite number" in err
    assert not (tmp_path / "o" / "model").exists()


def test_override_error_points_at_the_override_not_the_file(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", processor="bert", documents=8)
    config = tiny_bert_config(tmp_path / "c.yaml")  # sets model.encoder.layers_num on some line
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "o"),
                 "model.encoder.layers_num=two"]) == 2
    err = one_line(capsys)
    assert f"override model.encoder.layers_num=two (config {config}): expected an integer" in err
    assert "c.yaml:" not in err  # no line of the file, which does not hold this value


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = child_env(tests=False, threads=None)
    return subprocess.Popen([sys.executable, "-m", "modaloom.cli.main", *args], env=env, text=True, **kwargs)


def test_closed_pipe_exits_quietly(tmp_path):
    data = write_dataset(tmp_path / "data", processor="bert", documents=300)
    proc = _cli("inspect", str(data), "--samples", "300", "--examples",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def _default_sigint() -> None:
    """In the child before exec: Python installs its Ctrl-C handler only over the default disposition, and
    a test runner started with ``&`` or ``nohup`` passes SIGINT on ignored (the run would then finish)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_with_workers_prints_one_line_and_exits_130(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(sentences(600_000)) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    proc = _cli("preprocess", "--processor", "lm", "--corpus", str(big), "--vocab",
                str(write_vocab(tmp_path / "vocab.txt")), "--out", str(out), "--workers", "2",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_default_sigint)
    first_shard = tmp_path / ".ds.partial" / "shard-00000"  # made when the first worker result is written
    deadline = time.monotonic() + 120
    while not first_shard.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "preprocess finished before it could be interrupted; use a bigger corpus"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "modaloom preprocess: interrupted\n"
    assert not out.exists() and not (tmp_path / ".ds.partial").exists()
    with pytest.raises(ProcessLookupError):  # the workers were stopped too: nothing is left in the group
        os.killpg(proc.pid, 0)
