"""What every edit of one base model shares, computed once and cached on disk.

- the preserved-key statistics (:class:`~dmha.learning.nullspace.KeyStats`) over the
  shipped preserved corpus, teacher-forced through the base model;
- the gate's probes (:class:`~dmha.learning.gate.GateReference`);
- the training retain sequences (the locality term's prompts with the base model's
  continuations; the live model's distributions over them are taken per job).

Computing them costs about a minute of CPU (greedy continuations of the probes),
so ``dmha setup`` does it next to the model conversion and the server does it in the
background at start when the cache is missing; the cache file is keyed by
everything it depends on (weights, system prompt, corpus, layers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmha.learning.corpus import preserved_corpus
from dmha.learning.gate import GateReference
from dmha.learning.generation import greedy
from dmha.learning.nullspace import KeyStats, corpus_fingerprint, read_cache
from dmha.learning.prompting import ChatFormat
from dmha.learning.prompting import Sequence as Seq
from dmha.learning.retain import GATE_RETAIN, HELDOUT_TEXT, TRAIN_RETAIN

__all__ = ["References", "ensure_references", "weights_fingerprint"]

log = logging.getLogger(__name__)

RETAIN_TOKENS = 32
"""Continuation tokens of each training retain prompt."""

Progress = Callable[[str], None]


def weights_fingerprint(model_dir: Path) -> str:
    """Identifies a model folder's weights by file names, sizes and modification times."""
    parts = []
    for f in sorted(Path(model_dir).glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            st = f.stat()
            parts.append((f.name, st.st_size, int(st.st_mtime)))
    return corpus_fingerprint(*parts)


@dataclass(frozen=True)
class References:
    """The shared inputs of every edit of one base model.

    Attributes:
        stats: preserved-key statistics at the edit layers.
        gate: the gate's probes.
        retain: training retain sequences (prompt + base continuation).
    """

    stats: KeyStats
    gate: GateReference
    retain: tuple[Seq, ...]

    @classmethod
    def compute(
        cls,
        model: Any,
        fmt: ChatFormat,
        layers: Sequence[int],
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> References:
        """Run the corpus and the probes through ``model`` (minutes on CPU).

        Args:
            model: the base model.
            fmt: prompt rendering, as served.
            layers: edit layers the statistics cover.
            progress: told what is being computed.
            should_stop: polled between batches; True aborts with :class:`InterruptedError`
                (a server shutting down must not wait minutes, nor exit mid-computation).

        Returns:
            The references.

        Raises:
            InterruptedError: ``should_stop`` returned True.
        """
        say = progress or (lambda _m: None)
        stop = should_stop or (lambda: False)
        started = time.monotonic()
        model.eval()
        corpus = [Seq(fmt.prompt(p), fmt.answer(a)) for p, a in preserved_corpus()]
        say(f"accumulating preserved-key statistics over {len(corpus)} conversations")
        stats = KeyStats.compute(model, fmt.shared_prefix(), corpus, layers, should_stop=stop)
        say("recording the gate's probes")
        gate = GateReference(
            _continuations(model, fmt, GATE_RETAIN, stop),
            tuple(fmt.tokenizer.encode(HELDOUT_TEXT, add_special_tokens=False)),
        )
        retain = _continuations(model, fmt, TRAIN_RETAIN, stop)
        log.info(
            "learning references computed in %.0fs (%d preserved keys per layer)",
            time.monotonic() - started,
            next(iter(stats.counts.values()), 0),
        )
        return cls(stats, gate, retain)

    def save(self, path: Path) -> None:
        """Write the cache (the statistics and the sequences in one file, atomically)."""
        self.stats.save(
            path,
            extra={
                "gate": [list(s.prompt) + [-1] + list(s.answer) for s in self.gate.seqs],
                "heldout": list(self.gate.heldout),
                "retain": [list(s.prompt) + [-1] + list(s.answer) for s in self.retain],
            },
        )

    @classmethod
    def load(cls, path: Path, layers: Sequence[int]) -> References | None:
        """Read a cache; None when absent, stale or unreadable."""
        data = read_cache(path)
        stats = KeyStats.from_cache(data, layers)
        if data is None or stats is None:
            return None

        def seqs(rows: list[list[int]]) -> tuple[Seq, ...]:
            out = []
            for row in rows:
                cut = row.index(-1)
                out.append(Seq(tuple(row[:cut]), tuple(row[cut + 1 :])))
            return tuple(out)

        try:
            return cls(stats, GateReference(seqs(data["gate"]), tuple(data["heldout"])), seqs(data["retain"]))
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("learning references %s malformed (%s); recomputing", path, exc)
            return None


def _continuations(
    model: Any, fmt: ChatFormat, prompts: Sequence[str], stop: Callable[[], bool], chunk: int = 16
) -> tuple[Seq, ...]:
    """Each prompt with the model's greedy continuation (batches of ``chunk``, stoppable)."""
    out: list[Seq] = []
    for start in range(0, len(prompts), chunk):
        if stop():
            raise InterruptedError("reference computation stopped")
        rendered = [fmt.prompt(p) for p in prompts[start : start + chunk]]
        conts = greedy(model, rendered, RETAIN_TOKENS, fmt.eos_ids, batch_size=chunk)
        out.extend(Seq(p, tuple(c)) for p, c in zip(rendered, conts, strict=True) if c)
    return tuple(out)


def ensure_references(
    model: Any,
    model_dir: Path,
    fmt: ChatFormat,
    layers: Sequence[int],
    cache_dir: Path,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> References:
    """Load the cached references of ``model_dir``'s weights, computing them if needed.

    Args:
        model: the base model loaded from ``model_dir``.
        model_dir: its folder (identifies the weights).
        fmt: prompt rendering, as served.
        layers: edit layers the statistics must cover.
        cache_dir: folder of the cache files.
        progress: told what is being computed.
        should_stop: see :meth:`References.compute`.

    Returns:
        The references.

    Raises:
        InterruptedError: ``should_stop`` returned True.
    """
    key = corpus_fingerprint(
        weights_fingerprint(model_dir),
        fmt.system_prompt,
        preserved_corpus(),
        GATE_RETAIN,
        TRAIN_RETAIN,
        HELDOUT_TEXT,
        RETAIN_TOKENS,
        sorted(layers),
    )
    path = Path(cache_dir) / f"references-{key}.pt"
    refs = References.load(path, layers)
    if refs is not None:
        return refs
    refs = References.compute(model, fmt, layers, progress, should_stop)
    try:
        refs.save(path)
    except OSError:
        log.exception("could not cache the learning references at %s", path)
    return refs
