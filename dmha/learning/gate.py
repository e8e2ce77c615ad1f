"""The regression gate: a candidate goes live only if it learned and broke nothing.

Checks, each against a threshold from ``LearningConfig``:

- efficacy: the greedy answer to each feedback input contains its target
  (case-insensitive, whitespace-normalised, trailing punctuation ignored);
- generalisation: the same over held-out paraphrases (templates the update never saw);
- retention: the same for replayed earlier feedback (an update must not undo one);
- locality (primary): on the gate's retain prompts, each followed by a fixed
  32-token continuation, the candidate's teacher-forced argmax agrees with the live
  model's at every position where the live model is *confident* (its top-2 gap is at
  least ``confident_nats``). Half of a small model's answers hinge somewhere on a
  near-tie that any weight change can flip; counting those would measure float
  noise, not the edit;
- KL budget: mean ``KL(live || candidate)`` per token, overall and per prompt;
- perplexity: the relative rise on a held-out text stays small.

Strict identity (every position agrees) and token agreement (share of all
positions) are reported too, without gating on them. Live and candidate are scored
by the same eager code on the same sequences, so numerics cancel out.

Probes a key-gated candidate provably answers as the live model does (no gate of
it opens on any of their tokens: :mod:`dmha.learning.reach`) are not run; they
count as identical, which they are bitwise.

Greedy checks of the feedback are done by teacher forcing where that is exact: if
the candidate's argmax at every position of a known continuation equals that
continuation's next token, its greedy decoding reproduces the continuation token for
token (by induction over positions). Only answers that fail that test are decoded.
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
from dmha.learning.generation import answer_logits, common_prefix, greedy, sequence_nll
from dmha.learning.paraphrase import paraphrases
from dmha.learning.prompting import ChatFormat, Sequence
from dmha.learning.reach import ProbeKeys, probe_keys, untouched
from dmha.learning.retain import GATE_RETAIN, HELDOUT_TEXT

__all__ = [
    "Gate",
    "GateReference",
    "GateReport",
    "GateThresholds",
    "LiveProbe",
    "LocalityScore",
    "build_gate_reference",
    "compare_logits",
    "probe_live",
]

log = logging.getLogger(__name__)

LOCALITY_TOKENS = 32


@dataclass(frozen=True)
class GateThresholds:
    """Pass marks (see the gate fields of :class:`~dmha.config.LearningConfig`)."""

    min_efficacy: float = 0.99
    min_generalisation: float = 0.9
    min_locality: float = 0.99
    max_kl_mean: float = 0.01
    max_kl_prompt: float = 0.25
    max_perplexity_increase: float = 0.05
    confident_nats: float = 0.5

    @classmethod
    def from_config(cls, cfg: LearningConfig) -> GateThresholds:
        """Thresholds of a deployment."""
        return cls(
            cfg.min_efficacy,
            cfg.min_generalisation,
            cfg.min_locality,
            cfg.max_kl_mean,
            cfg.max_kl_prompt,
            cfg.max_perplexity_increase,
            cfg.confident_nats,
        )


@dataclass(frozen=True)
class GateReference:
    """The gate's fixed probes: retain sequences and the held-out text.

    They depend only on the base model (its greedy continuations), so they are
    computed once per base model and cached on disk; each candidate is compared with
    the live model on the same sequences.

    Attributes:
        seqs: each gate prompt followed by the base model's greedy continuation.
        heldout: token ids of the held-out text.
    """

    seqs: tuple[Sequence, ...]
    heldout: tuple[int, ...]


@dataclass(frozen=True)
class LiveProbe:
    """The live model's answers to the probes (compute once per live version).

    Attributes:
        logprobs: per probe sequence, ``float16 [positions, vocab]`` log-probabilities.
        heldout_nll: mean NLL of the held-out text.
        keys: the live model's keys on the probes at the edit layers, which tell the
            probes a gated candidate cannot have changed (None: every probe is run).
    """

    logprobs: tuple[torch.Tensor, ...]
    heldout_nll: float
    keys: ProbeKeys | None = None


@torch.no_grad()
def probe_live(live: Any, reference: GateReference, workers: int = 1, layers: Seq[int] = ()) -> LiveProbe:
    """Score the probes under the live model (the half of the locality check that does
    not depend on the candidate; the worker computes it once per live version).

    Args:
        live: the live model.
        reference: the probes.
        workers: threads the probes are split over (:func:`answer_logits`).
        layers: edit layers whose keys are kept (:class:`~dmha.learning.reach.ProbeKeys`).

    Returns:
        The live model's scores.
    """
    live.eval()
    logits = answer_logits(live, reference.seqs, workers=workers)
    keys = probe_keys(live, reference.seqs, layers, common_prefix(reference.seqs)) if layers else None
    return LiveProbe(
        tuple(torch.log_softmax(x.float(), -1).half() for x in logits),
        sequence_nll(live, reference.heldout),
        keys,
    )


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
    probe: LiveProbe | None = field(default=None, repr=False)
    """The candidate's own answers to the probes: its :class:`LiveProbe` once it is live."""


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def contains_target(answer: str, target: str) -> bool:
    """Whether ``answer`` contains ``target`` (case-insensitive, punctuation at the end ignored)."""
    needle = re.sub(r"[\s.!?;:,]+$", "", _norm(target))
    return bool(needle) and needle in _norm(answer)


@torch.no_grad()
def build_gate_reference(model: Any, fmt: ChatFormat, prompts: Seq[str] = GATE_RETAIN) -> GateReference:
    """Greedy continuations of the gate prompts, and the held-out text's ids.

    Args:
        model: the base model.
        fmt: prompt rendering, as served.
        prompts: the gate's retain prompts.

    Returns:
        The reference.
    """
    model.eval()
    rendered = [fmt.prompt(p) for p in prompts]
    conts = greedy(model, rendered, LOCALITY_TOKENS, fmt.eos_ids)
    seqs = tuple(Sequence(p, tuple(c)) for p, c in zip(rendered, conts, strict=True) if c)
    heldout = tuple(fmt.tokenizer.encode(HELDOUT_TEXT, add_special_tokens=False))
    return GateReference(seqs, heldout)


@dataclass(frozen=True)
class LocalityScore:
    """How a candidate's next-token distributions compare with the live model's.

    Attributes:
        confident_agreement: argmax agreement at positions where live is confident.
        strict: share of sequences whose argmax agrees at every position.
        token_agreement: argmax agreement over all positions.
        kl_mean: mean ``KL(live || candidate)`` per position.
        kl_prompt_max: the largest per-sequence mean KL.
        confident_positions: how many positions were confident.
    """

    confident_agreement: float
    strict: float
    token_agreement: float
    kl_mean: float
    kl_prompt_max: float
    confident_positions: int


def compare_logits(
    live: Seq[torch.Tensor], candidate: Seq[torch.Tensor | None], confident_nats: float
) -> LocalityScore:
    """Score a candidate's next-token logits against the live model's, sequence by sequence.

    Args:
        live: per sequence, the live model's ``[positions, vocab]`` logits.
        candidate: the candidate's logits at the same positions; None where they are
            known to be the live model's (they agree everywhere, KL 0).
        confident_nats: a position counts as confident when the live model's best
            token leads its second by at least this many nats.

    Returns:
        The score.
    """
    agree_conf = n_conf = agree = total = strict = 0
    kls: list[float] = []
    for lx, cx in zip(live, candidate, strict=True):
        lp = torch.log_softmax(lx.float(), -1)
        top2 = lp.topk(2, dim=-1).values
        confident = (top2[:, 0] - top2[:, 1]) >= confident_nats
        if cx is None:
            n = int(confident.sum())
            agree_conf, n_conf, agree, total, strict = (
                agree_conf + n,
                n_conf + n,
                agree + len(lp),
                total + len(lp),
                strict + 1,
            )
            kls.append(0.0)
            continue
        cp = torch.log_softmax(cx.float(), -1)
        same = lp.argmax(-1) == cp.argmax(-1)
        agree_conf += int((same & confident).sum())
        n_conf += int(confident.sum())
        agree += int(same.sum())
        total += len(same)
        strict += bool(same.all())
        kls.append(float((lp.exp() * (lp - cp)).sum(-1).mean()))
    return LocalityScore(
        agree_conf / n_conf if n_conf else 1.0,
        strict / len(kls) if kls else 1.0,
        agree / total if total else 1.0,
        sum(kls) / len(kls) if kls else 0.0,
        max(kls, default=0.0),
        n_conf,
    )


class Gate:
    """Evaluates candidates.

    Args:
        fmt: prompt rendering, as served.
        thresholds: pass marks.
        eval_paraphrases: held-out paraphrases checked per feedback item.
        workers: threads the locality probes are split over (``learning.gate_workers``).
    """

    def __init__(
        self,
        fmt: ChatFormat,
        thresholds: GateThresholds,
        eval_paraphrases: int = 6,
        workers: int = 1,
    ) -> None:
        self.fmt = fmt
        self.thresholds = thresholds
        self.eval_paraphrases = eval_paraphrases
        self.workers = workers

    def _answers_contain(self, model: Any, cases: list[tuple[str, str]]) -> tuple[list[bool], list[tuple[str, str]]]:
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

    @staticmethod
    def _candidate_keys(
        candidate: Any, reference: GateReference, live_keys: ProbeKeys | None, run: list[int] | None
    ) -> ProbeKeys | None:
        """The candidate's keys on the probes: the live model's, with those of the probes
        it ran recomputed (``run`` None: all of them, as after a dense change)."""
        if live_keys is None:
            return None
        prefix = common_prefix(reference.seqs)
        if run is None:
            return probe_keys(candidate, reference.seqs, live_keys.layers, prefix)
        if not run:
            return live_keys
        # Only probes a gate opened on are recomputed, so the prefix (no gate opens
        # there, or every probe would have run) keeps its keys.
        fresh = probe_keys(candidate, [reference.seqs[i] for i in run], live_keys.layers, prefix, with_prefix=False)
        return live_keys.replaced(run, fresh)

    @torch.no_grad()
    def evaluate(
        self,
        candidate: Any,
        reference: GateReference,
        items: Seq[FeedbackItem],
        replay: Seq[FeedbackItem],
        live: Any,
        live_probe: LiveProbe | None = None,
        deltas: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    ) -> GateReport:
        """Check a candidate against the live model.

        Args:
            candidate: the candidate model.
            reference: the gate's probes (:func:`build_gate_reference`).
            items: the feedback this update learned.
            replay: earlier accepted feedback it must still know.
            live: the serving model the candidate would replace.
            live_probe: :func:`probe_live` of ``live`` when already computed.
            deltas: the candidate's and the live version's cumulative deltas; with
                the probe's keys they tell the probes the candidate cannot have
                changed, which are then not run (:mod:`dmha.learning.reach`).

        Returns:
            The report; ``passed`` is False with one reason per missed threshold.
        """
        candidate.eval()
        th = self.thresholds
        direct = [(it.input, it.target) for it in items]
        para = [(p, it.target) for it in items for p in paraphrases(it.input, "eval", self.eval_paraphrases)]
        kept = [(it.input, it.target) for it in replay]
        ok, failures = self._answers_contain(candidate, direct + para + kept)
        eff = ok[: len(direct)]
        gen = ok[len(direct) : len(direct) + len(para)]
        ret = ok[len(direct) + len(para) :]
        probe = live_probe if live_probe is not None else probe_live(live, reference, self.workers)
        same = untouched(probe.keys, *deltas) if probe.keys is not None and deltas is not None else None
        run = [i for i in range(len(reference.seqs)) if same is None or not same[i]]
        logits = answer_logits(candidate, [reference.seqs[i] for i in run], workers=self.workers) if run else []
        computed = dict(zip(run, logits, strict=True))
        cand_logits = [computed.get(i) for i in range(len(reference.seqs))]
        loc = compare_logits(probe.logprobs, cand_logits, th.confident_nats)
        nll = sequence_nll(candidate, reference.heldout)
        # Kept so that a deployed candidate need not be scored again as the new live
        # model: the probes not run keep the live model's scores and keys (bitwise its own).
        cand_probe = LiveProbe(
            tuple(
                probe.logprobs[i] if x is None else torch.log_softmax(x.float(), -1).half()
                for i, x in enumerate(cand_logits)
            ),
            nll,
            self._candidate_keys(candidate, reference, probe.keys, run if same is not None else None),
        )
        ppl_rise = math.exp(nll - probe.heldout_nll) - 1.0

        def share(xs: list[bool]) -> float:
            return sum(xs) / len(xs) if xs else 1.0

        metrics = {
            "efficacy": share(eff),
            "generalisation": share(gen),
            "retention": share(ret),
            "locality": loc.confident_agreement,
            "locality_strict": loc.strict,
            "locality_token_agreement": loc.token_agreement,
            "kl_mean": loc.kl_mean,
            "kl_prompt_max": loc.kl_prompt_max,
            "perplexity_increase": ppl_rise,
            "n_inputs": float(len(eff)),
            "n_paraphrases": float(len(gen)),
            "n_replayed": float(len(ret)),
            "n_retain": float(len(reference.seqs)),
            "n_retain_run": float(len(run)),
            "n_confident_positions": float(loc.confident_positions),
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
        for name, ceiling in (("kl_mean", th.max_kl_mean), ("kl_prompt_max", th.max_kl_prompt)):
            if metrics[name] > ceiling:
                reasons.append(f"{name} {metrics[name]:.4f} > {ceiling:.4f}")
        if ppl_rise > th.max_perplexity_increase:
            reasons.append(f"perplexity rose by {ppl_rise:.1%} > {th.max_perplexity_increase:.1%}")
        report = GateReport(not reasons, metrics, tuple(reasons), tuple(failures[:8]), cand_probe)
        log.info("gate %s: %s %s", "passed" if report.passed else "rejected", metrics, reasons)
        return report
