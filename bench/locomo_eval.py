"""Measuring helpers of the LoCoMo memory benchmark (``bench/memory_locomo.py``).

- disk caches for the expensive, deterministic parts: embeddings (keyed by the text
  and the model folder) and summaries (keyed by the summariser and the batch), so a
  rerun re-measures retrieval without re-embedding or re-summarising;
- the token counter the server uses (the served model's tokenizer);
- what a result set carries: ``generous`` (a summary covers every turn it links),
  ``strict`` (a turn counts only when its words come back: returned verbatim, or 80 %
  of its content words quoted by a returned summary);
- greedy packing of a baseline's ranking into a token budget, by the same rule as
  the server's packing (walk the ranking, skip what does not fit, stop at the budget);
- leave-one-conversation-out selection of a retrieval configuration.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmha.memory.bm25 import tokenize

CountTokens = Callable[[str], int]
QUOTED = 0.8  # share of a turn's content words a result must carry to count strictly


class CachedEmbedder:
    """An :class:`~dmha.memory.embedding.Embedder` that remembers every vector on disk.

    Args:
        inner: the real embedder.
        path: the cache file (``.npz``); created on :meth:`save`.
    """

    def __init__(self, inner: Any, path: Path) -> None:
        self._inner = inner
        self._path = path
        self._salt = str(getattr(inner, "path", "")).encode("utf-8")
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self._lock = threading.Lock()
        if path.exists():
            with np.load(path) as data:
                self._vectors = {k: data[k] for k in data.files}

    @property
    def dim(self) -> int:
        return int(self._inner.dim)

    def _key(self, text: str) -> str:
        return hashlib.sha1(self._salt + b"\x1f" + text.encode("utf-8")).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        with self._lock:
            missing = [i for i, k in enumerate(keys) if k not in self._vectors]
        if missing:
            fresh = self._inner.embed([texts[i] for i in missing])
            with self._lock:
                for i, vec in zip(missing, fresh, strict=True):
                    self._vectors[keys[i]] = np.asarray(vec, dtype=np.float32)
                self._dirty = True
        with self._lock:
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        """Write new vectors to the cache file (atomically)."""
        with self._lock:
            if not self._dirty:
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp.npz")
            np.savez(tmp, **self._vectors)
            tmp.replace(self._path)
            self._dirty = False


class CachedSummariser:
    """A :class:`~dmha.memory.summariser.Summariser` whose outputs are kept in a JSONL file.

    Args:
        inner: the real summariser.
        name: what it is (part of the key: extractive and LLM summaries never mix).
        path: the JSONL cache, appended after every new summary (an interrupted run
            keeps what it paid for).
    """

    def __init__(self, inner: Callable[[Sequence[Any]], str], name: str, path: Path) -> None:
        self._inner = inner
        self._name = name
        self._path = path
        self._done: dict[str, str] = {}
        self.fresh = 0
        self.seconds = 0.0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self._done[row["key"]] = row["summary"]

    def __call__(self, turns: Sequence[Any]) -> str:
        import time

        h = hashlib.sha1(self._name.encode("utf-8"))
        for t in turns:
            h.update(f"\x1e{t.role}\x1f{t.text}".encode())
        key = h.hexdigest()
        if key not in self._done:
            start = time.perf_counter()
            text = self._inner(turns)
            self.seconds += time.perf_counter() - start
            self.fresh += 1
            self._done[key] = text
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"key": key, "summary": text}) + "\n")
        return self._done[key]


def served_token_counter(model_dir: Path | None) -> tuple[CountTokens, str]:
    """The served model's tokenizer as a counter (what the server's budget counts).

    Args:
        model_dir: the converted model folder (None or missing: ~4 bytes per token).

    Returns:
        ``(count, name)``.
    """
    from dmha.memory.retrieval import approx_token_count

    if model_dir is not None and (model_dir / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        cache: dict[str, int] = {}

        def count(text: str) -> int:
            n = cache.get(text)
            if n is None:
                n = cache[text] = len(tok.encode(text, add_special_tokens=False).ids)
            return n

        return count, f"tokenizer of {model_dir.name}"
    return approx_token_count, "~4 bytes per token"


def carried(
    results: Sequence[Any], dia_of: Mapping[str, str], words_of: Mapping[str, set[str]]
) -> tuple[set[str], set[str]]:
    """The evidence ids a result list carries, ``(generous, strict)``.

    Args:
        results: retrieved memories (``kind``, ``text``, ``source_ids``).
        dia_of: turn id -> LoCoMo ``dia_id``.
        words_of: turn id -> the turn's content words (:func:`tokenize`).

    Returns:
        Generous: every turn a result links to. Strict: turns returned verbatim or
        quoted (80 % of their content words) by a returned summary.
    """
    generous: set[str] = set()
    strict: set[str] = set()
    for r in results:
        held: set[str] | None = None
        for s in r.source_ids:
            if s not in dia_of:
                continue
            generous.add(dia_of[s])
            if r.kind == "turn":
                strict.add(dia_of[s])
                continue
            if held is None:
                held = set(tokenize(r.text))
            if len(words_of[s] & held) >= QUOTED * len(words_of[s]):
                strict.add(dia_of[s])
    return generous, strict


def pack_ranking(order: Sequence[int], costs: Sequence[int], budget: int) -> list[int]:
    """Greedy budget packing of a ranking: skip what does not fit, keep walking.

    Args:
        order: item indices, best first.
        costs: tokens of each item.
        budget: total tokens allowed.

    Returns:
        The chosen indices, best first.
    """
    out: list[int] = []
    used = 0
    for i in order:
        cost = costs[i]
        if used + cost <= budget:
            out.append(i)
            used += cost
            if used >= budget:
                break
    return out


class Tally:
    """Sums of per-question figures by (system, category, cut), for means."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str, str], float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def count(self, category: str) -> None:
        self.counts[category] += 1
        self.counts["overall"] += 1

    def add(self, system: str, category: str, cut: str, value: float) -> None:
        for cat in (category, "overall"):
            self.sums[(system, cat, cut)] += value

    def mean(self, system: str, category: str, cut: str) -> float:
        n = self.counts[category]
        return self.sums[(system, category, cut)] / n if n else 0.0


def leave_one_out(
    per_question: Mapping[str, Mapping[str, Sequence[float]]],
) -> dict[str, Any]:
    """Choose a configuration on all conversations but one, score it on that one.

    Args:
        per_question: config name -> conversation -> the objective per question
            (the same questions, in the same order, for every config).

    Returns:
        Per held-out conversation the config chosen without it and its figure
        there; the mean and spread (population std, min, max) of those figures
        over conversations; and the same for the config chosen on everything
        (in-sample, for comparison).
    """
    configs = list(per_question)
    convs = list(next(iter(per_question.values())))

    def pooled(cfg: str, among: Sequence[str]) -> float:
        vals = [v for c in among for v in per_question[cfg][c]]
        return float(np.mean(vals)) if vals else 0.0

    folds = []
    for held in convs:
        train = [c for c in convs if c != held]
        # Ties go to the earlier config (the grid lists the simpler ones first).
        best = max(configs, key=lambda cfg: (round(pooled(cfg, train), 6), -configs.index(cfg)))
        folds.append(
            {
                "held_out": held,
                "chosen": best,
                "train": round(pooled(best, train), 4),
                "held_out_value": round(pooled(best, [held]), 4),
            }
        )
    values = np.array([f["held_out_value"] for f in folds])
    overall = max(configs, key=lambda cfg: (round(pooled(cfg, convs), 6), -configs.index(cfg)))
    return {
        "folds": folds,
        "held_out_mean": round(float(values.mean()), 4),
        "held_out_std": round(float(values.std()), 4),
        "held_out_min": round(float(values.min()), 4),
        "held_out_max": round(float(values.max()), 4),
        "chosen_on_all": overall,
        "chosen_on_all_in_sample": round(pooled(overall, convs), 4),
    }
