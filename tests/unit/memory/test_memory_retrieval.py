"""Fusion, de-duplication and budget packing (pure logic, no backends)."""

from __future__ import annotations

import pytest

from dmha.memory.records import MemoryRecord
from dmha.memory.retrieval import Candidate, approx_token_count, pack, rrf_fuse, shown_or_unwanted


def rec(mid: str, text: str, kind: str = "turn", sources: tuple[str, ...] | None = None) -> MemoryRecord:
    if sources is None:
        sources = (f"t-{mid}",) if kind == "turn" else ()
    return MemoryRecord(
        id=mid,
        user_id="u",
        session_id="s",
        kind=kind,
        text=text,  # type: ignore[arg-type]
        created_at=0.0,
        source_ids=sources,
    )


def cands(*records: MemoryRecord) -> list[Candidate]:
    return [Candidate(r, 1.0 / (i + 1), {"dense": i + 1}) for i, r in enumerate(records)]


def test_rrf_sums_weighted_reciprocal_ranks_and_records_signals():
    fused = rrf_fuse({"dense": ["a", "b"], "lexical": ["b", "c"]}, {"dense": 1.0, "lexical": 2.0}, k0=10)
    scores = {mid: score for mid, score, _ in fused}
    assert scores["b"] == pytest.approx(1 / 12 + 2 / 11)
    assert scores["a"] == pytest.approx(1 / 11)
    assert scores["c"] == pytest.approx(2 / 12)
    assert [m for m, _, _ in fused] == ["b", "c", "a"]
    assert dict(fused[0][2]) == {"dense": 2, "lexical": 1}


def test_rrf_zero_weight_drops_a_signal_and_duplicates_count_once():
    fused = rrf_fuse({"dense": ["a", "a", "b"], "recency": ["c"]}, {"dense": 1.0, "recency": 0.0}, k0=1)
    assert [m for m, _, _ in fused] == ["a", "b"]
    assert fused[1][2] == {"dense": 3}  # rank counts the repeated entry's position


def test_rrf_ties_break_by_id_deterministically():
    fused = rrf_fuse({"x": ["b"], "y": ["a"]}, {}, k0=60)
    assert [m for m, _, _ in fused] == ["a", "b"]


def test_pack_skips_a_turn_its_chosen_summary_quotes():
    turn = rec("t1", "My sister Anna lives in Berlin.")
    summary = rec("s1", "My sister Anna lives in Berlin. | We hike in the Alps.", "summary", ("t-t1", "t-t2"))
    out = pack(cands(summary, turn), k=5)
    assert [m.id for m in out] == ["s1"]


def test_pack_keeps_a_turn_the_summary_only_links():
    turn = rec("t1", "My sister Anna lives in Berlin and works as a nurse.")
    summary = rec("s1", "A chat about family and travel.", "summary", ("t-t1", "t-t2"))
    out = pack(cands(summary, turn), k=5)
    assert [m.id for m in out] == ["s1", "t1"]


def test_pack_skips_a_summary_whose_turns_were_all_chosen():
    t1, t2 = rec("t1", "I adopted a cat."), rec("t2", "She is orange.")
    summary = rec("s1", "I adopted an orange cat.", "summary", ("t-t1", "t-t2"))
    partial = rec("s2", "Cats and hikes.", "summary", ("t-t1", "t-t9"))
    out = pack(cands(t1, t2, summary, partial), k=5)
    assert [m.id for m in out] == ["t1", "t2", "s2"]


def test_pack_drops_repeated_text_and_respects_k():
    a, b, c = rec("a", "Thanks!"), rec("b", "thanks!"), rec("c", "Bye")
    assert [m.id for m in pack(cands(a, b, c), k=5)] == ["a", "c"]
    assert [m.id for m in pack(cands(a, b, c), k=1)] == ["a"]


def test_pack_fits_the_budget_and_lets_a_shorter_later_memory_in():
    long = rec("long", "x" * 400)  # 100 tokens by the estimate
    mid = rec("mid", "y" * 120)  # 30
    short = rec("short", "z" * 40)  # 10
    out = pack(cands(mid, long, short), k=5, token_budget=45)
    assert [m.id for m in out] == ["mid", "short"]
    assert sum(approx_token_count(m.text) for m in out) <= 45


def test_pack_uses_the_given_token_counter():
    a, b = rec("a", "one two three"), rec("b", "four five")
    words = lambda text: len(text.split())  # noqa: E731
    assert [m.id for m in pack(cands(a, b), k=5, token_budget=4, count_tokens=words)] == ["a"]


def test_pack_results_carry_why_and_scores_in_order():
    out = pack([Candidate(rec("a", "alpha beta"), 0.5, {"lexical": 1, "dense": 3})], k=3)
    assert out[0].why == "dense#3 lexical#1"
    assert out[0].score == 0.5 and out[0].kind == "turn" and out[0].source_ids == ("t-a",)


def test_facts_without_sources_are_never_treated_as_covered():
    f1, f2 = rec("f1", "Alice is vegan.", "fact"), rec("f2", "Alice likes tea.", "fact")
    assert [m.id for m in pack(cands(f1, f2), k=5)] == ["f1", "f2"]


def test_approx_token_count_is_positive_and_grows_with_bytes():
    assert approx_token_count("") == 1
    assert approx_token_count("abcd" * 10) == 10
    assert approx_token_count("é" * 4) == 2  # UTF-8 bytes, not characters


def test_prompt_filter_leaves_out_other_roles_and_what_the_window_shows():
    import dataclasses

    from dmha.turn import Turn

    mine = dataclasses.replace(rec("a", "I live in Lisbon."), role="user")
    reply = dataclasses.replace(rec("b", "You live in Lisbon."), role="assistant")
    shown = dataclasses.replace(rec("c", "I moved there in May."), role="user", source_ids=("w1",))
    same_text = dataclasses.replace(rec("d", "i  MOVED there in may."), role="user")
    fact = rec("f", "bob.city = paris", kind="fact")
    window = [Turn("w1", "u", "s", "user", "I moved there in May.", 0.0)]
    skip = shown_or_unwanted(["user"], window)
    got = pack(cands(reply, mine, shown, same_text, fact), 10, skip=skip)
    assert [m.id for m in got] == ["a", "f"]
    assert shown_or_unwanted(None, []) is None
    # Without a role filter the assistant's reply is kept; the window still is not repeated.
    assert [m.id for m in pack(cands(reply, shown), 10, skip=shown_or_unwanted(None, window))] == ["b"]


def test_pack_caps_turns_per_session_and_gives_the_room_to_others():
    import dataclasses

    a1, a2, a3 = (dataclasses.replace(rec(f"a{i}", f"a turn {i}"), session_id="A") for i in range(3))
    b1 = dataclasses.replace(rec("b1", "b turn"), session_id="B")
    fact = rec("f", "a fact", kind="fact")
    assert [m.id for m in pack(cands(a1, a2, a3, fact, b1), 4, session_cap=2)] == ["a0", "a1", "f", "b1"]
    assert [m.id for m in pack(cands(a1, a2, a3, fact, b1), 4)] == ["a0", "a1", "a2", "f"]
