"""weights.py: tied tensors stored once, every key and shape checked before a copy, bad files refused."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from modaloom import weights
from modaloom.errors import CheckpointError
from modaloom.weights import (
    load_weights_checked,
    read_tensors,
    read_weights,
    save_weights,
    tied_aliases,
    write_tensors,
)


class Tied(nn.Module):
    """A word table shared by an output layer, as a tied LM head does."""

    def __init__(self, vocab: int = 11, hidden: int = 4):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.body = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.word.weight


def stored(path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return set(handle.keys()), dict(handle.metadata())  # noqa: SIM118


def test_tied_aliases_of_a_model_and_of_its_state_dict():
    model = Tied()
    assert tied_aliases(model) == {"head.weight": "word.weight"}
    assert tied_aliases(model.state_dict()) == {"head.weight": "word.weight"}
    assert tied_aliases({"a": torch.zeros(3), "b": torch.zeros(3)}) == {}


def test_tied_round_trip_stores_once_and_stays_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    path = save_weights(model, tmp_path / "w.safetensors")
    keys, metadata = stored(path)
    assert keys == {"word.weight", "body.weight", "body.bias"}
    assert json.loads(metadata["aliases"]) == {"head.weight": "word.weight"}
    state = read_weights(path)
    assert set(state) == set(model.state_dict())
    fresh = Tied()
    load_weights_checked(fresh, state, str(path))
    assert fresh.head.weight is fresh.word.weight
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_file_without_alias_list_fills_tied_names_from_the_model(tmp_path):
    """Older saves and ``transformers`` files leave tied names out without listing them."""
    model = Tied()
    state = {k: v for k, v in model.state_dict().items() if k != "word.weight"}  # only the head's name
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    fresh = Tied()
    load_weights_checked(fresh, read_weights(tmp_path / "w.safetensors"), "w")
    assert torch.equal(fresh.word.weight, model.word.weight)


def test_mismatched_shape_is_refused_with_nothing_copied(tmp_path):
    save_weights(Tied(vocab=13), tmp_path / "w.safetensors")
    model = Tied(vocab=11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"w\.safetensors does not match.*word\.weight: checkpoint \(13, 4\) "
                                              r"vs model \(11, 4\).*nothing was loaded"):
        load_weights_checked(model, read_weights(tmp_path / "w.safetensors"), str(tmp_path / "w.safetensors"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # body.* fit but were not copied


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = Tied()
    state = {k: v for k, v in model.state_dict().items() if k != "body.bias"}
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"1 missing keys, e\.g\. body\.bias; 1 unexpected keys, e\.g\. extra"):
        load_weights_checked(Tied(), state, "f")
    fresh = Tied()
    load_weights_checked(fresh, state, "f", strict=False)  # loads what fits
    assert torch.equal(fresh.body.weight, model.body.weight)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{not json", b"garbage" * 10])
def test_corrupt_file_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read .*broken\.safetensors"):
        read_weights(path)


def test_truncated_file_is_refused(tmp_path):
    path = save_weights(Tied(), tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="cannot read"):
        read_weights(path)


def test_missing_file_and_bad_alias_list_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no weights file at .*absent"):
        read_weights(tmp_path / "absent.safetensors")
    write_tensors(tmp_path / "a.safetensors", {"x": torch.ones(2)}, {"aliases": json.dumps({"y": "nowhere"})})
    with pytest.raises(CheckpointError, match=r"a\.safetensors.*'aliases' metadata"):
        read_weights(tmp_path / "a.safetensors")


def test_write_tensors_keeps_metadata_and_is_atomic(tmp_path, monkeypatch):
    path = write_tensors(tmp_path / "t.safetensors", {"x": torch.arange(3)}, {"note": "kept"})
    tensors, metadata = read_tensors(path)
    assert torch.equal(tensors["x"], torch.arange(3)) and metadata == {"format": "pt", "note": "kept"}

    def dies_half_way(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_weights(Tied(), path)
    assert torch.equal(read_tensors(path)[0]["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]
