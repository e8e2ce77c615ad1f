"""Frozen versions batch concurrent streams of different lengths exactly as eager ones do."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
import torch

from dmha.errors import FreezeError
from dmha.learning import (
    EagerStepModel,
    FeedbackItem,
    FrozenStepModel,
    LlamaStepCore,
    Registry,
    UpdatePlan,
    freeze,
    verify_step_model,
)
from dmha.learning.loading import load_version, save_delta
from dmha.llm.base import BatchStepModel, GenerationOptions, GenerationResult, ModelHandle
from dmha.llm.batching import Request, make_cohorts

VOCAB = 320


@pytest.fixture(scope="module")
def frozen_pair(_tiny_model: Any) -> tuple[FrozenStepModel, EagerStepModel]:
    """The tiny model frozen once for the module, with its eager twin."""
    return freeze(_tiny_model, device="cpu", tolerance=1e-4), EagerStepModel(_tiny_model)


def _left_padded(rows: list[torch.Tensor], pad_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    # Random ids under the padding: the mask alone must hide them.
    ids = torch.randint(0, VOCAB, (len(rows), width), generator=pad_gen)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_served_graphs_read_packed_weights(frozen_pair) -> None:
    frozen, _ = frozen_pair
    for name, fn in frozen._fn.items():
        tensors = [
            n.t("value")
            for n in fn.graph.nodes()
            if n.kind() == "prim::Constant" and n.hasAttribute("value") and n.kindOf("value") == "t"
        ]
        packed = [t for t in tensors if t.layout == torch._mkldnn]
        # 2 layers x 7 projections + the head; only the embedding stays plain.
        assert len(packed) == 15, name
        assert [tuple(t.shape) for t in tensors if t.layout != torch._mkldnn and t.dim() == 2] == [(VOCAB, 32)]


@pytest.mark.parametrize("kind", ["frozen", "eager"])
def test_mixed_length_batch_matches_each_row_alone(frozen_pair, kind) -> None:
    frozen, eager = frozen_pair
    model = frozen if kind == "frozen" else eager
    assert isinstance(model, BatchStepModel)
    gen = torch.Generator().manual_seed(7)
    rows = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (2, 14, 5, 9)]
    ids, mask = _left_padded(rows, gen)
    logits, past = model.prefill_padded(ids, mask)
    alone = [eager.prefill(r[None, :]) for r in rows]
    for step in range(6):
        for i, (ref, _) in enumerate(alone):
            torch.testing.assert_close(logits[i : i + 1], ref, atol=1e-4, rtol=1e-4)
        tokens = torch.cat([ref.argmax(-1, keepdim=True) for ref, _ in alone])
        if step == 3:
            # Row 1 finishes: the batcher drops its cache row; the others go on unchanged.
            keep = torch.tensor([0, 2, 3])
            past = tuple(t.index_select(0, keep) for t in past)
            mask, tokens, logits = mask[keep], tokens[keep], logits[keep]
            alone = [alone[i] for i in (0, 2, 3)]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        logits, past = model.decode_padded(tokens, mask, past)
        alone = [eager.decode(tokens[i : i + 1], p) for i, (_, p) in enumerate(alone)]


def test_verification_checks_every_row_of_a_mixed_batch(frozen_pair) -> None:
    frozen, eager = frozen_pair
    assert verify_step_model(frozen, eager, VOCAB, lengths=(), batch=(1, 12, 4, 7), seed=9) < 1e-4

    class IgnoresPadding:
        """A batched path that forgets the mask: only the padded rows go wrong."""

        def prefill(self, ids):
            return frozen.prefill(ids)

        def decode(self, token, past):
            return frozen.decode(token, past)

        def prefill_padded(self, ids, mask):
            return frozen.prefill_padded(ids, torch.ones_like(mask))

        def decode_padded(self, tokens, mask, past):
            return frozen.decode_padded(tokens, torch.ones_like(mask), past)

    broken = IgnoresPadding()
    assert verify_step_model(broken, eager, VOCAB, lengths=(5,), batch=()) < 1e-4  # one row alone is fine
    assert verify_step_model(broken, eager, VOCAB, lengths=(5,), batch=(3, 11, 6)) > 1e-2


class _Counting:
    """Delegates to a batch step model and counts the calls of each method."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.device = inner.device
        self.calls: dict[str, int] = {}

    def _count(self, name: str, *args: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.inner, name)(*args)

    def prefill(self, ids):
        return self._count("prefill", ids)

    def decode(self, token, past):
        return self._count("decode", token, past)

    def prefill_padded(self, ids, mask):
        return self._count("prefill_padded", ids, mask)

    def decode_padded(self, tokens, mask, past):
        return self._count("decode_padded", tokens, mask, past)


PROMPTS = ["Hi", "Tell me a story about a cat and a dog, please.", "Who wrote the book?"]
BUDGETS = [5, 9, 3]  # rows leave the batch at different steps


async def _generate(handle: ModelHandle, prompts: list[str], budgets: list[int]) -> list[GenerationResult]:
    """Admit the requests together and run the scheduler's loop over their cohorts."""
    loop = asyncio.get_running_loop()
    tok = handle.tokenizer
    reqs = [
        Request(
            handle=handle,
            prompt_ids=tok(p, add_special_tokens=False)["input_ids"],
            options=GenerationOptions(max_new_tokens=n),
            loop=loop,
            out=asyncio.Queue(),
        )
        for p, n in zip(prompts, budgets, strict=True)
    ]
    cohorts = make_cohorts(reqs)
    while cohorts:
        for cohort in cohorts:
            cohort.step()
        cohorts = [c for c in cohorts if c.requests]
    await asyncio.sleep(0)  # deliver what the cohorts sent
    results = []
    for req in reqs:
        items = [req.out.get_nowait() for _ in range(req.out.qsize())]
        assert isinstance(items[-1], GenerationResult)
        results.append(items[-1])
    return results


@pytest.mark.parametrize("kind", ["frozen", "eager"])
async def test_the_batcher_batches_frozen_streams_like_eager_ones(frozen_pair, tiny_tokenizer, kind) -> None:
    frozen, eager = frozen_pair

    def handle() -> ModelHandle:
        # No end-of-sequence token: each reply runs to its budget, so rows leave at known steps.
        return ModelHandle(
            version="v1",
            tokenizer=tiny_tokenizer,
            step_model=_Counting(frozen if kind == "frozen" else eager),
            max_positions=512,
            eos_token_ids=frozenset(),
            kind=kind,
        )

    solo = []
    for p, n in zip(PROMPTS, BUDGETS, strict=True):
        alone = handle()
        solo.append((await _generate(alone, [p], [n]))[0])
        # A stream alone keeps the one-row path (the frozen module's unmasked graphs).
        assert alone.step_model.calls == {"prefill": 1, "decode": n - 1}
    together = handle()
    batched = await _generate(together, PROMPTS, BUDGETS)
    assert [r.text for r in batched] == [r.text for r in solo]
    assert [r.completion_tokens for r in batched] == BUDGETS
    # One prefill and one decode call per step for all three streams, none one by one.
    assert together.step_model.calls == {"prefill_padded": 1, "decode_padded": max(BUDGETS) - 1}


def _old_format_module(model: Any) -> Any:
    """What freeze() wrote before frozen modules batched: forward and decode only."""
    core = LlamaStepCore(model).eval()
    example = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _, past = core(example)
        traced = torch.jit.trace_module(
            core, {"forward": (example,), "decode": (example[:, :1], past)}, check_trace=False
        )
        return torch.jit.freeze(traced, preserved_attrs=["decode"])


def test_an_old_frozen_module_is_refused_and_rebuilt_by_loading(tiny_model, tmp_path) -> None:
    old = tmp_path / "old.pt"
    torch.jit.save(_old_format_module(tiny_model), str(old))
    with pytest.raises(FreezeError, match="re-freeze"):
        FrozenStepModel.load(old, "cpu")

    base_dir = tmp_path / "base"
    tiny_model.save_pretrained(str(base_dir))
    registry = Registry(tmp_path / "registry", base_dir)
    staging = registry.new_staging()
    name = "model.layers.0.mlp.down_proj.weight"
    save_delta({name: 0.01 * torch.ones_like(dict(tiny_model.named_parameters())[name])}, staging / "delta.safetensors")
    registry.commit(staging, "base", [FeedbackItem("f1", "Q?", "A.")], UpdatePlan(), {})
    registry.promote("v1")
    cache = registry.frozen_cache("v1")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(old.read_bytes())

    loaded = load_version(registry, type(tiny_model).from_pretrained(str(base_dir)), device="cpu")
    assert loaded.kind == "frozen" and isinstance(loaded.step_model, BatchStepModel)
    # The cache now holds the rebuilt module (renamed into place: no temporary file left),
    # which loads and matches the edited weights.
    assert [p.name for p in cache.parent.iterdir()] == ["v1.pt"]
    again = FrozenStepModel.load(cache, "cpu")
    assert verify_step_model(again, EagerStepModel(loaded.model), VOCAB, lengths=(4,)) < 1e-4


def test_without_onednn_the_frozen_module_uses_plain_linears(_tiny_model, monkeypatch) -> None:
    """The path taken on CUDA, in half precision, or where torch lacks oneDNN."""
    import dmha.learning.freezing as freezing

    monkeypatch.setattr(freezing, "onednn_available", lambda device, dtype: False)
    frozen = freeze(_tiny_model, device="cpu", tolerance=1e-4)
    assert not any("mkldnn" in str(fn.graph) for fn in frozen._fn.values())
    assert verify_step_model(frozen, EagerStepModel(_tiny_model), VOCAB, lengths=(4,), batch=(2, 8)) < 1e-4


def test_freezing_releases_the_weights_of_a_model_that_needs_no_gradient(_tiny_model: Any) -> None:
    """Every deployed version kept its weights alive (0.5 GiB each on the default
    model): ``torch.jit.freeze`` held on to weights that did not require a gradient,
    which is how edited candidates are built, and the frozen graphs' constants (views
    of the weights) outlived everything once the graphs were prepared for serving."""
    import copy
    import gc
    import weakref

    from dmha.process_resources import reachable_tensor_bytes

    def frozen_and_dropped() -> list[weakref.ref]:
        model = copy.deepcopy(_tiny_model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        weights = [weakref.ref(p) for p in model.parameters()]
        step_model = freeze(model)
        assert not any(p.requires_grad for p in model.parameters())  # the flags are put back
        del step_model, model
        return weights

    first = frozen_and_dropped()
    second = frozen_and_dropped()  # TorchScript caches its last trace's inputs until the next one
    gc.collect()
    assert sum(w() is not None for w in first) == 0
    assert sum(w() is not None for w in second) <= 1
    # Also the tensors that outlived the weights they viewed (the graphs' constants,
    # kept once the graphs were prepared for serving).
    before = reachable_tensor_bytes()
    for _ in range(2):
        frozen_and_dropped()
    model_bytes = sum(p.numel() * p.element_size() for p in _tiny_model.parameters())
    assert reachable_tensor_bytes() - before < model_bytes / 2
