from pathlib import Path

import pytest
import yaml

from dmha.config import DMHAConfig, load_config
from dmha.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_default_yaml_matches_builtin_defaults(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("DMHA_") or key in ("REDIS_URL", "MILVUS_URI", "MILVUS_TOKEN"):
            monkeypatch.delenv(key)
    assert load_config(ROOT / "configs" / "default.yaml") == DMHAConfig()


def test_yaml_then_env_then_overrides(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"server": {"port": 1111, "host": "0.0.0.0"}, "model": {"threads": 2}}))
    monkeypatch.setenv("DMHA_SERVER__PORT", "2222")
    monkeypatch.delenv("DMHA_MODEL__THREADS", raising=False)
    cfg = load_config(f)
    assert cfg.server.port == 2222 and cfg.server.host == "0.0.0.0" and cfg.model.threads == 2
    assert load_config(f, server={"port": 3333}).server.port == 3333


def test_conventional_urls(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    monkeypatch.setenv("MILVUS_URI", "http://milvus:19530")
    cfg = load_config()
    assert cfg.redis.url == "redis://example:6379/0"
    assert cfg.memory.longterm.uri == "http://milvus:19530"
    monkeypatch.setenv("DMHA_REDIS__URL", "redis://other:1/0")
    assert load_config().redis.url == "redis://other:1/0"


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"server": {"port": 70000}}, "server.port"),
        ({"model": {"device": "tpu"}}, "model.device"),
        ({"nonsense": 1}, "nonsense"),
        ({"limits": {"max_message_bytes": 0}}, "limits.max_message_bytes"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, doc, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(f)


def test_unreadable_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(f)


@pytest.mark.parametrize("name", ["remote.example.yaml", "gpu.example.yaml"])
def test_example_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.redis.url or cfg.model.device == "cuda"
