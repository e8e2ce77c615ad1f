"""The regression gate: a candidate goes live only if it learned and broke nothing.

Checks, each against a threshold from ``LearningConfig``:

- efficacy: the greedy answer to each feedback input contains its target
  (case-insensitive, whitespace-normalised, trailing punctuation ignored);
- generalisation: the same over held-out paraphrases (templates the update never saw);
- retention: the same for replayed earlier feedback (an update must not undo one);
- locality: the greedy answers to the fixed gate prompts are unchanged in their
  first 32 tokens (``locality_strict``); with ``tie_nats > 0`` an answer that first
  diverges where the live model itself rated the new token within ``tie_nats`` of
  its choice also counts as unchanged (``locality``): many of a small model's
  greedy answers hinge somewhere on a logit gap below 0.01, which any weight
  change at all can flip;
- perplexity: the relative rise on a held-out text stays small.

Greedy checks are done by teacher forcing where that is exact: if the candidate's
argmax at every position of a known continuation equals that continuation's next
token, its greedy decoding reproduces the continuation token for token (by
induction over positions). One batched forward pass then replaces 32 sequential
decode steps per prompt. Only answers that fail that test are really decoded.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from dmha.config import LearningConfig
from dmha.learning.feedback import FeedbackItem
from dmha.learning.generation import answer_logits, greedy, sequence_nll
from dmha.learning.paraphrase import paraphrases
from dmha.learning.prompting import ChatFormat, Sequence
from dmha.learning.retain import GATE_RETAIN, HELDOUT_TEXT

__all__ = ["Gate", "GateReference", "GateReport", "GateThresholds", "build_gate_reference"]

log = logging.getLogger(__name__)

LOCALITY_TOKENS = 32


@dataclass(frozen=True)
class GateThresholds:
    """Pass marks (see the ``min_*`` fields of :class:`~dmha.config.LearningConfig`)."""

    min_efficacy: float = 0.99
    min_generalisation: float = 0.9
    min_locality: float = 0.97
    max_perplexity_increase: float = 0.05

    @classmethod
    def from_config(cls, cfg: LearningConfig) -> GateThresholds:
        """Thresholds of a deployment."""
        return cls(
            cfg.min_efficacy, cfg.min_generalisation, cfg.min_locality, cfg.max_perplexity_increase
        )


@dataclass(frozen=True)
class GateReference:
    """The live model's behaviour on the gate's fixed probes (compute once per version).

    Attributes:
        seqs: each gate prompt followed by the live model's greedy continuation.
        argmax: the live model's teacher-forced argmax at those positions (equal to the
            continuation except where float rounding breaks a near-tie).
        heldout_nll: the live model's mean NLL on the held-out text.
    """

    seqs: tuple[Sequence, ...]
    argmax: tuple[tuple[int, ...], ...]
    heldout_nll: float


@dataclass(frozen=True)
class GateReport:
    """The verdict on a candidate.

    Attributes:
        passed: every check met its threshold.
        metrics: ``efficacy``, ``generalisation``, ``retention``, ``locality``,
            ``perplexity_increase`` and the raw counts.
        reasons: one line per failed check (empty when passed).
        failures: up to a few ``(prompt, answer)`` pairs that failed, for the job record.
    """

    passed: bool
    metrics: dict[str, float]
    reasons: tuple[str, ...] = ()
    failures: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def contains_target(answer: str, target: str) -> bool:
    """Whether ``answer`` contains ``target`` (case-insensitive, punctuation at the end ignored)."""
    needle = re.sub(r"[\s.!?;:,]+$", "", _norm(target))
    return bool(needle) and needle in _norm(answer)


@torch.no_grad()
def build_gate_reference(
    model: Any, fmt: ChatFormat, prompts: Seq[str] = GATE_RETAIN
) -> GateReference:
    """Record what the live model does on the gate prompts and the held-out text.

    Args:
        model: the live model.
        fmt: prompt rendering, as served.
        prompts: the gate's retain prompts.

    Returns:
        The reference (depends only on the model: cache it per live version).
    """
    model.eval()
    rendered = [fmt.prompt(p) for p in prompts]
    conts = greedy(model, rendered, LOCALITY_TOKENS, fmt.eos_ids)
    seqs = tuple(Sequence(p, tuple(c)) for p, c in zip(rendered, conts, strict=True) if c)
    argmax = tuple(tuple(x.argmax(-1).tolist()) for x in answer_logits(model, seqs))
    nll = sequence_nll(model, fmt.tokenizer.encode(HELDOUT_TEXT, add_special_tokens=False))
    return GateReference(seqs, argmax, nll)


class Gate:
    """Evaluates candidates.

    Args:
        fmt: prompt rendering, as served.
        thresholds: pass marks.
        eval_paraphrases: held-out paraphrases checked per feedback item.
    """

    def __init__(
        self,
        fmt: ChatFormat,
        thresholds: GateThresholds,
        tie_nats: float = 0.0,
        eval_paraphrases: int = 6,
    ) -> None:
        self.fmt = fmt
        self.thresholds = thresholds
        self.tie_nats = tie_nats
        self.eval_paraphrases = eval_paraphrases

    def _answers_contain(
        self, model: Any, cases: list[tuple[str, str]]
    ) -> tuple[list[bool], list[tuple[str, str]]]:
        """For each ``(question, target)``: does the greedy answer contain the target?"""
        if not cases:
            return [], []
        seqs = [Sequence(self.fmt.prompt(q), self.fmt.answer(t, end=False)) for q, t in cases]
        ok = [
            bool(torch.equal(x.argmax(-1).cpu(), torch.tensor(s.answer)))
            for x, s in zip(answer_logits(model, seqs), seqs, strict=True)
        ]
        todo = [i for i, good in enumerate(ok) if not good]
        failures: list[tuple[str, str]] = []
        if todo:
            longest = max(len(seqs[i].answer) for i in todo)
            outs = greedy(model, [seqs[i].prompt for i in todo], longest + 24, self.fmt.eos_ids)
            for i, out in zip(todo, outs, strict=True):
                answer = self.fmt.decode(out)
                ok[i] = contains_target(answer, cases[i][1])
                if not ok[i]:
                    failures.append((cases[i][0], answer))
        return ok, failures

    @torch.no_grad()
    def evaluate(
        self,
        candidate: Any,
        reference: GateReference,
        items: Seq[FeedbackItem],
        replay: Seq[FeedbackItem] = (),
        live: Any = None,
    ) -> GateReport:
        """Check a candidate against the live model's reference.

        Args:
            candidate: the merged candidate model.
            reference: :func:`build_gate_reference` of the live model.
            items: the feedback this update learned.
            replay: earlier accepted feedback it must still know.
            live: the live model; needed only for the tie-tolerant locality
                (``tie_nats > 0``), which scores divergences under it.

        Returns:
            The report; ``passed`` is False with reasons when a threshold is missed.
        """
        candidate.eval()
        th = self.thresholds
        direct = [(it.input, it.target) for it in items]
        para = [
            (p, it.target)
            for it in items
            for p in paraphrases(it.input, "eval", self.eval_paraphrases)
        ]
        kept = [(it.input, it.target) for it in replay]
        ok, failures = self._answers_contain(candidate, direct + para + kept)
        eff = ok[: len(direct)]
        gen = ok[len(direct) : len(direct) + len(para)]
        ret = ok[len(direct) + len(para) :]

        same = 0
        agree = 0
        total = 0
        diverged: list[tuple[int, int, int]] = []  # (prompt, position, candidate token)
        logits = answer_logits(candidate, reference.seqs)
        for k, (x, ref) in enumerate(zip(logits, reference.argmax, strict=True)):
            got = x.argmax(-1).tolist()
            same += got == list(ref)
            agree += sum(int(a == b) for a, b in zip(got, ref, strict=True))
            total += len(ref)
            first = next((j for j, (a, b) in enumerate(zip(got, ref, strict=True)) if a != b), None)
            if first is not None:
                diverged.append((k, first, got[first]))
        ties = 0
        if self.tie_nats > 0 and live is not None and diverged:
            live_logits = answer_logits(live, [reference.seqs[k] for k, _, _ in diverged])
            for (k, j, tok), lx in zip(diverged, live_logits, strict=True):
                lp = torch.log_softmax(lx[j].float(), -1)
                ties += float(lp.max() - lp[tok]) <= self.tie_nats
        nll = sequence_nll(
            candidate, self.fmt.tokenizer.encode(HELDOUT_TEXT, add_special_tokens=False)
        )
        ppl_rise = math.exp(nll - reference.heldout_nll) - 1.0

        def share(xs: list[bool]) -> float:
            return sum(xs) / len(xs) if xs else 1.0

        metrics = {
            "efficacy": share(eff),
            "generalisation": share(gen),
            "retention": share(ret),
            "locality": (same + ties) / len(reference.seqs) if reference.seqs else 1.0,
            "locality_strict": same / len(reference.seqs) if reference.seqs else 1.0,
            "locality_token_agreement": agree / total if total else 1.0,
            "perplexity_increase": ppl_rise,
            "n_inputs": float(len(eff)),
            "n_paraphrases": float(len(gen)),
            "n_replayed": float(len(ret)),
            "n_retain": float(len(reference.seqs)),
        }
        reasons = []
        for name, floor in (
            ("efficacy", th.min_efficacy),
            ("generalisation", th.min_generalisation),
            ("retention", th.min_efficacy),
            ("locality", th.min_locality),
        ):
            if metrics[name] < floor:
                reasons.append(f"{name} {metrics[name]:.3f} < {floor:.3f}")
        if ppl_rise > th.max_perplexity_increase:
            reasons.append(
                f"perplexity rose by {ppl_rise:.1%} > {th.max_perplexity_increase:.1%}"
            )
        report = GateReport(not reasons, metrics, tuple(reasons), tuple(failures[:8]))
        log.info("gate %s: %s %s", "passed" if report.passed else "rejected", metrics, reasons)
        return report
