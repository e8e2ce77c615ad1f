"""JWT issuance and verification (HS256), and the server's generated secrets.

A token's subject is the user id; its ``roles`` claim holds any of ``user``,
``trainer``, ``admin``. When the config gives no JWT secret or admin API key,
both are generated once and kept in ``<data_dir>/secrets.json`` (mode 0600), so
``dmha token`` on the same machine mints tokens the server accepts.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt

from dmha.config import AuthConfig
from dmha.errors import InvalidArgument, PermissionDenied, Unauthenticated
from dmha.ids import check_id, is_valid_id

__all__ = ["ROLES", "Authenticator", "Principal", "Role", "load_secrets"]

Role = Literal["user", "trainer", "admin"]
ROLES: tuple[Role, ...] = ("user", "trainer", "admin")
_ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    roles: frozenset[str]

    def has(self, *roles: str) -> bool:
        """True when the caller holds any of ``roles``."""
        return bool(self.roles.intersection(roles))

    def require(self, *roles: str) -> None:
        """Raise unless the caller holds one of ``roles``.

        Raises:
            PermissionDenied: naming the roles needed.
        """
        if not self.has(*roles):
            raise PermissionDenied(f"this call needs the role {' or '.join(roles)}")


def load_secrets(cfg: AuthConfig, data_dir: Path) -> tuple[str, str]:
    """The JWT secret and admin API key: from config, else generated once on disk.

    Args:
        cfg: the ``auth`` config section.
        data_dir: where ``secrets.json`` lives.

    Returns:
        ``(jwt_secret, admin_api_key)``.
    """
    path = Path(data_dir) / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for key in ("jwt_secret", "admin_api_key"):
        if key not in stored:
            stored[key] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Replicas sharing the data dir may start together: each writes its own temp
        # file; the first to create secrets.json wins and the others read its secrets.
        tmp = path.with_name(f".secrets.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(stored, fh, indent=2)
        try:
            if path.exists():
                os.replace(tmp, path)  # keys added to an existing file
            else:
                os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            stored = json.loads(path.read_text(encoding="utf-8"))
        finally:
            tmp.unlink(missing_ok=True)
    secret = cfg.jwt_secret.get_secret_value() if cfg.jwt_secret else stored["jwt_secret"]
    api_key = cfg.admin_api_key.get_secret_value() if cfg.admin_api_key else stored["admin_api_key"]
    return secret, api_key


class Authenticator:
    """Mints and checks tokens.

    Args:
        cfg: the ``auth`` config section.
        secret: the HS256 key.
        admin_api_key: the key IssueToken requires.
    """

    def __init__(self, cfg: AuthConfig, secret: str, admin_api_key: str) -> None:
        self._cfg = cfg
        self._secret = secret
        self._api_key = admin_api_key

    def issue(self, user_id: str, roles: tuple[str, ...] = ("user",), ttl_seconds: int = 0) -> tuple[str, int]:
        """Mint a token.

        Args:
            user_id: the subject.
            roles: any of ``user``, ``trainer``, ``admin``.
            ttl_seconds: lifetime; 0 = the configured default.

        Returns:
            ``(token, expires_at)`` with ``expires_at`` in Unix seconds.

        Raises:
            InvalidArgument: bad user id, unknown role or negative TTL.
        """
        check_id(user_id, "user_id")
        roles = roles or ("user",)
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise InvalidArgument("roles", f"unknown role {unknown[0]!r}; choose from {', '.join(ROLES)}")
        if ttl_seconds < 0:
            raise InvalidArgument("ttl_seconds", "must be >= 0")
        now = int(time.time())
        exp = now + (ttl_seconds or self._cfg.token_ttl_seconds)
        claims = {"sub": user_id, "roles": sorted(set(roles)), "iat": now, "exp": exp, "iss": self._cfg.issuer}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), exp

    def issue_with_key(
        self, api_key: str, user_id: str, roles: tuple[str, ...], ttl_seconds: int = 0
    ) -> tuple[str, int]:
        """IssueToken: mint a token for a caller that presents the admin API key.

        Raises:
            Unauthenticated: the key is wrong.
            InvalidArgument: see :meth:`issue`.
        """
        if not hmac.compare_digest(api_key.encode(), self._api_key.encode()):
            raise Unauthenticated("invalid admin API key")
        return self.issue(user_id, roles, ttl_seconds)

    def verify(self, token: str) -> Principal:
        """Check a bearer token.

        Returns:
            The caller.

        Raises:
            Unauthenticated: missing, malformed, expired, wrong issuer or bad signature.
        """
        if not token:
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <jwt>')")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=self._cfg.issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        roles = claims.get("roles") or ["user"]
        if not isinstance(roles, list) or not all(r in ROLES for r in roles):
            raise Unauthenticated("invalid token: bad roles claim")
        # The subject becomes part of Redis keys and Milvus filters: a token minted
        # elsewhere with the same secret must still carry a well-formed user id.
        if not is_valid_id(claims["sub"]):
            raise Unauthenticated("invalid token: bad subject")
        return Principal(user_id=claims["sub"], roles=frozenset(roles))
