"""The knowledge lattice of a real knowledge base: derivations from its grounder, conflicts in red."""

from __future__ import annotations

import json

import networkx as nx

from dmha.knowledge.bank import KnowledgeBank
from dmha.report import StatementRow, build_lattice, knowledge_lattice
from tests.unit.report.report_checks import header, png_size, rows

TEXT = """fact: bob.quiet = true
fact: bob.cold = true
fact: anne.quiet = true
fact: anne.cold = true
rule: smart_rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true
fact: alice.friend = bob
fact: alice.age = 30
deny: bob.city = paris"""


def kb_rows() -> list[StatementRow]:
    kb = KnowledgeBank().for_user("alice")
    kb.tell(TEXT)
    kb.tell("fact: alice.age = 31  [confidence=0.4]")  # loses to age 30: rejected
    cores = {c.record.id: tuple(x.text() for x in c.core) for c in kb.conflicts()}
    return [
        StatementRow(r.id, r.text(), r.status.value, r.reason, cores.get(r.id, ()), r.statement.created_at or 0.0)
        for r in kb.statements()
    ]


def test_graph_has_derivations_and_the_conflict():
    g, stats = build_lattice(kb_rows())
    derived = {(u, d["relation"]) for u, _v, d in g.edges(data=True) if d["kind"] == "derived"}
    assert derived == {("e:bob", "smart"), ("e:anne", "smart")}
    assert {d["literal"] for d in stats["derivations"]} == {"bob.smart = true", "anne.smart = true"}
    red = [(u, v) for u, v, d in g.edges(data=True) if d["status"] == "rejected"]
    assert red == [("e:alice", "v:alice.age=31")]
    assert stats["rejected"] == 1 and stats["conflicts"][0]["conflicts_with"]
    assert any(d["kind"] == "denied" for *_e, d in g.edges(data=True))
    assert isinstance(g, nx.MultiDiGraph)


def test_files_and_degrees(tmp_path):
    section = knowledge_lattice(kb_rows(), tmp_path, seed=0)
    assert section.images == ["lattice_graph.png", "degree_dist.png"]
    assert png_size(tmp_path / "lattice_graph.png") == (990, 770)
    assert png_size(tmp_path / "degree_dist.png") == (770, 462)
    nodes = rows(tmp_path / "lattice_nodes.csv")
    edges = rows(tmp_path / "lattice_edges.csv")
    assert header(tmp_path / "lattice_edges.csv") == [
        "source",
        "target",
        "relation",
        "kind",
        "status",
        "in_conflict",
        "statement_id",
    ]
    conflict = {(e["target"], e["status"]) for e in edges if e["in_conflict"] == "1"}
    assert conflict == {("v:alice.age=31", "rejected"), ("v:alice.age=30", "accepted")}  # the loser and the winner
    degree = {n["node"]: int(n["degree"]) for n in nodes}
    for node, d in degree.items():  # the degrees written are the edges' endpoints
        assert d == sum(e["source"] == node for e in edges) + sum(e["target"] == node for e in edges)
    stat = json.loads((tmp_path / "lattice_stat.json").read_text())
    assert stat["degree_max"] == degree["e:bob"] == 5 and stat["rejected"] == 1
    assert "rejected" in section.finding and "`fact: alice.age = 31" in section.finding


def test_empty_knowledge_base_says_so(tmp_path):
    section = knowledge_lattice([], tmp_path)
    assert section.images == [] and "no statements" in (section.empty_reason or "")
