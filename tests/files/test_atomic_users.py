"""Writers built on modaloom.atomic: a dataset swap killed half way is repaired or refused before any work."""

import os
import shutil

import numpy as np
import pytest

from modaloom.data.storage import DatasetWriter, FieldSpec, open_dataset
from modaloom.errors import DataError, ModaloomError

FIELDS = {"input_ids": FieldSpec("uint16")}


def write(out, count, **kwargs):
    with DatasetWriter(out, FIELDS, **kwargs) as writer:
        for i in range(count):
            writer.add({"input_ids": np.arange(i + 1)})
        writer.close()


def test_dataset_set_aside_by_a_killed_swap_is_put_back_and_still_needs_overwrite(tmp_path):
    out = tmp_path / "ds"
    write(out, 3)
    os.replace(out, tmp_path / ".ds.old")
    with pytest.raises(DataError, match="--overwrite"):
        DatasetWriter(out, FIELDS)
    assert len(open_dataset(out)) == 3 and not (tmp_path / ".ds.old").exists()
    write(out, 4, overwrite=True)
    assert len(open_dataset(out)) == 4


def test_dataset_beside_a_stale_old_copy_is_refused_before_any_work(tmp_path):
    out = tmp_path / "ds"
    write(out, 3)
    shutil.copytree(out, tmp_path / ".ds.old")
    with pytest.raises(ModaloomError, match=r"\.ds\.old"):
        DatasetWriter(out, FIELDS, overwrite=True)
    assert len(open_dataset(out)) == 3 and (tmp_path / ".ds.old").is_dir()
    assert not (tmp_path / ".ds.partial").exists()
