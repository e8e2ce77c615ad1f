"""Logging with request ids.

The gRPC edge sets :data:`request_id` for each call; every log line written
while serving it (also from executor threads, which copy the context) carries it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys

from dmha.config import LoggingConfig

__all__ = ["configure_logging", "request_id"]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("dmha_request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(cfg: LoggingConfig) -> None:
    """Install one stderr handler with request ids on the root logger.

    Args:
        cfg: the ``logging`` config section.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if cfg.json_format:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    # Third-party chatter at INFO drowns the request log.
    for noisy in ("httpx", "urllib3", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
