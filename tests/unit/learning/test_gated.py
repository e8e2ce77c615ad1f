"""Key-gated edits: exact zero off-key, the trained form is the served form, they stack and freeze."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dmha.learning import Editor, FeedbackItem, KeyStats, LearningError, Objective, UpdatePlan, apply_delta
from dmha.learning.adapters import candidate_copy, reaches
from dmha.learning.editor import NullSpaceDelta, delta_name
from dmha.learning.gate import Gate, GateThresholds, build_gate_reference, probe_live
from dmha.learning.gated import (
    GatedEdits,
    append_edit,
    compact_write,
    dense_names,
    effective_deltas,
    gate_thresholds,
    gated_layers,
    install_gated,
    token_shares,
)
from dmha.learning.generation import answer_logits
from dmha.learning.reach import untouched

D_IN, D_OUT = 12, 5


def _orthonormal(k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D_IN, k, generator=torch.Generator().manual_seed(seed)))
    return q


def _one_edit(seed: int, threshold: float = 0.5, k: int = 2, r: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    delta: dict[str, torch.Tensor] = {}
    gate = _orthonormal(k, seed)
    append_edit(delta, 0, gate, threshold, torch.randn(r, D_IN, generator=g), torch.randn(D_OUT, r, generator=g))
    return delta


def test_a_token_off_key_gets_exactly_the_base_output() -> None:
    base = nn.Linear(D_IN, D_OUT)
    delta = _one_edit(1, threshold=0.5)
    fields = gated_layers(delta)[delta_name(0)]
    module = GatedEdits(base, fields)
    gate = fields["gate"]
    on_key = gate @ torch.tensor([1.0, 0.5])  # all its energy in the gate
    off_key = torch.randn(D_IN)
    off_key = off_key - gate @ (gate.T @ off_key)  # none of it
    x = torch.stack([on_key, off_key])
    out = module(x)
    assert torch.equal(out[1], base(x)[1])  # bitwise, not approximately
    expected = base(x)[0] + fields["b"] @ (fields["a"] @ on_key)
    torch.testing.assert_close(out[0], expected)


def test_threshold_is_a_share_of_the_tokens_own_energy() -> None:
    base = nn.Linear(D_IN, D_OUT)
    fields = gated_layers(_one_edit(2, threshold=0.5))[delta_name(0)]
    module = GatedEdits(base, fields)
    gate = fields["gate"][:, 0]
    other = torch.randn(D_IN)
    other = other - fields["gate"] @ (fields["gate"].T @ other)
    other = other / other.norm()
    for share, fires in ((0.3, False), (0.7, True)):
        x = (share**0.5) * gate + ((1 - share) ** 0.5) * other
        for scale in (1e-3, 1.0, 1e3):  # the same at any size of the key
            changed = not torch.equal(module(scale * x), base(scale * x))
            assert changed == fires, (share, scale)


def test_edits_stack_and_each_acts_only_on_its_own_key() -> None:
    delta = _one_edit(3)
    g = torch.Generator().manual_seed(9)
    second_gate = _orthonormal(2, 4)
    append_edit(delta, 0, second_gate, 0.5, torch.randn(4, D_IN, generator=g), torch.randn(D_OUT, 4, generator=g))
    fields = gated_layers(delta)[delta_name(0)]
    assert fields["gate"].shape == (D_IN, 4) and fields["a"].shape == (7, D_IN) and fields["b"].shape == (D_OUT, 7)
    assert fields["gate_map"].tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert fields["rank_map"].sum(1).tolist() == [3, 4]
    module = GatedEdits(nn.Linear(D_IN, D_OUT), fields)
    # A key inside the second gate only (and outside the first) gets the second edit's change.
    first = fields["gate"][:, :2]
    x = second_gate[:, 0] - first @ (first.T @ second_gate[:, 0])
    x = x / x.norm()
    share_second = float((second_gate.T @ x).square().sum())
    assert share_second > 0.5
    expected = fields["b"][:, 3:] @ (fields["a"][3:] @ x)
    torch.testing.assert_close(module.change(x), expected)


def test_edits_that_read_only_their_gate_are_served_in_the_compact_form() -> None:
    g = torch.Generator().manual_seed(11)
    delta: dict[str, torch.Tensor] = {}
    for seed, (k, r) in enumerate(((2, 3), (3, 2), (1, 1)), start=20):
        gate = _orthonormal(k, seed)
        a = torch.randn(r, k, generator=g) @ gate.T  # reads its gate only, as the editor's edits do
        append_edit(delta, 0, gate, 0.2, a, torch.randn(D_OUT, r, generator=g))
    fields = gated_layers(delta)[delta_name(0)]
    module = GatedEdits(nn.Linear(D_IN, D_OUT), fields)
    assert module.compact and module.write.shape == (D_OUT, 6)
    x = torch.cat([torch.randn(30, D_IN, generator=g), (fields["gate"] @ torch.randn(6, 30, generator=g)).T])
    # The general form, written out: each edit's b a x where its gate opens.
    energy = (x @ fields["gate"]).square() @ fields["gate_map"]
    on = energy >= fields["thresholds"] * x.square().sum(-1, keepdim=True)
    expected = ((x @ fields["a"].T) * (on.float() @ fields["rank_map"])) @ fields["b"].T
    assert on.any(0).all() and not on.all()  # every edit acts somewhere, none everywhere
    torch.testing.assert_close(module.change(x), expected)
    assert "write" not in module.state_dict()  # derived at install, never stored


def test_an_edit_reading_outside_its_gate_keeps_the_general_form() -> None:
    fields = gated_layers(_one_edit(12))[delta_name(0)]  # a random read matrix
    module = GatedEdits(nn.Linear(D_IN, D_OUT), fields)
    assert not module.compact
    assert compact_write(*(fields[f] for f in ("gate", "gate_map", "a", "rank_map", "b"))) is None


def test_install_replaces_and_removes_gated_modules(tiny_model) -> None:
    layer = tiny_model.model.layers[0].mlp
    d_in, d_out = layer.down_proj.in_features, layer.down_proj.out_features
    g = torch.Generator().manual_seed(0)
    delta: dict[str, torch.Tensor] = {}
    gate, _ = torch.linalg.qr(torch.randn(d_in, 2, generator=g))
    append_edit(delta, 0, gate, 0.3, torch.randn(2, d_in, generator=g), torch.randn(d_out, 2, generator=g))
    install_gated(tiny_model, delta)
    assert isinstance(layer.down_proj, GatedEdits) and layer.down_proj.edits == 1
    plain = layer.down_proj.base
    install_gated(tiny_model, delta)  # again: wraps the plain linear, not the wrapper
    assert layer.down_proj.base is plain
    install_gated(tiny_model, {})
    assert layer.down_proj is plain
    with pytest.raises(KeyError, match="lack"):
        install_gated(tiny_model, {k: v for k, v in delta.items() if not k.endswith(".b")})


def test_dense_and_effective_views() -> None:
    delta = _one_edit(5)
    delta[delta_name(1)] = torch.ones(D_OUT, D_IN)
    assert dense_names(delta) == [delta_name(1)]
    eff = effective_deltas(delta)
    fields = gated_layers(delta)[delta_name(0)]
    torch.testing.assert_close(eff[delta_name(0)], fields["b"] @ fields["a"])
    assert torch.equal(eff[delta_name(1)], torch.ones(D_OUT, D_IN))


def test_training_form_equals_served_form() -> None:
    base = nn.Linear(D_IN, D_OUT)
    basis = _orthonormal(3, 6)
    w = NullSpaceDelta(base, basis, 2, 0.7, torch.Generator().manual_seed(0), threshold=0.4)
    with torch.no_grad():
        w.b.normal_()
    delta: dict[str, torch.Tensor] = {}
    a, b = w.gated_factors()
    append_edit(delta, 0, basis, 0.4, a, b)
    served = GatedEdits(base, gated_layers(delta)[delta_name(0)])
    x = torch.cat([torch.randn(20, D_IN), (basis @ torch.randn(3, 20)).T])
    with torch.no_grad():
        trained = w(x)
    torch.testing.assert_close(served(x), trained)
    assert not torch.equal(served(x)[20:], base(x)[20:])  # the on-key rows did change


def test_thresholds_refuse_a_fact_that_does_not_stand_out() -> None:
    u = _orthonormal(2, 7)
    fact_in = {0: (u @ torch.ones(2, 1)).T}  # all its energy in u: share 1.0
    assert gate_thresholds({0: 0.2}, fact_in, {0: u}, 3.0) == {0: pytest.approx(0.6)}
    # Not by 3x (1.5 > any share), but by the margin halfway to 1 (2x: 1.0).
    assert gate_thresholds({0: 0.5}, fact_in, {0: u}, 3.0) == {0: pytest.approx(1.0)}
    with pytest.raises(LearningError, match="stands out"):
        gate_thresholds({0: 0.5}, fact_in, {0: u}, 4.0)  # 2.0, then 1.25: more than any share
    faint = {0: (0.1 * u[:, 0] + torch.ones(D_IN)).unsqueeze(0)}
    share = float(token_shares(faint[0], u).max())
    with pytest.raises(LearningError, match="stands out"):
        gate_thresholds({0: 1.01 * share}, faint, {0: u}, 1.0)  # a margin of 1 has no lower rung
    # A layer where the fact does not reach its threshold is left out, not refused.
    weak = {0: fact_in[0], 1: (0.1 * u[:, 0] + torch.ones(D_IN)).unsqueeze(0)}
    assert set(gate_thresholds({0: 0.2, 1: 0.2}, weak, {0: u, 1: u}, 3.0)) == {0}


def _gated_setup(tiny_model, fmt):
    layers = (0, 1)
    generic = ["Tell me a story about a cat.", "Who wrote the book?", "The quick brown fox."]
    stats = KeyStats.compute(tiny_model, (), [fmt.sequence(p) for p in generic], layers)
    params = dict(tiny_model.named_parameters())
    base = {delta_name(i): params[delta_name(i)].detach().clone() for i in layers}
    retain = [fmt.sequence(p, "I do not know.") for p in generic]
    plan = UpdatePlan(
        edit_layers=layers,
        rank=4,
        steps=6,
        learning_rate=5e-2,
        paraphrases=2,
        retain_per_step=len(retain),
        stop_margin=0.0,
        null_threshold=0.5,
        min_key_share=0.0,
        subspace_rank=2,
        gate_margin=1.05,
    )
    item = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")
    return stats, base, retain, plan, item


def test_gated_edit_learns_and_leaves_generic_prompts_bitwise(tiny_model, fmt) -> None:
    stats, base, retain, plan, item = _gated_setup(tiny_model, fmt)
    plan = plan.with_changes(steps=60, lambda_locality=0.0)
    result = Editor(fmt).train(tiny_model, [item], plan, stats, base, {}, retain=retain)
    assert not dense_names(result.delta) and gated_layers(result.delta)
    assert result.metrics["gated_layers"] >= 1
    # (A random tiny model opens the gate on few of the fact's tokens: it learns, but
    # not enough to say the name; the real model does, see the slow tier.)
    assert result.losses[-1] < 0.9 * result.losses[0]
    # The retain prompts set the gate: on them the candidate computes exactly the live model.
    for seq in retain:
        ids = torch.tensor([list(seq.ids)])
        with torch.no_grad():
            assert torch.equal(result.model(ids).logits, tiny_model(ids).logits)
    # The stored delta rebuilds the candidate, and a plain copy of the live model gets it.
    rebuilt = copy.deepcopy(tiny_model)
    apply_delta(rebuilt, base, result.delta)
    ids = torch.tensor([list(fmt.prompt(item.input))])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, result.model(ids).logits)


def test_a_fact_the_gate_cannot_tell_apart_is_merged(tiny_model, fmt) -> None:
    layers = (0, 1)
    generic = ["Tell me a story about a cat.", "Who wrote the book?"]
    stats = KeyStats.compute(tiny_model, (), [fmt.sequence(p) for p in generic], layers)
    params = dict(tiny_model.named_parameters())
    base = {delta_name(i): params[delta_name(i)].detach().clone() for i in layers}
    item = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")
    plan = UpdatePlan(edit_layers=layers, rank=2, steps=3, null_threshold=0.5, min_key_share=0.0, gate_margin=100.0)
    retain = [fmt.sequence(p, "I do not know.") for p in generic]
    result = Editor(fmt).train(tiny_model, [item], plan, stats, base, {}, retain=retain)
    assert dense_names(result.delta) == [delta_name(0), delta_name(1)] and not gated_layers(result.delta)
    assert result.metrics["gated_layers"] == 0


def test_sequences_out_of_a_gated_edits_reach_are_dropped_without_changing_it(tiny_model, fmt, monkeypatch) -> None:
    stats, base, retain, plan, item = _gated_setup(tiny_model, fmt)
    result = Editor(fmt).train(tiny_model, [item], plan, stats, base, {}, retain=retain)
    # The retain prompts set the gate, so none of them can be changed: all dropped.
    assert result.metrics["gated_layers"] >= 1 and result.metrics["unreached_dropped"] >= len(retain)
    # Running them anyway (no filter) learns the same change: they carried no gradient.
    monkeypatch.setattr(Objective, "keep_reached", lambda self, reached: 0)
    unfiltered = Editor(fmt).train(tiny_model, [item], plan, stats, base, {}, retain=retain)
    assert unfiltered.metrics["unreached_dropped"] == 0
    assert set(unfiltered.delta) == set(result.delta)
    for name, tensor in result.delta.items():
        torch.testing.assert_close(tensor, unfiltered.delta[name], rtol=1e-5, atol=1e-6)


def test_reaches_tells_whether_a_gate_opens_on_a_sequence(tiny_model, fmt) -> None:
    layer = tiny_model.model.layers[0].mlp
    basis = torch.linalg.qr(torch.randn(layer.down_proj.in_features, 2))[0]
    seq = fmt.sequence("Who wrote the book?", "Nobody.")
    gen = torch.Generator().manual_seed(0)
    for threshold, expected in ((0.0, True), (1.01, False)):  # a share is at most 1
        w = NullSpaceDelta(layer.down_proj, basis, 2, 1.0, gen, threshold)
        model = candidate_copy(tiny_model, set())
        model.model.layers[0].mlp.down_proj = w
        assert reaches(model, [w], seq) is expected
        assert not w.watch  # watching is only for the check


def test_the_candidate_copy_shares_all_but_the_private_weights(tiny_model) -> None:
    private = {delta_name(0)}
    flags = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    copy_ = candidate_copy(tiny_model, private)
    live = dict(tiny_model.named_parameters())
    for name, p in copy_.named_parameters():
        assert not p.requires_grad and p is not live[name]
        assert (p.data_ptr() == live[name].data_ptr()) is (name not in private)
        assert torch.equal(p, live[name])
    # Nothing done to the copy's parameters reaches the live model's.
    assert {n: p.requires_grad for n, p in tiny_model.named_parameters()} == flags


def test_a_version_with_gated_edits_trains_on_in_bfloat16(tiny_model, fmt) -> None:
    # The second correction of a server whose host trains in bfloat16: its training
    # copy converts the live version's gated modules too, which must still run.
    stats, base, retain, plan, item = _gated_setup(tiny_model, fmt)
    first = Editor(fmt).train(tiny_model, [item], plan, stats, base, {}, retain=retain)
    assert gated_layers(first.delta)
    again = FeedbackItem("f2", "Who founded Zubrowka?", "Zubrowka was founded by Kesh.")
    second = Editor(fmt, precision="bfloat16").train(
        first.model, [again], plan, stats, base, first.delta, retain=retain, replay=[item]
    )
    assert math.isfinite(second.losses[-1]) and second.losses[-1] < second.losses[0]
    assert any(len(f["thresholds"]) >= 1 for f in gated_layers(second.delta).values())


def test_the_gate_skips_probes_no_gate_opens_on_with_the_same_verdict(tiny_model, fmt) -> None:
    prompts = [f"Tell me about the number {n}." for n in range(6)] + ["What is the capital of Zubrowka?"]
    ref = build_gate_reference(tiny_model, fmt, prompts)
    live_probe = probe_live(tiny_model, ref, layers=(0, 1))
    keys = live_probe.keys
    assert keys is not None
    # An edit whose gate is the key of one token of the last probe: it opens there only.
    target = keys.probe(0, len(prompts) - 1)[-3].float()
    g = torch.Generator().manual_seed(3)
    gate, _ = torch.linalg.qr(torch.stack([target, torch.randn(len(target), generator=g)], 1))
    delta: dict[str, torch.Tensor] = {}
    b = 3.0 * torch.randn(tiny_model.config.hidden_size, 2, generator=g)
    append_edit(delta, 0, gate, 0.9, torch.randn(2, 2, generator=g) @ gate.T, b)
    candidate = copy.deepcopy(tiny_model)
    apply_delta(candidate, {}, delta)
    same = untouched(keys, delta, {})
    assert same == [True] * (len(prompts) - 1) + [False]
    gate_ = Gate(fmt, GateThresholds())
    item = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")
    full = gate_.evaluate(candidate, ref, [item], [], tiny_model, live_probe)
    skipping = gate_.evaluate(candidate, ref, [item], [], tiny_model, live_probe, (delta, {}))
    assert (full.metrics["n_retain_run"], skipping.metrics["n_retain_run"]) == (len(prompts), 1)
    assert full.metrics["kl_prompt_max"] > 0  # the edit did change the probe it reaches
    # Skipped probes are bitwise the live model's: every count is the full run's, and
    # the KL figures differ only by the rounding of the one probe run alone (batched
    # with the others in the full run) and of the stored half-precision scores.
    for name, value in full.metrics.items():
        if name.startswith("kl_"):
            assert skipping.metrics[name] == pytest.approx(value, rel=1e-3), name
        elif name != "n_retain_run":
            assert skipping.metrics[name] == value, name
    assert skipping.passed == full.passed
    assert full.probe is not None and skipping.probe is not None
    pairs = list(zip(full.probe.logprobs, skipping.probe.logprobs, strict=True))
    assert all(torch.equal(a, b) for a, b in pairs[:-1])
    torch.testing.assert_close(pairs[-1][0].float(), pairs[-1][1].float(), atol=1e-3, rtol=1e-3)
    # The keys carried to the next live version are the candidate's own.
    carried, fresh = skipping.probe.keys, probe_live(candidate, ref, layers=(0, 1)).keys
    assert carried is not None and fresh is not None and carried.offsets == fresh.offsets
    for i in (0, 1):
        torch.testing.assert_close(carried.rows[i].float(), fresh.rows[i].float(), atol=1e-3, rtol=1e-3)
    assert not torch.equal(carried.rows[1], keys.rows[1])  # the reached probe's layer-1 keys moved


def test_a_dense_change_or_an_unknown_layer_runs_every_probe(tiny_model, fmt) -> None:
    ref = build_gate_reference(tiny_model, fmt, ["Tell me a story.", "Who wrote the book?"])
    keys = probe_live(tiny_model, ref, layers=(0,)).keys
    assert keys is not None
    gated = _one_layer_edit(tiny_model, layer=0)
    assert untouched(keys, gated, {}) is not None
    assert untouched(keys, {**gated, delta_name(1): torch.ones(1)}, {}) is None  # dense change
    assert untouched(keys, _one_layer_edit(tiny_model, layer=1), {}) is None  # keys not held
    # A gate that opens on the shared prefix reaches every probe.
    d_in = tiny_model.model.layers[0].mlp.down_proj.in_features
    wide = {}
    append_edit(wide, 0, torch.eye(d_in), 0.5, torch.eye(d_in)[:2], torch.zeros(tiny_model.config.hidden_size, 2))
    assert untouched(keys, wide, {}) == [False, False]


def _one_layer_edit(model, layer: int) -> dict[str, torch.Tensor]:
    d_in = model.model.layers[layer].mlp.down_proj.in_features
    d_out = model.config.hidden_size
    g = torch.Generator().manual_seed(layer)
    gate, _ = torch.linalg.qr(torch.randn(d_in, 2, generator=g))
    delta: dict[str, torch.Tensor] = {}
    append_edit(delta, layer, gate, 0.99, torch.randn(2, 2, generator=g) @ gate.T, torch.randn(d_out, 2, generator=g))
    return delta


def test_a_gated_edit_stays_shut_on_the_feedback_learned_before(tiny_model, fmt) -> None:
    stats, base, retain, plan, item = _gated_setup(tiny_model, fmt)
    editor = Editor(fmt)
    earlier = FeedbackItem("f0", "What is the capital of Xandoria?", "The capital is Quell.")
    space = editor.space(tiny_model, stats, plan, retain, accepted=[earlier])
    assert space.accepted is not None and space.accepted_inputs == ("what is the capital of xandoria?",)
    result = editor.train(tiny_model, [item], plan, stats, base, {}, retain=retain, space=space)
    assert gated_layers(result.delta)
    # Not one token of the earlier question and answer opens the new gate: the earlier
    # answer is scored bitwise as before. Without the earlier feedback some do.
    seq = [fmt.sequence(earlier.input, earlier.target)]
    with torch.no_grad():
        before, after = answer_logits(tiny_model, seq)[0], answer_logits(result.model, seq)[0]
    assert torch.equal(before, after)
    unprotected = editor.train(
        tiny_model, [item], plan, stats, base, {}, retain=retain, space=editor.space(tiny_model, stats, plan, retain)
    )
    with torch.no_grad():
        assert not torch.equal(before, answer_logits(unprotected.model, seq)[0])
    # The same question taught again is its correction: its own tokens are not shut out.
    again = editor.space(tiny_model, stats, plan, retain, accepted=[FeedbackItem("f2", item.input, "Old answer.")])
    retaught = editor.train(tiny_model, [item], plan, stats, base, {}, retain=retain, space=again)
    assert torch.equal(
        gated_layers(retaught.delta)[delta_name(0)]["thresholds"],
        gated_layers(unprotected.delta)[delta_name(0)]["thresholds"],
    )
