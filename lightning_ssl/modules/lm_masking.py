"""Input corruption for language-model pretraining: BERT's masked tokens and T5's span corruption.

``mlm_mask`` (Devlin et al., 2019, sec. 3.1; exactly the draws of Hugging Face's
``DataCollatorForLanguageModeling.torch_mask_tokens``):
    selected ~ Bernoulli(0.15) on every token that is not special and not padding
    of the selected: 80% -> [MASK], 10% -> a uniformly random token, 10% unchanged
    labels = the original token where selected, -100 elsewhere

``random_spans_noise_mask`` and ``span_corruption`` (Raffel et al., 2020, sec. 3.1.4; T5's
``random_spans_noise_mask`` / ``noise_span_to_unique_sentinel``): of L tokens, round(0.15 L) are noise, in
round(noise / 3) spans (mean length 3) that alternate with non-noise spans, the sequence starting with non-noise.
    original: Thank you for inviting me to your party last week .
    inputs:   Thank you <X> me to your party <Y> week . </s>        each noise span -> one sentinel
    targets:  <X> for inviting <Y> last </s>                        each sentinel, then its span
Sentinels come in T5's order: ``<extra_id_0>`` (the highest id) for the first span, then descending ids.
Every row of a batch gets the same input and target lengths (``span_lengths``), so batches need no padding;
``compute_input_and_target_lengths`` gives the raw length whose inputs are exactly a chosen length.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


# -- BERT ------------------------------------------------------------------------------------------------------
def mlm_mask(
    ids: Tensor,
    special: Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(B, T) ids and a (B, T) bool ``special`` (special tokens and padding: never selected) ->
    (inputs (B, T), labels (B, T) with -100 where not selected). Random replacements are drawn from
    ``[0, vocab_size)`` (the tokenizer's size), as Hugging Face and BERT's own code do."""
    if not 0 < probability < 1 or mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise ValueError(
            f"impossible MLM fractions: probability={probability} (must lie in (0, 1)), "
            f"mask_fraction={mask_fraction} + random_fraction={random_fraction} (must be <= 1)"
        )
    labels, inputs = ids.clone(), ids.clone()
    prob = torch.full(ids.shape, probability, device=ids.device).masked_fill_(special, 0.0)
    selected = torch.bernoulli(prob, generator=generator).bool()
    labels[~selected] = IGNORE_INDEX
    replaced = torch.bernoulli(torch.full(ids.shape, mask_fraction, device=ids.device), generator=generator).bool()
    replaced &= selected
    inputs[replaced] = mask_id
    if mask_fraction < 1 and random_fraction > 0:
        scaled = random_fraction / (1 - mask_fraction)  # of the selected tokens not replaced by [MASK]
        randomized = torch.bernoulli(torch.full(ids.shape, scaled, device=ids.device), generator=generator).bool()
        randomized &= selected & ~replaced
        words = torch.randint(vocab_size, ids.shape, dtype=ids.dtype, device=ids.device, generator=generator)
        inputs[randomized] = words[randomized]
    return inputs, labels


# -- T5 --------------------------------------------------------------------------------------------------------
def span_counts(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row of ``length`` tokens, as in T5's ``random_spans_noise_mask``."""
    if not 0 < noise_density < 1 or mean_noise_span_length < 1:
        raise ValueError(
            f"noise_density must lie in (0, 1) and mean_noise_span_length be >= 1, got "
            f"{noise_density} and {mean_noise_span_length}"
        )
    if length < 2:
        raise ValueError(f"span corruption needs rows of at least 2 tokens, got {length}")
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_noise_span_length), 1)
    return noise, spans


def span_lengths(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(input length, target length) after span corruption of ``length`` tokens, each with its final EOS."""
    noise, spans = span_counts(length, noise_density, mean_noise_span_length)
    return length - noise + spans + 1, noise + spans + 1


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens per row, target length) such that span corruption of the raw tokens gives inputs of exactly
    ``inputs_length`` tokens (T5's and Hugging Face's helper of the same name): for inputs of 512, 568 raw tokens
    and targets of 114. The datamodule's ``block_size`` is the raw length."""
    tokens = inputs_length
    while span_lengths(tokens + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens += 1
    inputs, targets = span_lengths(tokens, noise_density, mean_noise_span_length)
    if noise_density == 0.5 and targets > inputs:  # T5's own adjustment: targets no longer than inputs
        tokens, targets = tokens - 1, targets - 1
    return tokens, targets


def _random_segmentation(rows: int, items: int, segments: int, device, generator) -> Tensor:
    """(rows, segments) lengths >= 1 summing to ``items``: a uniformly random composition per row."""
    cuts = torch.rand(rows, items - 1, device=device, generator=generator).argsort(dim=1) < segments - 1
    segment_id = torch.cat([torch.zeros(rows, 1, dtype=torch.long, device=device), cuts.long().cumsum(1)], dim=1)
    return torch.zeros(rows, segments, dtype=torch.long, device=device).scatter_add_(
        1, segment_id, torch.ones_like(segment_id)
    )


def random_spans_noise_mask(
    rows: int,
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    device=None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(rows, length) bool, True on noise: each row alternates non-noise and noise spans (non-noise first) with
    random lengths, round(noise_density * length) noise tokens in round(noise / mean_noise_span_length) spans."""
    noise, spans = span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(rows, noise, spans, device, generator)
    keep_lengths = _random_segmentation(rows, length - noise, spans, device, generator)
    interleaved = torch.stack([keep_lengths, noise_lengths], dim=2).reshape(rows, 2 * spans)  # keep, noise, keep, ...
    starts = interleaved.cumsum(1)[:, :-1]  # where each span after the first begins
    indicator = torch.zeros(rows, length, dtype=torch.long, device=device).scatter_(1, starts, 1)
    return indicator.cumsum(1) % 2 == 1


def span_corruption(
    ids: Tensor,
    sentinel_ids: list[int] | Tensor,
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(B, L) ids -> (inputs (B, L_in), targets (B, L_tgt)), lengths from ``span_lengths(L)``. ``sentinel_ids[k]``
    stands for span k (T5: ``<extra_id_k>``, descending from the top id)."""
    b, length = ids.shape
    noise = random_spans_noise_mask(b, length, noise_density, mean_noise_span_length, ids.device, generator)
    sentinels = torch.as_tensor(sentinel_ids, dtype=ids.dtype, device=ids.device)
    spans = span_counts(length, noise_density, mean_noise_span_length)[1]
    if len(sentinels) < spans:
        raise ValueError(
            f"span corruption of {length} tokens makes {spans} spans but there are only {len(sentinels)} "
            f"sentinel tokens: give the tokenizer more sentinels (data.sentinels) or use shorter rows"
        )
    eos = torch.full((b, 1), eos_id, dtype=ids.dtype, device=ids.device)
    return _to_sentinels(ids, noise, sentinels, eos), _to_sentinels(ids, ~noise, sentinels, eos)


def _to_sentinels(ids: Tensor, drop: Tensor, sentinels: Tensor, eos: Tensor) -> Tensor:
    """Replace each run of ``drop`` positions by the sentinel of its span, append EOS (rows stay equal in length).
    The span of a run is counted over the noise runs, whichever side is dropped: both sides name span k alike."""
    first = drop & ~torch.cat([torch.zeros_like(drop[:, :1]), drop[:, :-1]], dim=1)  # (B, L) first of each run
    # inputs drop the noise (runs 0, 1, ...); targets drop the non-noise, whose run k precedes noise span k
    span = first.long().cumsum(1) - 1
    out = torch.where(first, sentinels[span.clamp(0, len(sentinels) - 1)], ids)
    keep = ~drop | first
    return torch.cat([out[keep].view(len(ids), -1), eos], dim=1)


def reconstruct(inputs: Tensor, targets: Tensor, sentinel_ids: list[int], eos_id: int) -> list[int]:
    """The original tokens from one row's span-corrupted ``inputs`` and ``targets`` (the inverse of
    ``span_corruption``; used in tests and to show what a model predicted)."""
    sentinel_set = {int(s): k for k, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets.tolist():
        if t in sentinel_set:
            current = sentinel_set[t]
            spans[current] = []
        elif t == eos_id:
            break
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs.tolist():
        if t in sentinel_set:
            out.extend(spans.get(sentinel_set[t], []))
        elif t == eos_id:
            break
        else:
            out.append(t)
    return out
