"""A version frozen in a child process is the version (base + delta), checked there;
a child that refuses or fails is a FreezeError naming why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dmha.errors import FreezeError
from dmha.learning import EagerStepModel, verify_step_model
from dmha.learning.editor import apply_delta
from dmha.learning.freeze_process import freeze_version
from dmha.learning.loading import read_base_weights, save_delta

EDITED = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def base_dir(_tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base")
    _tiny_model.save_pretrained(str(out))
    return out


def _delta(model: Any, path: Path) -> dict[str, torch.Tensor]:
    weight = dict(model.named_parameters())[EDITED]
    delta = {EDITED: 0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))}
    save_delta(delta, path)
    return delta


def test_the_child_freezes_base_plus_delta(tiny_model, base_dir, tmp_path) -> None:
    delta = _delta(tiny_model, tmp_path / "delta.safetensors")
    out = tmp_path / "v1.pt"
    frozen = freeze_version(base_dir, tmp_path / "delta.safetensors", out, torch.float32, "cpu", 1e-4)
    assert out.is_file()

    apply_delta(tiny_model, read_base_weights(base_dir, [EDITED]), delta)
    vocab = int(tiny_model.config.vocab_size)
    assert verify_step_model(frozen, EagerStepModel(tiny_model), vocab, lengths=(4,)) < 1e-4
    # The delta is really in there: the unedited base answers differently.
    base = type(tiny_model).from_pretrained(str(base_dir))
    assert verify_step_model(frozen, EagerStepModel(base), vocab, lengths=(4,)) > 1e-3


def test_a_refusal_is_a_freeze_error_with_the_childs_reason(base_dir, tmp_path) -> None:
    # No module is ever within a negative tolerance of eager: the child's check refuses it.
    with pytest.raises(FreezeError, match=r"refused: frozen module differs from eager"):
        freeze_version(base_dir, None, tmp_path / "v.pt", torch.float32, "cpu", -1.0)


def test_a_missing_delta_is_a_freeze_error(base_dir, tmp_path) -> None:
    with pytest.raises(FreezeError, match=r"failed \(exit 1\).*missing\.safetensors"):
        freeze_version(base_dir, tmp_path / "missing.safetensors", tmp_path / "v.pt", torch.float32, "cpu")
    assert not (tmp_path / "v.pt").exists()


def test_a_child_past_its_time_is_stopped(base_dir, tmp_path) -> None:
    with pytest.raises(FreezeError, match="ran past"):
        freeze_version(base_dir, None, tmp_path / "v.pt", torch.float32, "cpu", timeout_s=0.5)


def test_the_child_freezes_gated_edits(tiny_model, base_dir, tmp_path) -> None:
    from dmha.learning.gated import append_edit

    down = tiny_model.model.layers[1].mlp.down_proj
    g = torch.Generator().manual_seed(5)
    gate, _ = torch.linalg.qr(torch.randn(down.in_features, 4, generator=g))
    delta: dict[str, torch.Tensor] = {}
    # A threshold near a random key's share: some tokens take the edit, others not.
    share = 4 / down.in_features
    append_edit(
        delta,
        1,
        gate,
        share,
        torch.randn(3, down.in_features, generator=g),
        torch.randn(down.out_features, 3, generator=g),
    )
    save_delta(delta, tmp_path / "delta.safetensors")
    frozen = freeze_version(base_dir, tmp_path / "delta.safetensors", tmp_path / "v1.pt", torch.float32, "cpu", 1e-4)

    apply_delta(tiny_model, {}, delta)
    vocab = int(tiny_model.config.vocab_size)
    assert verify_step_model(frozen, EagerStepModel(tiny_model), vocab, lengths=(4, 9)) < 1e-4
    base = type(tiny_model).from_pretrained(str(base_dir))
    assert verify_step_model(frozen, EagerStepModel(base), vocab, lengths=(4, 9)) > 1e-3
