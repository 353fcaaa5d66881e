"""Sharded memory-mapped storage: round trip, dtypes, atomic publication, pickling."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from modaloom.data.storage import DatasetWriter, FieldSpec, RecordBatch, Skip, open_dataset, token_dtype
from modaloom.errors import DataError

FIELDS = {"input_ids": FieldSpec("uint16"), "label": FieldSpec("int64", "scalar")}


def _write(out, count=25, shard_bytes=64, **kwargs):
    with DatasetWriter(out, FIELDS, shard_bytes=shard_bytes, **kwargs) as writer:
        batch = RecordBatch(FIELDS)
        for i in range(count):
            batch.add({"input_ids": np.arange(i % 7 + 1) + i, "label": i})
        writer.add_batch(pickle.loads(pickle.dumps(batch)))  # as it comes back from a worker
        writer.skip(Skip("corpus.txt", 12, "empty: no tokens"))
        writer.close({"processor": {"name": "test"}})


def test_round_trip_across_shards(tmp_path):
    _write(tmp_path / "ds", shard_bytes=1)
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 25
    for i in (0, 6, 13, 24, -1):
        j = i % 25
        np.testing.assert_array_equal(ds[i]["input_ids"], np.arange(j % 7 + 1) + j)
        assert int(ds[i]["label"]) == j
    assert ds[3]["input_ids"].dtype == np.uint16
    assert ds.lengths("input_ids").tolist() == [i % 7 + 1 for i in range(25)]
    with pytest.raises(IndexError):
        ds[25]


def test_shard_bounds_cover_everything(tmp_path):
    with DatasetWriter(tmp_path / "ds", FIELDS, shard_bytes=40) as writer:
        for i in range(30):
            writer.add({"input_ids": [i, i], "label": i})
        writer.close()
    ds = open_dataset(tmp_path / "ds")
    assert len(ds.shard_bounds) > 1
    assert ds.shard_bounds[0][0] == 0 and ds.shard_bounds[-1][1] == 30
    assert all(a[1] == b[0] for a, b in zip(ds.shard_bounds, ds.shard_bounds[1:]))
    assert [int(ds[i]["label"]) for i in range(30)] == list(range(30))


def test_manifest_and_skips(tmp_path):
    _write(tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    assert ds.manifest["records"] == 25
    assert ds.manifest["fields"]["input_ids"] == {"dtype": "uint16", "kind": "sequence"}
    assert ds.manifest["skipped"]["by_reason"] == {"empty": 1}
    assert list(ds.skipped()) == [{"file": "corpus.txt", "line": 12, "reason": "empty: no tokens"}]


def test_interrupted_write_leaves_nothing_complete(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError), DatasetWriter(out, FIELDS) as writer:
        writer.add({"input_ids": [1, 2], "label": 0})
        raise RuntimeError("killed")
    assert not out.exists()
    assert not (tmp_path / ".ds.partial").exists()
    with pytest.raises(DataError, match="not a complete dataset"):
        open_dataset(out)


def test_partial_directory_of_a_killed_run_is_not_a_dataset_and_rerun_starts_clean(tmp_path):
    out = tmp_path / "ds"
    writer = DatasetWriter(out, FIELDS)
    writer.add({"input_ids": [1, 2], "label": 0})  # process "dies" here: no close, no abort
    assert (tmp_path / ".ds.partial").exists() and not out.exists()
    _write(out)
    assert len(open_dataset(out)) == 25
    assert not (tmp_path / ".ds.partial").exists()


def test_existing_dataset_needs_overwrite_and_survives_a_failed_replacement(tmp_path):
    out = tmp_path / "ds"
    _write(out, count=5)
    with pytest.raises(DataError, match="--overwrite"):
        DatasetWriter(out, FIELDS)
    with pytest.raises(RuntimeError), DatasetWriter(out, FIELDS, overwrite=True) as writer:
        writer.add({"input_ids": [1], "label": 1})
        raise RuntimeError("killed")
    assert len(open_dataset(out)) == 5
    _write(out, count=9, overwrite=True)
    assert len(open_dataset(out)) == 9


def test_truncated_offsets_are_detected_on_open(tmp_path):
    _write(tmp_path / "ds", shard_bytes=1 << 20)
    offsets = tmp_path / "ds" / "shard-00000" / "input_ids.offsets"
    offsets.write_bytes(offsets.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"input_ids.offsets is 200 bytes, expected 208"):
        open_dataset(tmp_path / "ds")


@pytest.mark.parametrize("cut", [2, 20, 1])
def test_truncated_data_is_detected_on_open(tmp_path, cut):
    """An even cut keeps whole uint16 values, so only the sizes can tell (the probe's case)."""
    _write(tmp_path / "ds", shard_bytes=1 << 20)
    data = tmp_path / "ds" / "shard-00000" / "input_ids.data"
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[:-cut])
    with pytest.raises(DataError, match=rf"input_ids.data is {size - cut} bytes, expected {size}"):
        open_dataset(tmp_path / "ds")


def test_manifest_records_byte_counts_and_old_manifests_are_checked_by_offsets(tmp_path):
    _write(tmp_path / "ds", shard_bytes=1 << 20)
    manifest_path = tmp_path / "ds" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard = manifest["shards"][0]
    assert shard["bytes"] == {"input_ids.data": 2 * sum(i % 7 + 1 for i in range(25)),
                              "input_ids.offsets": 8 * 26, "label.data": 8 * 25}
    del shard["bytes"]  # a dataset written before byte counts were recorded
    manifest_path.write_text(json.dumps(manifest))
    assert len(open_dataset(tmp_path / "ds")) == 25
    data = tmp_path / "ds" / "shard-00000" / "input_ids.data"
    whole = data.read_bytes()
    data.write_bytes(whole[:-4])
    with pytest.raises(DataError, match=f"input_ids.data is {len(whole) - 4} bytes, expected {len(whole)}"):
        open_dataset(tmp_path / "ds")
    data.write_bytes(whole)
    label = tmp_path / "ds" / "shard-00000" / "label.data"
    label.write_bytes(label.read_bytes() + b"\0" * 8)
    with pytest.raises(DataError, match="label.data is 208 bytes, expected 200"):
        open_dataset(tmp_path / "ds")


def test_pickled_dataset_reopens_maps(tmp_path):
    _write(tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000
    np.testing.assert_array_equal(clone[10]["input_ids"], ds[10]["input_ids"])


def test_token_dtype_is_smallest_unsigned():
    assert token_dtype(256) == "uint8"
    assert token_dtype(257) == "uint16"
    assert token_dtype(21128) == "uint16"
    assert token_dtype(65537) == "uint32"


def test_manifest_is_valid_json_written_last(tmp_path):
    _write(tmp_path / "ds")
    data = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert data["format_version"] == 1 and data["shards"]
    assert not list((tmp_path / "ds").glob("*.tmp"))


def _batch(start, count):
    batch = RecordBatch(FIELDS)
    for i in range(start, start + count):
        batch.add({"input_ids": [i, i + 1], "label": i})
    return batch


def test_interrupt_keeps_saved_progress_and_only_the_same_key_resumes(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), DatasetWriter(out, FIELDS, shard_bytes=30, resume_key="k1") as writer:
        assert writer.add_batch(_batch(0, 3))  # 3 * (4 + 8) bytes >= 30: the shard is complete
        writer.skip(Skip("c.txt", 2, "empty: none"))
        writer.save_progress({"chunks": 1})
        assert not writer.add_batch(_batch(3, 1))  # the next shard is open when Ctrl-C comes
        writer.skip(Skip("c.txt", 9, "empty: lost with the open shard"))
        raise KeyboardInterrupt
    assert (tmp_path / ".ds.partial" / "shard-00001").is_dir()
    with DatasetWriter(out, FIELDS, shard_bytes=30, resume_key="k1") as writer:
        assert writer.resumed == {"chunks": 1} and writer.count == 3 and writer.resumed_shards == 1
        assert not (writer.path / "shard-00001").exists()
        writer.add_batch(_batch(3, 2))
        writer.close()
    ds = open_dataset(out)
    assert [int(ds[i]["label"]) for i in range(len(ds))] == [0, 1, 2, 3, 4]
    assert [row["line"] for row in ds.skipped()] == [2] and ds.manifest["skipped"]["count"] == 1
    assert not (out / "progress.json").exists()


def test_progress_of_another_key_or_a_damaged_shard_starts_clean(tmp_path):
    out = tmp_path / "ds"
    for key, damage in (("other", False), ("k1", True)):
        with pytest.raises(KeyboardInterrupt), DatasetWriter(out, FIELDS, shard_bytes=30, overwrite=True,
                                                             resume_key="k1") as writer:
            writer.add_batch(_batch(0, 3))
            writer.save_progress({"chunks": 1})
            raise KeyboardInterrupt
        if damage:
            data = tmp_path / ".ds.partial" / "shard-00000" / "input_ids.data"
            data.write_bytes(data.read_bytes()[:-2])
        with DatasetWriter(out, FIELDS, overwrite=True, resume_key=key) as writer:
            assert writer.resumed is None and writer.count == 0
            writer.add_batch(_batch(10, 1))
            writer.close()
        assert len(open_dataset(out)) == 1
    with pytest.raises(ValueError, match="resume_key"), DatasetWriter(tmp_path / "x", FIELDS) as writer:
        writer.save_progress({})
    with pytest.raises(KeyboardInterrupt), DatasetWriter(tmp_path / "y", FIELDS, resume_key="k") as writer:
        writer.add({"input_ids": [1], "label": 1})
        raise KeyboardInterrupt  # nothing saved yet: nothing worth keeping
    assert not (tmp_path / ".y.partial").exists()


BULK_FIELDS = {"ids": FieldSpec("uint16"), "label": FieldSpec("uint8", "scalar")}


def _packed_bytes(batch: RecordBatch) -> dict[str, tuple[bytes, list[int] | None]]:
    return {name: (flat.tobytes(), None if lengths is None else lengths.tolist())
            for name, (flat, lengths) in batch.packed().items()}


@pytest.mark.parametrize("records", [
    [{"ids": [1, 2, 3], "label": 1}, {"ids": [], "label": 0}, {"ids": [65535], "label": 255}],  # bulk path
    [{"ids": np.arange(3), "label": np.int64(2)}, {"ids": [4, 5], "label": 1}],  # arrays: one by one
    [{"ids": [[1, 2], [3, 4]], "label": 1}, {"ids": [5], "label": 0}],  # nested lists are flattened by add
    [],
])
def test_add_many_equals_add_one_by_one(records):
    one_by_one, bulk = RecordBatch(BULK_FIELDS), RecordBatch(BULK_FIELDS)
    for record in records:
        one_by_one.add(record)
    bulk.add_many(records)
    assert bulk.count == one_by_one.count == len(records)
    assert _packed_bytes(bulk) == _packed_bytes(one_by_one)


@pytest.mark.parametrize(("record", "error"), [({"ids": [1]}, KeyError), ({"ids": [1], "label": [1, 2]}, ValueError),
                                               ({"ids": [70000], "label": 1}, OverflowError)])
def test_add_many_raises_what_add_raises(record, error):
    batch = RecordBatch(BULK_FIELDS)
    with pytest.raises(error):
        batch.add_many([{"ids": [1], "label": 0}, record])
    with pytest.raises(error):
        RecordBatch(BULK_FIELDS).add(record)
