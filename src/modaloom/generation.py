"""Text generation for decoder-only models (an ``lm`` target on a causal encoder: GPT-2, LLaMA) and
encoder-decoder models (T5, BART): greedy, sampling (temperature, top-k, top-p) and beam search.

Decoding follows ``transformers``' ``generate`` step for step, so that a converted model gives the same
tokens: logits processors in its order (repetition penalty, minimum new tokens, then temperature, top-k,
top-p when sampling), finished rows continue with the pad id, and beam search keeps ``max(2, 1 + #eos) *
num_beams`` candidates per step with its length penalty and early-stopping rules. Decoder-only prompts of
different lengths are left-padded; positions come from the attention mask (``cumsum - 1``) through
``ForwardContext.position_ids``, so a padded row gives the tokens of the row alone. Every step after the
first feeds one token per row through the key/value caches of ``ForwardContext``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.model import Model

NEG = -1.0e9  # transformers' score of an impossible beam


@dataclass
class GenerationConfig:
    """Decoding options; the defaults are those of ``transformers.GenerationConfig`` where it has one."""

    max_new_tokens: int = 20  # tokens generated per row at most (eos included)
    min_new_tokens: int = 0  # eos is forbidden before this many new tokens
    do_sample: bool = False  # sample from the processed distribution instead of taking the best token
    temperature: float = 1.0  # sampling only: logits / temperature (< 1 sharper, -> 0 greedy)
    top_k: int = 0  # sampling only: keep the k best tokens (0: all)
    top_p: float = 1.0  # sampling only: keep the smallest set of best tokens whose mass reaches top_p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row (CTRL, as transformers)
    num_beams: int = 1  # > 1: beam search
    length_penalty: float = 1.0  # beam score = sum of log-probs / new_length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never", as transformers
    eos_token_id: int | list[int] | None = None  # None: the tokenizer's eos when the caller knows one
    pad_token_id: int | None = None  # fills finished rows; None: the first eos id, else the model's pad id
    decoder_start_token_id: int | None = None  # encoder-decoder: first decoder token; None: the pad id
    stop_strings: list[str] = field(default_factory=list)  # stop a row once its decoded text holds one
    seed: int | None = None  # sampling: a seeded generator makes runs reproducible

    def check(self) -> None:
        """Refuse values that would silently do something else, naming the option and the valid range."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.do_sample and self.num_beams > 1:
            raise ConfigError("do_sample with num_beams > 1 (beam sampling) is not supported; choose one")
        if self.stop_strings and self.num_beams > 1:
            raise ConfigError("stop_strings apply to greedy decoding and sampling (num_beams 1), "
                              f"not to beam search (num_beams {self.num_beams})")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; use do_sample=False for greedy")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1: off), got {self.repetition_penalty}")
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)


@dataclass
class GenerationOutput:
    """New tokens per prompt, (B, N) padded with the pad id after each row's end; beams add their scores."""

    tokens: torch.Tensor
    lengths: list[int]  # new tokens of each row, its eos included
    scores: torch.Tensor | None = None  # beam search: the length-penalised score of each returned beam

    def token_lists(self) -> list[list[int]]:
        """Each row's new tokens up to and including its eos."""
        return [row[:n] for row, n in zip(self.tokens.tolist(), self.lengths)]


# ------------------------------------------------------------------------------------------ model side
def lm_target_label(model: Model) -> str:
    """The label of the model's ``lm`` target that generation reads (the decoder's for encoder-decoders)."""
    found = [t for t in model.config.targets if t.type == "lm"
             and (model.decoder is None or t.source != "encoder")]
    if not found:
        have = [f"{t.label} ({t.type})" for t in model.config.targets] or ["none"]
        raise ConfigError(
            f"generation needs an 'lm' target (a language-model head); this model has targets: "
            f"{', '.join(have)}. Use a model converted or pre-trained with an lm target (GPT-2, LLaMA, T5, BART)")
    return found[0].label


class _Runner:
    """Feeds tokens to a model through its key/value caches and returns next-token logits (rows, vocab)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.head = model.targets[lm_target_label(model)]

    def logits(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.head(hidden[:, -1:], None, {}, ctx).logits[:, -1].float()


class _DecoderOnly(_Runner):
    """A causal encoder with an lm target; prompts left-padded, positions from the attention mask."""

    def __init__(self, model: Model, ids: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__(model)
        encoder = model.config.encoder
        if getattr(encoder, "mask", None) != "causal" or not hasattr(model.encoder, "new_caches"):
            raise ConfigError(
                f"decoder-only generation needs a transformer encoder with mask: causal; this model's encoder "
                f"is type {encoder.type!r} with mask {getattr(encoder, 'mask', None)!r}")
        if bool((mask[:, -1] == 0).any()):
            raise ConfigError("decoder-only prompts must be left-padded: a row ends with padding")
        self.caches = model.encoder.new_caches()
        self.padded = not bool(mask.all())
        self.mask = mask
        self.ids = ids

    def start(self) -> torch.Tensor:
        ctx = ForwardContext(encoder_caches=self.caches)
        batch = {"input_ids": self.ids}
        if self.padded:
            ctx.position_ids = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
            batch["attention_mask"] = self.mask
        hidden, _ = self.model.encode(batch, ctx)
        return self.logits(hidden, ctx)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        past = self.caches[0].length
        ctx = ForwardContext(encoder_caches=self.caches, past_length=past)
        batch = {"input_ids": tokens[:, None]}
        if self.padded:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
            ctx.position_ids = self.mask.long().sum(-1, keepdim=True) - 1
            batch["attention_mask"] = self.mask
        hidden, _ = self.model.encode(batch, ctx)
        return self.logits(hidden, ctx)

    def reorder(self, index: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder(index)
        if self.padded:
            self.mask = self.mask.index_select(0, index)


class _EncoderDecoder(_Runner):
    """Encoder once, then the decoder one token at a time with self- and cross-attention caches."""

    def __init__(self, model: Model, inputs: dict[str, torch.Tensor], rows: int, start_id: int) -> None:
        super().__init__(model)
        if not hasattr(model.decoder, "new_caches"):
            raise ConfigError(f"decoder type {model.config.decoder.type!r} has no key/value cache for generation")
        self.inputs, self.rows, self.start_id = inputs, rows, start_id  # inputs: the encoder's batch
        self.caches, self.cross = model.decoder.new_caches()
        self.memory = self.memory_mask = None

    def start(self) -> torch.Tensor:
        self.memory, self.memory_mask = self.model.encode(self.inputs)
        first = torch.full((self.rows,), self.start_id, dtype=torch.long, device=self.memory.device)
        return self.step(first)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        ctx = ForwardContext(decoder_caches=self.caches, cross_caches=self.cross,
                             decoder_past_length=self.caches[0].length)
        hidden, _ = self.model.decode({"decoder_input_ids": tokens[:, None]}, self.memory, self.memory_mask, ctx)
        return self.logits(hidden, ctx)

    def reorder(self, index: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder(index)

    def expand(self, index: torch.Tensor) -> None:
        """Rows for beams before the first decoder step: memory and its mask follow the index."""
        self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
        for cache in self.cross:
            cache.reorder(index)
        self.reorder(index)


# ------------------------------------------------------------------------------------ logits processing
def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: seen tokens' scores divided (> 0) or multiplied (< 0)."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Scores below the k-th best become -inf (ties with the k-th are kept, as transformers)."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the best tokens whose probability mass reaches p (at least one), as transformers' TopPLogitsWarper."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class _Processor:
    """The per-step score pipeline, in transformers' order; ``seen`` (rows, vocab) tracks each row's tokens."""

    def __init__(self, cfg: GenerationConfig, vocab: int, device: torch.device) -> None:
        self.cfg = cfg
        eos = [i for i in cfg.eos_ids if 0 <= i < vocab]
        self.eos = torch.tensor(eos, dtype=torch.long, device=device)
        self.seen: torch.Tensor | None = None

    def remember(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add (rows, T) tokens to each row's history (only where ``mask`` is true)."""
        if self.cfg.repetition_penalty == 1.0:
            return
        if self.seen is None:
            raise RuntimeError("call start() first")
        weight = torch.ones_like(tokens) if mask is None else mask.long()
        counts = torch.zeros(self.seen.shape, dtype=torch.long, device=self.seen.device)
        self.seen |= counts.scatter_add_(1, tokens, weight) > 0

    def start(self, rows: int, vocab: int, device: torch.device) -> None:
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)

    def reorder(self, index: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)

    def __call__(self, scores: torch.Tensor, new_tokens: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, self.seen, cfg.repetition_penalty)
        if new_tokens < cfg.min_new_tokens and self.eos.numel():
            scores = scores.index_fill(-1, self.eos, float("-inf"))
        if cfg.do_sample:
            if cfg.temperature != 1.0:
                scores = scores / cfg.temperature
            if cfg.top_k:
                scores = top_k_filter(scores, cfg.top_k)
            if cfg.top_p < 1.0:
                scores = top_p_filter(scores, cfg.top_p)
        return scores


# ------------------------------------------------------------------------------------------ the engine
def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, left: bool,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged token lists -> (ids, attention mask), padded on the left (decoder-only) or right."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token (an empty prompt was given)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        span = slice(width - len(prompt), width) if left else slice(0, len(prompt))
        ids[row, span] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def _pad_id(model: Model, cfg: GenerationConfig) -> int:
    if cfg.pad_token_id is not None:
        return cfg.pad_token_id
    if cfg.eos_ids:
        return cfg.eos_ids[0]
    return int(getattr(model.config.embedding, "pad_id", 0))


@torch.inference_mode()
def generate(model: Model, prompts: Sequence[Sequence[int]] | torch.Tensor | None = None,
             config: GenerationConfig | None = None, attention_mask: torch.Tensor | None = None,
             decode: Callable[[list[int]], str] | None = None,
             encoder_inputs: dict[str, torch.Tensor] | None = None) -> GenerationOutput:
    """Generate continuations of ``prompts`` (token lists, or an (B, L) tensor with ``attention_mask``).

    Decoder-only models continue each prompt; encoder-decoder models encode it and decode from
    ``decoder_start_token_id``. ``decode`` turns token ids into text for ``stop_strings``. An encoder-decoder
    whose encoder reads something else than token ids (speech: ``input_features`` and ``feature_mask``) takes
    that batch as ``encoder_inputs`` instead of ``prompts``.
    """
    cfg = config or GenerationConfig()
    cfg.check()
    if cfg.stop_strings and decode is None:
        raise ConfigError("stop_strings need a decode function (a tokenizer) to read the generated text")
    device = next(model.parameters()).device
    pad = _pad_id(model, cfg)
    seq2seq = model.decoder is not None
    if (prompts is None) == (encoder_inputs is None):
        raise ConfigError("give generate either prompts (token ids) or encoder_inputs (an encoder batch), not both")
    if encoder_inputs is not None:
        if not seq2seq or not encoder_inputs:
            raise ConfigError("encoder_inputs need an encoder-decoder model and at least one tensor")
        inputs = {k: v.to(device) for k, v in encoder_inputs.items()}
        rows = len(next(iter(inputs.values())))
    elif isinstance(prompts, torch.Tensor):
        ids = prompts.to(device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)
    else:
        ids, mask = pad_prompts(prompts, pad, left=not seq2seq, device=device)
    if encoder_inputs is None:
        inputs = {"input_ids": ids, **({} if bool(mask.all()) else {"attention_mask": mask})}
        rows = len(ids)
    was_training = model.training
    model.eval()
    try:
        if seq2seq:
            start_id = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else \
                int(getattr(model.config.tgt_embedding, "pad_id", pad))
            runner: _Runner = _EncoderDecoder(model, inputs, rows, start_id)
            history, history_mask = torch.full((rows, 1), start_id, device=device), None
        else:
            runner = _DecoderOnly(model, ids, mask)
            history, history_mask = ids, mask
        if cfg.num_beams > 1:
            return _beam_search(runner, cfg, pad, history, history_mask)
        return _greedy_or_sample(runner, cfg, pad, history, history_mask, decode)
    finally:
        model.train(was_training)


def _greedy_or_sample(runner, cfg: GenerationConfig, pad: int, history: torch.Tensor,
                      history_mask: torch.Tensor | None, decode) -> GenerationOutput:
    logits = runner.start()
    rows, vocab = logits.shape
    device = logits.device
    process = _Processor(cfg, vocab, device)
    process.start(rows, vocab, device)
    process.remember(history, history_mask)
    generator = None
    if cfg.do_sample and cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    steps: list[torch.Tensor] = []
    for step in range(cfg.max_new_tokens):
        scores = process(logits, step)
        if cfg.do_sample:
            chosen = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
        else:
            chosen = scores.argmax(dim=-1)
        chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
        steps.append(chosen)
        lengths += (~finished).long()
        process.remember(chosen[:, None])
        if process.eos.numel():
            finished |= torch.isin(chosen, process.eos)
        if cfg.stop_strings:
            finished |= _stopped(torch.stack(steps, 1), finished, cfg.stop_strings, decode)
        if bool(finished.all()) or step + 1 == cfg.max_new_tokens:
            break
        logits = runner.step(chosen)
    return GenerationOutput(torch.stack(steps, 1), lengths.tolist())


def _stopped(tokens: torch.Tensor, finished: torch.Tensor, stops: list[str], decode) -> torch.Tensor:
    """Rows (not yet finished) whose decoded new text contains one of the stop strings."""
    out = torch.zeros_like(finished)
    for row in (~finished).nonzero().flatten().tolist():
        text = decode(tokens[row].tolist())
        out[row] = any(s in text for s in stops)
    return out


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, K, ...) indexed along dim 1 by index (B, K')."""
    while index.dim() < values.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(values, index, dim=1)


def _beam_search(runner, cfg: GenerationConfig, pad: int, history: torch.Tensor,
                 history_mask: torch.Tensor | None) -> GenerationOutput:
    """transformers' vectorised beam search: running beams and a pool of finished ones per prompt."""
    beams, limit, lp, early = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty, cfg.early_stopping
    logits = runner.start()
    batch, vocab = logits.shape
    device = logits.device
    expand = torch.arange(batch, device=device).repeat_interleave(beams)
    if isinstance(runner, _EncoderDecoder):
        runner.expand(expand)
    else:
        runner.reorder(expand)
    logits = logits.index_select(0, expand)
    process = _Processor(cfg, vocab, device)
    process.start(batch * beams, vocab, device)
    process.remember(history.index_select(0, expand),
                     None if history_mask is None else history_mask.index_select(0, expand))
    keep = max(2, 1 + process.eos.numel()) * beams
    top_beams = torch.arange(keep, device=device) < beams
    offset = (torch.arange(batch, device=device) * beams)[:, None]

    running = torch.full((batch, beams, limit), pad, dtype=torch.long, device=device)
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = NEG
    done = running.clone()
    done_scores = torch.full((batch, beams), NEG, device=device)
    done_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    done_flag = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)

    for step in range(limit):
        log_probs = process(F.log_softmax(logits, dim=-1), step)
        total = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)
        top_scores, top_index = torch.topk(total, keep)
        source = top_index // vocab
        tokens = top_index % vocab
        candidates = _gather(running, source)
        candidates[:, :, step] = tokens
        ends = torch.isin(tokens, process.eos) if process.eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
        if step + 1 >= limit:
            ends = torch.ones_like(ends)

        # the best num_beams candidates that did not end continue
        alive_scores = top_scores + ends.float() * NEG
        pick = torch.topk(alive_scores, beams).indices
        running = _gather(candidates, pick)
        running_scores = _gather(alive_scores, pick)
        parents = (_gather(source, pick) + offset).flatten()

        # candidates that ended among the top num_beams join the finished pool if they beat its members
        just_done = ends & top_beams[None, :]
        scores = top_scores / ((step + 1) ** lp)
        full = done_flag.all(-1, keepdim=True) & (early is True)
        scores = scores + full.float() * NEG + (~improvable).float() * NEG + (~just_done).float() * NEG
        merged = torch.topk(torch.cat([done_scores, scores], 1), beams).indices
        done = _gather(torch.cat([done, candidates], 1), merged)
        done_scores = _gather(torch.cat([done_scores, scores], 1), merged)
        step_lengths = torch.full_like(tokens, step + 1)
        done_lengths = _gather(torch.cat([done_lengths, step_lengths], 1), merged)
        done_flag = _gather(torch.cat([done_flag, just_done], 1), merged)

        generated = step + 1
        best_length = limit if (early == "never" and lp > 0) else generated
        best_running = running_scores[:, :1] / (best_length ** lp)
        worst_done = torch.where(done_flag, done_scores.min(-1, keepdim=True).values, torch.full_like(done_scores, NEG))
        improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
        open_beam = not (bool(done_flag.all()) and early is True)
        if not (bool(improvable.any()) and open_beam and not bool(ends.all())):
            break
        runner.reorder(parents)
        process.reorder(parents)
        last = running[:, :, step].flatten()
        process.remember(last[:, None])
        logits = runner.step(last)

    lengths = done_lengths[:, 0]
    width = int(lengths.max())
    tokens = done[:, 0, :width].clone()
    positions = torch.arange(width, device=device)[None, :]
    tokens[positions >= lengths[:, None]] = pad
    return GenerationOutput(tokens, lengths.tolist(), done_scores[:, 0])
