"""The whole configuration tree: its layered loading and its rendering as commented YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dmha.config.knowledge import KnowledgeConfig, MetacognitionConfig
from dmha.config.learning import LearningConfig
from dmha.config.memory import MemoryConfig, RedisConfig
from dmha.config.model import ModelConfig
from dmha.config.server import AuthConfig, HealthConfig, LimitsConfig, LoggingConfig, ServerConfig
from dmha.errors import ConfigError

__all__ = ["DMHAConfig", "default_data_dir", "load_config", "render_yaml"]


def default_data_dir() -> Path:
    """Where DMHA keeps its state when no ``data_dir`` is configured.

    Returns:
        ``$XDG_DATA_HOME/dmha`` or ``~/.local/share/dmha``.
    """
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dmha"


class DMHAConfig(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="DMHA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    """Root of all state: models, redis data, milvus file, registry, secrets."""
    server: ServerConfig = ServerConfig()
    model: ModelConfig = ModelConfig()
    redis: RedisConfig = RedisConfig()
    memory: MemoryConfig = MemoryConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    learning: LearningConfig = LearningConfig()
    metacognition: MetacognitionConfig = MetacognitionConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_config layers the sources itself (defaults < YAML < env < flags), so
        # construction never reads the environment behind its back.
        return (init_settings,)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _conventional_env() -> dict[str, Any]:
    """REDIS_URL / MILVUS_URI / MILVUS_TOKEN, unless their DMHA_ forms are set."""
    extra: dict[str, Any] = {}
    if os.environ.get("REDIS_URL") and "DMHA_REDIS__URL" not in os.environ:
        extra["redis"] = {"url": os.environ["REDIS_URL"]}
    longterm: dict[str, Any] = {}
    if os.environ.get("MILVUS_URI") and "DMHA_MEMORY__LONGTERM__URI" not in os.environ:
        longterm["uri"] = os.environ["MILVUS_URI"]
    if os.environ.get("MILVUS_TOKEN") and "DMHA_MEMORY__LONGTERM__TOKEN" not in os.environ:
        longterm["token"] = os.environ["MILVUS_TOKEN"]
    if longterm:
        extra["memory"] = {"longterm": longterm}
    return extra


def load_config(path: str | Path | None = None, **overrides: Any) -> DMHAConfig:
    """Build the config: field defaults < YAML file < environment < overrides.

    Args:
        path: optional YAML file layered over ``configs/default.yaml``.
        **overrides: top-level keys (e.g. ``data_dir=...``) that beat everything,
            used by command-line flags and tests.

    Returns:
        The frozen, validated config tree.

    Raises:
        ConfigError: unreadable YAML or a value that fails validation (the message
            names the offending key).
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _merge(data, _conventional_env())
    data = _merge(data, EnvSettingsSource(DMHAConfig)())
    data = _merge(data, overrides)
    try:
        return DMHAConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def render_yaml(cfg: BaseModel, indent: int = 0) -> str:
    """The config as commented YAML (each field's docstring above it).

    Args:
        cfg: the tree or a section of it.
        indent: current nesting depth (recursion).

    Returns:
        YAML text that :func:`load_config` reads back to the same values.
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(cfg).model_fields.items():
        if name == "data_dir":
            lines.append(f"{pad}# data_dir: {default_data_dir()}  # default; set to relocate all state")
            continue
        value = getattr(cfg, name)
        if field.description:
            for line in field.description.splitlines():
                lines.append(f"{pad}# {line.strip()}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(render_yaml(value, indent + 1))
            continue
        if isinstance(value, SecretStr):
            value = "<secret>"
        if isinstance(value, Path):
            value = str(value)
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000, sort_keys=False)
        lines.append(pad + dumped.strip()[1:-1])
    return "\n".join(lines)
