"""Streaming, multi-process preprocessing: raw corpus -> dataset directory (see storage.py).

The main process reads the corpus in chunks of records and hands them to worker processes; results come
back in order and are appended to the shards. At most ``2 * workers`` chunks are in flight, so memory
does not grow with the corpus. Everything is written to a partial directory that is renamed into place
only when complete (manifest last). Chunk boundaries and per-chunk random seeds depend only on the input
and options, so a killed run resumes after its last complete shard with the same records.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from modaloom.data.config import TokenizerConfig
from modaloom.data.processors.base import ChunkResult, Processor, SourceRecord, build_processor
from modaloom.data.readers import ReaderOptions, is_datasets_folder, read_corpus
from modaloom.data.storage import DatasetWriter, Skip
from modaloom.data.tar_shards import expand_corpora
from modaloom.data.tokenizers import load_tokenizer
from modaloom.errors import ConfigError, DataError


@dataclass
class PreprocessJob:
    """Everything a worker needs to rebuild the processor (plain data, cheap to send)."""

    processor: str
    seq_length: int
    tokenizer: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 7

    def build(self) -> Processor:
        tokenizer = load_tokenizer(self.tokenizer) if self.tokenizer else None
        return build_processor(self.processor, tokenizer, self.seq_length, self.options, self.seed)


@dataclass
class Chunk:
    """A slice of input: records for the workers and reader-level skips kept in the main process."""

    index: int
    records: list[SourceRecord]
    skips: list[Skip]
    blank_lines: int = 0


def make_chunks(sources: Iterable[SourceRecord | Skip | str], max_records: int = 1024,
                max_chars: int = 1 << 20) -> Iterator[Chunk]:
    """Group a record stream into chunks of at most ``max_records`` records or about ``max_chars`` chars."""
    chunk = Chunk(0, [], [])
    chars = 0
    for item in sources:
        if isinstance(item, Skip):
            chunk.skips.append(item)
            continue
        if isinstance(item, str):
            chunk.blank_lines += 1
            continue
        chunk.records.append(item)
        value = item.value
        chars += len(value) if isinstance(value, str) else sum(
            len(v) if isinstance(v, (str, bytes)) else len(str(v))  # bytes: an image or sound, counted by size
            for v in (value.values() if isinstance(value, Mapping) else value))
        if len(chunk.records) >= max_records or chars >= max_chars:
            yield chunk
            chunk = Chunk(chunk.index + 1, [], [])
            chars = 0
    if chunk.records or chunk.skips or chunk.blank_lines:
        yield chunk


_WORKER_PROCESSOR: Processor | None = None  # a forked worker inherits the main process's processor


def _worker_loop(conn: Connection, job: PreprocessJob, inherited: Sequence[Connection]) -> None:
    """A worker: chunks in, results (or the exception) out, until ``None`` or the main process is gone.

    Ctrl-C is ignored here (the main process reports it and stops the workers); the workers are started
    with SIGINT blocked, so one that arrives during start-up waits until it is ignored, then is dropped.
    ``inherited``: the main process's ends of the pipes, which a forked worker closes so that it sees
    the end of its pipe (and exits) when the main process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for other in inherited:
        other.close()
    processor = _WORKER_PROCESSOR
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            if processor is None:  # spawned, not forked
                processor = job.build()
            reply: tuple[str, Any] = ("ok", processor.process_chunk(*task))
        except Exception as exc:  # noqa: BLE001 - sent to the main process, which raises it
            reply = ("error", exc)
        try:
            conn.send(reply)
        except OSError:  # the main process is gone
            return
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")))


class Interrupts:
    """Ctrl-C as a flag checked at defined points (after each chunk, while waiting for a worker, before
    publishing), so that it is never raised inside a finalizer or a pool callback, where Python would
    print and drop it. A second Ctrl-C raises at once. Only installed over Python's default handler in
    the main thread: an ignored SIGINT (``nohup``, ``cmd &``) or a caller's own handler is left alone."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since the run started."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _sources(processor: Processor, corpora: Sequence[Path], fmt: str,
             reader: ReaderOptions) -> Iterator[SourceRecord | Skip | str]:
    for path in corpora:
        if path.is_dir() and fmt != "datasets" and not is_datasets_folder(path):
            yield from processor.folder_records(path)
        else:
            yield from read_corpus(path, processor.input_kind, fmt, reader)


def _results(job: PreprocessJob, processor: Processor, chunks: Iterator[Chunk], workers: int,
             interrupts: Interrupts) -> Iterator[tuple[Chunk, ChunkResult]]:
    """Chunk results in input order; in-process for one worker, else worker processes with at most
    ``2 * workers`` chunks sent and not yet yielded (memory does not grow with the corpus)."""
    if workers <= 1:
        for chunk in chunks:
            interrupts.check()
            yield chunk, processor.process_chunk(chunk.records, chunk.index)
        return
    pool = _Workers(job, processor, workers)
    try:
        yield from pool.ordered(chunks, interrupts)
        pool.close()
    finally:
        pool.stop()


class _Workers:
    """Worker processes, each with its own pipe and at most one chunk at a time.

    No helper threads (unlike ``multiprocessing.Pool``, whose ``terminate`` can hang while its task thread
    writes a large chunk into a pipe nobody reads): the main process sends a chunk only to an idle worker,
    which is waiting to read it, and ``stop`` kills the workers outright."""

    def __init__(self, job: PreprocessJob, processor: Processor, count: int):
        global _WORKER_PROCESSOR
        # fork is cheap, hands the workers this process's processor and keeps the tokenizer's fast path
        # when this process has not used Rust threads yet (see _limit_rust_threads); otherwise the
        # tokenizers library makes the children serial, still safe.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self.processes: list[Any] = []
        self.conns: list[Connection] = []
        _WORKER_PROCESSOR = processor if method == "fork" else None
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # workers start with it blocked
        try:
            for _ in range(count):
                parent, child = context.Pipe()
                inherited = [parent, *self.conns] if method == "fork" else []
                process = context.Process(target=_worker_loop, args=(child, job, inherited), daemon=True)
                process.start()
                child.close()
                self.processes.append(process)
                self.conns.append(parent)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            _WORKER_PROCESSOR = None

    def ordered(self, chunks: Iterator[Chunk], interrupts: Interrupts) -> Iterator[tuple[Chunk, ChunkResult]]:
        """Send chunks to idle workers and yield their results in input order."""
        limit = 2 * len(self.conns)
        idle = list(range(len(self.conns)))[::-1]
        busy: dict[int, int] = {}  # worker -> sequence number of its chunk
        sent: dict[int, Chunk] = {}  # sequence number -> chunk (its records already sent)
        results: dict[int, ChunkResult] = {}
        next_send = next_yield = 0
        remaining = True
        while True:
            while remaining and idle and next_send - next_yield < limit:
                interrupts.check()
                chunk = next(chunks, None)
                if chunk is None:
                    remaining = False
                    break
                worker = idle.pop()
                # records are sent and skips stay here, so the chunk is not pickled whole
                self.conns[worker].send((chunk.records, chunk.index))
                chunk.records = []
                busy[worker], sent[next_send] = next_send, chunk
                next_send += 1
            if next_yield in results:
                yield sent.pop(next_yield), results.pop(next_yield)
                next_yield += 1
                continue
            if not busy:
                return
            ready = wait([self.conns[w] for w in busy], timeout=0.1)
            interrupts.check()
            for conn in ready:
                worker = self.conns.index(conn)  # type: ignore[arg-type]
                results[busy.pop(worker)] = self._receive(worker)
                idle.append(worker)

    def _receive(self, worker: int) -> ChunkResult:
        try:
            status, payload = self.conns[worker].recv()
        except EOFError:
            process = self.processes[worker]
            process.join(1)
            raise DataError(f"preprocess worker process {process.pid} stopped (exit code {process.exitcode}, "
                            "e.g. killed when out of memory); rerun with fewer --workers (complete shards "
                            "are reused)") from None
        if status == "error":
            raise payload
        return payload

    def close(self) -> None:
        """Ask every worker to finish and wait for it (after the last result)."""
        for conn in self.conns:
            conn.send(None)
        for process in self.processes:
            process.join()

    def stop(self) -> None:
        """Kill the workers that are still running (an error or Ctrl-C in the main process) and reap them."""
        for process in self.processes:
            if process.exitcode is None:
                process.terminate()
        for process in self.processes:
            process.join()
        for conn in self.conns:
            conn.close()


def preprocess(processor_name: str, corpora: Sequence[str | Path], out_dir: str | Path, *,
               tokenizer: TokenizerConfig | None, seq_length: int, workers: int = 1,
               options: Mapping[str, Any] | None = None, corpus_format: str = "", seed: int = 7,
               overwrite: bool = False, progress: Any = None, chunk_records: int = 1024,
               shard_bytes: int = 256 << 20, reader: ReaderOptions | None = None) -> dict[str, Any]:
    """Preprocess ``corpora`` into ``out_dir``; returns the manifest. Raises DataError on bad input.

    ``corpora`` are files, folders (image folders, ``datasets`` folders) or brace patterns of files such as
    ``shards-{000..009}.tar``; ``reader`` says which field holds the text and which split to read.

    A run that was killed resumes: a rerun with the same inputs and options reuses the shards it completed
    (kept in ``.<out>.partial``) and produces the same records as an uninterrupted run."""
    started = time.perf_counter()
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    if shard_bytes < 1:
        raise DataError(f"shard size must be positive, got {shard_bytes} bytes")
    if workers > 1:
        _limit_rust_threads()
    reader = reader or ReaderOptions()
    corpora = expand_corpora(corpora)
    for path in corpora:
        if not path.exists():
            raise DataError(f"corpus {path} does not exist")
    job = PreprocessJob(processor_name, seq_length, asdict(tokenizer) if tokenizer else None,
                        dict(options or {}), seed)
    processor = job.build()  # fails early on a bad name, option or vocabulary
    if reader.text_field and processor.input_kind == "row":
        raise ConfigError(f"--text-field is for line and document processors; {processor_name!r} reads rows: "
                          "name its columns with options such as --option text_column=caption")
    inputs = [*corpora, *(Path(f) for f in (tokenizer.vocab, tokenizer.merges) if f)] if tokenizer else corpora
    key = _resume_key(processor, corpora, corpus_format, seq_length, seed, chunk_records, shard_bytes, reader)
    token_field = "input_ids" if "input_ids" in processor.fields else ""
    with Interrupts() as interrupts, DatasetWriter(out_dir, processor.fields, overwrite=overwrite, inputs=inputs,
                                                   shard_bytes=shard_bytes, resume_key=key) as writer:
        state = writer.resumed or {"chunks": 0, "counters": {}, "tokens": 0}
        counters: collections.Counter[str] = collections.Counter(state["counters"])
        tokens = int(state["tokens"])
        if processor.tokenizer is not None:
            processor.tokenizer.save(writer.path / "tokenizer")
        chunks = make_chunks(_sources(processor, corpora, corpus_format, reader), max_records=chunk_records)
        todo = (chunk for chunk in chunks if chunk.index >= state["chunks"])  # earlier ones are in shards
        results = contextlib.closing(_results(job, processor, todo, workers, interrupts))
        with results as ordered:  # the pool stops here on any exception, not when the generator is collected
            for chunk, result in ordered:
                for skip in chunk.skips:
                    writer.skip(skip)
                for skip in result.skips:
                    writer.skip(skip)
                counters.update(result.counters)
                counters["input_records"] += result.inputs
                counters["blank_lines"] += chunk.blank_lines
                if token_field and result.batch.count:
                    tokens += result.batch.total_length(token_field)
                if writer.add_batch(result.batch):
                    writer.save_progress({"chunks": chunk.index + 1, "counters": dict(counters), "tokens": tokens})
                if progress is not None:
                    progress(writer.count, counters["input_records"])
        if writer.count == 0:
            raise DataError(f"no records were produced from {', '.join(map(str, corpora))} "
                            f"({sum(writer.skip_reasons.values())} skipped: {dict(writer.skip_reasons)})")
        elapsed = time.perf_counter() - started
        manifest = {
            "processor": processor.manifest_entry(),
            "tokenizer": _tokenizer_entry(processor),
            "inputs": [{"path": str(p.resolve()), "bytes": _size(p)} for p in corpora],
            "counts": {"input_records": counters.pop("input_records"), "records": writer.count,
                       "tokens": tokens, **dict(sorted(counters.items()))},
            "workers": workers,
            "seconds": round(elapsed, 3),
        }
        if writer.resumed is not None:
            manifest["resumed"] = {"shards": writer.resumed_shards, "records": writer.resumed_records}
        interrupts.check()  # the last point where Ctrl-C stops the run: after the rename it is complete
        writer.close(manifest)
    return writer.manifest


def _resume_key(processor: Processor, corpora: Sequence[Path], corpus_format: str, seq_length: int, seed: int,
                chunk_records: int, shard_bytes: int, reader: ReaderOptions) -> str:
    """A digest of everything that decides the records: a partial run is resumed only when it matches.

    Every format resumes the same way: the input is read again from its start (reading is cheap next to
    processing) and the chunks that are already in complete shards are dropped unprocessed."""
    inputs = []
    for path in corpora:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        inputs.append([str(path.resolve()), [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]])
    body = {"processor": processor.manifest_entry(), "tokenizer": _tokenizer_entry(processor),
            "fields": {n: [s.dtype, s.kind] for n, s in processor.fields.items()}, "inputs": inputs,
            "format": corpus_format, "seq_length": seq_length, "seed": seed, "chunk_records": chunk_records,
            "shard_bytes": shard_bytes}
    if reader != ReaderOptions():
        body["reader"] = asdict(reader)  # only when set, so keys of runs without reader options stay as they were
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _limit_rust_threads() -> None:
    """One Rust thread per worker process (the processes already fill the cores); measured fastest.

    Takes effect only before the first tokenizer call of this process, which is why it runs first."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _tokenizer_entry(processor: Processor) -> dict[str, Any] | None:
    tok = processor.tokenizer
    if tok is None:
        return None
    return {"type": tok.type_name, "fingerprint": tok.fingerprint(), "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids(), "sentinels": len(tok.sentinel_ids), "dir": "tokenizer",
            "vocab": str(Path(tok.config.vocab).resolve()) if tok.config.vocab else ""}
