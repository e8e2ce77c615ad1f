"""The training objective of one update.

    L = CE(target | input)                               task: answer tokens only
      + lambda_causal   * KL(P(Y | do(T)) || P(Y | T))   causal: internalise the fact
      + lambda_locality * KL(P_live || P_student)        locality: on the retain set

``do(T)`` is the intervention that makes the fact true: the pre-update model reads it
as an explicit premise in its system message. Its next-token distribution over the
answer, for the input and for paraphrases of it, is the teacher; the student sees
the same questions without the premise. Matching the two makes the adapter encode
the fact (what the model would believe if told T) rather than the answer string for
one phrasing, which is what carries it to paraphrases. The trainer's answer stays the
truth: each target token's teacher probability is raised to ``causal_floor``
(:func:`floor_target`), so the teacher's own phrasing habits cannot fight it. The locality term holds the
student to the pre-update model's distribution over its own greedy continuations of
unrelated prompts. All teacher distributions are computed once, before training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dmha.learning.feedback import FeedbackItem
from dmha.learning.generation import answer_logits
from dmha.learning.paraphrase import paraphrases
from dmha.learning.plan import UpdatePlan
from dmha.learning.prompting import ChatFormat, Sequence

__all__ = ["Objective", "RetainSet", "build_retain_set", "floor_target", "kl_to_teacher"]


@dataclass(frozen=True)
class RetainSet:
    """The pre-update model's behaviour on the training retain prompts.

    Attributes:
        seqs: each retain prompt followed by a fixed continuation.
        logprobs: the model's log-probabilities at those continuation positions
            (``float16 [len(answer), vocab]``; half precision halves the memory,
            and the KL needs no more).
    """

    seqs: tuple[Sequence, ...]
    logprobs: tuple[torch.Tensor, ...]


@torch.no_grad()
def build_retain_set(model: Any, seqs: Seq[Sequence]) -> RetainSet:
    """The live model's log-probabilities over fixed retain sequences.

    Args:
        model: the live model (the one an update starts from).
        seqs: retain prompts with fixed continuations
            (:attr:`~dmha.learning.references.References.retain`).

    Returns:
        The retain set.
    """
    model.eval()
    seqs = tuple(s for s in seqs if s.answer)
    logits = answer_logits(model, seqs)
    return RetainSet(seqs, tuple(F.log_softmax(x, -1).half() for x in logits))


def kl_to_teacher(teacher_logprobs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` averaged over positions.

    Args:
        teacher_logprobs: ``[n, vocab]`` log-probabilities (any float dtype).
        student_logits: ``[n, vocab]`` raw logits.

    Returns:
        A scalar tensor (nats per position).
    """
    t = teacher_logprobs.float()
    s = F.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def floor_target(logprobs: torch.Tensor, target: Seq[int], floor: float) -> torch.Tensor:
    """``logprobs`` with each position's target token raised to at least ``floor``.

    Where the target already has ``floor`` or more, the row is unchanged; elsewhere the
    target gets exactly ``floor`` and every other token keeps its share of the rest
    (the teacher's preferences among the alternatives survive).

    Args:
        logprobs: ``[n, vocab]`` log-probabilities.
        target: the ``n`` target token ids.
        floor: in ``[0, 1)``; 0 returns ``logprobs`` unchanged.

    Returns:
        ``[n, vocab]`` log-probabilities.
    """
    if floor <= 0:
        return logprobs
    p = logprobs.float().exp()
    idx = torch.tensor(list(target), device=p.device)[:, None]
    pt = p.gather(1, idx).squeeze(1)
    low = pt < floor
    scale = torch.where(low, (1.0 - floor) / (1.0 - pt).clamp(min=1e-12), torch.ones_like(pt))
    q = p * scale[:, None]
    q.scatter_(1, idx, torch.where(low, torch.full_like(pt, floor), pt)[:, None])
    return q.clamp(min=1e-30).log().to(logprobs.dtype)


@dataclass(frozen=True)
class _Target:
    seq: Sequence
    teacher: torch.Tensor | None  # log-probs for KL terms, None for CE


class Objective:
    """The loss of one update, with everything that does not change precomputed.

    Args:
        model: the pre-update model (adapter absent or disabled): the teacher.
        fmt: prompt rendering, as served.
        items: the feedback being learned.
        replay: earlier accepted feedback, replayed through the task loss
            (``plan.replay_per_step`` of it sampled per step).
        plan: weights and sizes.
        retain: the pre-update model's retain set (:func:`build_retain_set`).
    """

    def __init__(
        self,
        model: Any,
        fmt: ChatFormat,
        items: Seq[FeedbackItem],
        replay: Seq[FeedbackItem],
        plan: UpdatePlan,
        retain: RetainSet | None,
    ) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self.task = [_Target(fmt.sequence(it.input, it.target), None) for it in items]
        self.replay = [_Target(fmt.sequence(it.input, it.target), None) for it in replay]
        self.causal: list[_Target] = []
        if plan.lambda_causal > 0:
            self.causal = self._causal_targets(model, fmt, items)
        self.retain: list[_Target] = []
        if plan.lambda_locality > 0 and retain is not None:
            self.retain = [_Target(s, lp) for s, lp in zip(retain.seqs, retain.logprobs, strict=True)]
        self.pad_id = int(fmt.tokenizer.pad_token_id or 0)

    def _causal_targets(self, model: Any, fmt: ChatFormat, items: Seq[FeedbackItem]) -> list[_Target]:
        students: list[Sequence] = []
        teachers: list[Sequence] = []
        for it in items:
            system = fmt.premise_system([(it.input, it.target)])
            for question in [it.input, *paraphrases(it.input, "train", self.plan.paraphrases)]:
                students.append(fmt.sequence(question, it.target))
                teachers.append(fmt.sequence(question, it.target, system=system))
        with torch.no_grad():
            logits = answer_logits(model, teachers)
        return [
            _Target(s, floor_target(F.log_softmax(x, -1), s.answer, self.plan.causal_floor))
            for s, x in zip(students, logits, strict=True)
        ]

    def keep_reached(self, reached: Callable[[Sequence], bool]) -> int:
        """Drop the causal, replay and retain targets the edit cannot change.

        A target whose tokens the change never acts on (a gated edit whose gate stays
        shut on it) has a constant loss: it adds no gradient, only work, and its
        margin, which no step can move, would hold off the early stop. The task
        targets are always kept.

        Args:
            reached: True when the edit can act on some token of the sequence.

        Returns:
            How many targets were dropped.
        """
        before = len(self.causal) + len(self.replay) + len(self.retain)
        asked = {t.seq for t in self.task}
        self.causal = [t for t in self.causal if t.seq in asked or reached(t.seq)]
        self.replay = [t for t in self.replay if reached(t.seq)]
        self.retain = [t for t in self.retain if reached(t.seq)]
        return before - len(self.causal) - len(self.replay) - len(self.retain)

    def hold(self, retain: RetainSet) -> None:
        """Use ``retain`` for the locality term (replacing any earlier set)."""
        self.retain = [_Target(s, lp) for s, lp in zip(retain.seqs, retain.logprobs, strict=True)]

    def loss(self, model: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """One step's loss; samples ``retain_per_step`` of the retain targets and
        ``replay_per_step`` of the replayed items each call.

        Args:
            model: the student (the copy being edited).

        Returns:
            ``(total, parts)`` where parts holds the float value of each term.
        """
        k = min(self.plan.retain_per_step, len(self.retain))
        retain = self._rng.sample(self.retain, k) if k else []
        k = min(self.plan.replay_per_step, len(self.replay))
        task = [*self.task, *(self._rng.sample(self.replay, k) if k else [])]
        # One batch for all terms; a sequence shared by the task and causal terms
        # (the input itself) is run once.
        unique: dict[Sequence, int] = {}
        for t in (*task, *self.causal, *retain):
            unique.setdefault(t.seq, len(unique))
        logits = answer_logits(model, list(unique), batch_size=64, pad_id=self.pad_id)
        device = logits[0].device

        def out(t: _Target) -> torch.Tensor:
            return logits[unique[t.seq]]

        def kl(t: _Target) -> torch.Tensor:
            assert t.teacher is not None  # KL targets always carry their teacher
            return kl_to_teacher(t.teacher, out(t))

        ce = torch.stack([F.cross_entropy(out(t), torch.tensor(t.seq.answer, device=device)) for t in task]).mean()
        zero = ce.new_zeros(())
        causal = torch.stack([kl(t) for t in self.causal]).mean() if self.causal else zero
        locality = torch.stack([kl(t) for t in retain]).mean() if retain else zero
        total = ce + self.plan.lambda_causal * causal + self.plan.lambda_locality * locality
        with torch.no_grad():
            # How surely the student already produces every target (task and paraphrases):
            # the smallest logit gap between the target token and its best rival.
            margins = []
            for t in (*task, *self.causal):
                x = out(t).detach()
                tgt = torch.tensor(t.seq.answer, device=device)
                right = x.gather(1, tgt[:, None]).squeeze(1)
                rival = x.scatter(1, tgt[:, None], float("-inf")).max(-1).values
                margins.append(float((right - rival).min()))
        parts = {
            "ce": ce.item(),
            "causal": causal.item(),
            "locality": locality.item(),
            "margin": min(margins),
        }
        return total, parts
