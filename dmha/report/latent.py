"""Figure 2: a user's long-term memories in two dimensions, by stored HDBSCAN cluster.

The clusters drawn are the ones the memory system assigned (the stored
``cluster_id``), not a re-clustering for the picture, so the map shows what
retrieval and summarisation actually work with. The projection is t-SNE (seeded,
PCA-initialised) when there are enough memories for a meaningful neighbourhood,
else PCA. The silhouette score (cosine, in the embedding space, clustered memories
only) measures how separated the stored clusters are.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from dmha.report.inputs import MemoryPoint
from dmha.report.style import GREY, Section, colour, empty, new_figure, plural, save_figure, write_csv, write_json

__all__ = ["MIN_TSNE_POINTS", "latent_map", "project"]

TITLE = "Memory latent map"
MIN_TSNE_POINTS = 12
"""Below this many memories t-SNE's neighbourhoods are meaningless: PCA is used."""
_MARKERS = {"turn": "o", "summary": "s", "cluster_summary": "*", "fact": "^"}
_SIZES = {"turn": 26, "summary": 60, "cluster_summary": 150, "fact": 50}
_KIND_NAMES = {"turn": "turn", "summary": "summary", "cluster_summary": "cluster summary", "fact": "fact"}


def project(vectors: np.ndarray, seed: int = 0, method: str = "auto") -> tuple[np.ndarray, str]:
    """Project vectors to 2-D.

    Args:
        vectors: ``(n, dim)``, n >= 2.
        seed: seeds t-SNE (the result is deterministic for a seed).
        method: ``tsne``, ``pca`` or ``auto`` (t-SNE from :data:`MIN_TSNE_POINTS` points).

    Returns:
        ``((n, 2) coordinates, the method used)``.

    Raises:
        ValueError: fewer than 2 vectors or an unknown method.
    """
    n = len(vectors)
    if n < 2:
        raise ValueError("need at least 2 vectors to project")
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"unknown projection {method!r}")
    x = np.asarray(vectors, dtype=np.float64)
    if method == "pca" or (method == "auto" and n < MIN_TSNE_POINTS):
        dims = min(2, n, x.shape[1])
        out = PCA(n_components=dims, random_state=seed).fit_transform(x)
        if out.shape[1] < 2:
            out = np.hstack([out, np.zeros((n, 2 - out.shape[1]))])
        return out, "PCA"
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine")
    return tsne.fit_transform(x), "t-SNE"


def _silhouette(vectors: np.ndarray, labels: np.ndarray) -> tuple[float | None, str]:
    mask = labels >= 0
    clusters = len(set(labels[mask].tolist()))
    if clusters < 2:
        return None, f"needs at least 2 clusters; the stored clustering has {clusters}"
    if int(mask.sum()) <= clusters:
        return None, "too few clustered memories"
    return float(silhouette_score(vectors[mask], labels[mask], metric="cosine")), ""


_ROLE = re.compile(r"^\s*(user|assistant):\s*", re.IGNORECASE)


def _label(text: str, width: int = 28) -> str:
    # Summaries quote turns as "user: ...": the words say more than the role.
    first = _ROLE.sub("", text.strip().splitlines()[0]) if text.strip() else ""
    return "\n".join(textwrap.wrap(first, width)[:2]) or "(empty)"


def latent_map(memories: Sequence[MemoryPoint], out_dir: Path, seed: int = 0, method: str = "auto") -> Section:
    """Draw the memory latent map and write its data.

    Writes ``z_tsne.png`` (or ``z_pca.png``), ``z_points.csv`` (``id, kind,
    cluster_id, x, y, text``: one row per memory) and ``z_stat.json`` (counts, the
    projection, the silhouette score).

    Args:
        memories: the user's memories; those without a vector are skipped (counted).
        out_dir: the report folder.
        seed: seeds the projection.
        method: see :func:`project`.

    Returns:
        The section (empty, with the reason, below 3 memories with vectors).
    """
    points = [m for m in memories if m.vector is not None]
    if len(points) < 3:
        return empty(
            "latent",
            TITLE,
            f"the user has {len(points)} long-term memories with embeddings; a map needs at least 3.",
        )
    vectors = np.stack([np.asarray(m.vector, dtype=np.float32) for m in points])
    coords, used = project(vectors, seed, method)
    labels = np.array([m.cluster_id for m in points], dtype=np.int64)
    # Cluster summaries sit in their cluster but are not members HDBSCAN fitted.
    member = np.array([m.kind != "cluster_summary" for m in points])
    sil, why = _silhouette(vectors[member], labels[member])

    fig, ax = new_figure(8.5, 6.0)
    cluster_ids = sorted({int(c) for c in labels[member] if c >= 0})
    colours = {c: colour(i) for i, c in enumerate(cluster_ids)}
    summaries = {m.cluster_id: m.text for m in points if m.kind == "cluster_summary"}
    groups: dict[tuple[int, str], list[int]] = {}
    for j, m in enumerate(points):
        groups.setdefault((max(m.cluster_id, -2), m.kind), []).append(j)
    for (c, kind), idx in sorted(groups.items()):
        face = "none" if c == -2 else colours.get(c, GREY)
        ax.scatter(
            coords[idx, 0],
            coords[idx, 1],
            s=_SIZES[kind],
            c=face,
            marker=_MARKERS.get(kind, "o"),
            edgecolors="black" if c != -2 else GREY,
            linewidths=0.4 if kind == "turn" else 0.8,
            zorder=3 if kind != "turn" else 2,
        )
    for c in cluster_ids[:12]:  # more labels would cover the map
        in_cluster = np.flatnonzero((labels == c) & member)
        ax.annotate(
            _label(summaries.get(c, f"cluster {c}")),
            coords[in_cluster].mean(axis=0),
            fontsize=7,
            ha="center",
            zorder=4,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colours[c], "alpha": 0.85},
        )
    handles: list[Any] = [Patch(fc=colours[c], ec="black", label=f"cluster {c}") for c in cluster_ids[:10]]
    if len(cluster_ids) > 10:
        handles.append(Patch(fc="white", ec="white", label=f"... {len(cluster_ids) - 10} more"))
    if (labels[member] == -1).any():
        handles.append(Patch(fc=GREY, ec="black", label="noise (no cluster)"))
    if (labels[member] == -2).any():
        handles.append(Patch(fc="none", ec=GREY, label="not clustered yet"))
    for kind in _MARKERS:
        if any(m.kind == kind for m in points):
            handles.append(
                Line2D([], [], ls="", marker=_MARKERS[kind], color="black", mfc="white", label=_KIND_NAMES[kind])
            )
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="cluster / kind")
    sil_text = f"silhouette {sil:.2f}" if sil is not None else "silhouette n/a"
    counts = f"{plural(len(points), 'memory', 'memories')}, {plural(len(cluster_ids), 'cluster')}"
    ax.set_title(f"{TITLE}: {counts} ({used}; {sil_text})")
    ax.set_xlabel(f"{used} dimension 1")
    ax.set_ylabel(f"{used} dimension 2")
    image = save_figure(fig, out_dir, "z_tsne.png" if used == "t-SNE" else "z_pca.png")

    rows = [
        (m.id, m.kind, m.cluster_id, float(x), float(y), m.text[:200])
        for m, (x, y) in zip(points, coords.tolist(), strict=True)
    ]
    csv_name = write_csv(out_dir, "z_points.csv", ("id", "kind", "cluster_id", "x", "y", "text"), rows)
    kinds = Counter(m.kind for m in points)
    noise = int(((labels == -1) & member).sum())
    pending = int(((labels == -2) & member).sum())
    stats: dict[str, Any] = {
        "memories": len(points),
        "skipped_without_vector": len(memories) - len(points),
        "by_kind": dict(sorted(kinds.items())),
        "clusters": len(cluster_ids),
        "cluster_sizes": {str(c): int(((labels == c) & member).sum()) for c in cluster_ids},
        "noise": noise,
        "not_clustered_yet": pending,
        "projection": used,
        "seed": seed,
        "silhouette_cosine": sil,
        "silhouette_note": why,
    }
    json_name = write_json(out_dir, "z_stat.json", stats)
    members = int(member.sum())
    parts = [
        f"{len(points)} memories ({', '.join(f'{n} {_KIND_NAMES.get(k, k)}' for k, n in sorted(kinds.items()))}) "
        f"form {plural(len(cluster_ids), 'stored cluster')}; {noise} of {members} are noise"
        + (f" and {pending} not clustered yet." if pending else ".")
    ]
    if sil is not None:
        quality = "well separated" if sil >= 0.5 else "partly separated" if sil >= 0.25 else "weakly separated"
        parts.append(f"Silhouette (cosine, embedding space): **{sil:.3f}** — the clusters are {quality}.")
    else:
        parts.append(f"Silhouette not computed: {why}.")
    return Section(
        "latent", TITLE, [image], [csv_name, json_name], " ".join(parts), stats={"silhouette": sil, "projection": used}
    )
