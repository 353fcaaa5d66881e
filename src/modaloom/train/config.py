"""The train section of a config (owned by the training engine).

Every field can be set in the ``train:`` section of a job config or overridden on the command line as
``train.<field>=value``. The global batch of one optimizer step is
``batch_size * grad_accum_steps * world_size`` examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modaloom.config_schema import choice
from modaloom.errors import ConfigError


@dataclass
class LoraSettings:
    """``train.lora``: low-rank adapters on chosen linear layers; the option names are peft's ``LoraConfig``'s."""

    r: int = 8  # rank of the update B @ A
    lora_alpha: float = 8.0  # the update is scaled by lora_alpha / r
    lora_dropout: float = 0.0  # dropout on the input of A (training only)
    # module names: a list matches a name or its last dotted parts ("query" matches "...attention.query");
    # a string is a regular expression the whole module name must match; "all-linear": every nn.Linear
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "value"])
    modules_to_save: list[str] = field(default_factory=list)  # modules trained in full beside the adapters
    bias: str = choice("none", "none", "all", "lora_only")  # which biases train: none, all, the adapted layers'
    train_targets: bool = True  # the targets (task heads, pre-training outputs) train in full

    def validate(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"train.lora.r must be positive, got {self.r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"train.lora.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ConfigError("train.lora.target_modules is empty: name the linear layers to adapt, "
                              "e.g. [query, value]")


@dataclass
class InitFrom:
    """One ``train.init_from`` entry: the model's parameters under ``prefix`` from ``folder``'s weights
    under ``source_prefix`` (empty: the folder's root)."""

    prefix: str = ""  # parameter-name prefix of the model filled from the folder (empty: the whole model)
    folder: str = ""  # a modaloom model folder (model.safetensors + config.json)
    source_prefix: str = ""  # prefix of the folder's weights that is read (empty: its root)

    def validate(self) -> None:
        if not self.folder:
            raise ConfigError("train.init_from entries need a folder (a modaloom model folder)")


SCHEDULES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
    "inverse_sqrt", "tristage",
)


@dataclass
class TrainConfig:
    """Optimisation and run settings."""

    # length and batch
    steps: int = 100  # optimizer steps in total (a resumed run continues up to this count)
    batch_size: int = 32  # examples per micro-batch per process
    grad_accum_steps: int = 1  # micro-batches summed into one optimizer step
    # fine-tuning tasks: batches of examples of similar length (less padding), still shuffled and seeded
    group_by_length: bool = False
    # optimizer
    optimizer: str = choice("adamw", "adamw", "adafactor", "sgd")  # adamw, adafactor or sgd
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.01  # decoupled weight decay (adamw) for every parameter not matched by no_decay
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm"])  # name parts kept out of decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw / adafactor moment coefficients
    eps: float = 1e-8  # optimizer epsilon
    momentum: float = 0.0  # sgd momentum (other optimizers ignore it)
    optimizer_impl: str = choice("auto", "auto", "fused", "foreach", "loop")  # adamw kernels used
    # adamw only (other optimizers ignore it): false = no bias correction (original BERT / TencentPretrain);
    # early steps then are up to (1 - beta1) / sqrt(1 - beta2^t) times larger, ~3x at step 1 with the default betas
    adam_bias_correction: bool = True
    # schedule: warmup is a fraction of `steps` when warmup_ratio > 0, else warmup_steps
    schedule: str = choice("linear", *SCHEDULES)  # learning-rate schedule after the warm-up
    warmup_steps: int = 0  # linear warm-up length in optimizer steps (when warmup_ratio is 0)
    warmup_ratio: float = 0.0  # warm-up length as a fraction of steps; wins over warmup_steps when > 0
    min_lr_ratio: float = 0.0  # floor of decaying schedules, as a fraction of lr
    cycles: float = 1.0  # cosine_with_restarts: number of hard restarts
    power: float = 1.0  # polynomial decay power
    # tristage: fractions of steps to warm up, hold, decay
    tristage_ratios: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.5])
    tristage_final_scale: float = 0.01  # tristage: lr at the end as a fraction of lr
    # numerics
    clip_norm: float = 1.0  # largest global gradient norm; 0 disables clipping
    # autocast dtype; fp16 adds a gradient scaler; weights stay fp32; auto: bf16 where the device computes it
    # natively (CUDA with bf16, a CPU with AMX or AVX512-BF16), fp32 elsewhere (resolve_precision)
    precision: str = choice("fp32", "fp32", "bf16", "fp16", "auto")
    activation_checkpointing: bool = False  # recompute layer activations in the backward pass to save memory
    compile: bool = False  # torch.compile the model's forward
    seed: int = 7  # seed of initialisation, sampling and masking
    deterministic: bool = False  # torch deterministic algorithms (slower; warns where none exists)
    nonfinite: str = choice("stop", "stop", "skip")  # what a NaN/inf loss does
    # distributed
    parallel: str = choice("auto", "auto", "ddp", "fsdp", "none")  # auto: ddp when world_size > 1
    # evaluation, checkpoints, logging
    eval_every: int = 0  # optimizer steps between evaluations; 0: none
    eval_batches: int = 20  # batches per rank in each evaluation (0: the whole evaluation set)
    eval_holdout: float = 0.01  # records held out of --data for evaluation (a fraction, or a count >= 1)
    save_every: int = 0  # steps between checkpoints; 0: only at the end (and on SIGINT/SIGTERM)
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    # full: model and optimizer gathered and written whole by rank 0; sharded: every rank writes its own
    # shards (torch.distributed.checkpoint); auto: sharded under FSDP with more than one process, else full
    checkpoint_format: str = choice("full", "full", "sharded", "auto")
    log_every: int = 10  # optimizer steps between log lines
    progress: bool = True  # tqdm progress bar on rank 0
    tensorboard: bool = True  # write TensorBoard event files under the output folder
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # buffers above this many MiB are unmapped when freed, not kept on the heap (train/memory.py): the resident
    # size follows what is alive, but every step maps and faults in its buffers again (tiny BERT on 2 CPU
    # cores: 1 MiB gives 0.65x the peak RSS at 0.6x the speed); 0: glibc's default, fastest
    mmap_threshold_mb: float = 0.0
    out_dir: str = ""  # output folder; default: --out on the command line
    # parameter-efficient and partial training (modaloom/lora.py, modaloom/freeze.py)
    lora: LoraSettings | None = None  # LoRA adapters; the exported model has them merged
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes (or globs) kept fixed
    init_from: list[InitFrom] = field(default_factory=list)  # parts of the model loaded from model folders

    @property
    def warmup(self) -> int:
        """Warm-up length in optimizer steps."""
        if self.warmup_ratio > 0:
            return int(round(self.warmup_ratio * self.steps))
        return self.warmup_steps

    def validate(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"train.{key} must be positive, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.tristage_ratios) != 3 or abs(sum(self.tristage_ratios) - 1) > 1e-6:
            raise ConfigError(f"train.tristage_ratios must be 3 fractions summing to 1, got {self.tristage_ratios}")
        if self.optimizer == "adamw" and not self.adam_bias_correction and self.optimizer_impl == "fused":
            raise ConfigError("train.adam_bias_correction=false has no fused kernel (torch's fused AdamW always "
                              "corrects the bias); use train.optimizer_impl=auto, foreach or loop, or "
                              "train.adam_bias_correction=true")
        if self.clip_norm < 0:
            raise ConfigError(f"train.clip_norm must be >= 0 (0 disables), got {self.clip_norm}")
        if not 0 <= self.mmap_threshold_mb <= 32:
            raise ConfigError(f"train.mmap_threshold_mb must be in [0, 32] (0: glibc's default), got "
                              f"{self.mmap_threshold_mb}")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be >= 1, got {self.keep_last}")
        if any(not entry for entry in self.freeze):
            raise ConfigError(f"train.freeze entries must name a part, got {self.freeze}; an empty entry would "
                              f"freeze the whole model")
        for key in ("eval_every", "save_every", "log_every", "threads", "eval_batches"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu", "cuda") runs bf16 matmuls natively: emulated bf16 is slower than fp32."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device_type: str) -> str:
    """``train.precision`` as run on ``device_type``: ``auto`` becomes bf16 where it is native, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device_type) else "fp32"
