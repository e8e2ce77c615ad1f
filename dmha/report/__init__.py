"""The report: what the system did, as figures with the data behind each.

One module per figure family, each a library function that takes plain records
(:mod:`dmha.report.inputs`) and writes a PNG, its CSV/JSON data and a finding
computed from that data: :mod:`attention` (context blocks the answer attended to),
:mod:`latent` (the memory latent map), :mod:`lattice` (the knowledge graph),
:mod:`utility` (per-module change per update), :mod:`dynamics` (plans, gate and
Submit -> live), :mod:`consistency` (the monitor's scores) and
:mod:`reproducibility`. :mod:`collect` reads the records from a data folder;
:func:`make_report` draws everything and writes ``summary.md`` and ``report.html``.
"""

from dmha.report.attention import AttentionResult, TurnContext, attention_section, block_attention, rebuild_context
from dmha.report.build import Pair, load_attention_model, make_report, since_filter
from dmha.report.collect import (
    OfflineStores,
    attempts_from,
    chat_text,
    embed_points,
    facts_from_statements,
    memories_before,
    read_offline,
)
from dmha.report.consistency import consistency_section
from dmha.report.dynamics import learning_dynamics
from dmha.report.inputs import (
    AttemptRecord,
    JobRecord,
    MemoryPoint,
    ReportInputs,
    ScoreRecord,
    StatementRow,
    TurnRecord,
    VersionRecord,
)
from dmha.report.latent import latent_map
from dmha.report.lattice import build_lattice, knowledge_lattice
from dmha.report.reproducibility import FactOutcome, SeedRun, knows, make_facts, reproducibility_section, tabulate
from dmha.report.style import Section
from dmha.report.utility import ModuleChange, UpdateCost, update_norms, utility_section

__all__ = [
    "AttemptRecord",
    "AttentionResult",
    "FactOutcome",
    "JobRecord",
    "MemoryPoint",
    "ModuleChange",
    "OfflineStores",
    "Pair",
    "ReportInputs",
    "ScoreRecord",
    "Section",
    "SeedRun",
    "StatementRow",
    "TurnContext",
    "TurnRecord",
    "UpdateCost",
    "VersionRecord",
    "attempts_from",
    "attention_section",
    "block_attention",
    "build_lattice",
    "chat_text",
    "consistency_section",
    "embed_points",
    "facts_from_statements",
    "knowledge_lattice",
    "knows",
    "latent_map",
    "learning_dynamics",
    "load_attention_model",
    "make_facts",
    "make_report",
    "memories_before",
    "read_offline",
    "rebuild_context",
    "reproducibility_section",
    "since_filter",
    "tabulate",
    "update_norms",
    "utility_section",
]
