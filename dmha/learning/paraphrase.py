"""Paraphrases of a feedback input, made from templates (no hub model at run time).

Two disjoint template sets exist: ``train`` paraphrases feed the causal term of the
objective, ``eval`` paraphrases feed the gate's generalisation check, so the gate
measures generalisation to phrasings the update never saw.

A question is first parsed into a known shape ("What is X?", "Who is X?",
"<wh-word> is/are/was/were X?", "Tell me X."); each shape has rephrasings that keep
its meaning ("What is X?" -> "Tell me X." -> "Do you know X?"). Any input, parsed
or not, also gets wrappers that keep the question verbatim ("Q: ... A:").
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["Split", "paraphrases"]

Split = Literal["train", "eval"]

_WHAT = re.compile(r"^(?:what is|what's|what are|whats)\s+(?P<x>.+?)\s*\?*$", re.I)
_TELL = re.compile(r"^(?:please\s+)?(?:tell me|name|give me)\s+(?P<x>.+?)\s*[.!]*$", re.I)
_WH_BE = re.compile(
    r"^(?P<wh>who|where|when|which|how|why|how many|how much|how old|how long|how far|how tall)"
    r"\s+(?P<be>is|are|was|were)\s+(?P<x>.+?)\s*\?*$",
    re.I,
)
_PARTICIPLE = re.compile(r"(?:ed|en|ing)$", re.I)
_AUX = re.compile(r"\b(?:do|does|did|can|could|will|would|should|has|have|had|is|are|was|were)\b", re.I)
_WH_ANY = re.compile(r"^(?P<wh>who|where|when|which|what|how many|how much)\s+(?P<rest>.+?)\s*\?*$", re.I)

# Rephrasings by shape. {x} is the noun phrase; train and eval never share a template.
_WHAT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "Tell me {x}.",
        "Do you know {x}?",
        "Q: What is {x}? A:",
        "What's {x}?",
        "Could you tell me {x}?",
        "{X} is what?",
    ),
    "eval": (
        "Please tell me {x}.",
        "I'd like to know {x}.",
        "Can you tell me what {x} is?",
        "Question: what is {x}?",
        "Do you happen to know {x}?",
        "what is {x}",
    ),
}
_WH_BE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "Tell me {wh} {embedded}.",
        "Do you know {wh} {embedded}?",
        "Q: {Wh} {be} {x}? A:",
        "Could you tell me {wh} {embedded}?",
    ),
    "eval": (
        "Please tell me {wh} {embedded}.",
        "I'd like to know {wh} {embedded}.",
        "Question: {wh} {be} {x}?",
        "Do you happen to know {wh} {embedded}?",
    ),
}
_WH_ANY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "Tell me {wh} {rest}.",
        "Do you know {wh} {rest}?",
        "Could you tell me {wh} {rest}?",
    ),
    "eval": (
        "Please tell me {wh} {rest}.",
        "I'd like to know {wh} {rest}.",
        "Do you happen to know {wh} {rest}?",
    ),
}
# Verbatim wrappers, valid for any input. {q} is the question with its punctuation.
_WRAPPERS: dict[str, tuple[str, ...]] = {
    "train": ("Q: {q} A:", "{q} Please answer.", "Quick question: {q}", "Answer this: {q}"),
    "eval": ("Question: {q}", "I was wondering: {q}", "{q} Answer in one sentence.", "Hey, {q_lower}"),
}


def _lower_first(text: str) -> str:
    # Keep acronyms and names ("DMHA", "Paris") intact: only lower a capitalised word.
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _shaped(text: str, split: Split) -> list[str]:
    core = text.strip()
    if m := _WHAT.match(core):
        x = m["x"].rstrip("?. ")
        return [t.format(x=x, X=_upper_first(x)) for t in _WHAT_TEMPLATES[split]]
    if m := _TELL.match(core):
        x = m["x"].rstrip("?. ")
        return [t.format(x=x, X=_upper_first(x)) for t in _WHAT_TEMPLATES[split]]
    if m := _WH_BE.match(core):
        wh, be, x = m["wh"].lower(), m["be"].lower(), m["x"].rstrip("?. ")
        words = x.split()
        if len(words) >= 2 and _PARTICIPLE.search(words[-1]):
            # "where is the team based" -> "where the team is based"
            embedded = " ".join([*words[:-1], be, words[-1]])
        else:
            embedded = f"{x} {be}"
        return [t.format(wh=wh, Wh=_upper_first(wh), be=be, x=x, embedded=embedded) for t in _WH_BE_TEMPLATES[split]]
    if (m := _WH_ANY.match(core)) and not _AUX.search(" ".join(m["rest"].split()[:3])):
        # Subject questions ("who wrote X") embed without reordering; questions with
        # do-support ("how many moons does X have") would need conjugation: wrappers only.
        wh, rest = m["wh"].lower(), m["rest"].rstrip("?. ")
        return [t.format(wh=wh, rest=rest) for t in _WH_ANY_TEMPLATES[split]]
    return []


def paraphrases(text: str, split: Split = "train", limit: int | None = None) -> list[str]:
    """Rephrasings of a feedback input.

    Args:
        text: the feedback input (usually a question).
        split: ``"train"`` for the objective, ``"eval"`` for the gate; the two never
            share a template.
        limit: at most this many (the first ones, shape-aware rephrasings first).

    Returns:
        Distinct paraphrases, none equal to ``text``; deterministic for a given input.
    """
    core = " ".join(text.split())
    if not core:
        return []
    q = core if core[-1] in "?.!:" else core + "?"
    out: list[str] = []
    seen = {core.casefold()}
    candidates = _shaped(core, split) + [t.format(q=q, q_lower=_lower_first(q)) for t in _WRAPPERS[split]]
    for cand in candidates:
        cand = " ".join(cand.split())
        if cand.casefold() in seen:
            continue
        seen.add(cand.casefold())
        out.append(cand)
        if limit is not None and len(out) >= limit:
            break
    return out
