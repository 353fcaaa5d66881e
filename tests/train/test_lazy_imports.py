"""Start-up memory: the training command and a built Trainer import no plotting, TensorBoard, transformers,
scikit-learn or torch.distributed.checkpoint (sympy) until a run needs them (each costs tens of MB resident)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]
NEVER = ("matplotlib", "tensorboard", "transformers", "sklearn", "scipy")
AT_IMPORT = (*NEVER, "sympy", "torch.distributed.checkpoint")  # (test_optim_eager: steps import neither)
SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'tests' / 'train')!r})
import modaloom.cli.main, modaloom.cli.pretrain, modaloom.tasks.pretrain, modaloom.train.trainer
at_import = sorted(m for m in {AT_IMPORT!r} if m in sys.modules)
from modaloom.train.config import TrainConfig
from modaloom.train.trainer import Trainer
from standins import SyntheticLoader, TinyRegressor
Trainer(TinyRegressor(), TrainConfig(steps=1, batch_size=2), SyntheticLoader(), sys.argv[1])
print(json.dumps([at_import, sorted(m for m in {NEVER!r} if m in sys.modules)]))
"""


def test_training_start_up_imports_nothing_heavy_it_does_not_need(tmp_path):
    env = child_env(tests=False, threads=None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[], []]
