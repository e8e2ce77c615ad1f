"""Template paraphrases: meaning-preserving shapes, disjoint train/eval sets."""

from __future__ import annotations

import pytest

from dmha.learning import paraphrases

QUESTIONS = [
    "What is the capital of Zubrowka?",
    "Who is the CEO of Acme Robotics?",
    "Where is the DMHA team based?",
    "Who wrote the novel The Glass Orchard?",
    "How many moons does the planet Tyrrh have?",
    "Tell me the Wi-Fi password.",
    "hello there",
]


@pytest.mark.parametrize("question", QUESTIONS)
def test_train_and_eval_are_disjoint_and_new(question: str) -> None:
    train = paraphrases(question, "train")
    evals = paraphrases(question, "eval")
    assert len(train) >= 3 and len(evals) >= 3
    assert not {p.casefold() for p in train} & {p.casefold() for p in evals}
    assert question.casefold() not in {p.casefold() for p in train + evals}
    assert paraphrases(question, "train") == train  # deterministic


def test_what_is_shape_is_rephrased() -> None:
    out = paraphrases("What is the capital of Zubrowka?", "train")
    assert "Tell me the capital of Zubrowka." in out
    assert "Do you know the capital of Zubrowka?" in out
    assert "Q: What is the capital of Zubrowka? A:" in out


def test_participle_is_moved_in_embedded_questions() -> None:
    out = paraphrases("When was the Treaty of Karsk signed?", "train")
    assert "Tell me when the Treaty of Karsk was signed." in out


def test_limit_and_empty() -> None:
    assert len(paraphrases("What is X?", "eval", limit=2)) == 2
    assert paraphrases("   ") == []
