"""`modaloom convert` end to end: hf -> modaloom -> hf round trip, tencentpretrain, and usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.cli.main import main  # noqa: E402
from modaloom.model import load  # noqa: E402

TP = Path(__file__).resolve().parents[3] / "shared" / "data" / "tencentpretrain" / "checkpoints"


def tiny_bert(tmp_path: Path, cls=None) -> Path:
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    model = (cls or transformers.BertModel)(cfg).eval()
    model.save_pretrained(tmp_path / "hf_src")
    (tmp_path / "hf_src" / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(99)) + "\n")
    return tmp_path / "hf_src"


def test_hf_to_modaloom_and_back_round_trips(tmp_path, capsys):
    src = tiny_bert(tmp_path)
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(tmp_path / "ml")]) == 0
    out = capsys.readouterr().out
    assert "BertModel" in out and "randomly initialised" in out
    model = load(tmp_path / "ml")
    assert (tmp_path / "ml" / "vocab.txt").is_file()
    assert [t.type for t in model.config.targets] == ["mlm", "sp"]
    # The recorded origin makes the export a BertModel again, identical to the source.
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(tmp_path / "ml"), str(tmp_path / "back")]) == 0
    original = transformers.BertModel.from_pretrained(src).state_dict()
    back = transformers.BertModel.from_pretrained(tmp_path / "back").state_dict()
    assert sorted(original) == sorted(back)
    assert all(torch.equal(original[k], back[k]) for k in original)
    # Asking for another architecture works too and reports nothing dropped.
    assert main(["convert", "--from", "modaloom", "--to", "hf", "--architecture", "BertForPreTraining",
                 str(tmp_path / "ml"), str(tmp_path / "pre")]) == 0
    assert transformers.AutoConfig.from_pretrained(tmp_path / "pre").architectures == ["BertForPreTraining"]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_existing_folder_is_refused_without_overwrite(tmp_path, capsys):
    src = tiny_bert(tmp_path, transformers.BertForMaskedLM)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and "--overwrite" not in err and "Traceback" not in err
    assert tree(tmp_path / "dst") == {"notes.txt": b"mine"}
    # --overwrite does not make a folder that is not a model folder fair game either.
    assert main(["convert", "--from", "hf", "--to", "modaloom", "--overwrite", str(src), str(tmp_path / "dst")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert tree(tmp_path / "dst") == {"notes.txt": b"mine"}
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_overwrite_replaces_a_model_folder_without_its_stale_files(tmp_path):
    src = tiny_bert(tmp_path, transformers.BertForMaskedLM)
    dst = tmp_path / "dst"
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(dst)]) == 0
    (dst / "merges.txt").write_text("stale merges of another tokenizer")  # as a GPT-2 conversion would leave
    (dst / "vocab.json").write_text("{}")
    assert main(["convert", "--from", "hf", "--to", "modaloom", "--overwrite", str(src), str(dst)]) == 0
    assert sorted(tree(dst)) == ["config.json", "model.safetensors", "vocab.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "inside"])
def test_destination_that_is_or_is_inside_the_source_is_refused(tmp_path, capsys, spelling):
    src = tiny_bert(tmp_path)
    ml = tmp_path / "ml"
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(ml)]) == 0
    before = tree(ml)
    (tmp_path / "link").symlink_to(ml)
    dst = {"same": ml, "dotdot": tmp_path / "hf_src" / ".." / "ml", "symlink": tmp_path / "link",
           "inside": ml / "hf"}[spelling]
    assert main(["convert", "--from", "modaloom", "--to", "hf", "--overwrite", str(ml), str(dst)]) == 2
    err = capsys.readouterr().err
    assert ("is the input" in err or "inside the input" in err) and "Traceback" not in err
    assert tree(ml) == before


def test_destination_holding_an_input_is_refused_even_with_overwrite(tmp_path, capsys):
    src = tiny_bert(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(out)]) == 0
    # The source lies inside the destination: replacing it would delete the source.
    ml = out / "nested"
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(src), str(ml)]) == 0
    assert main(["convert", "--from", "modaloom", "--to", "hf", "--overwrite", str(ml), str(out)]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert (ml / "model.safetensors").is_file()
    # So does a model folder holding the --config file of a TencentPretrain conversion.
    (out / "tp_config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"")
    assert main(["convert", "--from", "tencentpretrain", "--to", "modaloom", "--overwrite", "--config",
                 str(out / "tp_config.json"), str(tmp_path / "model.bin"), str(out)]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert (out / "tp_config.json").read_text() == "{}"


def test_destination_that_is_a_file_is_one_line(tmp_path, capsys):
    src = tiny_bert(tmp_path)
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main(["convert", "--from", "hf", "--to", "modaloom", "--overwrite", str(src), str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err
    assert (tmp_path / "file").read_text() == "x"


def test_unsupported_architecture_exits_2(tmp_path, capsys):
    cfg = transformers.GPTNeoConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                                    attention_types=[[["global"], 1]])
    transformers.GPTNeoModel(cfg).save_pretrained(tmp_path / "neo")
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(tmp_path / "neo"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "gpt_neo" in err and "bert" in err and "llama" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["convert", "--from", "hf", "--to", "hf", str(tmp_path), str(tmp_path / "x")]) == 2
    assert main(["convert", "--from", "tencentpretrain", "--to", "modaloom", str(tmp_path),
                 str(tmp_path / "x")]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2


@pytest.mark.skipif(not (TP / "bert_tiny_book_review_1k.bin").is_file(), reason="TencentPretrain data absent")
def test_from_tencentpretrain_to_modaloom_and_hf(tmp_path):
    argv = ["convert", "--from", "tencentpretrain", "--config", str(TP / "bert_tiny_config.json")]
    src = str(TP / "bert_tiny_book_review_1k.bin")
    assert main([*argv, "--to", "modaloom", src, str(tmp_path / "ml")]) == 0
    model = load(tmp_path / "ml").eval()
    assert main([*argv, "--to", "hf", src, str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[2, 15, 27, 99, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = model({"input_ids": ids, "attention_mask": mask}).hidden
        got = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert (expected - got)[mask.bool()].abs().max() < 1e-4
