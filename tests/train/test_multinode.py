"""Two torchrun agents on 127.0.0.1 (``--nnodes 2``, c10d rendezvous, one process each) stand for two
machines: the result equals one process with the same global batch, and both write one output folder."""

import json
import uuid

import pytest
import torch
from safetensors.torch import load_file

from modaloom.errors import ConfigError
from modaloom.outputs import LOCK_NAME
from modaloom.train import distributed as dist_utils
from tests.train.data_helpers import tiny_bert_config, write_dataset
from tests.train.test_distributed import launch, weights
from tests.train.torchrun_helpers import finish, free_port, pretrain, run, start, torchrun


def two_agents(*program: str) -> list[tuple[int, str]]:
    """Start two agents of one job; the rendezvous, not the test, decides which node is rank 0."""
    options = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", uuid.uuid4().hex[:8]]
    return finish([start(torchrun(*options, *program)) for _ in range(2)])


def test_two_nodes_match_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    for status, output in two_agents("-m", "tests.train.dist_script", str(multi), "ddp"):
        assert status == 0, output[-4000:]
    launch(single, 1)
    one, two = weights(single), weights(multi)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    assert {json.loads((multi / f"report-{r}.json").read_text())["rank"] for r in (0, 1)} == {0, 1}


def test_two_nodes_share_one_output_folder_through_the_cli(tmp_path):
    """Both agents' processes write --out; only rank 0 takes the run lock, and the run equals the same two
    processes on one node."""
    data = write_dataset(tmp_path / "data", documents=40)
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 4, "threads": 1})
    out, standalone = tmp_path / "out", tmp_path / "standalone"
    for status, output in two_agents(*pretrain(config, data, out)):
        assert status == 0, output[-4000:]
    run(torchrun("--standalone", "--nproc-per-node", "2", *pretrain(config, data, standalone)))
    ckpt = out / "checkpoints" / "step-4"
    assert {p.name for p in ckpt.glob("rank-*.json")} == {"rank-0.json", "rank-1.json"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
    assert "modaloom pretrain (pid" in (out / LOCK_NAME).read_text()
    assert not list(out.glob(".shared-probe-*")) and not list(out.glob(".write-test-*"))
    got = load_file(str(out / "model" / "model.safetensors"))
    expected = load_file(str(standalone / "model" / "model.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def fake_gather(visible: list[bool]):
    def gather(seen: list, entry: tuple[bool, str]) -> None:
        for rank, ok in enumerate(visible):
            seen[rank] = (ok and entry[0], f"node-{rank}")
    return gather


def test_shared_folder_check_names_the_ranks_that_cannot_see_out(tmp_path, monkeypatch):
    monkeypatch.setattr(dist_utils.dist, "barrier", lambda: None)
    monkeypatch.setattr(dist_utils.dist, "all_gather_object", fake_gather([True, False, True]))
    with pytest.raises(ConfigError, match=r"rank 1 on node-1 cannot see .* storage every node mounts"):
        dist_utils.check_shared_folder(tmp_path, dist_utils.DistInfo(world_size=3))
    assert list(tmp_path.iterdir()) == []  # the probe is removed either way
    monkeypatch.setattr(dist_utils.dist, "all_gather_object", fake_gather([True, True]))
    dist_utils.check_shared_folder(tmp_path, dist_utils.DistInfo(world_size=2))
    assert list(tmp_path.iterdir()) == []


def test_shared_folder_check_is_skipped_for_one_process(tmp_path):
    dist_utils.check_shared_folder(tmp_path / "absent", dist_utils.DistInfo())
