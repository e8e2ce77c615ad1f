"""The reproducibility protocol: the edit benchmark's first facts, taught under N learning seeds.

Each seed gets a fresh ``dmha serve`` on a temporary data folder (embedded Redis,
long-term memory and the monitor off, the base model's cached learning references
linked in), configured with the operator's ``model`` and ``learning`` sections and
``learning.seed`` set to the run's seed. A trainer teaches the first K facts of the
benchmark's generator through the SDK, one after another; each deployed fact is
then asked once in a fresh chat. ``bench/online_edit.py`` starts its server the
same way (:func:`start_server`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dmha.runtime import DMHAConfig

__all__ = ["reproduce", "start_server"]

_WAIT_S = 3600.0


def start_server(
    data_dir: str | Path,
    model_dir: Path,
    references: Path | None,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``dmha serve`` on a fresh data folder for a benchmark; return it, its address and a trainer token.

    Args:
        data_dir: an empty folder for the server's state.
        model_dir: the converted model folder.
        references: the base model's cached learning references (linked in, so the
            first job does not compute them again), or None.
        env: extra environment (``DMHA_*`` overrides).
        config: a YAML config for ``--config``.

    Returns:
        ``(process, "host:port", token of user "bench" with trainer and admin roles)``.

    Raises:
        RuntimeError: the server exited before it was ready.
    """
    dmha = str(Path(sys.executable).with_name("dmha"))
    full_env = {
        **os.environ,
        "DMHA_DATA_DIR": str(data_dir),
        "DMHA_MODEL__PATH": str(model_dir),
        "DMHA_MODEL__THREADS": "1",
        "DMHA_SERVER__METRICS_PORT": "0",
        "DMHA_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        "DMHA_LOGGING__LEVEL": "WARNING",
        "DMHA_MEMORY__LONGTERM__ENABLED": "false",
        "DMHA_METACOGNITION__ENABLED": "false",
        **(env or {}),
    }
    if references is not None and references.is_dir():
        cache = Path(data_dir) / "cache" / "learning"
        cache.mkdir(parents=True, exist_ok=True)
        for f in references.glob("references-*.pt"):
            (cache / f.name).symlink_to(f)
    args = [dmha, "serve", "--port", "0", *(["--config", str(config)] if config else [])]
    proc = subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"DMHA ready on (\S+)", line):
            token = subprocess.run(
                [dmha, "token", "--user", "bench", "--role", "trainer", "--role", "admin"],
                env=full_env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            return proc, m.group(1), token
    proc.communicate()
    raise RuntimeError(f"the benchmark server exited ({proc.returncode}) before it was ready")


def _run_config(cfg: DMHAConfig, seed: int) -> dict[str, Any]:
    model = cfg.model.model_dump(mode="json")
    learning = {**cfg.learning.model_dump(mode="json"), "seed": seed}
    model.pop("path", None)  # given by the environment (the resolved folder)
    return {"model": model, "learning": learning}


def config_hash(cfg: DMHAConfig) -> str:
    """SHA-256 of the model and learning configuration, the seed left out (equal for every run)."""
    sections = _run_config(cfg, 0)
    sections["learning"].pop("seed")
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


def _versions(model_dir: Path) -> dict[str, str]:
    out = {name: version(name) for name in ("dmha", "torch", "transformers")}
    out["python"] = platform.python_version()
    out["machine"] = f"{os.cpu_count()} cores, {platform.machine()}, torch threads 1"
    config = model_dir / "config.json"
    out["model"] = model_dir.name
    out["model_config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else ""
    return out


def _teach(address: str, token: str, facts: list[dict[str, str]], seed: int, say: Callable[[str], None]) -> Any:
    from dmha.runtime import report as rp
    from dmha_client import DMHAClient

    run = rp.SeedRun(seed)
    with DMHAClient(address, token, timeout=_WAIT_S) as client:
        for i, fact in enumerate(facts, 1):
            t0 = time.perf_counter()
            job = client.wait_job(client.submit_feedback(fact["input"], fact["target"]).job_id, timeout=_WAIT_S)
            elapsed = time.perf_counter() - t0
            knows: bool | None = None
            if job.state == "deployed":
                knows = rp.knows(client.chat(fact["input"], max_new_tokens=32).text, fact)
            run.facts.append(rp.FactOutcome(fact["input"], job.state, dict(job.metrics), knows, elapsed, job.message))
            say(f"  seed {seed}, fact {i}/{len(facts)}: {job.state} in {elapsed:.0f}s {job.message}")
    return run


def reproduce(
    cfg: DMHAConfig, model_dir: Path, seeds: int, facts: int, say: Callable[[str], None]
) -> tuple[list[Any], dict[str, Any]]:
    """Teach the benchmark's first ``facts`` facts under learning seeds 0..``seeds``-1.

    Args:
        cfg: the operator's config (its ``model`` and ``learning`` sections are used).
        model_dir: the converted model folder.
        seeds: how many runs.
        facts: facts per run (the benchmark generator's first ones, generator seed 0).
        say: progress lines.

    Returns:
        ``(runs, meta)`` for :func:`dmha.report.reproducibility.reproducibility_section`.

    Raises:
        SystemExit: a bad count.
    """
    import yaml

    from dmha.runtime import learning_cache_dir
    from dmha.runtime import report as rp

    if seeds < 1 or facts < 1:
        raise SystemExit("--reproduce and --facts must be at least 1")
    chosen = rp.make_facts(facts, 0)
    runs = []
    started = time.perf_counter()
    references = learning_cache_dir(cfg.data_dir)
    for seed in range(seeds):
        say(f"reproducibility: seed {seed + 1}/{seeds}, starting a fresh server")
        with tempfile.TemporaryDirectory(prefix="dmha-repro-") as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(_run_config(cfg, seed)), encoding="utf-8")
            data = Path(tmp) / "data"
            data.mkdir()
            proc, address, token = start_server(data, model_dir, references, config=config)
            try:
                runs.append(_teach(address, token, chosen, seed, say))
            finally:
                proc.terminate()
                proc.communicate(timeout=120)  # drains and closes its stdout
    meta = {
        "facts": facts,
        "fact_generator_seed": 0,
        "questions": [f["input"] for f in chosen],
        "config_sha256": config_hash(cfg),
        "versions": _versions(model_dir),
        "wall_s": time.perf_counter() - started,
        "command": f"dmha report --reproduce {seeds} --facts {facts}",
    }
    return runs, meta
