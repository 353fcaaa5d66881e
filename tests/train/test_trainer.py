import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from modaloom.train.config import TrainConfig
from modaloom.train.trainer import NonFiniteLossError, Trainer
from tests.train.standins import SyntheticLoader, TinyRegressor


def config(**kw):
    base = {"steps": 12, "batch_size": 8, "lr": 1e-2, "log_every": 3, "progress": False, "tensorboard": False,
            "schedule": "cosine", "warmup_steps": 2, "keep_last": 2}
    base.update(kw)
    return TrainConfig(**base)


def run(out, cfg, loader=None, resume=False, dropout=0.1, model_seed=0):
    torch.manual_seed(model_seed)
    trainer = Trainer(TinyRegressor(dropout=dropout), cfg, loader or SyntheticLoader(batch_size=cfg.batch_size),
                      out, seq_length=6)
    return trainer, trainer.fit(resume=resume)


def final_weights(out, step):
    return load_file(str(out / "checkpoints" / f"step-{step}" / "model.safetensors"))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class InterruptingLoader(SyntheticLoader):
    """Sends this process SIGINT while drawing a given batch."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def __iter__(self):
        for batch in super().__iter__():
            if self.delivered == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch


def test_sigint_saves_and_resume_is_bit_for_bit(tmp_path):
    _, full = run(tmp_path / "full", config(save_every=4))
    _, part = run(tmp_path / "part", config(save_every=4), InterruptingLoader(at=6))
    assert part["interrupted"] and part["steps"] == 6
    assert (tmp_path / "part" / "checkpoints" / "step-6").is_dir()
    # a fresh process would build the model with another seed: resume must overwrite everything
    _, rest = run(tmp_path / "part", config(save_every=4), resume=True, model_seed=99)
    assert rest["steps"] == 12 and rest["steps_this_run"] == 6 and not rest["interrupted"]
    assert_same(final_weights(tmp_path / "full", 12), final_weights(tmp_path / "part", 12))
    # the metrics log continues; the summary and curves are written
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    for key in ("steps", "tokens_per_second", "samples_per_second", "mfu", "peak_rss_mb"):
        assert key in summary
    assert summary["steps"] == 12 and summary["tokens_per_second"] > 0 and summary["mfu"] > 0
    assert (tmp_path / "part" / "curves.png").stat().st_size > 1000


class DataLoaderBacked(SyntheticLoader):
    """Delivers its batches through a torch DataLoader, which draws a seed from the global RNG per iterator."""

    def __iter__(self):
        outer = self

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                return SyntheticLoader.__iter__(outer)

        return iter(torch.utils.data.DataLoader(Stream(), batch_size=None))


def test_resume_is_exact_when_the_loader_uses_a_torch_dataloader(tmp_path):
    run(tmp_path / "full", config(save_every=3, keep_last=5), DataLoaderBacked(length=100))
    (tmp_path / "part" / "checkpoints").mkdir(parents=True)
    os.replace(tmp_path / "full" / "checkpoints" / "step-3", tmp_path / "part" / "checkpoints" / "step-3")
    run(tmp_path / "part", config(save_every=3), DataLoaderBacked(length=100), resume=True)
    assert_same(final_weights(tmp_path / "full", 12), final_weights(tmp_path / "part", 12))


def test_resume_without_loader_state_replays_batches(tmp_path):
    class Plain:  # no state_dict: the stream skips consumed batches
        def __init__(self):
            self.inner = SyntheticLoader()

        def __iter__(self):
            return iter(self.inner)

    run(tmp_path / "full", config(steps=10, schedule="constant"), Plain())
    run(tmp_path / "part", config(steps=4, schedule="constant"), Plain())
    run(tmp_path / "part", config(steps=10, schedule="constant"), Plain(), resume=True)
    assert_same(final_weights(tmp_path / "full", 10), final_weights(tmp_path / "part", 10))


def test_grad_accumulation_matches_a_bigger_batch(tmp_path):
    run(tmp_path / "big", config(steps=5), SyntheticLoader(batch_size=8), dropout=0.0)

    class Halves(SyntheticLoader):  # the same rows as the batch-8 loader, in two micro-batches
        def __iter__(self):
            for batch in SyntheticLoader(batch_size=8, length=self.length).__iter__():
                yield {k: v[:4] for k, v in batch.items()}
                yield {k: v[4:] for k, v in batch.items()}

    run(tmp_path / "acc", config(steps=5, batch_size=4, grad_accum_steps=2), Halves(batch_size=4), dropout=0.0)
    a, b = final_weights(tmp_path / "big", 5), final_weights(tmp_path / "acc", 5)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_changes_nothing(tmp_path):
    run(tmp_path / "plain", config(steps=4))
    run(tmp_path / "ckpt", config(steps=4, activation_checkpointing=True))
    assert_same(final_weights(tmp_path / "plain", 4), final_weights(tmp_path / "ckpt", 4))


def test_nonfinite_loss_stops_naming_step_and_batch(tmp_path):
    loader = SyntheticLoader(poison={5: float("nan")})
    with pytest.raises(NonFiniteLossError, match=r"step 6, micro-batch 0 \(training batch #5, loss nan\)"):
        run(tmp_path, config(), loader)
    assert (tmp_path / "nonfinite-step-6.safetensors").is_file()


def test_nonfinite_loss_skip_leaves_weights_untouched(tmp_path):
    trainer, summary = run(tmp_path / "skip", config(steps=6, nonfinite="skip"),
                           SyntheticLoader(poison={5: float("inf")}))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 6
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    trainer, summary = run(tmp_path, config(steps=6, precision=precision, lr=1e-2))
    assert summary["steps"] == 6 and summary["final_loss"] is not None
    assert trainer.raw_model.head.weight.dtype == torch.float32
    if precision == "fp16":
        state = json.loads((tmp_path / "checkpoints" / "step-6" / "trainer_state.json").read_text())
        assert state["scaler"]["scale"] > 0


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_only_where_the_device_has_it(tmp_path, monkeypatch, native):
    from modaloom.train import config as train_config

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the run below is the CPU's on any machine
    assert train_config.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert train_config.resolve_precision("fp16", "cpu") == "fp16"  # an explicit choice is kept
    assert train_config.resolve_precision("auto", "mps") == "fp32"
    trainer, summary = run(tmp_path, config(steps=2, precision="auto"))
    expected = "bf16" if native else "fp32"
    assert trainer.cfg.precision == summary["precision"] == expected
    assert trainer.autocast_dtype == (torch.bfloat16 if native else torch.float32)


def test_eval_runs_and_is_logged(tmp_path):
    torch.manual_seed(0)
    cfg = config(steps=6, eval_every=3, eval_batches=2)
    trainer = Trainer(TinyRegressor(), cfg, SyntheticLoader(), tmp_path, eval_loader=SyntheticLoader(seed=5))
    summary = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/loss" in r] == [3, 6]
    assert summary["eval/loss"] > 0


class HalfPaddedLoader(SyntheticLoader):
    """Batches whose attention mask marks the last half of every row as padding."""

    def global_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        batch = super().global_batch(epoch, index)
        mask = torch.ones_like(batch["input_ids"])
        mask[:, self.seq // 2:] = 0
        return {**batch, "attention_mask": mask}


def test_real_tokens_count_the_attention_mask_only(tmp_path):
    _, summary = run(tmp_path, config(steps=6, log_every=2), HalfPaddedLoader(batch_size=8))
    assert summary["real_tokens_per_second"] == pytest.approx(summary["tokens_per_second"] / 2, rel=0.01)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["real_tokens_per_second"] == pytest.approx(row["tokens_per_second"] / 2, rel=1e-6)
    _, unmasked = run(tmp_path / "unmasked", config(steps=4))
    assert unmasked["real_tokens_per_second"] == pytest.approx(unmasked["tokens_per_second"], rel=0.01)


def test_count_real_tokens_follows_the_sequence_key_and_its_mask():
    from modaloom.batch import count_real_tokens, count_tokens

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert int(count_real_tokens({"input_ids": torch.zeros(2, 3), "attention_mask": mask})) == 3
    assert int(count_real_tokens({"input_ids": torch.zeros(2, 3)})) == 6
    features = {"input_features": torch.zeros(2, 3, 4), "feature_mask": mask}
    assert count_tokens(features) == 6 and int(count_real_tokens(features)) == 3
    choices = {"input_ids": torch.zeros(2, 2, 3), "attention_mask": torch.ones(2, 2, 3)}
    assert int(count_real_tokens(choices)) == count_tokens(choices) == 12


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_mfu_divides_by_the_peak_of_the_precision_in_use(tmp_path, monkeypatch, precision, dtype):
    seen = []

    def fake_peak(device, peak_dtype=torch.float32, size=2048):
        seen.append(peak_dtype)
        return 1e9

    monkeypatch.setattr("modaloom.train.trainer.measure_matmul_peak", fake_peak)
    trainer, summary = run(tmp_path, config(steps=3, precision=precision))
    assert seen == [dtype] and trainer.matmul_dtype() == dtype and summary["mfu"] > 0
