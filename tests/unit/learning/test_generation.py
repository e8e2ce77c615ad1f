"""Batched helpers agree with one-at-a-time computation."""

from __future__ import annotations

import torch

from dmha.learning.generation import answer_logits, greedy, length_batches


def _greedy_one(model, prompt, n, eos):
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(tok)
            if tok in eos:
                break
            ids.append(tok)
    return out


def test_batched_greedy_equals_single(tiny_model, fmt) -> None:
    prompts = [fmt.prompt(q) for q in ["Hi", "Tell me a story about a cat.", "Who wrote the book?"]]
    batched = greedy(tiny_model, prompts, 8, fmt.eos_ids)
    assert batched == [_greedy_one(tiny_model, p, 8, fmt.eos_ids) for p in prompts]


def test_answer_logits_with_and_without_shared_prefix(tiny_model, fmt) -> None:
    seqs = [fmt.sequence("Hi", "Hello there."), fmt.sequence("Who wrote the book?", "A cat.")]
    with torch.no_grad():
        shared = answer_logits(tiny_model, seqs)
        plain = answer_logits(tiny_model, seqs, prefix_len=0)
        one = [answer_logits(tiny_model, [s], prefix_len=0)[0] for s in seqs]
    for a, b, c in zip(shared, plain, one, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4)
    assert [x.shape[0] for x in shared] == [len(s.answer) for s in seqs]


def test_training_renders_prompts_exactly_as_serving(tiny_tokenizer, fmt) -> None:
    from dmha.llm.base import ChatMessage
    from dmha.llm.engine import render_chat
    from dmha.llm.prompt import PromptBuilder

    # The serving path: the prompt builder's messages through the engine's renderer.
    builder = PromptBuilder(
        lambda msgs: render_chat(tiny_tokenizer, [(m.role, m.text) for m in msgs]), fmt.system_prompt, 512
    )
    built = builder.build([], "Who wrote the book?", 16)
    served = render_chat(tiny_tokenizer, [(m.role, m.text) for m in built.messages])
    assert tuple(served) == fmt.prompt("Who wrote the book?")
    assert built.messages[0] == ChatMessage("system", fmt.system_prompt)


def test_answer_logits_split_over_threads_keeps_order_and_values(tiny_model, fmt) -> None:
    questions = [f"Question number {i} about {w}?" for i, w in enumerate("abcdefghijklmnopqrs")]
    seqs = [fmt.sequence(q, f"Answer {i}.") for i, q in enumerate(questions)]
    with torch.no_grad():
        one = answer_logits(tiny_model, seqs, batch_size=4)
        split = answer_logits(tiny_model, seqs, batch_size=4, workers=3)
    assert len(split) == len(seqs)
    for a, b in zip(one, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Grad mode is per thread: the helper threads must not record a graph either (a
    # graph per returned tensor kept every batch's activations alive: gigabytes).
    assert all(t.grad_fn is None and not t.requires_grad for t in split)


def test_sequences_of_mixed_lengths_keep_their_order_and_values(tiny_model, fmt) -> None:
    long_answer = " ".join(["The lighthouse keeper wrote down every ship that passed."] * 6)
    seqs = [
        fmt.sequence("Hi", "Hello."),
        fmt.sequence("Tell me about lighthouses.", long_answer),
        fmt.sequence("Who wrote the book?", "A cat."),
        fmt.sequence("And the weather?", long_answer[:120]),
    ]
    with torch.no_grad():
        batched = answer_logits(tiny_model, seqs, batch_size=64)
        one = [answer_logits(tiny_model, [s])[0] for s in seqs]
    assert [x.shape[0] for x in batched] == [len(s.answer) for s in seqs]
    for a, b in zip(batched, one, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_length_batches_split_where_padding_would_cost_more_than_a_pass() -> None:
    widths = [30, 60, 31, 29, 61, 30, 62]
    batches = length_batches(widths, batch_size=64)
    assert sorted(i for b in batches for i in b) == list(range(len(widths)))
    assert [sorted(widths[i] for i in b) for b in batches] == [[29, 30, 30, 31], [60, 61, 62]]
    assert [len(b) for b in length_batches(widths, batch_size=2)] == [2, 2, 2, 1]
    assert length_batches([], 4) == []
