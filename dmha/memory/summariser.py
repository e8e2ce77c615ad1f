"""Summaries of archived turns: the ``Summariser`` contract, an LLM one and a deterministic one.

:class:`ExtractiveSummariser` needs no model, always gives the same output for the
same turns, and is the default (``memory.longterm.summarise`` off), the fallback
when the LLM summariser fails, and the cluster summariser. The server wires
:class:`LLMSummariser` when ``memory.longterm.summarise`` is on.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from dmha.llm.base import LLM, ChatMessage, GenerationOptions, GenerationResult
from dmha.memory.bm25 import tokenize
from dmha.turn import Turn

__all__ = ["ExtractiveSummariser", "LLMSummariser", "Summariser", "extract_sentences"]

_SUMMARY_PROMPT = (
    "Summarise the following conversation excerpt in two or three sentences. "
    "Keep every name, date, number and stated fact.\n\n{dialogue}"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")
# A speaker label opening a turn ("Jon: ...", "Dr Lee: ..."): kept when a later sentence is quoted.
_LABEL = re.compile(r"^((?:[^\s:]+ ){0,2}[^\s:]+): ")


@runtime_checkable
class Summariser(Protocol):
    """Summarises a batch of turns. Blocking; may call an LLM.

    Raises:
        DMHAError: any DMHA error (e.g. the model is unavailable); archival then
            falls back to the extractive summariser, never drops the turns.
    """

    def __call__(self, turns: Sequence[Turn]) -> str:
        """Summarise ``turns`` (oldest first) into one short text."""
        ...


def extract_sentences(texts: Sequence[str], max_chars: int) -> list[tuple[int, str]]:
    """Pick sentences that together cover the most content, in their original order.

    Greedy coverage: each step takes the sentence adding the most not-yet-covered
    content-word weight per (square root of) length, where a word weighs more when
    several texts share it (it is what they are about). Coverage rather than
    centrality keeps a one-off fact ("my sister lives in Berlin") from being crowded
    out by the batch's main topic. Greetings and fillers have no content words.

    Args:
        texts: the source texts, in order.
        max_chars: the budget for the picked sentences' total length.

    Returns:
        ``(text_index, sentence)`` pairs in source order.
    """
    sentences: list[tuple[int, str, set[str]]] = []
    for ti, text in enumerate(texts):
        for sent in _SENTENCE.split(text.strip()):
            sent = sent.strip()
            toks = set(tokenize(sent))
            if sent and len(toks) >= 2:  # "Thanks!", "Wow, that's great." carry nothing
                sentences.append((ti, sent, toks))
    if not sentences:
        return []
    df = Counter(tok for ti in range(len(texts)) for tok in set().union(*(s[2] for s in sentences if s[0] == ti)))
    weight = {tok: 1.0 + math.log(n) for tok, n in df.items()}
    covered: set[str] = set()
    chosen: list[int] = []
    used = 0
    remaining = set(range(len(sentences)))
    while remaining:
        best, best_gain = -1, 0.0
        for pos in sorted(remaining):
            _, sent, toks = sentences[pos]
            gain = sum(weight[t] for t in toks - covered) / math.sqrt(len(sent) + 10)
            if gain > best_gain:
                best, best_gain = pos, gain
        if best < 0:
            break
        remaining.discard(best)
        length = len(sentences[best][1])
        if chosen and used + length > max_chars:
            continue
        chosen.append(best)
        covered |= sentences[best][2]
        used += length + 1
    chosen.sort()
    return [(sentences[p][0], sentences[p][1]) for p in chosen]


class ExtractiveSummariser:
    """A deterministic :class:`Summariser`: the sentences covering the most content, in order.

    Args:
        max_chars: length cap of a summary (sentences are never cut).
        ratio: a summary is also at most this share of its source's length, so it
            stays a compression of the turns rather than a copy of them.
    """

    def __init__(self, max_chars: int = 600, ratio: float = 0.5) -> None:
        self.max_chars = max_chars
        self.ratio = ratio

    def __call__(self, turns: Sequence[Turn]) -> str:
        budget = min(self.max_chars, int(self.ratio * sum(len(t.text) for t in turns)))
        picked = extract_sentences([t.text for t in turns], budget)
        if not picked:
            return " ".join(t.text.strip() for t in turns)[:budget]
        groups: dict[int, list[str]] = {}
        for ti, sent in picked:
            groups.setdefault(ti, []).append(sent)
        parts = []
        for ti, sents in groups.items():
            text = " ".join(sents)
            speaker = _LABEL.match(turns[ti].text)
            if speaker and not text.startswith(speaker.group(0)):
                text = speaker.group(0) + text  # who said it survives the cut
            elif not speaker and turns[ti].role != "user":
                text = f"{turns[ti].role}: {text}"  # the user's own words need no label
            parts.append(text)
        return " | ".join(parts)


class LLMSummariser:
    """Summarises archived turns with the serving model (called from worker threads).

    Args:
        llm: the serving engine.
        loop: the server's event loop (the engine streams through it).
        max_new_tokens: summary length cap.
    """

    def __init__(self, llm: LLM, loop: asyncio.AbstractEventLoop, max_new_tokens: int = 96) -> None:
        self._llm = llm
        self._loop = loop
        self._options = GenerationOptions(max_new_tokens=max_new_tokens)

    def __call__(self, turns: Sequence[Turn]) -> str:
        dialogue = "\n".join(f"{t.role}: {t.text}" for t in turns)
        messages = [ChatMessage("user", _SUMMARY_PROMPT.format(dialogue=dialogue))]
        future = asyncio.run_coroutine_threadsafe(self._llm.complete(messages, self._options), self._loop)
        result: GenerationResult = future.result()
        return result.text.strip()
