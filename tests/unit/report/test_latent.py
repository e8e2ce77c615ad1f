"""The memory latent map on real MiniLM embeddings clustered by the memory system's own Clusterer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmha.config import ClusteringConfig, EmbeddingConfig
from dmha.memory.clustering import Clusterer
from dmha.memory.embedding import SentenceTransformerEmbedder
from dmha.report import MemoryPoint, latent_map
from dmha.report.latent import project
from tests.unit.report.report_checks import header, png_size, rows

TOPICS = {
    "dog": [
        "My beagle Pepper chased the ball in the park.",
        "Pepper barked at the mailman this morning.",
        "I walked my dog Pepper along the river.",
        "Pepper the beagle chewed my slippers.",
        "My dog loves the dog park on Sundays.",
        "Pepper needs a new dog collar and leash.",
    ],
    "bread": [
        "I baked a sourdough loaf with a crunchy crust.",
        "My sourdough starter needs flour and water daily.",
        "The rye sourdough bread came out dense.",
        "I bake bread every weekend with sea salt.",
        "Kneading the bread dough takes ten minutes.",
        "The second sourdough loaf was lighter.",
    ],
    "trip": [
        "I am planning a trip to Lisbon in May.",
        "In Lisbon I will ride the yellow tram.",
        "I booked a hotel near the river in Lisbon.",
        "I must learn Portuguese words before Lisbon.",
        "My Lisbon flight leaves on a Tuesday.",
        "Lisbon has steep hills and old trams.",
    ],
}


@pytest.fixture(scope="module")
def memories() -> list[MemoryPoint]:
    texts = [t for group in TOPICS.values() for t in group]
    vectors = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu")).embed(texts)
    labels = Clusterer(ClusteringConfig(min_cluster_size=3)).fit(vectors).labels
    points = [
        MemoryPoint(f"m{i}", "turn", t, 1000.0 + i, int(c), v)
        for i, (t, c, v) in enumerate(zip(texts, labels.tolist(), vectors, strict=True))
    ]
    # A cluster summary sits at its cluster's mean, labelled with its text.
    c0 = [p for p in points if p.cluster_id == 0]
    if c0:
        mean = np.mean([p.vector for p in c0], axis=0)
        points.append(
            MemoryPoint("s0", "cluster_summary", "Summary: " + c0[0].text, 2000.0, 0, mean / np.linalg.norm(mean))
        )
    points.append(MemoryPoint("x", "turn", "not embedded", 3000.0, -2, None))
    return points


def test_map_has_every_memory_once_and_a_silhouette(tmp_path, memories):
    section = latent_map(memories, tmp_path, seed=0)
    assert section.images == ["z_tsne.png"] and section.empty_reason is None
    width, height = png_size(tmp_path / "z_tsne.png")
    assert (width, height) == (935, 660)
    assert header(tmp_path / "z_points.csv") == ["id", "kind", "cluster_id", "x", "y", "text"]
    ids = [r["id"] for r in rows(tmp_path / "z_points.csv")]
    embedded = [m.id for m in memories if m.vector is not None]
    assert sorted(ids) == sorted(embedded)  # every memory with a vector, exactly once
    stat = json.loads((tmp_path / "z_stat.json").read_text())
    assert stat["memories"] == len(embedded) and stat["skipped_without_vector"] == 1
    assert stat["clusters"] >= 2, stat  # three topics: the stored clustering separates them
    assert -1.0 <= stat["silhouette_cosine"] <= 1.0
    assert "Silhouette" in section.finding


def test_same_seed_same_picture(tmp_path, memories):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    latent_map(memories, a, seed=1)
    latent_map(memories, b, seed=1)
    assert (a / "z_tsne.png").read_bytes() == (b / "z_tsne.png").read_bytes()
    assert (a / "z_points.csv").read_text() == (b / "z_points.csv").read_text()


def test_few_memories_use_pca_and_too_few_is_empty(tmp_path, memories):
    few = [m for m in memories if m.vector is not None][:5]
    section = latent_map(few, tmp_path)
    assert section.images == ["z_pca.png"]
    coords, used = project(np.stack([m.vector for m in few]), method="auto")
    assert used == "PCA" and coords.shape == (5, 2)
    empty = latent_map(few[:2], tmp_path)
    assert empty.images == [] and "at least 3" in (empty.empty_reason or "")
