"""Sections of online learning: the update, its gate and freezing, the worker role, the meta-learner."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from dmha.config.section import Section

__all__ = ["LearningConfig", "MetaConfig"]


class MetaConfig(Section):
    """The causal meta-learner: plans each update, repairs failed ones, learns from outcomes."""

    enabled: bool = True
    """Plan updates with the meta-learner and repair failed ones (False = the fixed plan)."""
    observe_steps: int = Field(2, ge=1)
    """Optimisation steps observed before the learner adjusts the running update."""
    max_repairs: int = Field(2, ge=0)
    """Retries of a diverged or gate-rejected update with a repaired plan."""
    spike_nats: float = Field(4.0, gt=0)
    """Repair trigger: the loss rose by more than this between two steps."""
    ema: float = Field(0.5, ge=0, lt=1)
    """Smoothing of the learner's deltas across updates (0 = none)."""
    max_log_change: float = Field(1.386, gt=0)
    """Bound on each delta in log space (1.386 = at most x4 or /4 the fixed plan)."""
    exploration: float = Field(0.1, ge=0)
    """Gaussian noise (log space) added to a trained learner's deltas, so outcomes teach it."""
    min_records: int = Field(6, ge=1)
    """Finished updates recorded before the learner trains (until then: the fixed plan)."""
    replay_capacity: int = Field(512, ge=8)
    """(state, plan, outcome) records kept for training the learner."""
    train_epochs: int = Field(60, ge=1)
    """Passes over the replay buffer after each finished update."""
    reward_causal: float = Field(1.0, ge=0)
    """eta1: weight of the final causal KL in the reward."""
    reward_flops: float = Field(1.0, ge=0)
    """eta2: weight of the FLOPs saved (share) in the reward."""
    reject_penalty: float = Field(5.0, ge=0)
    """Reward subtracted when an update was rejected or failed."""
    utility_threshold: float = Field(0.5, gt=0, lt=1)
    """Modules whose utility is below this are skipped for the rest of an update."""
    meta_init: Literal["reptile", "fomaml", "none"] = "reptile"
    """How accepted edits shape the initialisation of the next one."""
    meta_step: float = Field(0.3, gt=0, le=1)
    """alpha of the meta-initialisation update (Phi <- Phi + alpha (Phi' - Phi))."""
    auto_learn_entailed: bool = True
    """Queue a monitor correction for training at once when the knowledge base entails
    every claim of it (trainer review is still needed for anything else)."""


class LearningConfig(Section):
    enabled: bool = True
    """Run the training worker inside the server (role ``all`` only)."""
    role: Literal["all", "serve", "worker"] = "all"
    """``all``: one process serves and trains (the default). ``serve``: a replica that
    trains nothing (``dmha serve --no-train``). ``worker``: trains jobs and serves
    nothing (``dmha worker``). Replicas and workers sharing Redis and
    ``registry_dir`` follow the live version that Redis names."""
    registry_dir: Path | None = None
    """Version registry folder, shared by every replica and worker (a shared
    filesystem path when they run on several hosts); None = ``<data_dir>/registry``."""
    claim_idle_seconds: float = Field(60.0, gt=0)
    """A worker renews its claim on its jobs this often / 3; a job whose worker stopped
    renewing for this long is reclaimed (queued: requeued; running: failed cleanly)."""
    live_poll_seconds: float = Field(5.0, gt=0)
    """Replicas and workers re-read the live-version pointer this often, besides
    following its pub/sub announcements (the fallback when a message is lost)."""
    edit_layers: list[int] = [4, 5, 6, 7, 8]
    """Decoder layers whose ``mlp.down_proj`` an edit changes (consecutive middle layers)."""
    rank: int = Field(8, ge=1)
    """Rank of each layer's change."""
    scale: float = Field(1.0, gt=0)
    """Multiplier of the change (with the learning rate, the size of an update)."""
    learning_rate: float = Field(2e-2, gt=0)
    """AdamW learning rate. (2e-2 since gated edits became the default: on four facts
    54 steps in all against 67 at 1e-2 with the same gate verdicts, at a somewhat
    higher KL on the gate's probes; BENCHMARKS.md "ninth session".)"""
    steps: int = Field(30, ge=1)
    """Most optimisation steps per update (early stop on ``stop_margin``)."""
    train_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Matmul precision of the training passes: ``auto`` = bfloat16 where the device
    claims it natively (AVX512-BF16/AMX CPUs, bf16 GPUs) and a bfloat16 pass also
    measures >= 1.25x faster than float32 at start (a step was 2.1x cheaper on one host
    of this project's CPU type and 2.3x dearer on another, ``bench/edit_speed.py``),
    else float32. The gate always judges in the served precision."""
    gate_workers: int | None = Field(None, ge=1, le=64)
    """Threads the gate's locality probes are split over (each runs torch ops
    single-threaded); None = 2 on machines with >= 2 cores, else 1."""
    max_train_seconds: float = Field(300.0, gt=0)
    """No optimisation step starts after this long (bounds Submit -> live)."""
    stop_margin: float = Field(1.0, ge=0)
    """Stop once every target token leads its best rival by this many logits; 0 = never."""
    lambda_causal: float = Field(0.5, ge=0)
    """Weight of KL(P(Y|do(T)) || P(Y|T)) (carries the fact to paraphrases)."""
    lambda_locality: float = Field(1.0, ge=0)
    """Weight of the KL to the pre-update model on the training retain prompts."""
    retain_per_step: int = Field(4, ge=0)
    """Retain prompts held still by the locality term: those the change would read most."""
    null_threshold: float = Field(1e-2, gt=0, lt=1)
    """Relative eigenvalue threshold of the editable subspace: directions whose
    preserved-key eigenvalue is at most this times the largest may be written. (On the
    default model no eigenvalue of layers 3-8 is below 1e-3 of the largest, so the
    AlphaEdit-style 1e-3 leaves nothing; 1e-2 keeps ~800 of 1536 directions.)"""
    causal_floor: float = Field(0.9, ge=0, lt=1)
    """The causal term's teacher (the model told the fact in its system message) is
    trusted for how it would answer, but the trainer's answer is the truth: each target
    token's teacher probability is raised to at least this, the rest of its
    distribution scaled down. Without it the teacher's own habits fight the target
    (measured: a teacher told "written by Prysk" put 0.06-0.12 on " P" after "written
    by", preferring "a French author named Prysk", and the edit never learned the
    name); 0 = the teacher as it is."""
    gate_margin: float = Field(1.5, ge=0)
    """When > 0, edits are key-gated (``dmha.learning.gated``): each acts only on tokens
    whose ``down_proj`` key has at least this times the largest share of energy in the
    edit's directions seen on the training retain prompts, so every other token's
    output is exactly the base's (a fact whose tokens reach no such share is gated at the
    margin halfway to 1, and merged when they reach none there either);
    0 = edits merged into the weights (unrelated greedy answers then drift: 55 % word
    for word after 10 merged edits against 100 % after 6 gated ones, BENCHMARKS.md)."""
    max_delta_norm: float = Field(0.0, ge=0)
    """Frobenius bound on each layer's change; 0 = unbounded."""
    min_key_share: float = Field(0.05, ge=0, lt=1)
    """Refuse an edit when no token of the feedback has this share of its key energy
    in the editable subspace (no local edit could carry it)."""
    subspace_rank: int = Field(8, ge=0)
    """When > 0, each change reads only this many directions of the editable subspace:
    those along which the feedback's own keys are largest."""
    max_feedback_bytes: int = Field(4096, ge=16)
    """Largest input/target text accepted by Submit."""
    max_insights_bytes: int = Field(768 * 1024, ge=1024)
    """Largest meta-learner insights document ImportInsights accepts (UTF-8 bytes of its
    JSON; an update record takes ~2 KB, so the default holds ~400). The server's largest
    accepted request follows this limit, and requests are buffered before they are
    authenticated: raise it knowingly."""
    replay_size: int = Field(8, ge=0)
    """Earlier accepted feedback items replayed in each update (against forgetting); the
    gate checks every one of them is still answered."""
    replay_per_step: int = Field(2, ge=0)
    """Of the replayed items, how many each optimisation step samples. A step's cost
    grows with its sequences: all 8 in every step made a step ~1.6x dearer, while the
    null-space constraint already keeps earlier edits' keys untouched."""
    paraphrases: int = Field(6, ge=0)
    """Training paraphrases per feedback item for the causal term."""
    seed: int = 0
    """Seed of initialisation and sampling (updates are reproducible)."""
    min_efficacy: float = Field(0.99, ge=0, le=1)
    """Gate: share of feedback inputs whose greedy answer contains the target."""
    min_generalisation: float = Field(0.9, ge=0, le=1)
    """Gate: the same share over held-out paraphrases of the inputs."""
    min_locality: float = Field(0.99, ge=0, le=1)
    """Gate: argmax agreement with the live model on the retain probes, counted where
    the live model is confident (``confident_nats``)."""
    confident_nats: float = Field(0.5, ge=0)
    """Gate: a probe position counts for locality when the live model's top-2 gap is at
    least this (smaller gaps flip with float noise, not with the edit)."""
    max_kl_mean: float = Field(0.01, ge=0)
    """Gate: largest mean KL(live || candidate) per probe token, in nats."""
    max_kl_prompt: float = Field(0.25, ge=0)
    """Gate: largest mean KL(live || candidate) of any one probe prompt, in nats. An edit
    of "the capital of X" measurably shifts (0.1-0.2 nats) the probe asking another
    country's capital while its confident tokens stay; 0.05 rejected most such edits."""
    max_perplexity_increase: float = Field(0.05, ge=0)
    """Gate: largest relative perplexity rise on the held-out text (0.05 = +5 %)."""
    freeze: bool = True
    """TorchScript-freeze each accepted version (else it is served eagerly)."""
    freeze_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the frozen module; ``auto`` picks CUDA when available."""
    freeze_tolerance: float = Field(1e-3, gt=0)
    """Largest |logit| difference between the frozen module and eager accepted."""
    keep_ancestors: int = Field(5, ge=0)
    """Retention: ancestors of the live version kept (rollback targets)."""
    keep_last: int = Field(10, ge=0)
    """Retention: most recent versions kept besides the live one and its ancestors;
    the others' stored deltas are deleted (their records stay, marked pruned)."""
    meta: MetaConfig = MetaConfig()
    """The causal meta-learner."""
