"""LoRA adapters (merged on save and export), frozen parts kept fixed and in eval mode, and init_from."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

import modaloom
from modaloom.config_schema import Source, build
from modaloom.errors import CheckpointError, ConfigError
from modaloom.freeze import apply_strategies, freeze, frozen_in_eval, load_part
from modaloom.lora import LoraLinear, apply_lora, has_lora, merge_lora_state, trainable_count
from modaloom.model import build_model
from modaloom.train.config import LoraSettings, TrainConfig
from modaloom.train.optim import build_optimizer
from modaloom.weights import read_weights
from tests.model.test_model_core import TINY_BERT, bert_batch

QUERY = "encoder.stack.layers.0.self_attn.query"


def lora(**kw) -> LoraSettings:
    return build(LoraSettings, {"r": 4, "lora_alpha": 8, **kw}, Source(), "train.lora")


def randomise_adapters(model: torch.nn.Module) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.weight.normal_(std=0.5)


# ---------------------------------------------------------------- LoRA


def test_lora_starts_as_the_base_model_and_merges_to_the_same_function(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY_BERT).eval()
    before = model(bert_batch()).logits
    adapted = apply_lora(model, lora())
    assert adapted == [f"encoder.stack.layers.{i}.self_attn.{n}" for i in (0, 1) for n in ("query", "value")]
    start = model(bert_batch()).logits
    assert all(torch.equal(before[k], start[k]) for k in before)  # B starts at zero
    randomise_adapters(model)
    unmerged = model(bert_batch()).logits
    assert not torch.allclose(unmerged["mlm"], before["mlm"])
    state = model.state_dict()
    assert has_lora(state) and f"{QUERY}.lora_A.weight" in state and f"{QUERY}.weight" in state
    layer = model.get_submodule(QUERY)
    expected = layer.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight  # scaling alpha / r = 8 / 4
    assert torch.allclose(merge_lora_state(state)[f"{QUERY}.weight"], expected, atol=1e-6)
    model.save(tmp_path / "m")
    saved = read_weights(tmp_path / "m" / "model.safetensors")
    assert not has_lora(saved)
    merged = modaloom.load(tmp_path / "m").eval()
    out = merged(bert_batch()).logits
    for key in unmerged:
        torch.testing.assert_close(out[key], unmerged[key], atol=1e-5, rtol=1e-5)


def test_only_adapters_and_heads_train_and_get_optimizer_state():
    torch.manual_seed(0)
    model = build_model(TINY_BERT)
    apply_lora(model, lora(lora_dropout=0.1))
    cfg = build(TrainConfig, {"lr": 0.01, "clip_norm": 0}, Source(), "train")
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    model(bert_batch()).loss.backward()
    optimizer.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n or n.startswith("targets.") for n in with_grad)
    assert f"{QUERY}.lora_A.weight" in with_grad and f"{QUERY}.lora_B.weight" in with_grad
    assert "targets.mlm.head.dense.weight" in with_grad
    # the MLM output is tied to the word table, which stays frozen with the rest of the base model
    assert not model.embedding.parts.word.weight.requires_grad
    assert f"{QUERY}.weight" not in with_grad and f"{QUERY}.bias" not in with_grad
    names = {n for g in optimizer.param_groups for n in g["param_names"]}
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(optimizer.state) == len(names)
    trainable, total = trainable_count(model)
    assert 0 < trainable < total and trainable == sum(p.numel() for n, p in model.named_parameters()
                                                      if n in names)


def test_target_modules_regex_bias_and_modules_to_save():
    model = build_model(TINY_BERT)
    adapted = apply_lora(model, lora(target_modules=r".*layers\.1\..*(key|linear_in)", bias="lora_only",
                                     modules_to_save=["embedding"], train_targets=False))
    assert adapted == ["encoder.stack.layers.1.self_attn.key", "encoder.stack.layers.1.feed_forward.linear_in"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.stack.layers.1.self_attn.key.bias" in trainable
    assert "encoder.stack.layers.0.self_attn.key.bias" not in trainable
    assert "embedding.parts.pos.weight" in trainable and "embedding.norm.weight" in trainable
    assert not any(n.startswith("targets.") and "word" not in n for n in trainable)
    everything = build_model(TINY_BERT)
    adapted = apply_lora(everything, lora(target_modules="all-linear", train_targets=False))
    assert len(adapted) == 2 * 6 + len([n for n, m in build_model(TINY_BERT).targets.named_modules()
                                        if isinstance(m, torch.nn.Linear)]) - 1
    assert "targets.mlm.head.dense" in adapted and "targets.mlm.head.output" not in adapted  # tied: not adapted
    assert not everything.get_submodule("targets.mlm.head.dense").weight.requires_grad


def test_lora_refusals_name_the_valid_choices():
    with pytest.raises(ConfigError, match=r"names no linear layer.*linear_in.*query.*value"):
        apply_lora(build_model(TINY_BERT), lora(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match=r"modules_to_save: 'classifier' names no module.*embedding, encoder"):
        apply_lora(build_model(TINY_BERT), lora(modules_to_save=["classifier"]))
    with pytest.raises(ConfigError, match="not a regular expression"):
        apply_lora(build_model(TINY_BERT), lora(target_modules="(query"))
    with pytest.raises(ConfigError, match=r"unknown key 'alpha'.*lora_alpha"):
        build(TrainConfig, {"lora": {"alpha": 16}}, Source(), "train")
    with pytest.raises(ConfigError, match="train.lora.r must be positive"):
        build(TrainConfig, {"lora": {"r": 0}}, Source(), "train")


# ---------------------------------------------------------------- freeze and init_from


def test_freeze_keeps_the_part_in_eval_and_out_of_the_optimizer():
    model = build_model({**TINY_BERT, "embedding": {**TINY_BERT["embedding"], "dropout": 0.5}})
    frozen = freeze(model, ["encoder.stack.layers.0", "*.norm.*"])
    assert "encoder.stack.layers.0.self_attn.query.weight" in frozen and "embedding.norm.weight" in frozen
    assert "encoder.stack.layers.1.self_attn.query.weight" not in frozen
    model.train()
    assert not model.get_submodule("encoder.stack.layers.0").training
    assert model.get_submodule("encoder.stack.layers.1").training and model.embedding.training
    assert "encoder.stack.layers.0" in frozen_in_eval(model)
    cfg = build(TrainConfig, {}, Source(), "train")
    names = {n for g in build_optimizer(model, cfg, torch.device("cpu")).param_groups for n in g["param_names"]}
    assert names and not names & set(frozen)


@pytest.mark.parametrize("entry, valid", [
    ("encoder.stack.layers.7", "encoder.stack.layers.0, encoder.stack.layers.1"),
    ("encoders", "embedding, encoder, targets"),
])
def test_a_freeze_entry_naming_nothing_is_refused_with_the_valid_names(entry, valid):
    with pytest.raises(ConfigError, match=f"train.freeze: '{entry}' names no parameter.*{valid}"):
        freeze(build_model(TINY_BERT), [entry])


def test_init_from_loads_exactly_the_named_part_and_refuses_mismatches(tmp_path):
    torch.manual_seed(1)
    source = build_model(TINY_BERT)
    source.save(tmp_path / "src")
    torch.manual_seed(2)
    model = build_model(TINY_BERT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_part(model, "encoder.stack.layers.1", tmp_path / "src", "encoder.stack.layers.0")
    after, theirs = model.state_dict(), source.state_dict()
    assert len(report.loaded) == 16 and not report.missing
    for key in after:
        if key.startswith("encoder.stack.layers.1."):
            assert torch.equal(after[key], theirs[key.replace("layers.1.", "layers.0.")])
        else:
            assert torch.equal(after[key], before[key]), key
    assert "encoder.stack.layers.0.self_attn.query.weight" not in report.unused  # only under source_prefix
    with pytest.raises(ConfigError, match=r"train.init_from prefix: 'encoder.layers' names no parameter.*"
                                          r"encoder.stack"):
        load_part(model, "encoder.layers", tmp_path / "src")
    with pytest.raises(ConfigError, match=r"source_prefix 'decoder'.*embedding, encoder, targets"):
        load_part(model, "encoder", tmp_path / "src", "decoder")
    with pytest.raises(CheckpointError, match=r"shape mismatch, nothing loaded: encoder.*\(32, 16\) vs .*"
                                              r"\(16, 16\)"):
        load_part(model, "encoder.stack.layers.0.feed_forward.linear_in", tmp_path / "src",
                  "encoder.stack.layers.0.self_attn.query")
    with pytest.raises(CheckpointError, match="not a modaloom model folder"):
        load_part(model, "encoder", tmp_path)


def test_apply_strategies_reports_the_trainable_count(tmp_path):
    build_model(TINY_BERT).save(tmp_path / "src")
    model = build_model(TINY_BERT)
    cfg = build(TrainConfig, {"lora": {"r": 2}, "freeze": ["targets.sp"],
                              "init_from": [{"prefix": "encoder", "folder": str(tmp_path / "src"),
                                             "source_prefix": "encoder"}]}, Source(), "train")
    lines = apply_strategies(model, cfg)
    assert lines[0].startswith("init_from encoder <- ") and "32 tensors loaded" in lines[0]
    assert lines[1].startswith("LoRA r=2 alpha=8 on 4 linear layers")
    assert lines[2].startswith("frozen: 4 parameter tensors under targets.sp")
    trainable, total = trainable_count(model)
    assert lines[3] == f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
    assert not any(p.requires_grad for p in model.targets["sp"].parameters())


# ---------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from modaloom.cli.main import main
    from tests.train.data_helpers import tiny_bert_config, write_dataset

    root = tmp_path_factory.mktemp("lora")
    data = write_dataset(root / "data", documents=24)
    config = tiny_bert_config(root / "tiny.yaml", vocab_size=38, layers=2, train={"steps": 2})
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "pre")]) == 0
    return root, data


def cli(*args: str) -> tuple[int, str]:
    from modaloom.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def test_pretrain_with_lora_resumes_exactly_and_exports_a_merged_model(pretrained):
    from tests.train.data_helpers import tiny_bert_config

    root, data = pretrained
    lora_train = {"steps": 4, "save_every": 2, "schedule": "constant", "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}}
    config = tiny_bert_config(root / "lora.yaml", vocab_size=38, layers=2, train=lora_train)
    code, err = cli("pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "full"))
    assert code == 0, err
    assert "LoRA r=4 alpha=8 on 4 linear layers" in err and "trainable parameters: " in err
    code, err = cli("pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "cut"),
                    "--steps", "2")
    assert code == 0, err
    code, err = cli("pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "cut"),
                    "--resume", "--steps", "4")
    assert code == 0, err
    ckpt2, ckpt4 = (read_weights(root / "full" / "checkpoints" / f"step-{s}" / "model.safetensors") for s in (2, 4))
    assert has_lora(ckpt4)
    assert torch.equal(ckpt2[f"{QUERY}.weight"], ckpt4[f"{QUERY}.weight"])  # the base stays frozen
    assert not torch.equal(ckpt2[f"{QUERY}.lora_B.weight"], ckpt4[f"{QUERY}.lora_B.weight"])
    full, cut = (read_weights(root / run / "model" / "model.safetensors") for run in ("full", "cut"))
    assert not has_lora(full) and set(full) == set(cut)
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert torch.allclose(full[f"{QUERY}.weight"], merge_lora_state(ckpt4)[f"{QUERY}.weight"])
    modaloom.load(root / "full" / "model")  # a plain model folder
    code, err = cli("convert", "--from", "checkpoint", "--to", "modaloom",
                    str(root / "full" / "checkpoints" / "step-4"), str(root / "conv"))
    assert code == 0, err
    converted = read_weights(root / "conv" / "model.safetensors")
    assert all(torch.equal(converted[k], full[k]) for k in full)


def test_finetune_with_lora_through_the_cli(pretrained):
    from tests.tasks.test_classification import write_split

    root, _ = pretrained
    files = {n: write_split(root / f"{n}.tsv", count, seed) for n, count, seed in (("train", 16, 1), ("dev", 8, 2))}
    code, err = cli("finetune", "--task", "classification", "--model", str(root / "pre" / "model"),
                    "--train", str(files["train"]), "--dev", str(files["dev"]), "--out", str(root / "ft"),
                    "--batch-size", "8", "--epochs", "1", "train.lora.r=2", "train.lora.lora_alpha=4",
                    "train.progress=false", "train.tensorboard=false")
    assert code == 0, err
    line = next(x for x in err.splitlines() if "trainable parameters:" in x)
    model = modaloom.load(root / "ft" / "model")
    adapters = 4 * 2 * (16 + 16)  # query and value of 2 layers, r=2, 16 -> 16
    assert f"of {model.num_parameters() + adapters:,} " in line  # peft's count: the adapters included
    saved = read_weights(root / "ft" / "model" / "model.safetensors")
    assert not has_lora(saved) and "targets.cls.output.weight" in saved
    pre = read_weights(root / "pre" / "model" / "model.safetensors")
    assert torch.equal(saved["encoder.stack.layers.0.feed_forward.linear_in.weight"],
                       pre["encoder.stack.layers.0.feed_forward.linear_in.weight"])  # not adapted, frozen
    assert not torch.equal(saved[f"{QUERY}.weight"], pre[f"{QUERY}.weight"])  # the merged update
    assert json.loads((root / "ft" / "config.json").read_text())["train"]["lora"]["r"] == 2


def test_pretrain_with_a_frozen_part_initialised_from_a_model_folder(pretrained):
    from tests.train.data_helpers import tiny_bert_config

    root, data = pretrained
    train = {"steps": 3, "freeze": ["encoder"],
             "init_from": [{"prefix": "encoder", "folder": str(root / "pre" / "model"), "source_prefix": "encoder"}]}
    config = tiny_bert_config(root / "lit.yaml", vocab_size=38, layers=2, train=train)
    code, err = cli("pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "lit"))
    assert code == 0, err
    assert "init_from encoder <- " in err and "frozen: " in err
    pre = read_weights(root / "pre" / "model" / "model.safetensors")
    out = read_weights(root / "lit" / "model" / "model.safetensors")
    encoder = [k for k in out if k.startswith("encoder.")]
    assert encoder and all(torch.equal(out[k], pre[k]) for k in encoder)  # bit-identical after training
    assert not torch.equal(out["embedding.parts.pos.weight"], pre["embedding.parts.pos.weight"])


def test_the_dry_run_plan_counts_only_what_trains():
    from modaloom.config import load_config
    from modaloom.train.plan import plan_run

    base = {"model": TINY_BERT, "train": {"optimizer": "adamw"}}
    full = plan_run(load_config(None, [], base=base))
    lora_run = plan_run(load_config(None, ["train.lora.r=2"], base=base))
    frozen = plan_run(load_config(None, ["train.freeze=[encoder]"], base=base))
    assert lora_run.parameters["trainable"] < full.parameters["trainable"] == full.parameters["total"]
    assert lora_run.parameters["total"] == full.parameters["total"] + 4 * 2 * (16 + 16)
    assert lora_run.memory["optimizer"] < full.memory["optimizer"]
    assert frozen.parameters["trainable"] == full.parameters["total"] - sum(
        p.numel() for p in build_model(TINY_BERT).encoder.parameters())


def test_lit_locked_image_tower_from_a_vit_folder_stays_bit_identical(tmp_path):
    """LiT: a dual model's image tower loaded from a single-tower model folder, frozen, text side trained."""
    from tests.tasks.test_clip_tasks import tiny_clip_config

    cfg = json.loads(tiny_clip_config(tmp_path / "clip.json").read_text())["model"]
    cfg["embedding"]["streams"][0]["vocab_size"] = 40
    cfg["encoder"]["streams"][1]["dropout"] = 0.5  # the locked tower must not drop anything
    vit = {"embedding": cfg["embedding"]["streams"][1], "encoder": cfg["encoder"]["streams"][1],
           "targets": [{"type": "cls", "labels_num": 2}]}
    torch.manual_seed(5)
    build_model(vit).save(tmp_path / "vit")
    torch.manual_seed(6)
    model = build_model(cfg)
    train = build(TrainConfig, {"lr": 0.05, "clip_norm": 0, "freeze": ["embedding.streams.1", "encoder.streams.1"],
                                "init_from": [{"prefix": "encoder.streams.1", "folder": str(tmp_path / "vit"),
                                               "source_prefix": "encoder"},
                                              {"prefix": "embedding.streams.1", "folder": str(tmp_path / "vit"),
                                               "source_prefix": "embedding"}]}, Source(), "train")
    lines = apply_strategies(model, train)
    assert "18 tensors loaded" in lines[0] and "unused: encoder" not in lines[0]
    assert "4 tensors loaded" in lines[1] and "of the folder unused" not in lines[1]
    vit_state = read_weights(tmp_path / "vit" / "model.safetensors")
    locked = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[:3] in
              (["encoder", "streams", "1"], ["embedding", "streams", "1"])}
    assert len(locked) == 22 and all(torch.equal(v, vit_state[k.replace(".streams.1", "")]) for k, v in locked.items())
    text_before = model.embedding.streams[0].parts.word.weight.clone()
    optimizer = build_optimizer(model, train, torch.device("cpu"))
    model.train()
    assert not model.encoder.streams[1].training and model.encoder.streams[0].training
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(5, 40, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long),
             "pixel_values": torch.randn(4, 3, 16, 16)}
    assert torch.equal(model(batch).loss, model(batch).loss)  # training mode, yet the locked tower drops nothing
    for _ in range(3):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in locked.items())
    assert not torch.equal(model.embedding.streams[0].parts.word.weight, text_before)
