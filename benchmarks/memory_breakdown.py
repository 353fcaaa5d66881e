"""Where modaloom's pre-training memory goes: resident memory after each part of a run, built in the order the
Trainer builds them, in one fresh process (so that nothing else is counted).

    python benchmarks/memory_breakdown.py DATA_DIR [--batch 32] [--seq 128] [--threads 2]

DATA_DIR is a ``modaloom preprocess --processor bert`` output (``benchmarks/pretrain_throughput.py`` prepares
one). Rows: the interpreter, ``import torch``, modaloom's imports (and which heavy optional modules they pulled
in), the tiny BERT model, the data loader with its first batch, the logging sinks (TensorBoard writer,
progress bar), the matmul-peak probe, the optimizer with its first step (and whether it pulled in
``torch._dynamo`` and sympy, which eager runs avoid), two more training steps, the loss-curve plot; then, for
comparison and outside
the run's peak, the same steps over the full masked LM logits (``chunked_loss = False``). Each row gives the
RSS after the part, its change, the peak within the part (what it allocates and frees, like the probe or a
step; Linux resets the peak between parts) and the run's peak so far. This module imports nothing heavy at
the top: the import rows are its own measurement. Like the ``modaloom`` command, it first re-runs itself with
the malloc that ``MODALOOM_ALLOCATOR`` chooses (``modaloom/allocator.py``), and prints which one it ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

HEAVY = ("matplotlib", "tensorboard", "transformers", "sklearn", "scipy", "pandas", "pyarrow", "datasets",
         "PIL", "safetensors", "tqdm", "numpy")


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _reset_peak() -> bool:
    """Start a new peak (Linux: VmHWM back to the current RSS); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak RSS since the last reset (Linux VmHWM), else since the process started."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Ledger:
    """Rows of (part, RSS after, change, peak within the part, run peak so far) in MiB.

    Each part's own peak shows what it allocates and frees (the probe, a training step); rows marked
    ``comparison`` are measured after the run's parts and left out of the run's peak.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.last = _rss_mb()
        self.run_peak = _peak_mb()
        self.part_peaks = _reset_peak()
        self.rows.append({"part": "interpreter (+ psutil)", "rss_mb": self.last, "delta_mb": self.last,
                          "peak_mb": self.run_peak, "run_peak_mb": self.run_peak})

    def mark(self, part: str, comparison: bool = False, **extra: Any) -> None:
        now, peak = _rss_mb(), max(_peak_mb(), _rss_mb())
        if not comparison:
            self.run_peak = max(self.run_peak, peak)
        self.rows.append({"part": part, "rss_mb": now, "delta_mb": now - self.last, "peak_mb": peak,
                          "run_peak_mb": self.run_peak, "comparison": comparison, **extra})
        self.last = now
        _reset_peak()


def _steps(model: Any, optimizer: Any, batch: Any, count: int) -> None:
    for _ in range(count):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def breakdown(data: Path, batch: int, seq: int, threads: int, overrides: list[str] | None = None) -> dict[str, Any]:
    """Build a tiny BERT pre-training part by part, measuring resident memory after each."""
    ledger = Ledger()
    import torch

    torch.set_num_threads(threads)
    ledger.mark("import torch")
    import modaloom.cli.main  # noqa: F401  (the command line's own imports)
    from modaloom.data.loader import build_loader
    from modaloom.model import build_model
    from modaloom.targets.text import VocabularyTarget
    from modaloom.tasks import load_job_config
    from modaloom.train import trainer as trainer_module
    from modaloom.train.flops import measure_matmul_peak
    from modaloom.train.memory import set_mmap_threshold
    from modaloom.train.monitor import Monitor
    from modaloom.train.optim import build_optimizer
    from modaloom.zoo import zoo_path

    ledger.mark("import modaloom (cli, trainer, model, loader)",
                heavy=[name for name in HEAVY if name in sys.modules])
    cfg = load_job_config(str(zoo_path("bert/tiny")), [
        "model.embedding.vocab_size=21128", f"data.seq_length={seq}", f"train.batch_size={batch}", *(overrides or [])])
    set_mmap_threshold(cfg.train.mmap_threshold_mb)  # as `modaloom pretrain` does
    torch.manual_seed(0)
    model = build_model(cfg.model)
    params = sum(p.numel() for p in model.parameters())
    ledger.mark("model (tiny BERT)", parameters=params, weights_mb=params * 4 / 2**20)
    loader = build_loader(data, batch_size=batch, seed=0, seq_length=seq, padding="max_length",
                          num_workers=cfg.data.num_workers)
    first = next(iter(loader))
    ledger.mark("data loader + first batch", num_workers=cfg.data.num_workers)
    with tempfile.TemporaryDirectory() as tmp:
        monitor = Monitor(tmp, 10, progress=True, tensorboard=True)
        monitor.log(1, {"loss": 1.0})
        ledger.mark("logging (TensorBoard writer, progress bar, JSONL)")
        measure_matmul_peak(torch.device("cpu"))
        ledger.mark("matmul-peak probe (MFU)")
        before = set(sys.modules)
        optimizer = build_optimizer(model, cfg.train)
        model.train()
        _steps(model, optimizer, first, 1)
        ledger.mark("optimizer: AdamW state; first step",
                    heavy=[name for name in ("torch._dynamo", "sympy") if name in set(sys.modules) - before],
                    adam_state_mb=2 * params * 4 / 2**20)
        _steps(model, optimizer, first, 2)
        ledger.mark("2 training steps (activations, gradients; masked LM loss chunked)")
        monitor.plot()
        monitor.close()
        ledger.mark("loss-curve plot (end of run)",
                    heavy=[name for name in HEAVY if name in sys.modules])
        VocabularyTarget.chunked_loss = False
        try:
            _steps(model, optimizer, first, 2)
        finally:
            VocabularyTarget.chunked_loss = True
        ledger.mark("comparison: the same 2 steps over the full masked LM logits", comparison=True)
    del trainer_module
    from modaloom.allocator import active_allocator

    return {"rows": ledger.rows, "peak_mb": ledger.run_peak, "batch": batch, "seq": seq, "threads": threads,
            "mmap_threshold_mb": cfg.train.mmap_threshold_mb, "part_peaks": ledger.part_peaks,
            "allocator": active_allocator()}


def print_rows(result: dict[str, Any]) -> None:
    print(f"modaloom pre-training memory by part (tiny BERT, batch {result['batch']}x{result['seq']}, "
          f"{result['threads']} threads, malloc: {result.get('allocator', 'system')}, "
          f"train.mmap_threshold_mb={result['mmap_threshold_mb']}), MiB")
    peak_name = "part peak" if result.get("part_peaks", True) else "peak"
    print(f"{'part':<84} {'RSS after':>9} {'change':>7} {peak_name:>9} {'run peak':>8}")
    for row in result["rows"]:
        extra = f"  pulled in: {', '.join(row['heavy'])}" if row.get("heavy") else ""
        print(f"{row['part']:<84} {row['rss_mb']:9.0f} {row['delta_mb']:+7.0f} {row['peak_mb']:9.0f} "
              f"{row['run_peak_mb']:8.0f}{extra}")
    print(f"peak RSS of the run's parts: {result['peak_mb']:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        from modaloom.allocator import preload_allocator

        preload_allocator()  # as the modaloom command does (returns only when nothing is to be done)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a modaloom preprocess --processor bert output folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--override", action="append", default=[], help="config override, e.g. "
                        "train.mmap_threshold_mb=1 (the low-memory setting)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line only")
    args = parser.parse_args(argv)
    if not (args.data / "manifest.json").is_file():
        raise SystemExit(f"{args.data} has no manifest.json: run `modaloom preprocess --processor bert` first")
    result = breakdown(args.data, args.batch, args.seq, args.threads, args.override)
    if args.json:
        print(json.dumps(result))
    else:
        print_rows(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
