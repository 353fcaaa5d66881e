"""Replacing an existing step-N goes through atomic.swap_directory; a killed swap is repaired, not lost."""

import os
import shutil

from modaloom.train import checkpoint as ckpt
from tests.train.test_checkpoint import save, trained


def test_saving_a_step_again_replaces_it_cleanly(tmp_path):
    model, opt = trained()
    save(tmp_path, 1, model, opt)
    path = save(tmp_path, 1, model, opt)
    assert sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()) == ["step-1"]
    ckpt.load_checkpoint(path, *trained(seed=1))


def test_swap_killed_between_its_renames_is_put_back(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 1, model, opt)
    os.replace(path, path.with_name(".step-1.old"))  # step-1 set aside, the new one never arrived
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.remove_incomplete(tmp_path) == []
    assert ckpt.latest_checkpoint(tmp_path) == path
    ckpt.load_checkpoint(path, *trained(seed=1))


def test_superseded_old_step_is_removed_by_the_next_run_and_the_next_save(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 2, model, opt)
    stale = path.with_name(".step-2.old")
    shutil.copytree(path, stale)  # killed after the swap, before the old copy was deleted
    assert ckpt.remove_incomplete(tmp_path) == [stale]
    assert not stale.exists()
    shutil.copytree(path, stale)
    save(tmp_path, 2, model, opt)
    assert sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()) == ["step-2"]
