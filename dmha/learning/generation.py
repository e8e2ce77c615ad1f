"""Batched forward passes and greedy decoding over an eager Hugging Face causal LM.

Training and the gate need many short sequences scored at once. Logits are only
computed at the positions asked for (the decoder's hidden states are gathered first):
the vocabulary projection of every prompt token would otherwise cost a fifth of a
forward pass on a 135M model.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from dmha.learning.prompting import Sequence

__all__ = ["answer_logits", "common_prefix", "greedy", "length_batches", "sequence_nll", "unwrap"]


def unwrap(model: Any) -> Any:
    """The ``PreTrainedModel`` under a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def common_prefix(seqs: Seq[Sequence]) -> int:
    """Length of the token prefix shared by every sequence's prompt."""
    if not seqs:
        return 0
    first = seqs[0].prompt
    n = min(len(s.prompt) for s in seqs)
    for s in seqs[1:]:
        n = next((i for i in range(n) if s.prompt[i] != first[i]), n)
    return n


def answer_logits(
    model: Any,
    seqs: Seq[Sequence],
    batch_size: int = 16,
    pad_id: int = 0,
    prefix_len: int | None = None,
    workers: int = 1,
) -> list[torch.Tensor]:
    """Logits that predict each answer token of each sequence (teacher forcing).

    The prompt prefix every sequence shares (the chat template's system message) is
    run once, with batch 1, and its key/value cache is broadcast to the batch: with
    a fixed system prompt that is half the tokens of a short chat prompt. Right
    padding needs no mask under causal attention (pads only follow real tokens).
    Gradients flow when called outside ``torch.no_grad``.

    Args:
        model: causal LM (peft-wrapped or not).
        seqs: sequences with non-empty answers.
        batch_size: sequences per forward pass (bounds activation memory).
        pad_id: id used for right padding.
        prefix_len: shared prefix length; None = computed (0 disables sharing).
        workers: Python threads the sequences are split over (no gradients only).
            Each runs its torch ops single-threaded, so on an idle multi-core host
            the parts run side by side without oversubscribing intra-op threads.

    Returns:
        One ``float32 [len(answer), vocab]`` tensor per sequence, in order.
    """
    if workers > 1 and len(seqs) > batch_size and not torch.is_grad_enabled():
        size = -(-len(seqs) // workers)
        parts = [seqs[i : i + size] for i in range(0, len(seqs), size)]

        def run(part: Seq[Sequence]) -> list[torch.Tensor]:
            # Grad mode is per thread: without this the pool's threads would record an
            # autograd graph per batch, and every returned tensor would keep its
            # batch's activations alive (gigabytes over the gate's probes).
            with torch.no_grad():
                return answer_logits(model, part, batch_size, pad_id, prefix_len)

        with ThreadPoolExecutor(len(parts), thread_name_prefix="dmha-logits") as pool:
            return [x for part in pool.map(run, parts) for x in part]
    base = unwrap(model)
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    device = _device(base)
    shared = common_prefix(seqs) if prefix_len is None else prefix_len
    # At least one prompt token must stay in the suffix to predict the first answer token.
    shared = max(0, min(shared, min((len(s.prompt) for s in seqs), default=1) - 1))
    past: tuple[torch.Tensor, ...] = ()
    if shared:
        cache = decoder(
            input_ids=torch.tensor([seqs[0].prompt[:shared]], device=device),
            past_key_values=DynamicCache(),
            use_cache=True,
        ).past_key_values
        past = tuple(t for layer in cache.layers for t in (layer.keys, layer.values))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for batch in length_batches([len(s.prompt) + len(s.answer) - 1 - shared for s in seqs], batch_size):
        chunk = [seqs[i] for i in batch]
        width = max(len(s.prompt) + len(s.answer) - 1 - shared for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        rows: list[int] = []
        cols: list[int] = []
        for i, s in enumerate(chunk):
            # The last answer token is predicted, never fed: drop it from the input.
            full = [*s.prompt, *s.answer][shared:-1]
            ids[i, : len(full)] = torch.tensor(full)
            rows += [i] * len(s.answer)
            first = len(s.prompt) - 1 - shared
            cols += range(first, first + len(s.answer))
        kwargs: dict[str, Any] = {}
        if past:
            layers = []
            for i in range(0, len(past), 2):
                layer = DynamicLayer()
                layer.keys = past[i].expand(len(chunk), -1, -1, -1)
                layer.values = past[i + 1].expand(len(chunk), -1, -1, -1)
                layer.dtype, layer.device = past[i].dtype, past[i].device
                layer.is_initialized = True
                layers.append(layer)
            cache = DynamicCache()
            cache.layers = layers
            kwargs = {"past_key_values": cache, "use_cache": True}
        hidden = decoder(input_ids=ids.to(device), **kwargs).last_hidden_state
        logits = head(hidden[torch.tensor(rows), torch.tensor(cols)]).float()
        for i, x in zip(batch, logits.split([len(s.answer) for s in chunk]), strict=True):
            out[i] = x
    return [x for x in out if x is not None]


# An extra forward pass costs about as much as this many padded token positions
# (the prefix broadcast and per-layer Python overhead of a small model).
_BATCH_OVERHEAD_TOKENS = 64


def length_batches(widths: Seq[int], batch_size: int) -> list[list[int]]:
    """Group sequences into forward passes of similar width.

    Right padding makes every sequence of a batch cost the widest one's positions:
    a training step's short task sequences ran padded to its long retain
    continuations. Sorted by width, a new batch starts when the batch is full or when
    widening it would pad more positions than another pass costs.

    Args:
        widths: input positions of each sequence.
        batch_size: most sequences per batch.

    Returns:
        Batches of indices into ``widths``; every index appears once.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(widths)), key=lambda j: widths[j]):
        current = batches[-1] if batches else None
        if (
            current is None
            or len(current) >= batch_size
            or len(current) * (widths[i] - widths[current[-1]]) > _BATCH_OVERHEAD_TOKENS
        ):
            batches.append([i])
        else:
            current.append(i)
    return batches


@torch.no_grad()
def sequence_nll(model: Any, ids: Seq[int]) -> float:
    """Mean negative log-likelihood per token of a plain text (for perplexity).

    Args:
        model: causal LM.
        ids: token ids (at least two).

    Returns:
        The mean NLL in nats.
    """
    seq = Sequence(tuple(ids[:1]), tuple(ids[1:]))
    logits = answer_logits(model, [seq], prefix_len=0)[0]
    target = torch.tensor(seq.answer, device=logits.device)
    return float(torch.nn.functional.cross_entropy(logits, target))


@torch.no_grad()
def greedy(
    model: Any,
    prompts: Seq[Seq[int]],
    max_new_tokens: int,
    eos_ids: Seq[int],
    batch_size: int = 16,
    pad_id: int = 0,
) -> list[list[int]]:
    """Greedy continuations of many prompts, decoded together with a KV cache.

    Prompts are left-padded so that every row's next token sits in the last column.

    Args:
        model: causal LM.
        prompts: token ids of each prompt.
        max_new_tokens: longest continuation.
        eos_ids: tokens that end a continuation (included in it).
        batch_size: prompts decoded together.
        pad_id: id used for padding (masked out).

    Returns:
        The generated ids per prompt, ending at the first end token if any.
    """
    base = unwrap(model)
    device = _device(base)
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p) :] = torch.tensor(list(p))
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = base(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        generated: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1)
            generated.append(nxt)
            done |= torch.isin(nxt, eos)
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones((len(chunk), 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits = base(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
        table = torch.stack(generated, dim=1).tolist()
        eos_set = {int(e) for e in eos_ids}
        for row in table:
            cut = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
            results.append(row[:cut])
    return results
