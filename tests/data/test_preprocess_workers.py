"""Worker processes and Ctrl-C: a flag checked at defined points, never lost in a finalizer; worker failures named."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal

import pytest

from modaloom.data import preprocess as preprocess_module
from modaloom.data.config import TokenizerConfig
from modaloom.data.preprocess import Interrupts, preprocess
from modaloom.data.processors.bert import BertProcessor
from modaloom.errors import DataError
from tests.data.text_fixtures import write_documents, write_vocab


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own Ctrl-C handler during each test, as in an interactive shell: a test runner started with
    `&` or under `nohup` inherits SIGINT ignored, and Interrupts rightly leaves an ignored SIGINT alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_first_ctrl_c_sets_the_flag_second_raises_and_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as interrupts:
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: no KeyboardInterrupt here
        assert interrupts.requested
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # let the handler run
                pass
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Interrupts() as interrupts:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not interrupts.requested
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_during_the_run_stops_it_and_leaves_no_dataset(tmp_path, monkeypatch, workers):
    corpus = write_documents(tmp_path / "docs.txt", documents=40)
    original = preprocess_module._results

    def interrupted_after_first(*args, **kwargs):
        for index, item in enumerate(original(*args, **kwargs)):
            if index == 0:
                os.kill(os.getpid(), signal.SIGINT)  # arrives while the main process writes chunk 0
            yield item

    monkeypatch.setattr(preprocess_module, "_results", interrupted_after_first)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        preprocess("bert", [corpus], out, tokenizer=TokenizerConfig(type="wordpiece", vocab=str(write_vocab(tmp_path))),
                   seq_length=32, workers=workers, chunk_records=4)
    assert not out.exists() and not (tmp_path / ".ds.partial").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_is_unblocked_in_the_main_process_after_the_pool_starts(tmp_path):
    corpus = write_documents(tmp_path / "docs.txt", documents=20)
    preprocess("bert", [corpus], tmp_path / "ds", workers=2, chunk_records=4, seq_length=32,
               tokenizer=TokenizerConfig(type="wordpiece", vocab=str(write_vocab(tmp_path))))
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def _failing_chunk(how: str):
    original = BertProcessor.process_chunk

    def process_chunk(self, records, index):
        if index == 2:
            if how == "die":
                os._exit(9)  # as when the kernel kills a worker that is out of memory
            raise DataError(f"bad chunk {index}")
        return original(self, records, index)

    return process_chunk


@pytest.mark.parametrize(("how", "message"), [("raise", "bad chunk 2"), ("die", "stopped (exit code 9")])
def test_a_worker_error_or_death_is_raised_in_the_main_process(tmp_path, monkeypatch, how, message):
    monkeypatch.setattr(BertProcessor, "process_chunk", _failing_chunk(how))  # forked workers inherit it
    corpus = write_documents(tmp_path / "docs.txt", documents=40)
    with pytest.raises(DataError, match=re.escape(message)):
        preprocess("bert", [corpus], tmp_path / "ds", workers=2, chunk_records=4, seq_length=32,
                   tokenizer=TokenizerConfig(type="wordpiece", vocab=str(write_vocab(tmp_path))))
    assert not (tmp_path / "ds").exists() and not (tmp_path / ".ds.partial").exists()
    assert not multiprocessing.active_children()  # the other worker was stopped and reaped
