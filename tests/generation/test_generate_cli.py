"""`modaloom generate` end to end on a tiny model folder with a space tokenizer."""

from __future__ import annotations

import json

import pytest

from modaloom.cli.main import main
from modaloom.data.tokenizers import load_tokenizer
from modaloom.generation import GenerationConfig, generate

from .test_generation import tiny_lm

WORDS = ["[PAD]", "[UNK]", "</s>"] + [f"w{i}" for i in range(37)]


@pytest.fixture()
def model_dir(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    tokenizer = load_tokenizer({"type": "space", "vocab": str(vocab)})
    folder = tmp_path / "model"
    tiny_lm().save(folder)
    tokenizer.save(folder / "tokenizer")
    return folder, tokenizer


def test_prompts_from_a_file_give_one_record_per_line_in_order(model_dir, tmp_path, capsys):
    folder, tokenizer = model_dir
    lines = ["w1 w2 w3", "w9", "w4 w5 w6 w7 w8"]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(folder), "--input", str(source), "--out", str(out),
                 "--max-new-tokens", "5", "--batch-size", "2", "--num-beams", "2"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == lines
    expected = generate(tiny_lm(), tokenizer.encode_batch(lines),
                        GenerationConfig(max_new_tokens=5, num_beams=2, eos_token_id=2, pad_token_id=0))
    assert [r["tokens"] for r in records] == expected.token_lists()
    assert records[0]["text"] == tokenizer.decode([t for t in records[0]["tokens"] if t not in (0, 2)])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_prompt_flag_prints_jsonl_and_sampling_is_seeded(model_dir, capsys):
    folder, _ = model_dir
    args = ["generate", "--model", str(folder), "--prompt", "w3 w4", "--prompt", "w5", "--do-sample",
            "--seed", "3", "--top-k", "5", "--max-new-tokens", "4"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert len(first.splitlines()) == 2


def test_bad_input_is_a_clear_error(model_dir, tmp_path, capsys):
    folder, _ = model_dir
    source = tmp_path / "prompts.txt"
    source.write_text("w1\n\nw2\n")
    assert main(["generate", "--model", str(folder), "--input", str(source)]) == 2
    assert f"{source}:2: empty prompt" in capsys.readouterr().err
    bare = tmp_path / "bare"
    tiny_lm().save(bare)
    assert main(["generate", "--model", str(bare), "--prompt", "w1"]) == 2
    assert "no tokenizer/ folder" in capsys.readouterr().err
    assert main(["generate", "--model", str(folder), "--prompt", "w1", "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
