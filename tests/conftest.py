"""Shared fixtures. Tiers: unit (default), integration, slow, gpu (see pyproject markers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not fight over 2 cores: one torch thread everywhere, set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["DMHA_MODEL__THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)

# `make test` prepares the real model first (`dmha setup`); point the slow tests at it.
from dmha.config import default_data_dir  # noqa: E402
from dmha.llm.model_store import default_model_dir  # noqa: E402

if (default_model_dir(default_data_dir()) / "config.json").exists():
    os.environ.setdefault("DMHA_TEST_MODEL_PATH", str(default_model_dir(default_data_dir())))


def real_model_dir() -> Path:
    """The converted default model (``make test`` prepares it with ``dmha setup``).

    ``DMHA_TEST_MODEL_PATH`` points elsewhere when set.
    """
    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model

    explicit = os.environ.get("DMHA_TEST_MODEL_PATH")
    return Path(explicit) if explicit else ensure_model(None, default_data_dir())


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real default model folder."""
    return real_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama with the real tokenizer (fast, deterministic)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
