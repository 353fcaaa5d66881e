"""siglip against a hand-computed value and open_clip's SigLipLoss; infonce against open_clip's ClipLoss;
both on one process and on two gloo processes (torchrun), where ranks' losses averaged give the one-process
loss on the whole batch and the ring / gather backward gives its gradients."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modaloom.losses import build_loss
from tests.child_env import child_env
from tests.losses.reference import ROWS, features, loss_and_grads, open_clip_loss, ours, reference

ROOT = Path(__file__).resolve().parents[2]
OPEN_CLIP = open_clip_loss()
needs_open_clip = pytest.mark.skipif(OPEN_CLIP is None, reason="open-clip-torch is not installed")


def test_siglip_two_by_two_by_hand():
    f0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f1 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    # logits = 10 * cosine - 5: [[6 - 5, 0 - 5], [8 - 5, 10 - 5]] = [[1, -5], [3, 5]]; +1 on the diagonal
    def softplus(x):
        return math.log1p(math.exp(x))
    # -log sigmoid(y * z) = softplus(-y * z); summed over the 4 pairs, divided by the 2 rows
    expected = (softplus(-1) + softplus(-5) + softplus(3) + softplus(-5)) / 2
    out = build_loss(SimpleNamespace(label="clr", ring=True), "siglip")(f0, f1, scale, bias)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(out.logits_01, torch.tensor([[1.0, -5.0], [3.0, 5.0]]))
    assert torch.equal(out.labels, torch.arange(2))


@needs_open_clip
@pytest.mark.parametrize("name", ["siglip", "infonce"])
def test_one_process_equals_open_clip(name):
    leaves = features()
    got = loss_and_grads(ours(name, leaves), leaves)
    leaves = features()
    want = loss_and_grads(reference(name, OPEN_CLIP, leaves), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got[0] > 0 and got[3].abs() > 0  # a loss with a gradient to the scale: the check can fail


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    env = child_env(cpu=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.losses.dist_script", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank-{r}.pt") for r in (0, 1)]


@needs_open_clip
@pytest.mark.parametrize("name", ["siglip", "infonce"])
def test_two_gloo_ranks_equal_open_clip_and_one_process(two_ranks, name):
    for report in two_ranks:  # each rank: our loss and gradients are open_clip's on the same rows
        for a, b in zip(report[name], report[f"open_clip_{name}"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    leaves = features()
    alone = loss_and_grads(ours(name, leaves), leaves)
    loss, g0, g1, g_scale, g_bias = alone
    ranks = [r[name] for r in two_ranks]
    # DDP averages the ranks: their mean loss is the whole batch's, as are the scale's and bias's gradients
    torch.testing.assert_close(sum(r[0] for r in ranks) / 2, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(r[3] for r in ranks) / 2, g_scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(r[4] for r in ranks) / 2, g_bias, rtol=1e-5, atol=1e-6)
    # a rank's features receive every rank's gradient (ring / gather backward): averaged, the whole batch's
    half = ROWS // 2
    for rank, r in enumerate(ranks):
        rows = slice(rank * half, (rank + 1) * half)
        torch.testing.assert_close(r[1] / 2, g0[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r[2] / 2, g1[rows], rtol=1e-5, atol=1e-6)
    # and the blocks of the other rank count: a rank's own loss differs from the one on its rows alone
    own = features(slice(0, half))
    assert not torch.isclose(ranks[0][0], ours(name, own).detach())
