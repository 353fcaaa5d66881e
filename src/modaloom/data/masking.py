"""Noising functions applied at load time: BERT masking (token / whole-word / SpanBERT spans),
T5 span corruption with sentinels, BART text infilling and sentence permutation.

All take numpy int arrays and a ``np.random.Generator`` and return new arrays; inputs are not modified.
"""

from __future__ import annotations

import numpy as np

from modaloom.batch import IGNORE_INDEX
from modaloom.data.config import MaskingOptions


def _units(maskable: np.ndarray, word_start: np.ndarray | None) -> list[np.ndarray]:
    """Groups of positions masked together: single tokens, or whole words (start + continuations)."""
    positions = np.flatnonzero(maskable)
    if word_start is None or len(positions) == 0:
        return [positions[i:i + 1] for i in range(len(positions))]
    starts = word_start[positions].copy()
    starts[0] = True
    # a continuation after an unmaskable gap starts a new unit
    starts[1:] |= np.diff(positions) != 1
    cut = np.flatnonzero(starts)
    return np.split(positions, cut[1:])


def choose_masked_positions(maskable: np.ndarray, rng: np.random.Generator, options: MaskingOptions,
                            word_start: np.ndarray | None = None) -> np.ndarray:
    """Bool array of positions to predict: about ``mask_prob`` of the maskable ones (at least one).

    ``word_start`` (per position) groups pieces into words when ``options.whole_word``; with
    ``options.span``, spans of geometric(p) words, capped at ``span_max_length``, are chosen (SpanBERT).
    """
    chosen = np.zeros(len(maskable), dtype=bool)
    units = _units(maskable, word_start if options.whole_word or options.span else None)
    if not units:
        return chosen
    total = sum(len(u) for u in units)
    budget = max(1, int(round(total * options.mask_prob)))
    count = 0
    if options.span:
        lengths = np.minimum(rng.geometric(options.span_geo_prob, size=len(units) * 2), options.span_max_length)
        attempts = 0
        while count < budget and attempts < len(lengths):
            start = int(rng.integers(len(units)))
            span = units[start:start + int(lengths[attempts])]
            attempts += 1
            for unit in span:
                if count >= budget:
                    break
                if not chosen[unit[0]]:
                    chosen[unit] = True
                    count += len(unit)
        return chosen
    for index in rng.permutation(len(units)):
        if count >= budget:
            break
        unit = units[index]
        if count + len(unit) > budget and count > 0 and len(unit) > 1:
            continue  # a long word would overshoot the budget; try a shorter one
        chosen[unit] = True
        count += len(unit)
    return chosen


def mask_tokens(ids: np.ndarray, maskable: np.ndarray, rng: np.random.Generator, options: MaskingOptions,
                mask_id: int, vocab_size: int,
                word_start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: returns (input_ids, mlm_labels); chosen tokens become [MASK] / random / unchanged
    with probabilities replace_with_mask / replace_with_random / rest; labels are -100 elsewhere."""
    ids = np.asarray(ids, dtype=np.int64)
    chosen = choose_masked_positions(maskable, rng, options, word_start)
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    labels[chosen] = ids[chosen]
    out = ids.copy()
    where = np.flatnonzero(chosen)
    draw = rng.random(len(where))
    to_mask = where[draw < options.replace_with_mask]
    to_random = where[(draw >= options.replace_with_mask)
                      & (draw < options.replace_with_mask + options.replace_with_random)]
    out[to_mask] = mask_id
    out[to_random] = rng.integers(0, vocab_size, size=len(to_random))
    return out, labels


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> np.ndarray:
    """T5's noise mask: about ``noise_density`` of positions in spans of mean ``mean_span_length``,
    alternating with kept spans; the sequence always starts with a kept span."""
    if length < 2:
        return np.zeros(length, dtype=bool)
    num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
    num_spans = max(1, int(round(num_noise / mean_span_length)))
    num_spans = min(num_spans, num_noise, length - num_noise)

    def segment(total: int, parts: int) -> np.ndarray:
        # random composition of ``total`` into ``parts`` positive integers
        cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else []
        return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)

    noise_lengths = segment(num_noise, num_spans)
    keep_lengths = segment(length - num_noise, num_spans)
    mask = np.zeros(length, dtype=bool)
    position = 0
    for keep, noise in zip(keep_lengths, noise_lengths):
        position += int(keep)
        mask[position:position + int(noise)] = True
        position += int(noise)
    return mask


def t5_span_corruption(ids: np.ndarray, rng: np.random.Generator, sentinel_ids: list[int],
                       noise_density: float = 0.15,
                       mean_span_length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): each noise span in the input becomes one sentinel; the targets list each
    sentinel followed by the tokens it replaced (caller appends eos)."""
    ids = np.asarray(ids, dtype=np.int64)
    noise = random_spans_noise_mask(len(ids), rng, noise_density, mean_span_length)
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    span_count = int(starts.sum())
    if span_count > len(sentinel_ids):
        raise ValueError(f"{span_count} noise spans but only {len(sentinel_ids)} sentinel tokens")
    span_index = np.cumsum(starts) - 1
    sentinels = np.asarray(sentinel_ids[:max(span_count, 1)], dtype=np.int64)
    inputs = np.where(starts, sentinels[span_index.clip(0)], ids)[~noise | starts]
    span_starts_in_noise = np.flatnonzero(starts[noise])
    targets = np.insert(ids[noise], span_starts_in_noise, sentinels[:span_count])
    return inputs, targets


def bart_text_infilling(ids: np.ndarray, rng: np.random.Generator, mask_id: int, mask_ratio: float = 0.3,
                        poisson_lambda: float = 3.0) -> np.ndarray:
    """BART text infilling: spans with Poisson(lambda) lengths cover about ``mask_ratio`` of the tokens;
    each span becomes a single mask token (a 0-length span inserts one)."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if n == 0:
        return ids.copy()
    budget = int(round(n * mask_ratio))
    masked = np.zeros(n, dtype=bool)
    span_start = np.zeros(n, dtype=bool)
    inserts: list[int] = []
    covered = 0
    tries = 0
    while covered < budget and tries < 4 * n:
        tries += 1
        length = int(rng.poisson(poisson_lambda))
        start = int(rng.integers(n))
        if length == 0:
            inserts.append(start)
            covered += 1  # an inserted mask counts toward the noise, as in fairseq
            continue
        end = min(n, start + length)
        if masked[max(0, start - 1):end + 1].any():
            continue  # keep spans apart so each collapses to its own mask
        masked[start:end] = True
        span_start[start] = True
        covered += end - start
    out = np.where(span_start, mask_id, ids)[~masked | span_start]
    if inserts:
        # positions in the output: original position minus the masked tokens before it
        shift = np.concatenate([[0], np.cumsum(masked & ~span_start)])
        where = np.array(sorted(inserts), dtype=np.int64)
        out = np.insert(out, where - shift[where], mask_id)
    return out


def permute_sentences(sentences: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """BART sentence permutation: the same sentences in a random order."""
    return [sentences[i] for i in rng.permutation(len(sentences))]
