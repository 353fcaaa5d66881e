"""Command lines for tests that start torchrun agents themselves (multi-node and elastic restart)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.train.test_distributed import ROOT, script_env

TIMEOUT = 150  # seconds for one torchrun job on a loaded 2-core machine


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now (for a rendezvous endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*options: str) -> list[str]:
    """``python -m torch.distributed.run`` (the ``torchrun`` entry point) with ``options``."""
    return [sys.executable, "-m", "torch.distributed.run", *options]


def pretrain(config: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The arguments after torchrun's options that run ``modaloom pretrain``."""
    return ["-m", "modaloom.cli.main", "pretrain", "--config", str(config), "--data", str(data),
            "--out", str(out), *extra]


def start(cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, so that ``finish`` can end the agent and its workers together."""
    return subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Wait for every process (killing all of them past TIMEOUT); (exit status, stdout + stderr) of each.

    A killed agent's workers would live on, holding the output pipes open, and the final read would never
    end: the whole process group of each agent is killed."""
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            results.append((proc.returncode, stdout + stderr))
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return results


def run(cmd: list[str]) -> str:
    """Run one torchrun job to the end; its output, after checking that it exited 0."""
    [(status, output)] = finish([start(cmd)])
    assert status == 0, output[-4000:]
    return output
