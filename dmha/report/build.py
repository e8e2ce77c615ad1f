"""Putting a report together: every section in order, then ``summary.md`` and ``report.html``.

:func:`make_report` is what the ``dmha report`` command calls, offline and online
alike: the caller supplies the inputs and two callables that answer, for the
chosen turn, which knowledge-base facts and which memories the pipeline put into
its prompt. The model for the attention figure is loaded here (the live version,
or the one asked for, rebuilt from the registry and run eagerly).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dmha.config import DMHAConfig
from dmha.errors import InvalidArgument, NotFound
from dmha.learning.loading import load_version
from dmha.learning.registry import Registry
from dmha.llm.engine import render_chat
from dmha.report.attention import TITLE as ATTENTION_TITLE
from dmha.report.attention import attention_section, block_attention
from dmha.report.collect import chat_text, model_params, pick_turn, registry_changes, turn_context, update_costs
from dmha.report.consistency import consistency_section
from dmha.report.document import write_html, write_summary
from dmha.report.dynamics import learning_dynamics, rows_from_versions
from dmha.report.inputs import ReportInputs, TurnRecord
from dmha.report.latent import latent_map
from dmha.report.lattice import knowledge_lattice
from dmha.report.reproducibility import SeedRun, reproducibility_section
from dmha.report.style import Section, empty
from dmha.report.utility import utilities_of, utility_section

__all__ = ["Pair", "load_attention_model", "make_report", "since_filter"]

log = logging.getLogger(__name__)

Pair = tuple[TurnRecord, TurnRecord, list[TurnRecord]]
"""(user turn, assistant reply, the session's earlier turns)."""


def since_filter(inputs: ReportInputs, since: float) -> ReportInputs:
    """Only the records at or after ``since`` (the versions' lineage keeps ``base``)."""
    if since <= 0:
        return inputs
    return dataclasses.replace(
        inputs,
        since=since,
        memories=[m for m in inputs.memories if m.created_at >= since],
        statements=[s for s in inputs.statements if s.created_at >= since],
        versions=[v for v in inputs.versions if v.version_id == "base" or v.created_at >= since],
        jobs=[j for j in inputs.jobs if j.created_at >= since],
        scores=[s for s in inputs.scores if s.created_at >= since],
        turns=[t for t in inputs.turns if t.created_at >= since],
    )


def load_attention_model(registry: Registry, version_id: str | None = None) -> tuple[Any, Any, str]:
    """A version of the model in eager attention, with its tokenizer.

    Args:
        registry: the local registry (its base folder is the model folder).
        version_id: which version (None: the live one); a damaged one falls back to
            its nearest intact ancestor, as the server does.

    Returns:
        ``(model, tokenizer, version id loaded)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(registry.base_path))
    # float32 on the CPU: attention weights are read, not served.
    model = AutoModelForCausalLM.from_pretrained(str(registry.base_path), attn_implementation="eager").eval()
    loaded = load_version(registry, model, version_id, device="cpu", use_frozen=False)
    return loaded.model, tokenizer, loaded.version.version_id


def _attention(
    cfg: DMHAConfig,
    registry: Registry,
    inputs: ReportInputs,
    turn_id: str,
    facts_for: Callable[[str], list[str]],
    memories_for: Callable[[Pair, Callable[[str], int]], list[str]],
    out_dir: Path,
    say: Callable[[str], None],
) -> Section:
    try:
        pair = pick_turn(inputs.turns, turn_id)
    except NotFound as exc:
        return empty("attention", ATTENTION_TITLE, f"{exc} (pass --turn with a turn id from `dmha sessions`).")
    say(f"attention: loading the model and replaying turn {pair[1].turn_id}")
    model, tokenizer, version = load_attention_model(registry)
    max_positions = min(cfg.model.max_context_tokens, int(model.config.max_position_embeddings))

    def render(messages: Sequence[Any]) -> list[int]:
        return render_chat(tokenizer, [(m.role, m.text) for m in messages])

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    try:
        ctx = turn_context(
            cfg, render, max_positions, pair, facts_for(chat_text(pair[0].text)), memories_for(pair, count)
        )
        result = block_attention(model, tokenizer, ctx)
    except (InvalidArgument, ValueError) as exc:
        return empty("attention", ATTENTION_TITLE, f"turn {pair[1].turn_id} cannot be replayed: {exc}")
    return attention_section(result, out_dir, f"{pair[1].turn_id} (model version {version})")


def make_report(
    cfg: DMHAConfig,
    registry: Registry,
    inputs: ReportInputs,
    out_dir: Path,
    *,
    facts_for: Callable[[str], list[str]],
    memories_for: Callable[[Pair, Callable[[str], int]], list[str]],
    seed: int = 0,
    since: float = 0.0,
    turn_id: str = "",
    attention: bool = True,
    runs: Sequence[SeedRun] = (),
    repro_meta: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda _line: None,
) -> list[Section]:
    """Draw every section and write ``summary.md`` and ``report.html``.

    Args:
        cfg: the config (system prompt, thresholds, gate floors).
        registry: the local version registry (model for attention; deltas for the utility map).
        inputs: what was read (offline or through the SDK).
        out_dir: the report folder (created).
        facts_for: message text -> the knowledge base's fact lines for it.
        memories_for: (turn, token counter) -> the memories retrieved for it.
        seed: seeds projections and layouts (the report is deterministic for a seed).
        since: only records from this Unix time on.
        turn_id: the turn of the attention figure ("" = the newest reply).
        attention: False skips the model run (no attention figure).
        runs: reproduction runs (``--reproduce``); empty = the section says how to run one.
        repro_meta: what identifies the runs (versions, seeds, config hash).
        say: progress lines for the operator.

    Returns:
        The sections, in report order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = since_filter(inputs, since)
    sections: list[Section] = []
    if attention:
        sections.append(_attention(cfg, registry, data, turn_id, facts_for, memories_for, out_dir, say))
    else:
        sections.append(empty("attention", ATTENTION_TITLE, "skipped (--no-attention)."))
    say("memory latent map")
    note = data.notes.get("latent")
    sections.append(empty("latent", "Memory latent map", note) if note else latent_map(data.memories, out_dir, seed))
    say("knowledge lattice")
    sections.append(knowledge_lattice(data.statements, out_dir, seed))
    say("utility map (reading version deltas)")
    changes = registry_changes(registry, data.versions)
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(registry.base_path))
    except OSError as exc:
        log.warning("no tokenizer for FLOPs estimates: %s", exc)

    def seq_tokens(question: str, target: str) -> int:
        assert tokenizer is not None
        prompt = render_chat(tokenizer, [("system", cfg.model.system_prompt), ("user", question)])
        return len(prompt) + len(tokenizer(target, add_special_tokens=False)["input_ids"])

    jobs = data.jobs or rows_from_versions(data.versions)
    costs = update_costs(
        jobs, registry, seq_tokens if tokenizer is not None else None, model_params(registry.base_path)
    )
    utility = utility_section(changes, costs, out_dir, utilities_of(jobs))
    trained = [v.version_id for v in data.versions if v.version_id != "base" and v.status != "pruned"]
    if utility.empty_reason and trained:
        utility.empty_reason = (
            f"the local registry {registry.root} holds no readable delta of the {len(trained)} listed "
            "version(s) (report on the server's machine, or pass the --data-dir whose registry it uses)."
        )
    sections.append(utility)
    say("learning dynamics")
    learning = cfg.learning
    floors = {
        "efficacy": learning.min_efficacy,
        "generalisation": learning.min_generalisation,
        "locality": learning.min_locality,
    }
    section = learning_dynamics(jobs, out_dir, floors, data.attempts)
    if not data.jobs and jobs:
        section.finding += " (Job records were not available: deployed versions only, no rejections.)"
    board = registry.root / "meta" / "tensorboard"
    if section.empty_reason is None and board.is_dir():
        section.finding += f" The live view: `tensorboard --logdir {board}`."
    sections.append(section)
    say("consistency monitor")
    sections.append(consistency_section(data.scores, data.threshold, out_dir))
    sections.append(reproducibility_section(runs, repro_meta or {}, out_dir))
    for s in sections:
        note = data.notes.get(s.key)
        if note and s.empty_reason is None:
            s.finding += f" Note: {note}"
        elif note and s.empty_reason is not None and note not in s.empty_reason:
            s.empty_reason = f"{s.empty_reason} Note: {note}"
    period = "everything recorded" if since <= 0 else f"from {_utc(since)}"
    facts = [
        ("User", data.user_id),
        ("Source", data.source),
        ("Period", period),
        ("Seed", str(seed)),
        (
            "Model versions",
            f"{len(data.versions)} (live: {next((v.version_id for v in data.versions if v.live), 'base')})",
        ),
    ]
    title = f"DMHA report: {data.user_id}"
    write_summary(sections, out_dir, title, facts)
    write_html(sections, out_dir, title, facts)
    return sections


def _utc(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
