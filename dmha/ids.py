"""The one rule for identifiers, and the one way Redis keys are built from them.

User, session, memory, statement, job, event and turn ids all share a shape:
1-128 characters of ``A-Z a-z 0-9 _ . @ -``. The rule is deliberately narrow:

- ``:`` is excluded, so an id can never forge another key segment
  (``dmha:wm:turns:{user}:{session}`` stays unambiguous);
- quotes, backslashes, spaces and control characters are excluded, so an id is
  safe inside a Milvus filter expression and a log line without escaping;
- ``@`` is allowed because user ids are often e-mail addresses.

Every id that enters the core from a request is checked here (:func:`check_id`),
and every Redis key that embeds an id is built by :func:`redis_key`, which checks
again, so key safety never depends on a caller having validated first.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

from dmha.errors import InvalidArgument

__all__ = ["ID_CHARS", "MAX_ID_LENGTH", "IdField", "check_id", "is_valid_id", "new_session_id", "redis_key"]

MAX_ID_LENGTH = 128
"""The longest id, in characters (all ASCII, so also in bytes)."""
ID_CHARS = "A-Z a-z 0-9 _ . @ -"
"""The allowed characters, as error messages and docs spell them."""

IdField = Literal["id", "user_id", "session_id", "memory_id", "statement_id", "job_id", "event_id", "turn_id"]
"""The request field an id came from; named in the error."""

_ID = re.compile(rf"[A-Za-z0-9_.@-]{{1,{MAX_ID_LENGTH}}}")


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string of the id shape.

    Args:
        value: anything; non-strings are never valid.

    Returns:
        Whether :func:`check_id` would accept it.
    """
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: str, field: IdField = "id") -> str:
    """Check an id's shape.

    Args:
        value: the id.
        field: the request field it came from (named in the error).

    Returns:
        ``value`` unchanged.

    Raises:
        InvalidArgument: empty, longer than 128 characters, or with a character
            outside ``A-Z a-z 0-9 _ . @ -``.
    """
    if not is_valid_id(value):
        raise InvalidArgument(field, f"must be 1-{MAX_ID_LENGTH} characters of {ID_CHARS}")
    return value


def new_session_id() -> str:
    """A fresh random session id (32 hex characters)."""
    return uuid.uuid4().hex


def redis_key(prefix: str, *ids: str, tag: bool = False) -> str:
    """A Redis key: a fixed prefix followed by ``:``-separated ids.

    Args:
        prefix: the literal namespace, e.g. ``"dmha:wm:turns"`` (never user input).
        ids: the ids the key is about, in order; each must satisfy :func:`check_id`.
        tag: wrap the first id in a Redis Cluster hash tag (``{alice}``), so every
            key of that id hashes to one slot (ids never contain braces).

    Returns:
        ``"<prefix>:<id>:<id>..."``, or ``"<prefix>:{<id>}:<id>..."`` with ``tag``.

    Raises:
        InvalidArgument: an id does not have the id shape (it could forge a key).
    """
    parts = [check_id(i) for i in ids]
    if tag and parts:
        parts[0] = f"{{{parts[0]}}}"
    return ":".join((prefix, *parts))
