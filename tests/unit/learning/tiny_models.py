"""Builders of the tiny tokenizer and model shared by the learning tests (unit and integration).

A byte-level BPE tokenizer is trained in memory on a few sentences (so every text
tokenises) and given a ChatML template; the model is a randomly initialised 2-layer
Llama over it. Weights are drawn with a large init so that logits are peaked and
greedy decoding is not a sequence of float-rounding coin flips.
"""

from __future__ import annotations

from typing import Any

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "You are DMHA, a helpful assistant with a long memory. Answer briefly and truthfully.",
    "Tell me a story about a cat and a dog. Who wrote the book? Where is the team based?",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ? ! . ,",
    "system user assistant Question Answer Please Could you tell me do you know",
]


def build_tokenizer() -> Any:
    """A ~300-token byte-level BPE tokenizer with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    return fast


def build_model(vocab_size: int, seed: int = 0) -> Any:
    """A random 2-layer Llama (hidden 32, GQA 4/2 heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,  # not eos: a padding_idx row is zero, so eos could never win
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
