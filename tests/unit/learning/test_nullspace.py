"""The preserved-key statistics and the null space an edit writes through."""

from __future__ import annotations

import torch

from dmha.learning import KeyStats, collect_keys, null_basis
from dmha.learning.prompting import Sequence


def _keys(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, d, generator=gen)
    return torch.randn(n, rank, generator=gen) @ mix


def test_null_basis_annihilates_preserved_keys() -> None:
    keys = _keys(500, 32, rank=20, seed=0)
    basis = null_basis(keys.T.double() @ keys.double() / len(keys), 1e-6)
    assert basis.shape == (32, 12)
    # Orthonormal columns ...
    assert torch.allclose(basis.T @ basis, torch.eye(12), atol=1e-5)
    # ... that every preserved key (and any key in their span) is orthogonal to.
    assert (keys @ basis).abs().max() < 1e-3 * keys.abs().max()
    fresh = _keys(10, 32, rank=20, seed=0)[:, :]  # same span, other mixtures
    assert (fresh @ basis).abs().max() < 1e-3 * fresh.abs().max()
    # A random direction is mostly *not* annihilated.
    other = torch.randn(5, 32, generator=torch.Generator().manual_seed(9))
    assert (other @ basis).norm() > 0.3 * other.norm()


def test_threshold_is_relative_to_the_largest_eigenvalue() -> None:
    keys = _keys(400, 16, rank=16, seed=1)
    cov = keys.T.double() @ keys.double() / len(keys)
    assert null_basis(cov, 1e-9).shape[1] == null_basis(cov * 1e6, 1e-9).shape[1]
    assert null_basis(cov, 0.999).shape[1] == 15  # everything but the top direction


def test_accepted_edit_keys_leave_the_null_space() -> None:
    corpus = _keys(300, 24, rank=12, seed=2)
    stats = KeyStats({0: corpus.T.double() @ corpus.double()}, {0: len(corpus)})
    before = stats.basis(0, 1e-6)
    edit = torch.randn(3, 24, generator=torch.Generator().manual_seed(3))
    assert (edit @ before).norm() > 0.1 * edit.norm()
    after = stats.with_keys({0: edit}).basis(0, 1e-6)
    assert after.shape[1] == before.shape[1] - 3
    assert (edit @ after).abs().max() < 1e-3 * edit.abs().max()
    # The original statistics are unchanged (with_keys returns a copy).
    assert stats.basis(0, 1e-6).shape == before.shape


def test_stats_round_trip(tmp_path) -> None:
    k = _keys(50, 8, rank=8, seed=4)
    stats = KeyStats({3: k.T.double() @ k.double()}, {3: 50})
    stats.save(tmp_path / "s.pt")
    loaded = KeyStats.load(tmp_path / "s.pt", [3])
    assert loaded is not None and loaded.counts == {3: 50}
    assert torch.equal(loaded.sums[3], stats.sums[3])
    assert KeyStats.load(tmp_path / "s.pt", [3, 4]) is None  # does not cover layer 4
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert KeyStats.load(tmp_path / "bad.pt", [3]) is None
    assert KeyStats.load(tmp_path / "absent.pt", [3]) is None


def test_collect_keys_counts_real_tokens_only(tiny_model) -> None:
    seqs = [Sequence((1, 2, 3), (4, 5)), Sequence((1, 2), (6,))]
    keys = collect_keys(tiny_model, seqs, [0, 1], skip=1)
    d_ff = tiny_model.model.layers[0].mlp.down_proj.in_features
    assert keys[0].shape == (4 + 2, d_ff)
    assert keys[1].shape == (6, d_ff)
    total = {0: 0}
    collect_keys(tiny_model, seqs, [0], sink=lambda i, rows: total.__setitem__(i, total[i] + len(rows)))
    assert total[0] == 5 + 3
