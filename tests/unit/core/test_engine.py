import asyncio
import dataclasses

import pytest
import torch

from dmha.config import LimitsConfig, ModelConfig
from dmha.context import resolve_options
from dmha.errors import InvalidArgument, ResourceExhausted
from dmha.llm import engine as engine_module
from dmha.llm.base import ChatMessage, GenerationOptions, GenerationResult, TokenDelta
from dmha.llm.batching import Request, copy_guard, sample, visible_prefix
from dmha.llm.engine import HFEngine, load_eager_handle

MSGS = [ChatMessage("system", "You are terse."), ChatMessage("user", "Say something.")]


@pytest.fixture
def engine(tiny_model_dir):
    eng = HFEngine(load_eager_handle(tiny_model_dir, ModelConfig(device="cpu")), LimitsConfig(max_queued_requests=4))
    yield eng
    eng.close()


async def collect(engine, options):
    deltas, result = [], None
    async for item in engine.stream(MSGS, options):
        if isinstance(item, TokenDelta):
            deltas.append(item.text)
        else:
            result = item
    return deltas, result


async def test_stream_deltas_add_up_to_the_result(engine):
    deltas, result = await collect(engine, GenerationOptions(max_new_tokens=12))
    assert isinstance(result, GenerationResult)
    assert "".join(deltas) == result.text
    assert result.completion_tokens <= 12 and result.finish_reason in ("stop", "length")
    assert result.prompt_tokens == len(engine.render_prompt(MSGS))


async def test_greedy_is_deterministic_and_seeded_sampling_reproducible(engine):
    a = await engine.complete(MSGS, GenerationOptions(max_new_tokens=8))
    b = await engine.complete(MSGS, GenerationOptions(max_new_tokens=8))
    assert a.text == b.text
    s1 = await engine.complete(MSGS, GenerationOptions(max_new_tokens=8, temperature=1.0, seed=7))
    s2 = await engine.complete(MSGS, GenerationOptions(max_new_tokens=8, temperature=1.0, seed=7))
    assert s1.text == s2.text


async def test_concurrent_streams_each_complete(engine):
    results = await asyncio.gather(*(engine.complete(MSGS, GenerationOptions(max_new_tokens=6)) for _ in range(4)))
    assert len({r.text for r in results}) == 1  # greedy, same prompt, no interference


async def test_closing_the_stream_cancels_generation(engine):
    stream = engine.stream(MSGS, GenerationOptions(max_new_tokens=200))
    first = await anext(stream)
    assert isinstance(first, TokenDelta)
    await stream.aclose()
    # The scheduler drops the request: a new one is served right away.
    done = await asyncio.wait_for(engine.complete(MSGS, GenerationOptions(max_new_tokens=3)), 30)
    assert done.completion_tokens <= 3


async def test_deadline_stops_generation(engine):
    import time

    result = await engine.complete(MSGS, GenerationOptions(max_new_tokens=200, deadline=time.monotonic() - 1))
    assert result.finish_reason == "deadline" and result.completion_tokens == 0


async def test_swap_keeps_running_streams_on_their_version(engine):
    stream = engine.stream(MSGS, GenerationOptions(max_new_tokens=30))
    await anext(stream)
    old = engine.handle
    engine.swap(dataclasses.replace(old, version="v2"))
    rest = [item async for item in stream]
    assert rest[-1].model_version == "base"
    assert (await engine.complete(MSGS, GenerationOptions(max_new_tokens=2))).model_version == "v2"


async def test_prompt_longer_than_context_is_invalid(engine):
    long = [ChatMessage("user", "word " * 1200)]
    with pytest.raises(InvalidArgument, match="context"):
        await engine.complete(long, GenerationOptions(max_new_tokens=2))


async def test_full_queue_is_resource_exhausted(tiny_model_dir):
    eng = HFEngine(
        load_eager_handle(tiny_model_dir, ModelConfig(device="cpu")),
        LimitsConfig(max_queued_requests=1),
        max_batch_size=1,
    )
    tasks = [asyncio.create_task(eng.complete(MSGS, GenerationOptions(max_new_tokens=200))) for _ in range(3)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [t.exception() for t in done if t.exception() is not None]
        assert errors and isinstance(errors[0], ResourceExhausted) and "queue is full" in str(errors[0])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        eng.close()


def test_sample_greedy_and_top_p():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert sample(logits, GenerationOptions(temperature=0), None) == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample(logits, GenerationOptions(temperature=1.0, top_p=0.5), g) for _ in range(50)}
    assert picks <= {1, 3} and 1 in picks


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": 3.0}, "options.temperature"),
        ({"top_p": 0.0}, "options.top_p"),
        ({"max_new_tokens": 10_000}, "options.max_new_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "options.stop"),
        ({"stop": [""]}, "options.stop"),
        ({"stop": ["x" * 101]}, "options.stop"),
    ],
)
def test_options_out_of_range(kwargs, field):
    with pytest.raises(InvalidArgument) as err:
        resolve_options(LimitsConfig(), **kwargs)
    assert err.value.field == field


def test_options_defaults():
    opts = resolve_options(LimitsConfig(default_new_tokens=50), timeout=10)
    assert opts.temperature == 0 and opts.top_p == 1 and opts.max_new_tokens == 50 and opts.deadline is not None


async def test_batched_rows_match_solo_runs(engine):
    """Left padding, masks and position ids make each row compute what it would alone."""
    prompts = [
        [ChatMessage("user", "Hi")],
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "A much longer question about many different things?"),
        ],
        [ChatMessage("user", "Third prompt, medium length.")],
    ]
    budgets = [5, 12, 8]  # rows leave the batch at different steps
    solo = [
        await engine.complete(p, GenerationOptions(max_new_tokens=n)) for p, n in zip(prompts, budgets, strict=True)
    ]
    together = await asyncio.gather(
        *(engine.complete(p, GenerationOptions(max_new_tokens=n)) for p, n in zip(prompts, budgets, strict=True))
    )
    assert [r.text for r in together] == [r.text for r in solo]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in solo]


async def test_a_row_that_fails_to_sample_fails_alone(engine, monkeypatch):
    """Issue 11, finding 2: one bad row used to fail every stream batched with it."""
    import dmha.llm.batching as batching

    real = batching.sample

    def flaky(logits, options, gen):
        if options.seed == 13:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, options, gen)

    monkeypatch.setattr(batching, "sample", flaky)
    victims = [engine.complete(MSGS, GenerationOptions(max_new_tokens=6)) for _ in range(3)]
    bad = engine.complete(MSGS, GenerationOptions(max_new_tokens=6, temperature=1.0, seed=13))
    results = await asyncio.gather(bad, *victims, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert all(isinstance(r, GenerationResult) for r in results[1:])


def test_sample_survives_degenerate_temperatures():
    logits = torch.tensor([0.0, 5.0, 1.0])
    for t in (1e-40, 1e-300):
        assert sample(logits, GenerationOptions(temperature=t), None) == 1


def test_health_probe_sees_a_stopped_scheduler(engine):
    from dmha.errors import Unavailable

    engine.probe(stall_seconds=10)
    engine.close()
    with pytest.raises(Unavailable, match="stopped"):
        engine.probe(stall_seconds=10)


def test_visible_prefix_cuts_at_the_earliest_stop_and_holds_back_partial_ones():
    assert visible_prefix("hello world", ()) == (11, False)
    assert visible_prefix("hello world", ("wor", "lo")) == (3, True)
    # "wo" may still become "wor": held back; "hello w" likewise keeps "w" back.
    assert visible_prefix("hello wo", ("wor",)) == (6, False)
    assert visible_prefix("hello w", ("wor", "xyz")) == (6, False)
    assert visible_prefix("hello", ("wor",)) == (5, False)


async def test_stop_sequence_ends_the_reply_before_it(engine):
    options = GenerationOptions(max_new_tokens=16)
    full = (await engine.complete(MSGS, options)).text
    assert len(full) > 6, full
    stop = full[3:6]
    deltas, result = await collect(engine, GenerationOptions(max_new_tokens=16, stop=(stop,)))
    assert result.text == full[: full.find(stop)]
    assert "".join(deltas) == result.text
    assert result.finish_reason == "stop"


async def test_a_stop_sequence_that_never_completes_is_streamed_in_full(engine):
    full = (await engine.complete(MSGS, GenerationOptions(max_new_tokens=10))).text
    # The reply's own last character followed by an impossible one: held back, then flushed.
    stop = full[-1] + "\u2603\u2603"
    deltas, result = await collect(engine, GenerationOptions(max_new_tokens=10, stop=(stop,)))
    assert result.text == full and "".join(deltas) == full


def test_copy_guard_maps_each_run_prefix_to_the_token_that_would_complete_it(engine):
    tok = engine.handle.tokenizer
    ids = tok("one two three four five", add_special_tokens=False)["input_ids"]
    guard = copy_guard(tok, ["one two three four five"], 3)
    assert guard == {tuple(ids[i : i + 2]): frozenset({ids[i + 2]}) for i in range(len(ids) - 2)}
    assert copy_guard(tok, ["one two three"], 0) == {} and copy_guard(tok, [], 3) == {}


async def test_the_guard_excludes_the_token_that_would_complete_a_run(engine):
    def request(n):
        opts = GenerationOptions(max_new_tokens=8, avoid_ngram=n)
        guard = {(5, 6): frozenset({7})}
        return Request(engine.handle, [1, 2], opts, asyncio.get_running_loop(), asyncio.Queue(), guard=guard)

    logits = torch.zeros(100)
    logits[7], logits[8] = 3.0, 2.0
    req = request(3)
    req.ids = [4, 5, 6]  # the last two generated tokens start a guarded run
    assert req.advance(logits) == 8
    req.ids = [5, 6, 4]  # not at the end: free
    assert req.advance(logits) == 7
    # The reported log-probability is the model's own, not the guarded distribution's.
    req = request(3)
    req.ids = [5, 6]
    req.advance(logits)
    assert req.logprobs[-1] == pytest.approx(float(torch.log_softmax(logits, -1)[8]))


async def test_the_engine_guards_the_avoided_texts(engine, monkeypatch):
    seen = []
    real = engine_module.copy_guard

    def spy(tokenizer, texts, n):
        seen.append((tuple(texts), n))
        return real(tokenizer, texts, n)

    monkeypatch.setattr(engine_module, "copy_guard", spy)
    await engine.complete(MSGS, GenerationOptions(max_new_tokens=2, avoid=("an earlier reply",), avoid_ngram=8))
    assert seen == [(("an earlier reply",), 8)]
