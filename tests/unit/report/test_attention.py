"""Attention over context blocks on the tiny model with the real tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from dmha.knowledge.hook import FACTS_TITLE
from dmha.llm.base import ChatMessage
from dmha.llm.engine import render_chat
from dmha.llm.prompt import ContextBlock
from dmha.memory.hook import MEMORIES_TITLE
from dmha.report import attention_section, block_attention, rebuild_context
from tests.unit.report.report_checks import header, png_size, rows

FACTS = ("knowledge-base facts", ContextBlock(FACTS_TITLE, ("fact: bob.city = paris", "fact: bob.age = 30")))
MEMORIES = ("retrieved memories", ContextBlock(MEMORIES_TITLE, ("1 May 2024: Bob moved to Paris last year.",)))
HISTORY = [ChatMessage("user", "Hi, let us talk about Bob."), ChatMessage("assistant", "Sure, what about Bob?")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()  # sdpa by default
    return model, tok


def render(tok):
    return lambda msgs: render_chat(tok, [(m.role, m.text) for m in msgs])


def test_rows_sum_to_one_over_named_blocks(tmp_path, tiny):
    model, tok = tiny
    ctx = rebuild_context(
        render(tok), "You are DMHA.", 1024, 64, [FACTS, MEMORIES], HISTORY, "Where does Bob live?", "Paris.", "t1"
    )
    assert [name for name, _ in ctx.pieces] == [
        "system prompt",
        "knowledge-base facts",
        "retrieved memories",
        "working memory",
        "working memory",
        "message",
    ]
    result = block_attention(model, tok, ctx)
    assert result.layers.shape == (2, len(result.blocks)) and result.last_heads.shape == (4, len(result.blocks))
    assert np.allclose(result.layers.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(result.last_heads.sum(axis=1), 1.0, atol=1e-5)
    assert result.blocks[-2:] == ("chat template", "answer so far")
    assert result.tokens[result.blocks.index("message")] == len(tok("Where does Bob live?")["input_ids"])
    assert result.answer_tokens == len(tok("Paris.", add_special_tokens=False)["input_ids"])
    # The model's own implementation is restored after the eager run.
    assert model.config._attn_implementation == "sdpa"

    section = attention_section(result, tmp_path, "t1")
    assert png_size(tmp_path / "attention_heatmap.png") == (1320, 660)
    assert header(tmp_path / "attention_weight.csv") == ["layer", "block", "tokens", "share"]
    table = rows(tmp_path / "attention_weight.csv")
    assert len(table) == 2 * len(result.blocks)
    assert len(rows(tmp_path / "attention_heads.csv")) == 4 * len(result.blocks)
    stat = json.loads((tmp_path / "attention_stat.json").read_text())
    assert abs(sum(stat["mean_share"].values()) - 1) < 1e-5
    assert section.stats["top_block"] in result.blocks and "%" in section.finding


def test_blocks_that_do_not_fit_are_dropped_like_the_pipeline_does(tiny):
    model, tok = tiny
    budget = len(render(tok)([ChatMessage("system", "You are DMHA."), ChatMessage("user", "Where?")])) + 70
    ctx = rebuild_context(render(tok), "You are DMHA.", budget, 64, [FACTS, MEMORIES], HISTORY, "Where?", "x")
    names = [n for n, _ in ctx.pieces]
    assert "retrieved memories" not in names and "working memory" not in names  # sacrificed first
    assert names[0] == "system prompt" and names[-1] == "message"


def test_empty_answer_is_refused(tiny):
    model, tok = tiny
    ctx = rebuild_context(render(tok), "You are DMHA.", 1024, 64, [], [], "Hi", "")
    with pytest.raises(ValueError, match="empty answer"):
        block_attention(model, tok, ctx)
