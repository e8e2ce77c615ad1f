"""Eager and frozen step models: same logits as the Hugging Face forward."""

from __future__ import annotations

import pytest
import torch

from dmha.learning import (
    EagerStepModel,
    FreezeError,
    FrozenStepModel,
    LlamaStepCore,
    freeze,
    verify_step_model,
)
from dmha.llm.base import StepModel


def _full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[:, -1, :]


def test_eager_step_model_matches_full_forward(tiny_model) -> None:
    step = EagerStepModel(tiny_model)
    assert isinstance(step, StepModel)
    ids = torch.randint(0, 320, (1, 9), generator=torch.Generator().manual_seed(0))
    logits, past = step.prefill(ids[:, :6])
    assert len(past) == 2 * tiny_model.config.num_hidden_layers
    torch.testing.assert_close(logits, _full_logits(tiny_model, ids[:, :6]))
    old = past
    for t in range(6, 9):
        logits, past = step.decode(ids[:, t : t + 1], past)
        torch.testing.assert_close(logits, _full_logits(tiny_model, ids[:, : t + 1]), atol=1e-5, rtol=1e-4)
    # An older cache is never mutated by later steps (callers may branch from it).
    assert old[0].shape[2] == 6 and past[0].shape[2] == 9


def test_core_matches_eager(tiny_model) -> None:
    core = LlamaStepCore(tiny_model)
    assert verify_step_model(_Wrap(core), EagerStepModel(tiny_model), 320) < 1e-5


class _Wrap:
    def __init__(self, core) -> None:
        self.core = core

    @torch.no_grad()
    def prefill(self, ids):
        return self.core(ids)

    @torch.no_grad()
    def decode(self, token, past):
        return self.core.decode(token, past)


def test_frozen_matches_eager_for_other_lengths_and_survives_save(tiny_model, tmp_path) -> None:
    path = tmp_path / "frozen.pt"
    frozen = freeze(tiny_model, path, device="cpu", tolerance=1e-4)
    assert isinstance(frozen, StepModel) and path.is_file()
    eager = EagerStepModel(tiny_model)
    # Lengths other than the traced one (7) and the verified ones (5, 13).
    assert verify_step_model(frozen, eager, 320, lengths=(3, 21), decode_steps=6, seed=3) < 1e-4
    loaded = FrozenStepModel.load(path, "cpu")
    assert verify_step_model(loaded, eager, 320, lengths=(4,), seed=4) < 1e-4
    # Greedy decoding is the same token for token.
    ids = torch.randint(0, 320, (1, 11), generator=torch.Generator().manual_seed(5))
    outs = []
    for step in (eager, loaded):
        logits, past = step.prefill(ids)
        seq = []
        for _ in range(8):
            tok = logits.argmax(-1, keepdim=True)
            seq.append(int(tok))
            logits, past = step.decode(tok, past)
        outs.append(seq)
    assert outs[0] == outs[1]


def test_unsupported_architecture_is_a_freeze_error() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(FreezeError, match="cannot freeze"):
        freeze(model, device="cpu")


def test_corrupt_file_is_a_freeze_error(tmp_path) -> None:
    bad = tmp_path / "frozen.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(FreezeError):
        FrozenStepModel.load(bad, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_freeze_on_cuda(tiny_model) -> None:
    frozen = freeze(tiny_model, device="cuda", tolerance=1e-3)
    assert frozen.device.type == "cuda"
    logits, past = frozen.prefill(torch.tensor([[1, 2, 3]]))
    assert logits.device.type == "cuda" and past[0].device.type == "cuda"
    # The live (CPU) model was copied, not moved.
    assert next(tiny_model.parameters()).device.type == "cpu"


def test_freeze_with_a_padding_index(tiny_tokenizer) -> None:
    """The real model has pad id 2: the embedding's padding check must not break the trace."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=2,
        )
    ).eval()
    assert model.model.embed_tokens.padding_idx == 2
    frozen = freeze(model, device="cpu", tolerance=1e-4)
    assert verify_step_model(frozen, EagerStepModel(model), 64, lengths=(6,)) < 1e-4
