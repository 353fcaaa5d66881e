"""Where modaloom's pre-training memory goes: resident memory after each part of a run, built in the order the
Trainer builds them, in one fresh process (so that nothing else is counted).

    python benchmarks/memory_breakdown.py DATA_DIR [--batch 32] [--seq 128] [--threads 2]

DATA_DIR is a ``modaloom preprocess --processor bert`` output (``benchmarks/pretrain_throughput.py`` prepares
one). Rows: the interpreter, ``import torch``, modaloom's imports (and which heavy optional modules they pulled
in), the tiny BERT model, the data loader with its first batch, the logging sinks (TensorBoard writer,
progress bar), the matmul-peak probe, optimizer state with one training step, the loss-curve plot. Each row
gives the RSS after the part, its change, and the process's peak so far (a part that allocates and frees,
like the probe, shows in the peak only). This module imports nothing heavy at the top: the import rows are
its own measurement.
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


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Ledger:
    """Rows of (part, RSS after, change, peak so far) in MiB."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.last = _rss_mb()
        self.rows.append({"part": "interpreter (+ psutil)", "rss_mb": self.last, "delta_mb": self.last,
                          "peak_mb": _peak_mb()})

    def mark(self, part: str, **extra: Any) -> None:
        now = _rss_mb()
        self.rows.append({"part": part, "rss_mb": now, "delta_mb": now - self.last, "peak_mb": _peak_mb(), **extra})
        self.last = now


def breakdown(data: Path, batch: int, seq: int, threads: int, overrides: list[str] | None = None) -> dict[str, Any]:
    """Build a tiny BERT pre-training part by part, measuring resident memory after each."""
    ledger = Ledger()
    import torch

    torch.set_num_threads(threads)
    ledger.mark("import torch")
    import modaloom.cli.main  # noqa: F401  (the command line's own imports)
    from modaloom.data.loader import build_loader
    from modaloom.model import build_model
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
        optimizer = build_optimizer(model, cfg.train)
        model.train()
        for _ in range(2):
            loss = model(first).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        ledger.mark("optimizer state + 2 training steps (activations, gradients)")
        monitor.plot()
        monitor.close()
        ledger.mark("loss-curve plot (end of run)",
                    heavy=[name for name in HEAVY if name in sys.modules])
    del trainer_module
    return {"rows": ledger.rows, "peak_mb": _peak_mb(), "batch": batch, "seq": seq, "threads": threads,
            "mmap_threshold_mb": cfg.train.mmap_threshold_mb}


def print_rows(result: dict[str, Any]) -> None:
    print(f"modaloom pre-training memory by part (tiny BERT, batch {result['batch']}x{result['seq']}, "
          f"{result['threads']} threads, train.mmap_threshold_mb={result['mmap_threshold_mb']}), MiB")
    print(f"{'part':<62} {'RSS after':>9} {'change':>8} {'peak':>7}")
    for row in result["rows"]:
        extra = f"  pulled in: {', '.join(row['heavy'])}" if row.get("heavy") else ""
        print(f"{row['part']:<62} {row['rss_mb']:9.0f} {row['delta_mb']:+8.0f} {row['peak_mb']:7.0f}{extra}")
    print(f"peak RSS of the breakdown process: {result['peak_mb']:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a modaloom preprocess --processor bert output folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--override", action="append", default=[], help="config override, e.g. "
                        "train.mmap_threshold_mb=0 (glibc's default heap)")
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
