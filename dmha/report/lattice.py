"""Figure 3: the knowledge lattice — a user's knowledge base as a graph.

Nodes are entities, values, attributes and rules; a ``fact:`` is an edge from its
entity to its value labelled with the attribute (``deny:`` dashed); a rule reads
its body attributes and concludes its head attribute; a literal derived by a rule
(and not stated) is a dotted edge. Rejected statements — the losers of conflicts —
and their edges are red. Derivations come from the knowledge base's own grounder
(:class:`~dmha.knowledge.grounding.Grounder`) run over the accepted statements, so
the picture shows exactly what the reasoner derives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from matplotlib.lines import Line2D

from dmha.errors import StatementSyntaxError
from dmha.knowledge.grounding import Grounder
from dmha.knowledge.model import AttrDecl, Fact, Lit, Rule, is_entity, is_variable
from dmha.knowledge.parser import parse_statement
from dmha.report.inputs import StatementRow
from dmha.report.style import RED, Section, colour, empty, new_figure, plural, save_figure, write_csv, write_json

__all__ = ["DRAWN_NODES", "build_lattice", "knowledge_lattice"]

TITLE = "Knowledge lattice"
DRAWN_NODES = 120
"""Most nodes drawn; a larger graph is drawn around its most connected nodes (all counted)."""
_TYPES = ("entity", "value", "attribute", "rule")
_TYPE_COLOUR = {"entity": colour(0), "value": "#DDDDDD", "attribute": colour(2), "rule": colour(1)}
_TYPE_SHAPE = {"entity": "o", "value": "s", "attribute": "h", "rule": "D"}


def _literal_nodes(entity: str, attribute: str, value: str, negated: bool) -> tuple[str, str, str, str]:
    """(source, target, target type, target label) of the edge drawing a literal.

    A value that names an entity is that entity's node (a relation between two
    entities); any other value (number, string, boolean) gets a node of its own per
    literal, labelled ``attribute = value`` (``attribute`` alone for true), so that
    unrelated literals never share a ``true`` or ``30`` node.
    """
    if is_entity(value):
        return f"e:{entity}", f"e:{value}", "entity", value
    label = attribute if value == "true" else f"{attribute} = {value}"
    return f"e:{entity}", f"v:{entity}.{attribute}={value}", "value", label


def build_lattice(statements: Sequence[StatementRow]) -> tuple[nx.MultiDiGraph, dict[str, Any]]:
    """The graph of a knowledge base and its derivations.

    Args:
        statements: the user's statements (accepted and rejected).

    Returns:
        ``(graph, stats)``. Node attribute ``type`` is one of entity/value/attribute/
        rule; edge attributes are ``relation`` (the attribute or ``body``/``head``),
        ``kind`` (stated, denied, derived, concludes, body, head), ``status``
        (accepted or rejected) and ``in_conflict`` (rejected, or a statement a
        rejected one lost to). ``stats`` counts statements, derivations, conflicts and
        unparseable lines; ``stats["derivations"]`` lists each derived literal with
        the rule that concluded it.
    """
    g = nx.MultiDiGraph()
    grounder = Grounder()
    counts: Counter[str] = Counter()
    unparsed: list[str] = []
    stated: set[Lit] = set()
    rule_names: dict[str, str] = {}
    for row in statements:
        try:
            stmt = parse_statement(row.text)
        except StatementSyntaxError:
            unparsed.append(row.text)
            continue
        status = "rejected" if row.status == "rejected" else "accepted"
        counts[f"{status}_{type(stmt).__name__.lower()}"] += 1
        if isinstance(stmt, Fact):
            if is_variable(stmt.entity):
                continue
            src, dst, dst_type, dst_label = _literal_nodes(stmt.entity, stmt.attribute, stmt.value, stmt.negated)
            g.add_node(src, type="entity", label=stmt.entity)
            g.add_node(dst, type=dst_type, label=dst_label)
            kind = "denied" if stmt.negated else "stated"
            g.add_edge(src, dst, relation=stmt.attribute, kind=kind, status=status, statement=row.id)
            if status == "accepted":
                key = stmt.literal.key()
                stated.add(key)
                grounder.add_fact(row.id, key)
        elif isinstance(stmt, Rule):
            name = f"r:{row.id}"
            label = stmt.name or f"rule {len(rule_names) + 1}"
            rule_names[row.id] = label
            g.add_node(name, type="rule", label=label, status=status)
            for body in stmt.body:
                g.add_node(f"a:{body.attribute}", type="attribute", label=body.attribute)
                g.add_edge(f"a:{body.attribute}", name, relation="body", kind="body", status=status, statement=row.id)
            concluded = stmt.head.attribute
            g.add_node(f"a:{concluded}", type="attribute", label=concluded)
            g.add_edge(name, f"a:{concluded}", relation="head", kind="head", status=status, statement=row.id)
            if status == "accepted":
                grounder.add_rule(row.id, stmt)
        elif isinstance(stmt, AttrDecl):
            g.add_node(f"a:{stmt.attribute}", type="attribute", label=stmt.attribute)
    derivations: list[dict[str, str]] = []
    for sid, label in rule_names.items():
        for head in sorted(grounder.rule_heads(sid, 100_000)):
            if head in stated:
                continue
            entity, attribute, value, positive = head
            src, dst, dst_type, dst_label = _literal_nodes(entity, attribute, value, not positive)
            g.add_node(src, type="entity", label=entity)
            g.add_node(dst, type=dst_type, label=dst_label)
            g.add_edge(src, dst, relation=attribute, kind="derived", status="accepted", statement=sid)
            # The rule that concluded it, so derivations hang off their rule.
            g.add_edge(
                f"r:{sid}",
                dst if dst_type == "value" else src,
                relation="concludes",
                kind="concludes",
                status="accepted",
                statement=sid,
            )
            text = f"{'' if positive else 'not '}{entity}.{attribute} = {value}"
            derivations.append({"literal": text, "rule": label, "rule_id": sid})
    rejected = [r for r in statements if r.status == "rejected"]
    # The statements a rejected one lost to: their edges get a red halo.
    by_text = {r.text: r.id for r in statements}
    winners = {by_text[t] for r in rejected for t in r.conflicts_with if t in by_text}
    for _u, _v, d in g.edges(data=True):
        d["in_conflict"] = d["status"] == "rejected" or d["statement"] in winners
    stats: dict[str, Any] = {
        "statements": len(statements),
        "by_status_kind": dict(sorted(counts.items())),
        "rejected": len(rejected),
        "conflicts": [
            {"statement": r.text, "reason": r.reason, "conflicts_with": list(r.conflicts_with)} for r in rejected
        ],
        "derived_literals": len(derivations),
        "derivations": derivations,
        "unparsed": unparsed,
        "nodes": g.number_of_nodes(),
        "edges": g.number_of_edges(),
        "nodes_by_type": dict(sorted(Counter(d["type"] for _, d in g.nodes(data=True)).items())),
    }
    return g, stats


def _drawn(g: nx.MultiDiGraph) -> nx.MultiDiGraph:
    if g.number_of_nodes() <= DRAWN_NODES:
        return g
    red = {n for u, v, d in g.edges(data=True) if d["status"] == "rejected" for n in (u, v)}
    by_degree = sorted(g.nodes, key=lambda n: (-g.degree(n), n))
    keep = list(dict.fromkeys([*sorted(red), *by_degree]))[:DRAWN_NODES]
    return g.subgraph(keep).copy()


def _draw_graph(g: nx.MultiDiGraph, stats: dict[str, Any], out_dir: Path, seed: int) -> str:
    shown = _drawn(g)
    fig, ax = new_figure(9.0, 7.0)
    undirected = nx.Graph(shown)
    pos = nx.spring_layout(undirected, seed=seed, k=1.6 / max(1.0, np.sqrt(max(1, shown.number_of_nodes()))))
    styles = {
        "stated": "solid",
        "denied": "dashed",
        "derived": "dotted",
        "concludes": "dotted",
        "body": "solid",
        "head": "solid",
    }
    halo = [(u, v) for u, v, d in shown.edges(data=True) if d["in_conflict"] and d["status"] == "accepted"]
    if halo:
        nx.draw_networkx_edges(
            shown, pos, edgelist=halo, ax=ax, edge_color=RED, width=6.0, alpha=0.3, arrows=False, node_size=300
        )
    for kind, style in styles.items():
        for status in ("accepted", "rejected"):
            edges = [(u, v) for u, v, d in shown.edges(data=True) if d["kind"] == kind and d["status"] == status]
            if not edges:
                continue
            col = RED if status == "rejected" else (colour(2) if kind in ("derived", "concludes") else "#555555")
            nx.draw_networkx_edges(
                shown,
                pos,
                edgelist=edges,
                ax=ax,
                style=style,
                edge_color=col,
                width=2.2 if status == "rejected" else 1.2,
                arrows=True,
                arrowsize=9,
                node_size=300,
            )
    for node_type in _TYPES:
        nodes = [n for n, d in shown.nodes(data=True) if d["type"] == node_type]
        if not nodes:
            continue
        edge_colours = [RED if shown.nodes[n].get("status") == "rejected" else "black" for n in nodes]
        nx.draw_networkx_nodes(
            shown,
            pos,
            nodelist=nodes,
            ax=ax,
            node_color=_TYPE_COLOUR[node_type],
            node_shape=_TYPE_SHAPE[node_type],
            node_size=320 if node_type != "value" else 220,
            edgecolors=edge_colours,
            linewidths=1.0,
        )
    # Labels just under their nodes, on a white ground, so neither hides the other.
    ys = [p[1] for p in pos.values()]
    drop = 0.045 * (max(ys) - min(ys) or 1.0)
    under = {n: (p[0], p[1] - drop) for n, p in pos.items()}
    nx.draw_networkx_labels(
        shown,
        under,
        {n: d["label"] for n, d in shown.nodes(data=True)},
        ax=ax,
        font_size=7,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
    )
    if shown.number_of_edges() <= 60:
        # Value nodes carry their attribute in their label; relations between entities need one.
        labels = {
            (u, v): d["relation"]
            for u, v, d in shown.edges(data=True)
            if d["kind"] in ("stated", "denied", "derived") and shown.nodes[v]["type"] == "entity"
        }
        nx.draw_networkx_edge_labels(nx.DiGraph(shown), pos, labels, ax=ax, font_size=6, alpha=0.8)
    handles: list[Any] = [
        Line2D([], [], ls="", marker=_TYPE_SHAPE[t], mfc=_TYPE_COLOUR[t], mec="black", ms=9, label=t)
        for t in _TYPES
        if any(d["type"] == t for _, d in shown.nodes(data=True))
    ]
    handles += [
        Line2D([], [], color="#555555", ls="solid", label="fact (stated)"),
        Line2D([], [], color="#555555", ls="dashed", label="deny (stated false)"),
        Line2D([], [], color=colour(2), ls="dotted", lw=1, label="rule -> what it concluded"),
        Line2D([], [], color=colour(2), ls="dotted", lw=2, label="literal derived by a rule"),
        Line2D([], [], color=RED, lw=2.2, label="rejected (lost a conflict)"),
        Line2D([], [], color=RED, lw=6, alpha=0.3, label="accepted, won a conflict"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    note = "" if shown is g else f" (the {DRAWN_NODES} most connected of {g.number_of_nodes()} nodes)"
    ax.set_title(
        f"{TITLE}: {stats['statements']} statements, {stats['derived_literals']} derived, "
        f"{stats['rejected']} rejected{note}",
        fontsize=10,
    )
    ax.set_axis_off()
    return save_figure(fig, out_dir, "lattice_graph.png")


def _draw_degrees(g: nx.MultiDiGraph, out_dir: Path) -> str:
    fig, ax = new_figure(7.0, 4.2)
    degrees = {t: [g.degree(n) for n, d in g.nodes(data=True) if d["type"] == t] for t in _TYPES}
    top = max((max(v) for v in degrees.values() if v), default=1)
    bins = np.arange(0.5, top + 1.5, 1.0)
    present = [t for t in _TYPES if degrees[t]]
    ax.hist(
        [degrees[t] for t in present],
        bins=bins,
        stacked=True,
        color=[_TYPE_COLOUR[t] if t != "value" else "#999999" for t in present],
        edgecolor="black",
        linewidth=0.5,
        label=present,
    )
    ax.set_xlabel("degree (edges at the node, in and out)")
    ax.set_ylabel("nodes")
    ax.set_title(f"Knowledge lattice degree distribution ({g.number_of_nodes()} nodes)")
    ax.legend(title="node type")
    if top <= 20:
        ax.set_xticks(range(1, top + 1))
    return save_figure(fig, out_dir, "degree_dist.png")


def knowledge_lattice(statements: Sequence[StatementRow], out_dir: Path, seed: int = 0) -> Section:
    """Draw the knowledge lattice and its degree distribution; write their data.

    Writes ``lattice_graph.png``, ``degree_dist.png``, ``lattice_nodes.csv``
    (``node, type, label, degree``), ``lattice_edges.csv`` (``source, target,
    relation, kind, status, in_conflict, statement_id``) and ``lattice_stat.json``.

    Args:
        statements: the user's statements.
        out_dir: the report folder.
        seed: seeds the layout.

    Returns:
        The section (empty when the knowledge base is empty).
    """
    if not statements:
        return empty("lattice", TITLE, "the user's knowledge base has no statements.")
    g, stats = build_lattice(statements)
    if g.number_of_nodes() == 0:
        return empty("lattice", TITLE, "no statement could be drawn (only attribute declarations or unparsable lines).")
    images = [_draw_graph(g, stats, out_dir, seed), _draw_degrees(g, out_dir)]
    nodes = write_csv(
        out_dir,
        "lattice_nodes.csv",
        ("node", "type", "label", "degree"),
        [(n, d["type"], d["label"], g.degree(n)) for n, d in sorted(g.nodes(data=True))],
    )
    edges = write_csv(
        out_dir,
        "lattice_edges.csv",
        ("source", "target", "relation", "kind", "status", "in_conflict", "statement_id"),
        sorted(
            (u, v, d["relation"], d["kind"], d["status"], int(d["in_conflict"]), d["statement"])
            for u, v, d in g.edges(data=True)
        ),
    )
    degrees = [g.degree(n) for n in g.nodes]
    hub = max(g.nodes, key=lambda n: (g.degree(n), n))
    stats["degree_mean"] = float(np.mean(degrees))
    stats["degree_max"] = int(max(degrees))
    stats["hub"] = g.nodes[hub]["label"]
    data = write_json(out_dir, "lattice_stat.json", stats)
    parts = [
        f"{plural(stats['statements'], 'statement')} give a graph of {plural(stats['nodes'], 'node')} and "
        f"{plural(stats['edges'], 'edge')}; the rules derive **{plural(stats['derived_literals'], 'literal')}** "
        "beyond those stated."
    ]
    if stats["rejected"]:
        first = stats["conflicts"][0]
        parts.append(
            f"**{plural(stats['rejected'], 'statement')}** rejected in a conflict (red), "
            f"e.g. `{first['statement']}`: "
            f"{first['reason'] or 'no reason recorded'}."
        )
    else:
        parts.append("No statement was rejected: the knowledge base is consistent.")
    parts.append(
        f"Mean degree {stats['degree_mean']:.2f}; the most connected node is `{stats['hub']}` "
        f"(degree {stats['degree_max']})."
    )
    if stats["unparsed"]:
        parts.append(f"{len(stats['unparsed'])} line(s) could not be parsed and are not drawn.")
    return Section(
        "lattice",
        TITLE,
        images,
        [nodes, edges, data],
        " ".join(parts),
        stats={"derived": stats["derived_literals"], "rejected": stats["rejected"]},
    )
