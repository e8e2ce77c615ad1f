"""Knowledge edits on the tiny model: learned, confined, reproducible, refused when impossible."""

from __future__ import annotations

import copy

import pytest
import torch

from dmha.learning import (
    Editor,
    FeedbackItem,
    KeyStats,
    LearningError,
    UpdatePlan,
    apply_delta,
    collect_keys,
)
from dmha.learning.editor import delta_name
from dmha.learning.generation import greedy

ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")
GENERIC = ["Tell me a story about a cat.", "Who wrote the book?", "The quick brown fox."]
LAYERS = (0, 1)


def _stats(model, fmt, prompts=GENERIC) -> KeyStats:
    seqs = [fmt.sequence(p) for p in prompts]
    return KeyStats.compute(model, (), seqs, LAYERS)


def _base(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {delta_name(i): params[delta_name(i)].detach().clone() for i in LAYERS}


PLAN = UpdatePlan(
    edit_layers=LAYERS,
    rank=4,
    steps=60,
    learning_rate=5e-2,
    paraphrases=2,
    lambda_locality=0.0,
    stop_margin=0.0,
    null_threshold=0.5,
    min_key_share=0.0,
)


def test_edit_learns_and_leaves_preserved_keys_alone(tiny_model, fmt) -> None:
    stats = _stats(tiny_model, fmt)
    result = Editor(fmt).train(tiny_model, [ITEM], PLAN, stats, _base(tiny_model), {})
    answer = greedy(result.model, [fmt.prompt(ITEM.input)], 12, fmt.eos_ids)[0]
    assert "Vlorn" in fmt.decode(answer)
    assert result.losses[-1] < result.losses[0]
    # The change reads only the null space of the preserved keys: on those keys the
    # edited down_proj computes what the live one did (up to the eigenvalue cut).
    seqs = [fmt.sequence(p) for p in GENERIC]
    keys = collect_keys(tiny_model, seqs, LAYERS)
    for layer in LAYERS:
        change = result.delta[delta_name(layer)]
        leak = (keys[layer] @ change.T).norm() / keys[layer].norm()
        assert leak < 0.5 * change.norm(), layer
    # The live model is untouched.
    assert "Vlorn" not in fmt.decode(greedy(tiny_model, [fmt.prompt(ITEM.input)], 12, fmt.eos_ids)[0])


def test_delta_rebuilds_the_candidate_bitwise(tiny_model, fmt) -> None:
    base = _base(tiny_model)
    result = Editor(fmt).train(tiny_model, [ITEM], PLAN.with_changes(steps=5), _stats(tiny_model, fmt), base, {})
    rebuilt = copy.deepcopy(tiny_model)
    apply_delta(rebuilt, base, result.delta)
    for (name, a), (_, b) in zip(rebuilt.named_parameters(), result.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # A second edit accumulates on top of the first: its delta includes the first's.
    second = Editor(fmt).train(
        result.model,
        [FeedbackItem("f2", "Who wrote the book?", "Ana Kol.")],
        PLAN.with_changes(steps=5),
        _stats(tiny_model, fmt).with_keys(result.keys),
        base,
        result.delta,
    )
    rebuilt = copy.deepcopy(tiny_model)
    apply_delta(rebuilt, base, second.delta)
    for (name, a), (_, b) in zip(rebuilt.named_parameters(), second.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_edit_without_room_is_refused(tiny_model, fmt) -> None:
    with pytest.raises(LearningError, match="editable subspace"):
        Editor(fmt).train(
            tiny_model,
            [ITEM],
            PLAN.with_changes(min_key_share=0.999, null_threshold=1e-9),
            _stats(tiny_model, fmt),
            _base(tiny_model),
            {},
        )


def test_delta_norm_bound_holds(tiny_model, fmt) -> None:
    result = Editor(fmt).train(
        tiny_model,
        [ITEM],
        PLAN.with_changes(steps=10, max_delta_norm=0.05),
        _stats(tiny_model, fmt),
        _base(tiny_model),
        {},
    )
    for layer in LAYERS:
        assert float(torch.linalg.matrix_norm(result.delta[delta_name(layer)])) <= 0.05 + 1e-5


def test_deadline_stops_early(tiny_model, fmt) -> None:
    result = Editor(fmt).train(tiny_model, [ITEM], PLAN, _stats(tiny_model, fmt), _base(tiny_model), {}, deadline=0.0)
    assert len(result.losses) == 1


def test_bfloat16_training_copy_learns_a_float32_candidate(tiny_model, fmt) -> None:
    stats = _stats(tiny_model, fmt)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    editor = Editor(fmt, precision="bfloat16")
    space = editor.space(tiny_model, stats, PLAN)
    result = editor.train(tiny_model, [ITEM], PLAN, stats, _base(tiny_model), {}, space=space)
    assert "Vlorn" in fmt.decode(greedy(result.model, [fmt.prompt(ITEM.input)], 12, fmt.eos_ids)[0])
    # The candidate is served as the live model is: float32 weights, float32 delta.
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert all(d.dtype == torch.float32 for d in result.delta.values())
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_unknown_training_precision_is_refused(tiny_model, fmt) -> None:
    with pytest.raises(ValueError, match="precision"):
        Editor(fmt, precision="int3").train(tiny_model, [ITEM], PLAN, _stats(tiny_model, fmt), _base(tiny_model), {})


@pytest.mark.parametrize("faster", [True, False])
def test_auto_precision_follows_the_measurement_not_the_flag(tiny_model, monkeypatch, faster) -> None:
    # A CPU can report AVX512-BF16 and still run bfloat16 slower than float32: ``auto``
    # trains in bfloat16 only where bfloat16 passes measured faster.
    from dmha.learning import precision

    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    monkeypatch.setattr(
        precision, "_pass_seconds", lambda dtype, device: 1.0 if faster == (dtype == torch.bfloat16) else 2.0
    )
    precision.bf16_faster.cache_clear()
    try:
        work = precision.training_copy(tiny_model, "auto")
    finally:
        precision.bf16_faster.cache_clear()
    assert next(work.parameters()).dtype == (torch.bfloat16 if faster else torch.float32)


def test_retain_exposure_kept_with_the_space_ranks_as_fresh_keys_do(tiny_model, fmt) -> None:
    """The retain prompts an edit holds still, chosen from keys collected once per live
    version, are the ones a fresh collection would choose (for the fact's directions too)."""
    from dmha.learning.editor import _fact_directions
    from dmha.learning.exposure import most_exposed, most_exposed_known

    stats = _stats(tiny_model, fmt)
    editor = Editor(fmt)
    retain = [
        fmt.sequence(p, "A short answer.")
        for p in ["What is the capital of France?", "Name a large river.", "Tell me a joke.", "Who painted it?"]
    ]
    space = editor.space(tiny_model, stats, PLAN, retain)
    assert space.exposure is not None and space.exposure.seqs == tuple(retain)
    keys = editor.fact_keys(tiny_model, [ITEM], LAYERS)
    fact = {i: _fact_directions(keys[i], u, space.whitening.get(i), 2) for i, u in space.bases.items()}
    for bases in (space.bases, fact):
        for k in (1, 2, 3):
            fresh = most_exposed(tiny_model, retain, bases, k, len(editor.prefix))
            assert most_exposed_known(space.exposure, space.bases, bases, k) == fresh


def test_replay_is_sampled_per_step(tiny_model, fmt, monkeypatch) -> None:
    import dmha.learning.objective as objective_module

    replay = [FeedbackItem(f"r{i}", f"Who founded town {i}?", f"Town {i} was founded by Ana.") for i in range(5)]
    plan = PLAN.with_changes(replay_per_step=2, lambda_causal=0.0)
    objective = objective_module.Objective(tiny_model, fmt, [ITEM], replay, plan, None)
    batches: list[int] = []
    real = objective_module.answer_logits

    def counted(model, seqs, **kwargs):
        batches.append(len(seqs))
        return real(model, seqs, **kwargs)

    monkeypatch.setattr(objective_module, "answer_logits", counted)
    for _ in range(3):
        objective.loss(tiny_model)
    assert batches == [3, 3, 3]  # the fact and two of the five replayed items each step
