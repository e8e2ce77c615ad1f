"""Figure 1: where the model's attention went while it wrote an answer.

The turn's prompt is rebuilt the way the chat pipeline builds it
(:class:`~dmha.llm.prompt.PromptBuilder`: system prompt, the knowledge base's facts,
retrieved memories, working-memory history, the message), the recorded answer is
appended, and the real model is run once in eager attention. For every layer, the
attention of each answer token is summed over the tokens of each context block and
averaged over heads and answer tokens, so each row (layer) sums to 1 over the
blocks. Chat-template tokens (role markers, and the first token, which absorbs the
"attention sink" mass) form a block of their own rather than being hidden.

The weights are read with forward hooks on the attention modules (the eager
implementation returns them, as ``output_attentions`` does) and reduced layer by
layer, so memory stays at one layer's ``heads x T x T`` instead of all layers'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmha.llm.base import ChatMessage
from dmha.llm.prompt import ContextBlock, PromptBuilder
from dmha.report.style import Section, empty, new_figure, save_figure, write_csv, write_json

__all__ = ["AttentionResult", "TurnContext", "attention_section", "block_attention", "rebuild_context"]

TITLE = "Attention over context blocks"
TEMPLATE = "chat template"
ANSWER = "answer so far"


@dataclass(frozen=True)
class TurnContext:
    """A turn's prompt as the model saw it, with each piece named.

    Attributes:
        turn_id: the assistant turn.
        messages: the prompt messages (system first), as the pipeline packed them.
        pieces: ``(block name, text)`` in prompt order; every text occurs verbatim
            in the rendered prompt.
        answer: the recorded answer.
    """

    turn_id: str
    messages: tuple[ChatMessage, ...]
    pieces: tuple[tuple[str, str], ...]
    answer: str


def rebuild_context(
    render: Callable[[Sequence[ChatMessage]], list[int]],
    system_prompt: str,
    max_positions: int,
    max_new_tokens: int,
    blocks: Sequence[tuple[str, ContextBlock]],
    history: Sequence[ChatMessage],
    message: str,
    answer: str,
    turn_id: str = "",
) -> TurnContext:
    """Pack a turn's prompt with the pipeline's own builder and name its pieces.

    Args:
        render: chat template + tokenise of the model (drops what does not fit).
        system_prompt: the configured system prompt.
        max_positions: the model's context size.
        max_new_tokens: room the pipeline kept for the reply.
        blocks: ``(name, block)`` system-message blocks, most important first
            (knowledge-base facts, then memories), as the hooks add them.
        history: the session's earlier turns, oldest first.
        message: the user's message.
        answer: the recorded reply.
        turn_id: the assistant turn id (for the report).

    Returns:
        The context.

    Raises:
        InvalidArgument: the message does not fit the context at all.
    """
    builder = PromptBuilder(render, system_prompt, max_positions)
    built = builder.build(history, message, max_new_tokens, [b for _, b in blocks])
    pieces: list[tuple[str, str]] = [("system prompt", system_prompt)]
    pieces += [(name, block.render()) for name, block in blocks[: built.blocks_used] if block.lines]
    pieces += [("working memory", m.text) for m in built.messages[1:-1]]
    pieces.append(("message", message))
    return TurnContext(turn_id, built.messages, tuple(pieces), answer)


@dataclass(frozen=True)
class AttentionResult:
    """Attention of the answer's tokens over the context blocks.

    Attributes:
        blocks: block names, prompt order, then the template and answer blocks.
        tokens: tokens per block.
        layers: ``(layers, blocks)`` share of attention; every row sums to 1.
        last_heads: ``(heads, blocks)`` the same for each head of the last layer.
        answer_tokens: answer tokens averaged over.
    """

    blocks: tuple[str, ...]
    tokens: tuple[int, ...]
    layers: np.ndarray
    last_heads: np.ndarray
    answer_tokens: int


def _assign(text: str, pieces: Sequence[tuple[str, str]], offsets: Sequence[tuple[int, int]]) -> list[str]:
    ranges: list[tuple[int, int, str]] = []
    cursor = 0
    for name, piece in pieces:
        if not piece:
            continue
        at = text.find(piece, cursor)
        if at < 0:
            raise ValueError(f"block {name!r} does not occur verbatim in the rendered prompt")
        ranges.append((at, at + len(piece), name))
        cursor = at + len(piece)
    out = []
    for start, _end in offsets:
        out.append(next((name for lo, hi, name in ranges if lo <= start < hi), TEMPLATE))
    return out


def _attention_modules(model: Any) -> list[Any]:
    mods = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not mods:
        raise ValueError("the model has no '*.self_attn' modules to read attention from")
    return mods


@torch.inference_mode()
def block_attention(model: Any, tokenizer: Any, ctx: TurnContext, max_answer_tokens: int = 48) -> AttentionResult:
    """Run the model over the turn and reduce its attention to blocks.

    Args:
        model: a Hugging Face causal LM; switched to eager attention for the run
            (and restored after).
        tokenizer: its fast tokenizer (character offsets are needed).
        ctx: the turn, from :func:`rebuild_context`.
        max_answer_tokens: answer tokens kept (the first ones).

    Returns:
        The shares.

    Raises:
        ValueError: the answer is empty, a block cannot be located, or the model
            returns no attention weights.
    """
    prompt = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.text} for m in ctx.messages], tokenize=False, add_generation_prompt=True
    )
    if not ctx.answer:
        raise ValueError("the turn has an empty answer")
    full = prompt + ctx.answer
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    names = _assign(full, [*ctx.pieces, (ANSWER, ctx.answer)], enc["offset_mapping"])
    answer_pos = [i for i, n in enumerate(names) if n == ANSWER][:max_answer_tokens]
    if not answer_pos:
        raise ValueError("no answer token found in the rendered turn")
    keep = answer_pos[-1] + 1
    ids = torch.tensor([enc["input_ids"][:keep]])
    names = names[:keep]
    order = [n for n, _ in ctx.pieces]
    blocks = tuple(dict.fromkeys([*order, TEMPLATE, ANSWER]))
    blocks = tuple(b for b in blocks if b in names)
    onehot = torch.zeros(keep, len(blocks))
    for i, n in enumerate(names):
        onehot[i, blocks.index(n)] = 1.0
    rows = torch.tensor(answer_pos)

    per_layer: list[torch.Tensor] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise ValueError("the attention module returned no weights (is attention eager?)")
        w = weights[0].float()[:, rows, :]  # (heads, answer tokens, keys)
        per_layer.append(w @ onehot.to(w.device))  # (heads, answer tokens, blocks)

    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation("eager")
    handles = [m.register_forward_hook(hook) for m in _attention_modules(model)]
    try:
        model(input_ids=ids.to(next(model.parameters()).device), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
        if previous and previous != "eager":
            model.set_attn_implementation(previous)
    layers = torch.stack([x.mean(dim=(0, 1)) for x in per_layer]).cpu().numpy()
    last_heads = per_layer[-1].mean(dim=1).cpu().numpy()
    tokens = tuple(int(onehot[:, j].sum()) for j in range(len(blocks)))
    return AttentionResult(blocks, tokens, layers, last_heads, len(answer_pos))


def attention_section(result: AttentionResult, out_dir: Path, turn_label: str) -> Section:
    """Draw the layers x blocks heatmap and the last layer's heads; write the data.

    Writes ``attention_heatmap.png``, ``attention_weight.csv`` (``layer, block,
    tokens, share``; per layer the shares sum to 1), ``attention_heads.csv``
    (``head, block, share``, last layer) and ``attention_stat.json``.

    Args:
        result: from :func:`block_attention`.
        out_dir: the report folder.
        turn_label: names the turn in the title and the finding.

    Returns:
        The section.
    """
    n_layers, n_blocks = result.layers.shape
    labels = [f"{b}\n({t} tok)" for b, t in zip(result.blocks, result.tokens, strict=True)]
    fig, (ax1, ax2) = new_figure(12.0, 6.0, ncols=2)
    im = ax1.imshow(result.layers, aspect="auto", cmap="cividis", vmin=0.0, vmax=float(result.layers.max()))
    ax1.set_xticks(range(n_blocks), labels, rotation=35, ha="right", fontsize=8)
    ax1.set_yticks(range(0, n_layers, max(1, n_layers // 10)))
    ax1.set_ylabel("layer (0 = first)")
    ax1.set_xlabel("context block")
    ax1.set_title(f"Share of the answer's attention, by layer ({result.answer_tokens} answer tokens)", fontsize=9)
    fig.colorbar(im, ax=ax1, label="share of attention (row sums to 1)")
    im2 = ax2.imshow(result.last_heads, aspect="auto", cmap="cividis", vmin=0.0, vmax=float(result.last_heads.max()))
    ax2.set_xticks(range(n_blocks), labels, rotation=35, ha="right", fontsize=8)
    ax2.set_yticks(range(result.last_heads.shape[0]))
    ax2.set_ylabel("head of the last layer")
    ax2.set_xlabel("context block")
    ax2.set_title("Last layer, per head", fontsize=9)
    for h in range(result.last_heads.shape[0]):
        for b in range(n_blocks):
            v = float(result.last_heads[h, b])
            ax2.text(b, h, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.5 else "black")
    fig.colorbar(im2, ax=ax2, label="share of attention")
    fig.suptitle(f"{TITLE}: turn {turn_label}", fontsize=11)
    image = save_figure(fig, out_dir, "attention_heatmap.png")

    rows = [
        (layer, b, result.tokens[j], float(result.layers[layer, j]))
        for layer in range(n_layers)
        for j, b in enumerate(result.blocks)
    ]
    weights = write_csv(out_dir, "attention_weight.csv", ("layer", "block", "tokens", "share"), rows)
    heads = write_csv(
        out_dir,
        "attention_heads.csv",
        ("head", "block", "share"),
        [
            (h, b, float(result.last_heads[h, j]))
            for h in range(result.last_heads.shape[0])
            for j, b in enumerate(result.blocks)
        ],
    )
    mean = result.layers.mean(axis=0)
    per_token = mean / np.maximum(np.array(result.tokens, dtype=np.float64), 1.0)
    stats = {
        "turn": turn_label,
        "blocks": list(result.blocks),
        "tokens": list(result.tokens),
        "mean_share": {b: float(v) for b, v in zip(result.blocks, mean, strict=True)},
        "mean_share_per_token": {b: float(v) for b, v in zip(result.blocks, per_token, strict=True)},
        "answer_tokens": result.answer_tokens,
        "layers": n_layers,
        "heads": int(result.last_heads.shape[0]),
    }
    data = write_json(out_dir, "attention_stat.json", stats)
    content = [j for j, b in enumerate(result.blocks) if b not in (TEMPLATE, ANSWER)]
    top = max(content, key=lambda j: mean[j]) if content else int(np.argmax(mean))
    dense = max(content, key=lambda j: per_token[j]) if content else top
    shares = ", ".join(f"{result.blocks[j]} {100 * mean[j]:.1f} %" for j in content)
    finding = (
        f"Averaged over {n_layers} layers and {result.answer_tokens} answer tokens, the answer attended to: {shares}; "
        f"the chat-template tokens (with the first-token attention sink) took "
        f"{100 * mean[result.blocks.index(TEMPLATE)] if TEMPLATE in result.blocks else 0.0:.1f} % and earlier "
        f"answer tokens {100 * mean[result.blocks.index(ANSWER)]:.1f} %. "
        f"Most attention went to **{result.blocks[top]}**; per token, **{result.blocks[dense]}** "
        f"was attended most densely."
    )
    return Section(
        "attention", TITLE, [image], [weights, heads, data], finding, stats={"top_block": result.blocks[top]}
    )


def no_turn(reason: str) -> Section:
    """The attention section when no turn could be drawn."""
    return empty("attention", TITLE, reason)
