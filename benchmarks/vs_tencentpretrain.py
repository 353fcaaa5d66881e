"""modaloom side by side with TencentPretrain: the same files, the same threads, runs interleaved in one run.

    python benchmarks/vs_tencentpretrain.py --tp DIR --tp-python PATH [--threads 2] [--repeat 3]
        [--parts preprocess pretrain finetune inference] [--steps 200] [--work DIR] [--json PATH] [--quick]

It fetches nothing: DIR is a TencentPretrain checkout at commit ed79843 and PATH the Python of its venv
(``pip install torch==2.13.0 numpy six packaging regex``); without them it prints how to make them and exits
with status 2. Every command is a whole process (start-up and output included) measured for wall time, peak
RSS of its whole process tree (workers included) and the 1-minute load average while it ran; each pair runs
``--repeat`` times, alternating which tool goes first, and the run of median time is kept. Rows:

- preprocess (book_review_train_bert.txt, google_zh_vocab, seq 128, ``--threads`` workers/processes):
  TencentPretrain's defaults (``dup_factor`` 5 statically masked copies) and equal work (``--dup_factor 1``)
  against ``modaloom preprocess --processor bert`` (one copy, masked again each epoch); peak RSS at equal work.
- pretrain, tiny BERT (models/bert/tiny_config.json / ``--config bert/tiny``), ``--steps`` steps: equal compute
  (batch 32 x seq 128 on both, on the equal-work data) and each tool's defaults (tokens/s of the whole command,
  tokens = batch x seq x steps); peak RSS at equal compute, also for modaloom's low-memory setting (the same 32
  examples per step as two micro-batches of 16), and modaloom's memory by part
  (``benchmarks/memory_breakdown.py``). modaloom runs with the malloc it preloads (jemalloc where installed,
  ``modaloom/allocator.py``); for the record TencentPretrain's equal-compute run is then repeated with that
  malloc preloaded as well (its own rows, not a ratio).
- finetune: ``benchmarks/finetune.py``'s side-by-side commands (book_review, 2 epochs, from TencentPretrain's
  1,000-step checkpoint).
- inference: ``benchmarks/inference.py``'s end-to-end commands (book_review test_nolabel, batch 64).

Ratios say how many times better modaloom is: TencentPretrain's time / modaloom's (or modaloom's tokens/s /
TencentPretrain's), and for memory TencentPretrain's RSS / modaloom's. ``--quick`` is a smoke run on tiny
slices (2,000 corpus lines, 5 steps, 64 examples, 1 repeat): its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side  # noqa: E402
from side_by_side import SHARED, ZH_VOCAB, Measured, interleaved, median, modaloom_command  # noqa: E402

from modaloom.allocator import configured_library  # noqa: E402

PARTS = ("preprocess", "pretrain", "finetune", "inference")
CORPUS = SHARED / "corpora" / "book_review_train_bert.txt"
TP_TINY_CONFIG = "models/bert/tiny_config.json"
# modaloom's low-memory setting, measured beside its default: the same 32 examples per step in two micro-batches
LOW_MEMORY = ["--batch-size", "16", "train.grad_accum_steps=2"]


def corpus_slice(work: Path, lines: int) -> Path:
    """The corpus, or its first ``lines`` lines ending at a document boundary (blank line)."""
    if not lines:
        return CORPUS
    text = CORPUS.read_text(encoding="utf-8").splitlines()[:lines]
    while text and text[-1].strip():
        text.pop()
    path = work / f"corpus_{lines}.txt"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def row(part: str, tp: Measured | float, ours: Measured | float, ratio: float, unit: str,
        load: tuple[float, float] | None = None) -> dict[str, Any]:
    """One table row: figures of both tools, modaloom's advantage (x times), the load during each run."""
    def figure(m: Measured | float) -> float:
        return m if isinstance(m, float) else m.wall

    if load is None and isinstance(tp, Measured) and isinstance(ours, Measured):
        load = (tp.load, ours.load)
    return {"part": part, "tencentpretrain": round(figure(tp), 3), "modaloom": round(figure(ours), 3),
            "unit": unit, "ratio": round(ratio, 2), "load": [round(x, 2) for x in (load or (0.0, 0.0))]}


def rss_row(part: str, tp: Measured, ours: Measured) -> dict[str, Any]:
    return row(part, tp.peak_rss_mb, ours.peak_rss_mb, tp.peak_rss_mb / ours.peak_rss_mb, "MiB peak RSS",
               (tp.load, ours.load))


class Harness:
    """The parts, sharing a work folder (data made by one part is reused by the next)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.threads: int = args.threads
        self.tp: Path = args.tp
        self.rows: list[dict[str, Any]] = []
        self.breakdown: dict[str, Any] | None = None

    def pair(self, tp_cmd: list[str], ours_cmd: list[str], fresh: Path | None = None,
             *variants: list[str]) -> tuple[Measured, ...]:
        """Both commands (and any further modaloom ``variants``) ``--repeat`` times interleaved (``fresh``,
        modaloom's output folder, removed before each of its runs: a run does not start over a finished one);
        the runs of median time: TencentPretrain's, modaloom's, then each variant's."""
        def ours(cmd: list[str]) -> Callable[[], Measured]:
            def run() -> Measured:
                if fresh is not None and fresh.exists():
                    shutil.rmtree(fresh)
                return side_by_side.run_measured(cmd, self.threads)
            return run

        commands = {"TencentPretrain": lambda: side_by_side.run_measured(tp_cmd, self.threads, cwd=self.tp),
                    "modaloom": ours(ours_cmd)}
        commands.update({f"modaloom variant {i}": ours(cmd) for i, cmd in enumerate(variants)})
        runs = interleaved(commands, self.args.repeat)
        return tuple(median(runs[name]) for name in commands)

    def tp_preprocess(self, corpus: Path, out: Path, dup_factor: int | None) -> list[str]:
        dup = [] if dup_factor is None else ["--dup_factor", str(dup_factor)]
        return [self.args.tp_python, "preprocess.py", "--corpus_path", str(corpus), "--vocab_path", str(ZH_VOCAB),
                "--dataset_path", str(out), "--processes_num", str(self.threads), "--data_processor", "bert",
                "--seq_length", "128", *dup]

    def ours_preprocess(self, corpus: Path, out: Path) -> list[str]:
        return modaloom_command("preprocess", "--processor", "bert", "--corpus", str(corpus), "--vocab", str(ZH_VOCAB),
                                "--out", str(out), "--workers", str(self.threads), "--seq-length", "128",
                                "--overwrite")

    def preprocess(self) -> None:
        corpus = corpus_slice(self.work, 2000 if self.args.quick else 0)
        ours_cmd = self.ours_preprocess(corpus, self.work / "ml_bert")
        tp, ours = self.pair(self.tp_preprocess(corpus, self.work / "tp_dup5.pt", None), ours_cmd)
        self.rows.append(row("preprocess, TencentPretrain defaults (dup_factor 5)", tp, ours, tp.wall / ours.wall, "s"))
        tp, ours = self.pair(self.tp_preprocess(corpus, self.work / "tp_dup1.pt", 1), ours_cmd)
        self.rows.append(row("preprocess, equal work (--dup_factor 1)", tp, ours, tp.wall / ours.wall, "s"))
        self.rows.append(rss_row("preprocess, equal work: memory", tp, ours))

    def ensure_data(self) -> Path:
        """Both tools' equal-work data (made by the preprocess part, or here when it did not run)."""
        corpus = corpus_slice(self.work, 2000 if self.args.quick else 0)
        if not (self.work / "tp_dup1.pt").is_file():
            side_by_side.run_measured(self.tp_preprocess(corpus, self.work / "tp_dup1.pt", 1), self.threads, cwd=self.tp)
        if not (self.work / "tp_dup5.pt").is_file():
            side_by_side.run_measured(self.tp_preprocess(corpus, self.work / "tp_dup5.pt", None), self.threads,
                                      cwd=self.tp)
        if not (self.work / "ml_bert" / "manifest.json").is_file():
            side_by_side.run_measured(self.ours_preprocess(corpus, self.work / "ml_bert"), self.threads)
        return self.work / "ml_bert"

    def tp_pretrain(self, dataset: str, steps: int, batch: list[str]) -> list[str]:
        return [self.args.tp_python, "pretrain.py", "--dataset_path", str(self.work / dataset), "--vocab_path",
                str(ZH_VOCAB), "--config_path", TP_TINY_CONFIG, "--output_model_path", str(self.work / "tp_pt.bin"),
                "--total_steps", str(steps), "--save_checkpoint_steps", str(steps), "--report_steps",
                str(max(1, steps // 10)), *batch]

    def ours_pretrain(self, data: Path, steps: int, batch: list[str]) -> list[str]:
        return modaloom_command("pretrain", "--config", "bert/tiny", "--data", str(data), "--out",
                                str(self.work / "ml_pt"), "--steps", str(steps), *batch,
                                "model.embedding.vocab_size=21128", "train.progress=false")

    def pretrain(self) -> None:
        data, steps = self.ensure_data(), self.args.steps
        equal = self.ours_pretrain(data, steps, ["--batch-size", "32", "--seq-length", "128"])
        low_memory = " ".join(LOW_MEMORY)
        tp, ours, low = self.pair(self.tp_pretrain("tp_dup1.pt", steps, ["--batch_size", "32"]), equal,
                                  self.work / "ml_pt", [*equal, *LOW_MEMORY])
        self.rows.append(row(f"pretrain, equal compute ({steps} steps x 32 x 128)", tp, ours, tp.wall / ours.wall, "s"))
        self.rows.append(rss_row("pretrain, equal compute: memory", tp, ours))
        self.rows.append(row(f"pretrain, equal compute, {low_memory}", tp, low, tp.wall / low.wall, "s"))
        self.rows.append(rss_row(f"pretrain, equal compute, {low_memory}: memory", tp, low))
        measured = side_by_side.run_measured([sys.executable, str(Path(__file__).parent / "memory_breakdown.py"),
                                              str(data), "--threads", str(self.threads), "--json"], self.threads)
        self.breakdown = json.loads(measured.output.strip().splitlines()[-1])
        tp, ours = self.pair(self.tp_pretrain("tp_dup5.pt", steps, []), self.ours_pretrain(data, steps, []),
                             self.work / "ml_pt")
        tp_tps, ours_tps = 32 * 128 * steps / tp.wall, default_batch_tokens() * steps / ours.wall
        self.rows.append(row(f"pretrain, each tool's defaults ({steps} steps), tokens/s", tp_tps, ours_tps,
                             ours_tps / tp_tps, "tokens/s", (tp.load, ours.load)))
        self.tp_with_our_allocator(steps)

    def tp_with_our_allocator(self, steps: int) -> None:
        """TencentPretrain's equal-compute run again with the malloc that modaloom preloads (see
        ``modaloom/allocator.py``), for the record: how much of the memory gap the allocator alone closes."""
        lib = configured_library()
        if lib is None:
            return
        cmd = self.tp_pretrain("tp_dup1.pt", steps, ["--batch_size", "32"])
        runs = [side_by_side.run_measured(cmd, self.threads, cwd=self.tp, env={"LD_PRELOAD": lib})
                for _ in range(self.args.repeat)]
        tp = median(runs)
        self.rows.append(row(f"TencentPretrain itself with {lib} preloaded, equal compute", tp.wall, tp.wall, 1.0,
                             "s (TencentPretrain only)", (tp.load, tp.load)))
        self.rows.append(row(f"TencentPretrain itself with {lib} preloaded: memory", tp.peak_rss_mb,
                             tp.peak_rss_mb, 1.0, "MiB peak RSS (TencentPretrain only)", (tp.load, tp.load)))

    def finetune(self) -> None:
        import finetune

        limit, epochs = (64, 1) if self.args.quick else (0, 2)
        train, dev, test = finetune.book_slice(self.work, limit)
        out = self.work / "ml_finetune"
        tp_cmd = finetune.tp_classifier_command(self.work, train, dev, test, epochs, self.args.tp_python)
        runs = interleaved({
            "TencentPretrain": lambda: side_by_side.run_measured(tp_cmd, self.threads, cwd=self.tp),
            "modaloom": lambda: side_by_side.run_measured(
                finetune.modaloom_classifier_command(self.work, out, train, dev, test, epochs), self.threads)},
            self.args.repeat)
        tp, ours = median(runs["TencentPretrain"]), median(runs["modaloom"])
        tp_test = finetune.tp_accuracies(tp.output)[1]
        ours_test = json.loads((out / "summary.json").read_text(encoding="utf-8"))["test/accuracy"]
        self.rows.append(row(f"finetune book_review, {epochs} epochs (test acc TP {tp_test:.4f}, "
                             f"modaloom {ours_test:.4f})", tp, ours, tp.wall / ours.wall, "s"))
        self.rows.append(rss_row("finetune: memory", tp, ours))

    def inference(self) -> None:
        import inference

        model = inference.tiny_classifier(self.work, self.threads)
        source = inference.text_slice(inference.BOOK / "test_nolabel.tsv", 64 if self.args.quick else 0, self.work)
        tp, ours = self.pair(*inference.e2e_commands(model, self.work, source, 64, self.args.tp_python))
        self.rows.append(row(f"inference e2e ({source.name}, batch 64)", tp, ours, tp.wall / ours.wall, "s"))
        self.rows.append(rss_row("inference: memory", tp, ours))


def default_batch_tokens() -> int:
    """batch x seq of ``modaloom pretrain --config bert/tiny`` without options (its documented defaults)."""
    from modaloom.tasks import load_job_config
    from modaloom.zoo import zoo_path

    cfg = load_job_config(str(zoo_path("bert/tiny")), [])
    return int(cfg.train.batch_size) * int(cfg.data.seq_length)


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(header)
    print("| part | TencentPretrain | modaloom | unit | modaloom x times better | load (TP / modaloom) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['tencentpretrain']:.2f} | {r['modaloom']:.2f} | {r['unit']} | {r['ratio']:.2f}x | "
              f"{r['load'][0]:.2f} / {r['load'][1]:.2f} |")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=Path, default=os.environ.get("MODALOOM_TP"),
                        help="TencentPretrain checkout at ed79843 (default: $MODALOOM_TP)")
    parser.add_argument("--tp-python", default=os.environ.get("MODALOOM_TP_PYTHON", sys.executable),
                        help="the Python of TencentPretrain's venv (default: $MODALOOM_TP_PYTHON, else this one)")
    parser.add_argument("--threads", type=int, default=2, help="threads (and preprocessing workers) for both tools")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per pair (median kept)")
    parser.add_argument("--steps", type=int, default=200, help="pre-training steps per run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/modaloom-vs-tp"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="smoke run on tiny slices (figures mean nothing)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.steps = 1, min(args.steps, 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = side_by_side.tp_problem(args.tp, args.tp_python)
    if problem:
        print(f"{problem}\n\n{side_by_side.TP_SETUP}", file=sys.stderr)
        return 2
    args.tp = args.tp.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    harness = Harness(args)
    for part in args.parts:
        getattr(harness, part)()
    import torch

    malloc = configured_library() or "the system's"
    header = (f"modaloom vs TencentPretrain ({args.tp}), torch {torch.__version__}, {args.threads} threads, "
              f"{os.cpu_count()} cores, median of {args.repeat} interleaved runs, modaloom's malloc: {malloc} "
              f"(TencentPretrain: the system's){' (QUICK: smoke only)' * args.quick}")
    print_table(harness.rows, header)
    if harness.breakdown:
        import memory_breakdown

        memory_breakdown.print_rows(harness.breakdown)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": harness.rows,
                                               "memory_breakdown": harness.breakdown}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
