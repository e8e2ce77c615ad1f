"""The one typed configuration tree.

The field defaults below are the embedded CPU defaults (``configs/default.yaml``
spells them out, and a test keeps the two equal). A YAML file is layered over
them, then overridden by ``DMHA_*`` environment variables using ``__`` as the
nesting delimiter (``DMHA_REDIS__URL=redis://...``, ``DMHA_MODEL__THREADS=2``).
The conventional ``REDIS_URL`` and ``MILVUS_URI`` / ``MILVUS_TOKEN`` variables are
honoured too, unless the ``DMHA_`` form is set.

Each component receives only its own sub-config, never the whole tree.

The tree is split by what each part configures: ``server`` (serving edge),
``model``, ``memory``, ``knowledge`` (knowledge base and consistency monitor),
``learning`` (updates and the meta-learner), and ``tree`` (the root, its loading
and rendering). Import names from ``dmha.config``.
"""

from __future__ import annotations

from dmha.config.knowledge import KnowledgeConfig, MetacognitionConfig
from dmha.config.learning import LearningConfig, MetaConfig
from dmha.config.memory import (
    ClusteringConfig,
    EmbeddingConfig,
    HotIndexConfig,
    LongTermConfig,
    MemoryConfig,
    RedisConfig,
    RetrievalConfig,
    WorkingMemoryConfig,
)
from dmha.config.model import ModelConfig
from dmha.config.server import AuthConfig, HealthConfig, LimitsConfig, LoggingConfig, ServerConfig
from dmha.config.tree import DMHAConfig, default_data_dir, load_config, render_yaml

__all__ = [
    "AuthConfig",
    "ClusteringConfig",
    "DMHAConfig",
    "EmbeddingConfig",
    "HotIndexConfig",
    "HealthConfig",
    "KnowledgeConfig",
    "LearningConfig",
    "LimitsConfig",
    "LoggingConfig",
    "LongTermConfig",
    "MemoryConfig",
    "MetaConfig",
    "MetacognitionConfig",
    "ModelConfig",
    "RedisConfig",
    "RetrievalConfig",
    "ServerConfig",
    "WorkingMemoryConfig",
    "default_data_dir",
    "load_config",
    "render_yaml",
]
